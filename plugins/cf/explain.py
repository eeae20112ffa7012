"""Evidence for ``RecallRequest.explain`` (``Explainable``) from the cf channel's parts:
which history items are the candidate's strongest item-to-item neighbours, and the
two-tower model's score for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recall_engine.plugins.cf.histories import Vocab, known_history, pad_left
from recall_engine.plugins.cf.item2item import DenseEase, NeighbourTable
from recall_engine.sdk.types import Evidence, NearItem, Query

#: History items named per candidate.
NEAREST = 3


def evidence(
    vocab: Vocab,
    query: Query,
    item_ids: Sequence[str],
    *,
    table: NeighbourTable | None,
    dense: DenseEase | None,
    encoder: Any,
    index: Any,
    length: int,
) -> dict[str, Evidence]:
    """Per known item of ``item_ids``: the (at most) three history items with the
    highest item-to-item score towards it, ``sim(h, item)`` from the neighbour table, or
    EASE's weight ``B[h, item]`` when the dense matrix is served (positive ones only: a
    history item that pushes the candidate down did not pull it in); and with the
    two-tower part served (``index``), the inner product of the user vector the encoder
    makes of the newest ``length`` history items and the item's vector."""
    history, _ = known_history(vocab, query.history, max(len(query.history), 1))
    cand = [(item, vocab.index[item]) for item in item_ids if item in vocab.index]
    scores = np.zeros((len(cand), len(history)), dtype=np.float32)
    kind = ""
    if dense is not None and len(history):
        kind = "ease"
        cols = np.asarray([c for _, c in cand], dtype=np.int64)
        scores = np.asarray(dense.b[history][:, cols], dtype=np.float32).T
    elif table is not None and len(history):
        kind = "item2item"
        row_of = {c: r for r, (_, c) in enumerate(cand)}
        for j, h in enumerate(history.tolist()):
            lo, hi = int(table.indptr[h]), int(table.indptr[h + 1])
            for c, sim in zip(
                table.indices[lo:hi].tolist(), table.sims[lo:hi].tolist(), strict=True
            ):
                if c in row_of:
                    scores[row_of[c], j] = sim
    tower: dict[str, float] = {}
    if index is not None and encoder is not None and len(history):
        ids, mask = pad_left([history[-length:]], length)
        user = np.asarray(encoder.run({"item_ids": ids, "mask": mask})[0], dtype=np.float32)
        vectors, found = index.vectors([item for item, _ in cand])
        tower = {cand[p][0]: float(v @ user) for p, v in zip(found, vectors, strict=True)}
    out = {}
    for row, (item, _) in enumerate(cand):
        top = [j for j in np.argsort(-scores[row], kind="stable")[:NEAREST] if scores[row, j] > 0]
        out[item] = Evidence(
            nearest=tuple(NearItem(vocab.ids[history[j]], float(scores[row, j])) for j in top),
            similarity=kind if top else "",
            two_tower_score=tower.get(item),
        )
    return out
