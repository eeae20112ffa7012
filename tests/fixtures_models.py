"""Small PyTorch models for exporter tests, each behind a ``factory() -> (module, example)``
so the CLI can load them as ``tests.fixtures_models:mlp_factory``.

Two models export *wrongly* on purpose, the way real models do, so that the parity
check has something honest to catch: one takes a different path while being exported,
one loops in Python over the sequence length (tracing unrolls the loop at the example's
length).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NUM_ITEMS = 50
SEQ = 8


def _seeded() -> None:
    torch.manual_seed(0)


class MLP(nn.Module):
    def __init__(self, d_in: int = 16, hidden: int = 32, d_out: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, d_out)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class BagOfItems(nn.Module):
    """Mean of item embeddings (``EmbeddingBag``) projected to the output space."""

    def __init__(self, num_items: int = NUM_ITEMS, dim: int = 16) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(num_items, dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.bag(item_ids))


class GRUHistoryEncoder(nn.Module):
    """Recent items -> user vector: embeddings, a GRU, mean over real (unmasked) steps,
    a projection and L2 normalisation."""

    def __init__(self, num_items: int = NUM_ITEMS, dim: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, dim)

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.items(item_ids))
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return F.normalize(self.out(pooled), dim=-1)


class AttentionHistoryEncoder(nn.Module):
    """Recent items -> user vector: item + position embeddings, one self-attention
    layer with a key padding mask, masked mean pooling."""

    def __init__(self, num_items: int = NUM_ITEMS, dim: int = 16, max_len: int = 32) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_ids.shape[1], device=item_ids.device)
        x = self.items(item_ids) + self.positions(positions).unsqueeze(0)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
        keep = mask.unsqueeze(1).to(torch.bool)
        # A large negative rather than -inf: an all-padding row stays finite.
        scores = scores.masked_fill(~keep, -1e4)
        x = self.norm(x + scores.softmax(-1) @ v)
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class SkipsNormWhileExporting(MLP):
    """Normalises its output in PyTorch but not in the exported graph: an
    export-only code path, the kind that creeps in as a "faster path for ONNX"."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(features)
        if torch.onnx.is_in_onnx_export():
            return out
        return F.normalize(out, dim=-1)


class PythonLoopOverSequence(nn.Module):
    """Sums item embeddings with a Python ``for`` over the sequence length, which
    tracing unrolls at the example's length."""

    def __init__(self, num_items: int = NUM_ITEMS, dim: int = 16) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items, dim)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        emb = self.items(item_ids)
        total = torch.zeros_like(emb[:, 0])
        for t in range(item_ids.shape[1]):
            total = total + emb[:, t]
        return total


def _history_example(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, NUM_ITEMS, (batch, SEQ))
    ids[0, -1] = NUM_ITEMS - 1  # fresh ids are drawn up to the example's max
    mask = torch.ones(batch, SEQ, dtype=torch.int64)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return ids, mask


def mlp_factory() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    return MLP(), (torch.randn(4, 16),)


def bag_factory() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    ids, _ = _history_example()
    return BagOfItems(), (ids,)


def gru_factory() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    return GRUHistoryEncoder(), _history_example()


def attention_factory() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    return AttentionHistoryEncoder(), _history_example()


def export_branch_factory() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    return SkipsNormWhileExporting(), (torch.randn(4, 16),)


def python_loop_factory() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    ids, _ = _history_example()
    return PythonLoopOverSequence(), (ids,)
