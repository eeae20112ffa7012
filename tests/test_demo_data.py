"""The synthetic demo: determinism and the structure it plants."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from recall_engine.cli.main import main
from recall_engine.offline.data.demo import TOPICS, make_demo, write_demo
from recall_engine.offline.data.interactions import load_interactions
from recall_engine.offline.data.items import load_items

SMALL = {"n_items": 400, "n_users": 150}


@pytest.fixture(scope="module")
def demo():
    return make_demo(**SMALL, seed=3)


def test_same_seed_writes_byte_identical_files(tmp_path):
    first = write_demo(tmp_path / "a", **SMALL, seed=7)
    second = write_demo(tmp_path / "b", **SMALL, seed=7)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "demo_meta.json").read_bytes() == (
        tmp_path / "b" / "demo_meta.json"
    ).read_bytes()


def test_another_seed_gives_another_log(tmp_path):
    a, _ = write_demo(tmp_path / "a", **SMALL, seed=1)
    b, _ = write_demo(tmp_path / "b", **SMALL, seed=2)
    assert a.read_bytes() != b.read_bytes()


def test_written_files_load_back_as_the_same_data(tmp_path, demo):
    inter_path, items_path = write_demo(tmp_path, **SMALL, seed=3)
    log, report = load_interactions(inter_path)
    items, _ = load_items(items_path)
    assert report.skipped == 0
    assert items == demo.items
    assert log.user_ids.tolist() == demo.interactions.user_ids.tolist()
    assert log.item_ids.tolist() == demo.interactions.item_ids.tolist()
    assert log.timestamps.tolist() == demo.interactions.timestamps.tolist()
    assert log.weights.tolist() == demo.interactions.weights.tolist()
    assert log.events is not None and set(log.events.tolist()) == {"view", "like"}


def test_topics_are_balanced_and_match_categories(demo):
    counts = Counter(demo.topics.values())
    assert set(counts) == set(TOPICS)
    assert max(counts.values()) - min(counts.values()) <= 1
    for item in demo.items:
        topic, subtag = item.categories
        assert topic == demo.topics[item.item_id]
        assert subtag in TOPICS[topic].subtags


def test_items_have_ids_titles_and_one_to_three_sentences(demo):
    assert [it.item_id for it in demo.items[:2]] == ["item-0001", "item-0002"]
    assert len({it.title for it in demo.items}) == len(demo.items)
    for item in demo.items:
        assert item.title[:1].isupper()
        assert 1 <= item.text.count(".") <= 4  # 1–3 sentences ("St." never occurs)
        assert item.text.endswith(".")


def test_item_text_uses_its_topic_vocabulary(demo):
    for item in demo.items[:50]:
        topic, subtag = item.categories
        phrases = TOPICS[topic].subtags[subtag]
        assert any(p.lower() in (item.title + " " + item.text).lower() for p in phrases)


def test_co_pairs_are_consumed_back_to_back(demo):
    log = demo.interactions
    partner = dict(demo.co_pairs)
    assert len(demo.co_pairs) >= len(TOPICS)
    follows = Counter()
    b_count = Counter()
    a_count = Counter()
    for rows in log.by_user().values():
        seq = log.item_ids[rows].tolist()
        for prev, item in zip([None, *seq], seq, strict=False):
            a_count[item] += item in partner
            b_count[item] += 1
            if prev is not None and partner.get(prev) == item:
                follows[item] += 1
    for a, b in demo.co_pairs:
        assert a_count[a] > 0, f"pair head {a} never consumed"
        assert follows[b] >= 0.8 * b_count[b] > 0, (a, b, follows[b], b_count[b])


def test_cold_items_exist_and_never_appear_in_the_log(demo):
    cold = set(demo.cold_items)
    assert 0.03 * len(demo.items) <= len(cold) <= 0.07 * len(demo.items)
    assert cold <= {it.item_id for it in demo.items}
    assert cold.isdisjoint(demo.interactions.item_ids.tolist())
    assert cold.isdisjoint(a for pair in demo.co_pairs for a in pair)
    warm = set(demo.interactions.item_ids.tolist())
    assert warm | cold == {it.item_id for it in demo.items}


def test_users_mostly_consume_their_favourite_topics(demo):
    log = demo.interactions
    in_favourite = [
        demo.topics[i] in demo.user_topics[u]
        for u, i in zip(log.user_ids.tolist(), log.item_ids.tolist(), strict=True)
    ]
    assert np.mean(in_favourite) > 0.5  # uniform choice would give about 0.18
    assert all(1 <= len(t) <= 2 for t in demo.user_topics.values())


def test_popularity_is_skewed_within_topics(demo):
    counts = Counter(demo.interactions.item_ids.tolist())
    per_item = np.sort(np.asarray(list(counts.values())))[::-1]
    top_decile = per_item[: len(per_item) // 10].sum()
    assert top_decile > 0.2 * per_item.sum()  # a flat log would give 0.1


def test_log_is_in_time_order_without_repeats_per_user(demo):
    log = demo.interactions
    assert np.all(np.diff(log.timestamps) >= 0)
    pairs = list(zip(log.user_ids.tolist(), log.item_ids.tolist(), strict=True))
    assert len(pairs) == len(set(pairs))


def test_default_size_is_about_fifty_thousand_interactions():
    demo = make_demo()
    assert len(demo.items) == 2000 and len(demo.user_topics) == 1000
    assert 40_000 <= len(demo.interactions) <= 60_000


def test_demo_data_subcommand_writes_the_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo-data", "--out", str(out), "--items", "80", "--users", "20", "--seed", "5"]) == 0
    )
    assert (out / "interactions.csv").exists() and (out / "items.csv").exists()
    meta = json.loads((out / "demo_meta.json").read_text())
    assert meta["seed"] == 5 and len(meta["topics"]) == 80
    assert "interactions.csv" in capsys.readouterr().out


def test_too_small_a_demo_is_refused():
    with pytest.raises(ValueError, match="at least 64 items"):
        make_demo(n_items=10)
