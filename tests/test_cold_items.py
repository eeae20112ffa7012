"""Cold items end to end: the plan's cold quota in the config (checked, inherited by
variants), the cold signal the build writes into the catalogue, and the engine keeping
slots for cold items that a channel returned."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from recall_engine.config import ConfigError
from recall_engine.config.fusion import DEFAULT_COLD_QUOTA
from recall_engine.config.schema import parse_config
from recall_engine.offline.build import build_all
from recall_engine.offline.data.interactions import Interactions
from recall_engine.runtime.catalog import FIRST_SEEN_FILE, Catalog, write_first_seen
from recall_engine.sdk.types import ItemRecord, Query
from recall_engine.serving.engine import Engine
from recall_engine.serving.requests import RecallInput

DAY = 86400


def _config(tmp_path: Path, plan: dict, experiments: list | None = None):
    return parse_config(
        {
            "artifacts": {"root": str(tmp_path)},
            "server": {"metrics_addr": ""},
            "channels": {
                "cf": {"plugin": "fixed", "params": {"items": ["w1", "w2", "w3", "w4"]}},
                "content": {"plugin": "fixed", "params": {"items": ["c1", "w1", "c2", "c3"]}},
            },
            "plan": plan,
            "experiments": experiments or [],
        },
        tmp_path,
    )


# --------------------------------------------------------------------------- config


def test_plan_cold_quota_defaults_to_off_and_variants_inherit_or_override(tmp_path):
    cfg = _config(
        tmp_path,
        {"weights": {"cf": 1.0, "content": 0.1}, "cold_quota": 0.2, "cold_max_age_days": 3},
        [
            {
                "name": "cold",
                "variants": [
                    {"name": "same", "traffic": 0.5},
                    {"name": "more", "traffic": 0.5, "plan": {"cold_quota": 0.5}},
                ],
            }
        ],
    )
    assert (cfg.plan.cold_quota, cfg.plan.cold_max_age_days) == (0.2, 3.0)
    same, more = cfg.experiments[0].variants
    assert (same.plan.cold_quota, same.plan.cold_max_age_days) == (0.2, 3.0)
    assert (more.plan.cold_quota, more.plan.cold_max_age_days) == (0.5, 3.0)
    plain = _config(tmp_path, {"weights": {"cf": 1.0}})
    # docs/reports/2026-12-05-issue-15-fusion-and-new-items.md, "Cold items, protocols and
    # segments"
    assert plain.plan.cold_quota == DEFAULT_COLD_QUOTA == 0.02


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"cold_quota": 1.5}, r"^plan\.cold_quota: must be between 0 and 1"),
        ({"cold_quota": "lots"}, r"^plan\.cold_quota: "),
        ({"cold_max_age_days": -1}, r"^plan\.cold_max_age_days: "),
    ],
)
def test_bad_cold_settings_name_the_key(tmp_path, plan, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, plan)


def test_a_variants_bad_cold_quota_names_the_variant(tmp_path):
    variants = [{"name": "v", "traffic": 1.0, "plan": {"cold_quota": -0.1}}]
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.variants\[0\]\.plan\.cold_quota"):
        _config(tmp_path, {}, [{"name": "e", "variants": variants}])


# --------------------------------------------------------------------------- catalogue


def _catalog_with_first_seen(folder: Path, timestamps: list[int] | None) -> Catalog:
    items = [ItemRecord(i) for i in ("old", "young", "never")]
    Catalog(items, folder=folder).save(folder)
    write_first_seen(
        folder,
        np.asarray(["old", "young", "old"]),
        None if timestamps is None else np.asarray(timestamps),
    )
    return Catalog.load(folder)


def test_cold_mask_knows_items_without_interactions_and_young_ones(tmp_path):
    catalog = _catalog_with_first_seen(tmp_path, [0, 9 * DAY, 10 * DAY])
    ids = ["old", "young", "never", "upserted-later"]
    assert catalog.cold_mask(ids).tolist() == [False, False, True, True]
    # young: first seen 1 day before the log's end
    assert catalog.cold_mask(ids, max_age_days=2).tolist() == [False, True, True, True]
    assert catalog.cold_mask(ids, max_age_days=0.5).tolist() == [False, False, True, True]


def test_without_timestamps_only_items_without_interactions_are_cold(tmp_path):
    catalog = _catalog_with_first_seen(tmp_path, None)
    assert catalog.cold_mask(["old", "young", "never"], 1e9).tolist() == [False, False, True]


def test_first_seen_ids_are_written_as_utf8_and_older_str_files_still_read(tmp_path):
    """The ids are also UTF-8 bytes since 2026-12-05 (3 x cheaper to search at a million
    items); a file of an older build, ids as numpy str only, gives the same answers."""
    catalog = _catalog_with_first_seen(tmp_path / "new", [0, 9 * DAY, 10 * DAY])
    with np.load(tmp_path / "new" / FIRST_SEEN_FILE) as f:
        assert f["ids_utf8"].dtype.kind == "S" and f["ids_utf8_table"].dtype == np.int32
        assert f["ids"].tolist() == ["old", "young"]  # what an older server reads
        arrays = {k: f[k] for k in f.files if not k.startswith("ids_utf8")}  # older build
    ids = ["old", "young", "never", "upserted-later", "old\0", ""]
    assert catalog.cold_mask(ids).tolist() == [False, False, True, True, True, True]
    assert catalog.cold_mask(ids, 2).tolist() == [False, True, True, True, True, True]
    older = tmp_path / "older"
    Catalog([ItemRecord(i) for i in ("old", "young", "never")], folder=older).save(older)
    np.savez(older / FIRST_SEEN_FILE, **arrays)
    for age in (0, 2):
        assert (
            Catalog.load(older).cold_mask(ids, age).tolist() == catalog.cold_mask(ids, age).tolist()
        )


def test_a_catalogue_without_the_build_signal_knows_nothing_is_cold(tmp_path):
    Catalog([ItemRecord("a")], folder=tmp_path).save(tmp_path)
    assert Catalog.load(tmp_path).cold_mask(["a", "zzz"]) is None
    assert Catalog([ItemRecord("a")]).cold_mask(["a"]) is None


def test_build_writes_which_items_had_interactions(tmp_path):
    log = Interactions(["u1", "u1", "u2"], ["a", "b", "a"], [5 * DAY, 9 * DAY, 10 * DAY])
    items = [ItemRecord(i) for i in ("a", "b", "new")]
    cfg = parse_config({"channels": {"popular": {"required": True}}}, tmp_path)
    build_all(log, items, tmp_path, cfg)
    assert (tmp_path / "catalog" / FIRST_SEEN_FILE).exists()
    catalog = Catalog.load(tmp_path / "catalog")
    assert catalog.cold_mask(["a", "b", "new"]).tolist() == [False, False, True]
    assert catalog.cold_mask(["a", "b", "new"], max_age_days=3).tolist() == [False, True, True]


# --------------------------------------------------------------------------- engine


def _engine(tmp_path: Path, plan: dict) -> Engine:
    folder = tmp_path / "catalog"
    ids = ["w1", "w2", "w3", "w4", "c1", "c2", "c3"]
    Catalog([ItemRecord(i) for i in ids], folder=folder).save(folder)
    write_first_seen(folder, np.asarray(["w1", "w2", "w3", "w4"]), np.zeros(4, np.int64))
    engine = Engine(_config(tmp_path, plan), catalog=Catalog.load(folder))
    engine.load()
    return engine


def _recall(engine: Engine, k: int) -> list[str]:
    out = asyncio.run(engine.recall(RecallInput(Query(user_id="u"), k, "r1")))
    return out.fused.item_ids


@pytest.mark.parametrize(
    ("quota", "expected"),
    [
        (0.0, ["w1", "w2", "w3", "w4"]),
        (0.25, ["w1", "w2", "w3", "c1"]),
        (0.5, ["w1", "w2", "c1", "c2"]),
        (1.0, ["w1", "c1", "c2", "c3"]),  # w1 is returned by content too: not cold
    ],
)
def test_engine_keeps_the_plans_cold_slots_for_cold_items_a_channel_returned(
    tmp_path, quota, expected
):
    engine = _engine(tmp_path, {"weights": {"cf": 1.0, "content": 0.01}, "cold_quota": quota})
    try:
        assert _recall(engine, 4) == expected
    finally:
        engine.close()


def test_cold_items_of_a_channel_the_plan_mutes_never_enter(tmp_path):
    engine = _engine(tmp_path, {"weights": {"cf": 1.0, "content": 0.0}, "cold_quota": 1.0})
    try:
        assert _recall(engine, 4) == ["w1", "w2", "w3", "w4"]
    finally:
        engine.close()


def test_cold_slots_follow_items_upserted_and_deleted_after_load(tmp_path):
    """The engine reads the plan's cold set at load and fusion tells cold items by it,
    so the set must follow the catalogue: an item added after load (no interaction
    yet) is cold at once, a known one upserted again stays warm, a deleted one leaves."""
    folder = tmp_path / "catalog"
    Catalog([ItemRecord(i) for i in ["w1", "w2", "w3", "w4", "c1", "c2"]], folder=folder).save(
        folder
    )
    write_first_seen(folder, np.asarray(["w1", "w2", "w3", "w4"]), np.zeros(4, np.int64))
    plan = {"weights": {"cf": 1.0, "content": 0.01}, "cold_quota": 0.75}
    engine = Engine(_config(tmp_path, plan), catalog=Catalog.load(folder))
    engine.load()
    try:
        # content returns c1, w1, c2, c3; c3 is not in the catalogue yet
        assert _recall(engine, 4) == ["w1", "w2", "c1", "c2"]
        engine.upsert_items([ItemRecord("c3")])
        assert _recall(engine, 4) == ["w1", "c1", "c2", "c3"]
        engine.upsert_items([ItemRecord("w1", title="renamed")])
        assert _recall(engine, 4) == ["w1", "c1", "c2", "c3"]
        engine.delete_items(["c1"])
        assert _recall(engine, 4) == ["w1", "w2", "c2", "c3"]
    finally:
        engine.close()


def test_a_cold_set_over_its_limit_is_not_kept_and_asking_again_is_free(tmp_path):
    folder = tmp_path / "catalog"
    ids = [f"i{n}" for n in range(10)]
    Catalog([ItemRecord(i) for i in ids], folder=folder).save(folder)
    write_first_seen(folder, np.asarray(ids[:4]), np.zeros(4, np.int64))  # 6 cold
    catalog = Catalog.load(folder)
    calls = []
    count = catalog.cold_mask

    def counted(item_ids, max_age_days=0.0):
        calls.append(len(item_ids))
        return count(item_ids, max_age_days)

    catalog.cold_mask = counted  # type: ignore[method-assign]
    assert catalog.cold_items(0.0, limit=5) is None
    assert catalog.cold_items(0.0, limit=3) is None
    assert len(calls) == 1  # the second answer came from the first count
    assert catalog.cold_items(0.0, limit=6).ids == tuple(ids[4:])
    assert catalog.cold_items(0.0, limit=1).ids == tuple(ids[4:])  # made: kept whatever size
    assert len(calls) == 2


def test_past_the_limit_fusion_finds_cold_items_by_the_record(tmp_path, monkeypatch):
    """A catalogue with more cold items than the engine keeps a set of serves the same
    cold slots, from the first-seen record."""
    from recall_engine.serving import engine as engine_module

    monkeypatch.setattr(engine_module, "COLD_SET_LIMIT", 1)
    engine = _engine(tmp_path, {"weights": {"cf": 1.0, "content": 0.01}, "cold_quota": 0.5})
    try:
        assert engine.catalog.cold_items(0.0, limit=1) is None
        assert _recall(engine, 4) == ["w1", "w2", "c1", "c2"]
    finally:
        engine.close()
