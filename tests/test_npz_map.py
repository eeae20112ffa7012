"""``map_npz``: the arrays of an ``.npz`` mapped read-only from the file, so processes
that open the same bundle share its pages (docs/scale-out.md, "Memory per host")."""

from __future__ import annotations

import json
import mmap
import tracemalloc
import zipfile

import numpy as np
import pytest

from recall_engine.runtime.npz_map import map_npz, save_npz
from recall_engine.runtime.sorted_str import find_sorted
from tests.helpers import build_and_load, python_children


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "ids": np.array([f"item-{n:06d}-é" for n in rng.permutation(5000)]),
        "scores": rng.random(5000, dtype=np.float32),
        "cat:x y": np.sort(rng.choice(5000, 700, replace=False)).astype(np.int32),
        "matrix": rng.random((40, 3)),
        "empty": np.zeros(0, dtype=np.int32),
        "scalar": np.float64(2.5),
    }


def _mapped(array: np.ndarray) -> bool:
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


def _save(path, **arrays) -> None:
    with open(path, "wb") as fh:
        save_npz(fh, **arrays)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mapped_arrays_equal_what_np_load_reads(tmp_path, seed):
    arrays = _arrays(np.random.default_rng(seed))
    path = tmp_path / "a.npz"
    _save(path, **arrays)
    got = map_npz(path)
    assert sorted(got) == sorted(arrays)
    with np.load(path) as z:  # the same format as np.savez writes
        assert sorted(z.files) == sorted(arrays)
        for name, want in arrays.items():
            np.testing.assert_array_equal(z[name], want)
    for name, want in arrays.items():
        np.testing.assert_array_equal(got[name], want)
        assert got[name].dtype == want.dtype and got[name].shape == np.shape(want)
        assert not got[name].flags.writeable
    for name in ("ids", "scores", "cat:x y", "matrix"):
        assert _mapped(got[name]), f"{name} was read into memory, not mapped"
        assert got[name].ctypes.data % 64 == 0, f"{name} is not mapped at 64 bytes"


@pytest.mark.parametrize("pad", range(8))
def test_np_savez_members_that_would_map_unaligned_are_read_into_memory(tmp_path, pad):
    arrays = {"p" * (pad + 1): np.arange(3, dtype=np.int8), **_arrays(np.random.default_rng(5))}
    path = tmp_path / "old.npz"
    np.savez(path, **arrays)
    got = map_npz(path)
    for name, want in arrays.items():
        np.testing.assert_array_equal(got[name], want)
        assert got[name].flags.aligned and not got[name].flags.writeable, name


@pytest.mark.parametrize("writer", ["save_npz", "np.savez"])
def test_looking_ids_up_in_a_mapped_column_does_not_copy_the_column(tmp_path, writer):
    """An unaligned column made np.searchsorted copy all of it on every look-up (45 MB
    per request at a million items)."""
    ids = np.array([f"item-{n:07d}" for n in range(200_000)])  # 9.6 MB as <U12
    path = tmp_path / "ids.npz"
    if writer == "save_npz":
        _save(path, pad=np.int8(1), ids=ids)
    else:
        np.savez(path, pad=np.int8(1), ids=ids)  # leaves ids at an odd offset
    column = map_npz(path)["ids"]
    wanted = ["item-0000007", "item-0199999", "nope"]
    tracemalloc.start()
    try:
        found = find_sorted(column, wanted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.tolist() == [7, 199_999, -1]
    # a copy of the column would be all of it; numpy's own caches take a little
    assert peak < column.nbytes / 10, f"{peak} bytes allocated to look up 3 ids"


def test_compressed_members_are_loaded_instead(tmp_path):
    arrays = _arrays(np.random.default_rng(3))
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **arrays)
    got = map_npz(path)
    for name, want in arrays.items():
        np.testing.assert_array_equal(got[name], want)
        assert not got[name].flags.writeable
    assert not _mapped(got["ids"])


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_npz_is_refused_naming_the_file(tmp_path, keep):
    path = tmp_path / "t.npz"
    np.savez(path, **_arrays(np.random.default_rng(4)))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"t\.npz: not a readable \.npz"):
        map_npz(path)


def test_a_member_whose_size_disagrees_with_its_header_is_refused(tmp_path):
    path = tmp_path / "h.npz"
    buf = tmp_path / "ids.npy"
    np.save(buf, np.arange(100, dtype=np.int64))
    raw = buf.read_bytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ids.npy", raw[:-8])  # the header still says 100 values
    with pytest.raises(ValueError, match=r"h\.npz.*does not match its header"):
        map_npz(path)


