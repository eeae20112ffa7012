"""Large weights beside the graph: ONNX external data.

ONNX Runtime copies the initializers stored inside a ``.onnx`` file into every
session, so each serving process holds its own copy. Kept in a file beside the graph
(``model.onnx`` + ``model.onnx.data``) they are memory-mapped and used in place, and the
processes of a host share them (cf's item table at 1M items: 234 MiB a process; MiniLM
int8's word embeddings: 45 MiB). Weights that a kernel pre-packs (the int8 MatMuls) are
copied either way.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from recall_engine.runtime.files import sha256_file

__all__ = ["EXTERNAL_DATA_MIN_BYTES", "data_file_of", "externalize_weights"]

#: initializers at least this large leave the graph file
EXTERNAL_DATA_MIN_BYTES = 1 << 20


def data_file_of(model_path: Path) -> Path:
    """Where the weights of ``model_path`` go: ``<name>.data`` beside it."""
    return model_path.with_name(model_path.name + ".data")


def externalize_weights(model_path: Path, min_bytes: int = EXTERNAL_DATA_MIN_BYTES) -> dict:
    """Move the initializers of ``model_path`` of at least ``min_bytes`` into
    :func:`data_file_of` it (nothing when there are none); returns ``{file name:
    sha256}`` of what was written. The graph and its numbers are unchanged."""
    data = data_file_of(model_path)
    data.unlink(missing_ok=True)  # onnx appends to an existing one
    model = onnx.load(str(model_path))
    if not any(len(t.raw_data) >= min_bytes for t in model.graph.initializer):
        return {}
    onnx.save_model(
        model,
        str(model_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=min_bytes,
    )
    # onnx creates the data file readable by its owner only; the serving user (the
    # images run as non-root) reads it as it reads the graph
    os.chmod(data, model_path.stat().st_mode & 0o777)
    return {data.name: sha256_file(data)}
