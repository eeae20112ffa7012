"""``first_seen.npz`` is mapped read-only and searched in place: the ages it gives equal
a dict built from the same log, over random ids, unknown and over-long ones included."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from recall_engine.runtime.catalog import _read_first_seen, write_first_seen

DAY = 86400.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("timed", [True, False])
def test_mapped_ages_equal_a_dict_of_the_log(tmp_path, seed, timed):
    rng = np.random.default_rng(seed)
    names = [f"item-{n}" for n in range(300)] + ["é-ñ", "x" * 40, "日本", "a b"]
    log = [names[i] for i in rng.integers(0, len(names), 2000)]
    times = rng.integers(1_600_000_000, 1_700_000_000, len(log)) if timed else None
    write_first_seen(tmp_path, np.array(log), times)
    ages = _read_first_seen(tmp_path)
    assert ages is not None
    want: dict[str, float] = {}
    for n, item in enumerate(log):
        t = float(times[n]) if times is not None else 0.0
        want[item] = min(want.get(item, np.inf), t)
    as_of = float(times.max()) if times is not None else 0.0
    asked = list(rng.choice(names, 50)) + ["unknown", "item-1" + "0" * 30, "", "x" * 41]
    got = ages.of(asked)
    for item, age in zip(asked, got.tolist(), strict=True):
        if item not in want:
            assert age == -1.0, item
        elif times is None:
            assert age == np.inf, item
        else:
            assert age == pytest.approx((as_of - want[item]) / DAY), item
    np.testing.assert_array_equal(ages.known(asked), [i in want for i in asked])
    base = ages._ids  # noqa: SLF001 - the storage is what is under test
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    assert isinstance(base, mmap.mmap) and not ages._ids.flags.writeable  # noqa: SLF001
