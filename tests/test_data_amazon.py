"""The Amazon Review Data loader on small files the test writes: reviews become
interactions, product metadata becomes items without anything users wrote, broken HTML
titles are cleaned, bad lines are named, and a folder is recognised."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from recall_engine.offline.data.amazon import load_amazon
from recall_engine.offline.data.interactions import DataError
from recall_engine.offline.data.movielens import detect, load_dataset

REVIEWS = [
    {
        "reviewerID": "u1",
        "asin": "A",
        "unixReviewTime": 100,
        "overall": 5.0,
        "reviewText": "SECRET review words",
    },
    {"reviewerID": "u1", "asin": "B", "unixReviewTime": 200, "overall": 3.0},
    {"reviewerID": "u2", "asin": "A", "unixReviewTime": 150, "overall": 4.0},
    {"reviewerID": "u2", "asin": "C", "unixReviewTime": 300},
]
META = [
    {
        "asin": "A",
        "title": "Tom &amp; Jerry <b>Weekly</b>",
        "brand": "Toons",
        "description": ["Cartoons every week."],
        "category": ["Magazines", "Kids", "Kids"],
        "also_buy": ["B"],
    },
    {"asin": "B", "title": '<span class="a-size-medium a-color-secondary"', "brand": "Acme"},
    {"asin": "A", "title": "a second copy of A: the first one holds"},
]


def write(path: Path, rows: list, gz: bool = True) -> Path:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_reviews_are_interactions_and_products_are_items_without_user_text(tmp_path):
    reviews = write(tmp_path / "Kids_5.json.gz", REVIEWS)
    meta = write(tmp_path / "meta_Kids.json", META, gz=False)
    log, items = load_amazon(reviews, meta)
    assert log.user_ids.tolist() == ["u1", "u1", "u2", "u2"]
    assert log.item_ids.tolist() == ["A", "B", "A", "C"]
    assert log.timestamps.tolist() == [100, 200, 150, 300]
    assert log.weights.tolist() == [5.0, 3.0, 4.0, 1.0]
    by_id = {i.item_id: i for i in items}
    assert list(by_id) == ["A", "B", "C"]
    assert by_id["A"].title == "Tom & Jerry Weekly"
    assert by_id["A"].categories == ("Kids",)
    assert "Cartoons every week." in by_id["A"].text and "Brand: Toons" in by_id["A"].text
    assert by_id["B"].title == "Acme"  # a title that is only a broken tag: the brand
    assert by_id["C"].title == "C" and by_id["C"].text == ""  # no metadata
    assert not any("SECRET" in i.text or "B" in i.categories for i in items)


def test_a_folder_is_detected_and_loaded(tmp_path):
    write(tmp_path / "Kids_5.json.gz", REVIEWS)
    write(tmp_path / "meta_Kids.json.gz", META)
    assert detect(tmp_path) == f"amazon:{tmp_path}"
    log, items = load_dataset(f"amazon:{tmp_path}")
    assert len(log) == 4 and items[0].title == "Tom & Jerry Weekly"


def test_a_bad_line_is_named_or_skipped(tmp_path):
    reviews = write(
        tmp_path / "r.json.gz",
        [REVIEWS[0], "{not json", {"reviewerID": "u3", "asin": "D"}, REVIEWS[1]],
    )
    with pytest.raises(DataError, match=r"r\.json\.gz:2: not JSON"):
        load_amazon(reviews)
    log, items = load_amazon(reviews, on_error="skip")
    assert log.item_ids.tolist() == ["A", "B"] and [i.item_id for i in items] == ["A", "B"]
