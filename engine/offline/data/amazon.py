"""Amazon Review Data (2018, Ni, Li and McAuley) loader: a category's 5-core reviews
(``<Category>_5.json.gz``) and, when given, its product metadata
(``meta_<Category>.json.gz``), both JSON lines, gzipped or not.

* interactions: ``reviewerID`` as the user, ``asin`` as the item, ``unixReviewTime``
  as the timestamp, the star rating (``overall``, 1–5) as the weight; every review is an
  interaction (implicit feedback, like a MovieLens rating). A user who reviewed the same
  product twice has two rows.
* items: every reviewed product, with what the metadata says about the product itself:
  the title (HTML entities decoded; the tags some titles are made of, e.g. the magazine
  set's ``<span class=...``, dropped, falling back to the brand), ``text`` = the
  description plus ``Brand`` and ``Category`` lines, ``categories`` = the category path
  below the top level. What users wrote (review texts) and what their behaviour made
  (``also_buy``, ``also_view``, sales ``rank``) is left out: it is written over time, so
  in an offline evaluation it would tell the content channels about the held-out part.

``load_dataset("amazon:FOLDER")`` (the folder holds one ``*_5.json[.gz]`` and at most
one ``meta_*.json[.gz]``) or ``amazon:REVIEWS[,META]``.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from recall_engine.offline.data.interactions import (
    DataError,
    Interactions,
    OnError,
    Problems,
    check_on_error,
    read_bytes,
)
from recall_engine.offline.data.items import compose_text
from recall_engine.sdk.types import ItemRecord

__all__ = ["amazon_paths", "load_amazon"]

_TAG = re.compile(r"<[^>]*>?")
_SPACE = re.compile(r"\s+")


def amazon_paths(parts: list[str]) -> tuple[Path, Path | None]:
    """``[FOLDER]`` or ``[REVIEWS[, META]]`` → the reviews file and the metadata file."""
    first = Path(parts[0])
    if len(parts) == 1 and first.is_dir():
        reviews = sorted(first.glob("*_5.json*"))
        meta = sorted(first.glob("meta_*.json*"))
        if len(reviews) != 1 or len(meta) > 1:
            raise DataError(
                first,
                f"expected one *_5.json[.gz] and at most one meta_*.json[.gz], found "
                f"{[p.name for p in reviews + meta]}",
            )
        return reviews[0], meta[0] if meta else None
    return first, Path(parts[1]) if len(parts) > 1 else None


def load_amazon(
    reviews: str | Path,
    meta: str | Path | None = None,
    *,
    on_error: OnError = "fail",
    progress: bool | None = None,
) -> tuple[Interactions, list[ItemRecord]]:
    """The reviews as interactions and the reviewed products as items (module doc). A
    line that is not a JSON object with ``reviewerID``, ``asin`` and an integer
    ``unixReviewTime`` is a bad row (``on_error``: stop at the first, or skip them)."""
    check_on_error(on_error)
    users, items, stamps, stars = [], [], [], []
    problems = Problems(reviews)
    for line_no, row in _json_lines(reviews, problems, progress):
        user, item, when = row.get("reviewerID"), row.get("asin"), row.get("unixReviewTime")
        if not isinstance(user, str) or not user.strip():
            problems.add(line_no, "reviewer", "reviewerID: missing or not a string")
        elif not isinstance(item, str) or not item.strip():
            problems.add(line_no, "asin", "asin: missing or not a string")
        elif isinstance(when, bool) or not isinstance(when, int):
            problems.add(line_no, "time", "unixReviewTime: missing or not an integer")
        else:
            star = row.get("overall", 1.0)
            ok = isinstance(star, int | float) and not isinstance(star, bool) and star >= 0
            users.append(user.strip())
            items.append(item.strip())
            stamps.append(when)
            stars.append(float(star) if ok else 1.0)
    problems.finish(on_error, len(users) + problems.total)
    if not users:
        raise DataError(reviews, "no reviews")
    interactions = Interactions(
        np.array(users, dtype=object),
        np.array(items, dtype=object),
        np.array(stamps, dtype=np.int64),
        np.array(stars, dtype=np.float32),
    )
    described = _products(meta, on_error, progress) if meta is not None else {}
    records = [
        described.get(asin) or ItemRecord(asin, title=asin)
        for asin in dict.fromkeys(items)  # first review order
    ]
    return interactions, records


def _products(path: str | Path, on_error: OnError, progress: bool | None) -> dict[str, ItemRecord]:
    problems = Problems(path)
    out: dict[str, ItemRecord] = {}
    rows = 0
    for line_no, row in _json_lines(path, problems, progress):
        rows += 1
        asin = row.get("asin")
        if not isinstance(asin, str) or not asin.strip():
            problems.add(line_no, "asin", "asin: missing or not a string")
            continue
        asin = asin.strip()
        if asin not in out:  # the files repeat some products: the first one holds
            out[asin] = _product(asin, row)
    problems.finish(on_error, rows)
    return out


def _product(asin: str, row: dict[str, Any]) -> ItemRecord:
    brand = _clean(row.get("brand"))
    title = _clean(row.get("title")) or brand or asin
    description = " ".join(filter(None, (_clean(d) for d in _strings(row.get("description")))))
    path = [c for c in (_clean(c) for c in _strings(row.get("category"))) if c]
    below_top = tuple(dict.fromkeys(path[1:]))
    text = compose_text(
        title, [("Description", description), ("Brand", brand), ("Category", " > ".join(path))]
    )
    return ItemRecord(asin, title=title, text=text, categories=below_top)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _clean(value: Any) -> str:
    """Plain text: HTML entities decoded, tags (also a cut-off one) dropped, whitespace
    collapsed."""
    if not isinstance(value, str):
        return ""
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(value))).strip()


def _json_lines(path: str | Path, problems: Problems, progress: bool | None):
    """(line number, object) per non-blank line; a line that is not a JSON object is
    recorded in ``problems``."""
    data = read_bytes(path, progress)
    for n, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.add(n, "json", f"not JSON ({e})")
            continue
        if not isinstance(row, dict):
            problems.add(n, "json", "not a JSON object")
            continue
        yield n, row
