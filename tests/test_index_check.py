"""The post-load self-check of a vector index: a sample of stored vectors is searched and
every answer must be non-empty, finite and made of known ids."""

from __future__ import annotations

import numpy as np
import pytest

from recall_engine.runtime.index import VectorIndex
from recall_engine.runtime.index_check import IndexCheckError, check_index


def index_of(vectors: np.ndarray) -> VectorIndex:
    index = VectorIndex(vectors.shape[1])
    index.add([f"i{n}" for n in range(len(vectors))], vectors)
    return index


def test_a_healthy_index_passes_on_a_bounded_sample():
    rng = np.random.default_rng(0)
    index = index_of(rng.standard_normal((500, 8), dtype=np.float32))
    assert check_index(index, "content/v1/index", sample=16) == 16
    assert check_index(VectorIndex(8), "empty") == 0


def test_stored_vectors_that_are_not_finite_are_refused_naming_the_index():
    index = index_of(np.random.default_rng(1).standard_normal((40, 8), dtype=np.float32))
    # what a broken build could have stored (VectorIndex.add itself refuses NaN): write
    # NaN rows straight into usearch under the same keys
    keys = np.arange(0, 40, 3, dtype=np.uint64)
    index._index.remove(keys)
    index._index.add(keys, np.full((len(keys), 8), np.nan, dtype=np.float32))
    with pytest.raises(IndexCheckError, match=r"^content/v9/index: "):
        check_index(index, "content/v9/index")
