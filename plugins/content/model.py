"""Build time only (imports PyTorch): the content encoder, its contrastive training on
co-consumed items, and its ONNX export. Serving never imports this module."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from recall_engine.exporters.manifest import ModelManifest
from recall_engine.exporters.torch_export import export_torch
from recall_engine.observability.logs import get_logger
from recall_engine.offline.data.interactions import Interactions
from recall_engine.sdk.vector_channel import progress_bar

log = get_logger(__name__)

INPUT_NAMES = ("term_ids", "term_weights")
OUTPUT_NAME = "embeddings"


class ContentEncoder(nn.Module):
    """Weighted sum of term embeddings → linear → L2 norm.

    No bias anywhere: an item whose terms are all unknown (id 0, weight 0) maps to the
    zero vector, which the channel reads as "nothing to go on", instead of a shared
    direction that would pull every such item together.
    """

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.terms = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.terms.weight, std=0.01)
        with torch.no_grad():
            self.terms.weight[0].zero_()
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, term_ids: torch.Tensor, term_weights: torch.Tensor) -> torch.Tensor:
        """What is exported: plain Gather, Mul and ReduceSum in the ONNX graph."""
        pooled = (self.terms(term_ids) * term_weights.unsqueeze(-1)).sum(1)
        return F.normalize(self.proj(pooled), dim=-1)

    def forward_fused(self, term_ids: torch.Tensor, term_weights: torch.Tensor) -> torch.Tensor:
        """The same function with ``embedding_bag`` (one fused kernel, about twice as
        fast to train on CPU); tests check it equals :meth:`forward`."""
        pooled = F.embedding_bag(
            term_ids, self.terms.weight, per_sample_weights=term_weights, mode="sum", padding_idx=0
        )
        return F.normalize(self.proj(pooled), dim=-1)


@dataclass(slots=True, frozen=True)
class TrainSettings:
    dim: int = 64
    epochs: int = 4
    batch_size: int = 512
    lr: float = 0.005
    temperature: float = 0.1
    term_dropout: float = 0.1
    max_steps: int = 0  # 0: epochs decide


def co_consumed_pairs(
    interactions: Interactions,
    index_of: Mapping[str, int],
    *,
    window: int,
    max_pairs: int,
    seed: int,
) -> np.ndarray:
    """``[P, 2]`` catalogue rows of items one user consumed within ``window`` steps of
    each other (time order); a uniform sample of ``max_pairs`` when there are more."""
    codes = np.fromiter(
        (index_of.get(i, -1) for i in interactions.item_ids.tolist()),
        dtype=np.int64,
        count=len(interactions),
    )
    chunks = []
    for rows in interactions.by_user().values():
        seq = codes[rows]
        seq = seq[seq >= 0]
        for offset in range(1, min(window, len(seq) - 1) + 1):
            a, b = seq[:-offset], seq[offset:]
            distinct = a != b
            chunks.append(np.stack([a[distinct], b[distinct]], axis=1))
    pairs = np.concatenate(chunks) if chunks else np.zeros((0, 2), dtype=np.int64)
    if len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = pairs[np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
    return pairs


def train_encoder(
    term_ids: np.ndarray,
    term_weights: np.ndarray,
    pairs: np.ndarray,
    vocab_size: int,
    settings: TrainSettings,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[ContentEncoder, dict[str, float]]:
    """InfoNCE over co-consumed pairs with in-batch negatives (both directions), items
    given by their term features only, so the encoder stays a function of metadata.
    Negatives that are the same item as the positive (popular items recur in a batch)
    are masked out. Stops after ``epochs`` or ``max_steps`` optimiser steps, whichever
    comes first: a step budget, not a clock, so the weights depend on the seed and the
    data only."""
    threads = torch.get_num_threads()
    # The model is small: one thread is fastest, and several spin-waiting OpenMP
    # threads on a busy machine made each step ~7x slower (measured on 2 shared cores).
    torch.set_num_threads(1)
    try:
        return _train(term_ids, term_weights, pairs, vocab_size, settings, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _train(
    term_ids: np.ndarray,
    term_weights: np.ndarray,
    pairs: np.ndarray,
    vocab_size: int,
    settings: TrainSettings,
    seed: int,
    progress: bool,
) -> tuple[ContentEncoder, dict[str, float]]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ContentEncoder(vocab_size, settings.dim)
    ids, weights = torch.from_numpy(term_ids), torch.from_numpy(term_weights)
    all_pairs = torch.from_numpy(pairs)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    full, rest = divmod(len(pairs), settings.batch_size)
    steps = (full + (rest >= 2)) * settings.epochs  # a one-pair tail batch is skipped
    if settings.max_steps:
        steps = min(steps, settings.max_steps)
    started = time.perf_counter()  # reported, never a stopping rule
    losses: list[float] = []
    model.train()
    with progress_bar(steps, "content: training", progress) as bar:
        for _ in range(settings.epochs):
            order = torch.randperm(len(all_pairs), generator=generator)
            for start in range(0, len(order), settings.batch_size):
                batch = all_pairs[order[start : start + settings.batch_size]]
                if len(batch) < 2 or len(losses) == steps:
                    continue
                loss = _step_loss(model, ids, weights, batch, settings, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update(1)
    done = len(losses)
    model.eval()
    tail = losses[-20:] or [float("nan")]
    stats = {
        "steps": done,
        "pairs": len(pairs),
        "seconds": round(time.perf_counter() - started, 2),
        "loss_first": round(losses[0], 4) if losses else float("nan"),
        "loss_last": round(float(np.mean(tail)), 4),
    }
    log.info("content_trained", **stats)
    return model, stats


def _step_loss(
    model: ContentEncoder,
    ids: torch.Tensor,
    weights: torch.Tensor,
    batch: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
) -> torch.Tensor:
    a, b = batch[:, 0], batch[:, 1]

    def encode(rows: torch.Tensor) -> torch.Tensor:
        w = weights[rows]
        if settings.term_dropout > 0:
            w = w * (torch.rand(w.shape, generator=generator) >= settings.term_dropout)
        return model.forward_fused(ids[rows], w)

    za, zb = encode(a), encode(b)
    logits = za @ zb.T / settings.temperature
    eye = torch.eye(len(batch), dtype=torch.bool)
    false_ab = ((b[None, :] == b[:, None]) | (b[None, :] == a[:, None])) & ~eye
    false_ba = ((a[None, :] == a[:, None]) | (a[None, :] == b[:, None])) & ~eye
    labels = torch.arange(len(batch))
    return 0.5 * (
        F.cross_entropy(logits.masked_fill(false_ab, -1e4), labels)
        + F.cross_entropy(logits.T.masked_fill(false_ba, -1e4), labels)
    )


def export_encoder(model: ContentEncoder, folder: Path, *, seed: int = 0) -> ModelManifest:
    """ONNX export with a parity check on fresh inputs (batch and term count vary)."""
    vocab_size = model.terms.num_embeddings
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, max(2, vocab_size), (4, 8), generator=generator)
    ids[0, -1] = vocab_size - 1  # fresh parity inputs are drawn up to the example's max
    ids[1, 5:] = 0
    weights = torch.rand(4, 8, generator=generator)
    weights[1, 5:] = 0.0
    axes = {name: {0: "batch", 1: "terms"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    return export_torch(
        model,
        (ids, weights),
        folder,
        input_names=INPUT_NAMES,
        output_names=(OUTPUT_NAME,),
        dynamic_axes=axes,
        seed=seed,
    )
