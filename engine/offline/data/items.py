"""Item catalogue files: :func:`load_items`.

File format (CSV, TSV or Parquet), one item per row::

    item_id[,title][,text][,categories][,any other column ...]

Only ``item_id`` is required. ``categories`` is ``|``-separated (a Parquet list column
works too). Every other column is extra text: appended to ``text`` as a
``"column: value"`` line when the value is not empty, so text encoders see it. When an
item id repeats, the last row wins (it keeps the first row's position) and the
:class:`LoadReport` counts it in ``duplicates``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from recall_engine.offline.data.interactions import (
    Fmt,
    LoadReport,
    OnError,
    Problems,
    check_on_error,
    detect_format,
    read_csv_columns,
    read_parquet_columns,
)
from recall_engine.sdk.types import ItemRecord

__all__ = ["load_items", "split_categories", "compose_text"]

KNOWN_COLUMNS = ("item_id", "title", "text", "categories")


def load_items(
    path: str | Path, *, on_error: OnError = "fail", fmt: Fmt = "auto", progress: bool | None = None
) -> tuple[list[ItemRecord], LoadReport]:
    """Read an item file into :class:`ItemRecord` values, in file order.

    Bad rows (wrong field count, empty ``item_id``) raise :class:`DataError` with the
    line number under ``on_error="fail"`` and are counted under ``"skip"``; a missing
    ``item_id`` column always raises.
    """
    check_on_error(on_error)
    path = Path(path)
    started = time.perf_counter()
    kind = detect_format(path, fmt)
    if kind == "parquet":
        cols, positions, problems = read_parquet_columns(
            path, ("item_id",), (), progress=progress, all_columns=True
        )
    else:
        cols, positions, problems = read_csv_columns(
            path,
            ("item_id",),
            (),
            delimiter="\t" if kind == "tsv" else ",",
            progress=progress,
            all_columns=True,
        )
    items, duplicates = _records(cols, positions, problems)
    report = problems.finish(on_error, rows=len(items))
    report.duplicates = duplicates
    report.seconds = time.perf_counter() - started
    return items, report


def _records(
    cols: dict[str, np.ndarray], positions: np.ndarray, problems: Problems
) -> tuple[list[ItemRecord], int]:
    ids = np.strings.strip(cols["item_id"])
    bad = problems.flag(
        ids == "",
        np.zeros(len(ids), dtype=bool),
        positions,
        "empty_item_id",
        lambda i: "empty item_id",
    )
    n = len(ids)
    titles = _column(cols, "title", n)
    texts = _column(cols, "text", n)
    cats = _column(cols, "categories", n)
    extras = [(name, values.tolist()) for name, values in cols.items() if name not in KNOWN_COLUMNS]
    out: dict[str, ItemRecord] = {}
    duplicates = 0
    for i in np.flatnonzero(~bad).tolist():
        item_id = ids[i]
        extra = [(name, values[i]) for name, values in extras]
        record = ItemRecord(
            str(item_id),
            titles[i].strip(),
            compose_text(texts[i], extra),
            split_categories(cats[i]),
        )
        if item_id in out:
            duplicates += 1
        out[str(item_id)] = record
    return list(out.values()), duplicates


def _column(cols: dict[str, np.ndarray], name: str, n: int) -> list[str]:
    values = cols.get(name)
    return [""] * n if values is None else values.tolist()


def split_categories(value: str, sep: str = "|") -> tuple[str, ...]:
    """``"a|b| |a"`` → ``("a", "b")``: stripped, empties dropped, first occurrence kept."""
    parts = (p.strip() for p in value.split(sep))
    return tuple(dict.fromkeys(p for p in parts if p))


def compose_text(text: str, extra: list[tuple[str, str]]) -> str:
    """``text`` followed by one ``"label: value"`` line per non-empty extra value."""
    lines = [text.strip()] if text.strip() else []
    lines.extend(f"{label}: {value.strip()}" for label, value in extra if value.strip())
    return "\n".join(lines)