_CHILD = """
import json, sys
from pathlib import Path
from recall_engine.runtime.npz_map import map_npz
ids = map_npz(Path(sys.argv[1]))["ids"]
touched = sum(len(s) for s in ids.tolist())  # every page of the column
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
out, current = {}, None
for line in Path("/proc/self/smaps").read_text().splitlines():
    if not line[:1].isupper() or ":" not in line.split()[0]:
        current = line.split()[-1] if len(line.split()) >= 6 else None
    elif current == sys.argv[1]:
        key, value = line.split()[0].rstrip(":"), line.split()[1]
        if value.isdigit():
            out[key] = out.get(key, 0) + int(value)
print(json.dumps(out), flush=True)
sys.stdin.readline()  # stay alive until the other process has read its figures too
"""


def test_two_processes_share_the_pages_of_a_mapped_column(tmp_path):
    path = tmp_path / "big.npz"
    _save(path, ids=np.array([f"item-{n:07d}" for n in range(200_000)]))  # 9.6 MB
    children = python_children(_CHILD, str(path))
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        results = []
        for child in children:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            results.append(json.loads(child.stdout.readline()))
        for child in children:
            child.communicate("bye\n", timeout=60)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    column_kib = 200_000 * 12 * 4 / 1024
    for smaps in results:
        # the file is mapped, its pages are in both processes and counted half in each
        assert smaps.get("Rss", 0) >= 0.9 * column_kib, json.dumps(smaps)
        shared = smaps.get("Shared_Clean", 0) + smaps.get("Shared_Dirty", 0)  # dirty on tmpfs
        assert shared >= 0.9 * column_kib, json.dumps(smaps)
        assert smaps.get("Private_Clean", 0) + smaps.get("Private_Dirty", 0) == 0, smaps
        assert smaps.get("Pss", 0) <= 0.6 * smaps["Rss"], smaps


def test_the_popular_channel_maps_its_ids_read_only(tmp_path, demo_small):
    from recall_engine.sdk.types import Query
    from tests.helpers import build_and_load

    channel = build_and_load(tmp_path, demo_small, "popular")
    ids = channel._ids  # noqa: SLF001 - the storage is what is under test
    assert _mapped(ids) and not ids.flags.writeable
    best = ids[:3].tolist()
    assert list(channel.recall(Query(user_id="u"), 3).item_ids) == best
    assert channel.delete_items([best[0], "no-such-item", best[0]]) == 2


def test_cf_maps_its_vocabulary_and_neighbour_lists_and_looks_ids_up_as_a_dict_would(
    tmp_path, demo_small
):
    """cf's ``vocab.npz`` and ``item2item.npz`` are mapped read-only (a million items:
    ≈ 1 GiB a process read them into), and the sorted-id lookup that replaced the dict
    agrees with one, unknown, cut and odd ids included."""
    from recall_engine.plugins.cf.histories import known_history

    channel = build_and_load(
        tmp_path, demo_small, "cf", params={"auto_mix": False, "two_tower": False}
    )
    vocab, table = channel._vocab, channel._table  # noqa: SLF001 - the storage is under test
    for array in (vocab.ids.array, vocab.counts, table.indptr, table.indices, table.sims):
        assert _mapped(array) and not array.flags.writeable
    ids = list(vocab.ids)
    assert ids == sorted(ids) and len(ids) == len(vocab) > 10
    as_dict = {item: n for n, item in enumerate(ids)}
    width = vocab.ids.array.dtype.itemsize // 4
    probes = ids[::7] + ["", "no-such-item", ids[0] + "\x00", ids[0][:-1], "x" * (width + 3)]
    probes += [ids[-1] + "z", ids[3] + ids[3]]
    assert vocab.index.positions(probes).tolist() == [as_dict.get(p, -1) for p in probes]
    for p in probes:
        assert vocab.index.get(p) == as_dict.get(p) and (p in vocab.index) == (p in as_dict)
    assert vocab.index.get(7) is None and vocab.ids.take(np.array([2, 0])) == [ids[2], ids[0]]
    assert vocab.ids[1] == ids[1] and vocab.ids[:3] == ids[:3]
    history = [ids[4], "unknown", ids[2], ids[4], ids[9]]
    idx, pos = known_history(vocab, history, 10)
    assert idx.tolist() == [2, 4, 9] and pos.tolist() == [2, 3, 4]  # newest place wins


def test_cf_two_tower_index_is_mapped_and_checked_from_a_sample(tmp_path, demo_small):
    """cf's two-tower index is memory-mapped (``memory_map``, default on), and its
    self-check reads a sample of ids, not every id."""
    channel = build_and_load(tmp_path, demo_small, "cf", params={"auto_mix": False})
    index = channel._index  # noqa: SLF001 - the storage is under test
    assert index is not None and index.viewed
    sample = index.sample_ids(5)
    assert len(sample) == 5 and set(sample) <= set(index.ids())
    unmapped = build_and_load(
        tmp_path / "b", demo_small, "cf", params={"auto_mix": False, "memory_map": False}
    )
    assert not unmapped._index.viewed  # noqa: SLF001
