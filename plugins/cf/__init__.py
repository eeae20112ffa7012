"""``cf``: collaborative filtering recall from a request's history.

Two modes, each on or off by itself (``[channels.<name>.params]``):

``item2item`` (default on)
    Neighbour lists per item learned from the interactions (``method``: ``"cosine"``,
    ``"ease"``, ``"swing"``, or ``"auto"``: EASE up to ``ease_max_items`` = 20,000 items,
    cosine above), ``neighbours`` (200) kept per item; ``ease_lambda`` (1000),
    ``cosine_shrink`` (10), ``swing_alpha`` (1) and ``swing_max_users`` (100) tune the
    methods, ``use_weights`` learns from interaction weights instead of 0/1. At serve time
    the newest ``max_history`` (100) known history items vote for their neighbours with
    weight ``0.5 ** (age / half_life)`` (``half_life`` 10, age in positions; in days
    instead with ``half_life_days`` > 0 when the request has timestamps; a half-life of 0
    turns decay off), times ``event_weights[event]`` (default 1). Sub-millisecond, NumPy
    only (see :mod:`.item2item`).
``two_tower`` (default on)
    A history encoder and item embeddings trained with in-batch sampled softmax
    (``dim`` 64, ``sequence_length`` 20, ``encoder`` ``"attention"`` or ``"mean"``,
    ``epochs`` 5, ``batch_size`` 512, ``learning_rate`` 2e-3, ``temperature`` 0.1,
    ``logq_correction`` on, ``train_threads`` 1; ``sparse_updates`` on: the item table's
    optimiser (SparseAdam) touches only the rows a batch used, 2.6x cheaper per step at a
    million items, the same recall on MovieLens); the encoder is exported to ONNX and
    served by ONNX Runtime (``device`` ``"cpu"`` by default: a small pooled MLP is faster
    on the CPU than a round trip to a GPU; ``encoder_threads`` 1), item vectors are
    searched in a usearch index (``index_dtype`` ``"f32"``; ``"bf16"`` halves memory and
    is about twice as fast on CPUs with AVX-512 BF16, see docs/vectors.md;
    ``expansion_search`` overrides the index's HNSW ef at serve time, 0 keeps it). A user
    never seen in training is served from the history in the request (see
    :mod:`.two_tower`). ``dim``, ``sequence_length``, ``encoder`` and ``index_dtype`` are
    fixed by the build: serving reads them from the bundle.

How the parts combine (``auto_mix``, default on; :mod:`.mix`). The build carves a
validation split out of its own training data (``validation_fraction`` 0.2 of each
user's rows: half their newest, half at random from the rest; at most
``validation_users`` 2,000 users scored) and learns every part on the rest. It scores
up to three lists at ``validation_k`` (100): *full* (item-to-item over the whole
history, every item weight 1), *recent* (the newest ``max_history`` items with a
half-life from 5 / 10 / 25 / 50) and *two_tower*, fused by weighted RRF (weights 0,
0.25, 0.5, 1), against the newest and against the random held-out items, and keeps
the mix that does best on the worse of the two relative to the best on each (one at
least as good as *full* alone on both is preferred when within 0.1 of that). With EASE
(``method`` ``"auto"`` or ``"ease"``) up to ``ease_dense_max_items`` (10,000) items,
λ is picked the same way from 50 ... 2,000 and the whole ``B`` is kept (``ease.npy``,
memory-mapped: the *full* list is then exactly EASE); above that the lists read the
neighbour table. Then the parts the mix uses are learned on all the data. The mix and
the validation figures are in the bundle manifest (``build_params.mix``,
``build_params.mix_validation``) and the ``cf_mix_chosen`` log event, and serving
reads them from there (``half_life`` and the weights in the config are then unused;
``half_life_days`` and ``event_weights`` still apply to the *recent* list). Cost: the
parts are trained twice (the two-tower model too). With ``auto_mix = false`` the lists
are the configured ones: the recent list (``half_life``) and the two-tower list merged
by weighted reciprocal rank fusion (``item2item_weight``, ``two_tower_weight``,
``rrf_k``; see :mod:`.merge`). The channel accepts a query when at least one history
item was seen in training.

Bundle (``ARTIFACTS/<name>/<version>/``): ``vocab.npz`` (item ids by index, training
counts), ``item2item.npz`` (CSR neighbour lists), ``ease.npy`` (EASE's ``B``, when
kept), ``encoder/`` (``model.onnx`` +
``manifest.json`` from ``export_torch``), ``index/`` (``VectorIndex``: ``index.usearch``,
``ids.json``, ``index.json``); the bundle manifest's ``cf`` field records the modes,
method and training figures. Serving imports neither PyTorch nor SciPy.

Quality (``bench/cf_quality.py``: MovieLens 1M subset, last 20% of each user held out,
recall@100, before ``auto_mix``): item2item 0.45, two_tower 0.48, both 0.49; popularity
0.23, ItemKNN 0.31 and plain EASE 0.40 on the same split. With ``auto_mix`` under both
protocols, per-user temporal and per-user random:
docs/reports/2026-12-05-issue-15-fusion-and-new-items.md, "cf picks its mix on its own
training data".
"""

from recall_engine.plugins.cf.channel import CFChannel
from recall_engine.plugins.cf.params import CFParams, parse_params

__all__ = ["CFChannel", "CFParams", "parse_params"]
