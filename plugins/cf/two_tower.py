"""The user-to-item two-tower model: PyTorch definition, training and ONNX export.

Build time only (needs the ``[train]`` extra); serving runs the exported history
encoder through ONNX Runtime and never imports this module.

Model. One item embedding table (row 0 is padding) feeds both towers:

* item tower: ``normalize(E[i])``;
* user tower (the *history encoder*): the last ``L`` items of the history
  (``item_ids [B, L]`` int64, index + 1, right-aligned, and ``mask [B, L]`` bool) are
  embedded with the same table and pooled, by a masked mean (``encoder = "mean"``) or by
  attention over item + recency-position embeddings (``"attention"``, newest item at
  position 0); a residual MLP and an L2 normalisation give the user vector.

Training. Next-item prediction over every user's time-ordered log: each interaction
after a user's first is a target, its previous ``L`` items the input (the leave-last-out
target, applied at every position). Loss: in-batch sampled softmax over the batch's
targets with temperature ``τ``; other rows that happen to have the same target are
masked out (no false negatives), and with ``logq_correction`` each logit is reduced by
the log of its item's in-batch sampling probability (Yi et al., RecSys 2019) so popular
items are not pushed down merely for being frequent negatives. Adam, a seeded shuffle
and a seeded initialisation: the same data and seed train the same weights on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recall_engine.exporters.torch_export import export_torch
from recall_engine.observability.logs import get_logger
from recall_engine.plugins.cf.histories import TrainingLog, Vocab, pad_left
from recall_engine.plugins.cf.params import CFParams

log = get_logger(__name__)

ENCODER_DIR = "encoder"
INDEX_DIR = "index"
INPUT_NAMES = ("item_ids", "mask")
OUTPUT_NAME = "user_vector"
_MASKED = -1e4  # a finite "minus infinity": keeps softmax over an all-padding row NaN-free


class HistoryEncoder(nn.Module):
    """``(item_ids [B, L] int64, mask [B, L] bool) -> user vector [B, dim]`` (unit
    length). Owns the item embedding table the item tower reads too."""

    def __init__(
        self, n_items: int, dim: int, length: int, kind: str = "mean", sparse: bool = False
    ) -> None:
        super().__init__()
        self.kind = kind
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0, sparse=sparse)
        nn.init.normal_(self.items.weight, std=0.1)
        with torch.no_grad():
            self.items.weight[0].zero_()
        if kind == "attention":
            self.positions = nn.Embedding(length, dim)
            nn.init.normal_(self.positions.weight, std=0.02)
            self.key = nn.Linear(dim, dim)
            self.query = nn.Parameter(torch.zeros(dim))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.items(item_ids)
        m = mask.to(e.dtype).unsqueeze(-1)
        if self.kind == "attention":
            length = item_ids.shape[1]
            recency = length - 1 - torch.arange(length, device=item_ids.device)
            h = e + self.positions(recency).unsqueeze(0)
            logits = self.key(h) @ self.query
            logits = logits.masked_fill(~mask, _MASKED)
            weights = torch.softmax(logits, dim=1).unsqueeze(-1) * m
            pooled = (weights * e).sum(1)
        else:
            pooled = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
        return F.normalize(pooled + self.mlp(pooled), dim=-1)

    def item_vectors(self) -> torch.Tensor:
        """Unit item vectors ``[n_items, dim]`` in vocabulary order (padding dropped)."""
        return F.normalize(self.items.weight[1:], dim=-1)


@dataclass(slots=True, frozen=True)
class TrainReport:
    samples: int
    steps: int
    seconds: float
    final_loss: float


class NextItemSamples:
    """Every (history window -> next item) pair of a :class:`TrainingLog`, batched
    without materialising the ``[N, L]`` windows."""

    def __init__(self, data: TrainingLog, length: int) -> None:
        user_start = np.repeat(data.starts[:-1], np.diff(data.starts))
        self.items = data.items
        self.user_start = user_start
        self.targets = np.flatnonzero(np.arange(len(data.items)) > user_start)
        self.length = length

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = self.targets[rows]
        window = pos[:, None] - np.arange(self.length, 0, -1)[None, :]
        valid = window >= self.user_start[pos][:, None]
        ids = np.where(valid, self.items[np.maximum(window, 0)] + 1, 0)
        return (torch.from_numpy(ids), torch.from_numpy(valid), torch.from_numpy(self.items[pos]))


def train(
    vocab: Vocab, data: TrainingLog, params: CFParams, *, seed: int = 0, progress: bool = False
) -> tuple[HistoryEncoder, TrainReport]:
    """Train the two towers (see the module docstring); returns the model in eval mode.

    Runs on ``params.train_threads`` intra-op threads (default 1: on a busy machine two
    spinning torch threads were 20x slower per step than one; the model is small)."""
    threads = torch.get_num_threads()
    if params.train_threads:
        torch.set_num_threads(params.train_threads)
    try:
        return _train(vocab, data, params, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train(
    vocab: Vocab, data: TrainingLog, params: CFParams, *, seed: int, progress: bool
) -> tuple[HistoryEncoder, TrainReport]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = HistoryEncoder(
        len(vocab), params.dim, params.sequence_length, params.encoder, sparse=params.sparse_updates
    )
    samples = NextItemSamples(data, params.sequence_length)
    if len(samples) == 0:
        raise ValueError("cf two_tower: no user has two interactions; nothing to learn")
    log_q = torch.from_numpy(
        np.log(np.maximum(vocab.counts, 1.0) / vocab.counts.sum()).astype(np.float32)
    )
    optimisers = _optimisers(model, params)
    batch = min(params.batch_size, len(samples))
    steps_per_epoch = max(1, len(samples) // batch)  # drop the ragged tail batch
    t0 = time.perf_counter()
    loss_value = float("nan")
    model.train()
    for epoch in range(params.epochs):
        order = rng.permutation(len(samples))
        steps = range(steps_per_epoch)
        if progress:
            from tqdm import tqdm

            steps = tqdm(
                steps, desc=f"cf two-tower epoch {epoch + 1}/{params.epochs}", unit="batch"
            )
        total = 0.0
        for step in steps:
            ids, mask, target = samples.batch(order[step * batch : (step + 1) * batch])
            loss = _loss(model, ids, mask, target, params, log_q)
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            loss.backward()
            for optimiser in optimisers:
                optimiser.step()
            total += loss.detach().item()
        loss_value = total / steps_per_epoch
        log.info("cf_two_tower_epoch", epoch=epoch + 1, loss=round(loss_value, 4))
    model.eval()
    return model, TrainReport(
        len(samples), steps_per_epoch * params.epochs, time.perf_counter() - t0, loss_value
    )


def _optimisers(model: HistoryEncoder, params: CFParams) -> list[torch.optim.Optimizer]:
    """Adam over every weight; with ``sparse_updates`` the item table gets SparseAdam,
    which reads and writes only the rows a batch touched. A dense Adam step walks the
    whole table and its two moment tables: at a million items that is most of a step's
    time (1.09 against 0.41 s per 4,096-row step, docs/reports/, round 4). Rows a
    batch did not touch keep their moments as they were (lazy Adam) instead of
    decaying them."""
    if not params.sparse_updates:
        return [torch.optim.Adam(model.parameters(), lr=params.learning_rate)]
    rest = [p for name, p in model.named_parameters() if name != "items.weight"]
    return [
        torch.optim.SparseAdam([model.items.weight], lr=params.learning_rate),
        torch.optim.Adam(rest, lr=params.learning_rate),
    ]


def _loss(
    model: HistoryEncoder,
    ids: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    params: CFParams,
    log_q: torch.Tensor,
) -> torch.Tensor:
    users = model(ids, mask)
    items = F.normalize(model.items(target + 1), dim=-1)
    logits = users @ items.T / params.temperature
    if params.logq_correction:
        logits = logits - log_q[target][None, :]
    same = target[:, None] == target[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, _MASKED)
    return F.cross_entropy(logits, torch.arange(len(target)))


def export(
    model: HistoryEncoder, vocab: Vocab, params: CFParams, out: Path, seed: int = 0
) -> dict[str, str]:
    """Write ``encoder/`` (ONNX history encoder, parity-checked, with its manifest) and
    ``index/`` (the unit item vectors in a ``VectorIndex``, metric ``ip``) under ``out``.
    Returns the model hashes for the bundle manifest."""
    from recall_engine.runtime.index import VectorIndex

    length = params.sequence_length
    example_ids = torch.zeros((2, length), dtype=torch.int64)
    example_ids[0, -1] = len(vocab)  # parity inputs are drawn up to the example's max id
    example_ids[1, :] = torch.arange(1, length + 1) % (len(vocab) + 1)
    example_mask = example_ids != 0
    cases = ((1, length), (3, max(1, min(length, 7))), (7, 1))
    manifest = export_torch(
        model,
        (example_ids, example_mask),
        out / ENCODER_DIR,
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
        parity_cases=cases,
        seed=seed,
    )
    with torch.no_grad():
        vectors = model.item_vectors().numpy().astype(np.float32)
    # i8 needs unit vectors under "cos"; the tower's item vectors are unit (see
    # HistoryEncoder.item_vectors), so "cos" ranks exactly as "ip" for them
    metric = "cos" if params.index_dtype == "i8" else "ip"
    index = VectorIndex(params.dim, metric=metric, dtype=params.index_dtype)
    index.add(vocab.ids.array.tolist(), vectors)
    index.save(out / INDEX_DIR)
    return {"encoder": manifest.model_sha256, "encoder_weights": manifest.source_hash}


def validation_lists(
    vocab: Vocab,
    params: CFParams,
    k: int,
    *,
    seed: int = 0,
) -> Callable[[TrainingLog, np.ndarray, Any], np.ndarray]:
    """For :func:`recall_engine.plugins.cf.mix.select`: train on a carve's training
    rows exactly as the build trains on all of them (same params and seed; item counts
    for the logQ correction from the carve), then each validation user's top ``k``
    items from their newest ``sequence_length`` distinct items, history excluded."""
    from recall_engine.plugins.cf.mix import newest_distinct, top_lists

    def lists(rows: TrainingLog, users: np.ndarray, seen: Any) -> np.ndarray:
        counts = np.bincount(rows.items, minlength=len(vocab))
        model, report = train(Vocab.from_ids(vocab.ids, counts), rows, params, seed=seed)
        log.info("cf_mix_two_tower_trained", steps=report.steps, seconds=round(report.seconds, 2))
        length = params.sequence_length
        histories = [newest_distinct(rows, u, length)[0] for u in users.tolist()]
        ids, mask = pad_left(histories, length)
        with torch.no_grad():
            u = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            v = model.item_vectors().numpy()
        return top_lists(lambda lo, hi: u[lo:hi] @ v.T, seen, k)

    return lists
