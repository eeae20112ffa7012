"""release_free_memory: the heap pages a load freed go back to the system."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from recall_engine.runtime.process_memory import release_free_memory


def _anon_mib() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Anonymous line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc: Linux")
def test_freed_heap_memory_is_returned_to_the_system():
    release_free_memory()
    # 200 MiB in 4 KiB blocks: under malloc's mmap threshold, so they live on the heap,
    # and freed they would stay there as this process's memory
    blocks = [bytearray(4096) for _ in range(51_200)]
    keep = bytearray(4096)  # malloc'd last, at the heap top: free() cannot trim below it
    held = _anon_mib()
    del blocks
    before = _anon_mib()
    assert release_free_memory()
    after = _anon_mib()
    assert held - before < 50, (held, before)  # free() alone kept most of it
    assert before - after > 150, (before, after)  # the trim gave it back
    assert keep is not None
