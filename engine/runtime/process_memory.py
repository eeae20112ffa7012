"""Give the memory a load freed back to the operating system.

Loading a channel allocates and frees a lot of transient memory (reading manifests and
digests, reconciling an index with the catalogue, ONNX Runtime's graph passes). glibc's
``malloc`` keeps most of what was freed inside the process, where it counts as that
process's own resident memory: with ``serve --processes N`` every worker keeps its copy.
``malloc_trim(0)`` returns the free pages; at 1M items it took 13-23 MiB per channel
(docs/scale-out.md, "Memory per host"). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_memory"]


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system (glibc); whether anything was
    released (False, too, where there is no ``malloc_trim``)."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
