"""The shared item catalogue: ids, titles, text and categories.

Every channel gets the same :class:`Catalog`; it backs category filters, the text that
online upserts bring, and deletes that must disappear from every channel.

Item ids read from files are interned (``sys.intern``), here and where the channels load
their own id lists (``VectorIndex``, cf's vocabulary, popular), so a million ids exist
once per process instead of once per structure: ≈ 60 MiB less per channel at 1M items,
and a candidate looked up in the catalogue matches its key by identity, without
comparing the strings (docs/performance.md). Reads are
lock-free (copy-on-write dict swap); writes are serialised and appended to an update
log beside the catalogue file so that they survive a restart.

On disk (``ARTIFACTS/catalog/``): ``items.jsonl`` (one JSON object per item with
``item_id``, ``title``, ``text``, ``categories``) and ``updates.jsonl`` (``{"op":
"upsert", ...item}`` or ``{"op": "delete", "item_id": ...}`` in order).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .channel import ItemRecord, Query

ITEMS_FILE = "items.jsonl"
UPDATES_FILE = "updates.jsonl"


def _record(obj: dict, where: str) -> ItemRecord:
    try:
        item_id = sys.intern(str(obj["item_id"]))
    except KeyError:
        raise ValueError(f"{where}: missing item_id") from None
    cats = obj.get("categories") or ()
    if isinstance(cats, str):
        cats = [c for c in cats.split("|") if c]
    return ItemRecord(item_id, str(obj.get("title", "")), str(obj.get("text", "")),
                      tuple(str(c) for c in cats))


def _to_json(item: ItemRecord) -> dict:
    return {"item_id": item.item_id, "title": item.title, "text": item.text,
            "categories": list(item.categories)}


class Catalog:
    """Item metadata keyed by item id. Thread-safe."""

    def __init__(self, items: Iterable[ItemRecord] = (), folder: Path | None = None) -> None:
        self._items: dict[str, ItemRecord] = {it.item_id: it for it in items}
        self._folder = folder
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __iter__(self) -> Iterator[ItemRecord]:
        return iter(list(self._items.values()))

    def get(self, item_id: str) -> ItemRecord | None:
        return self._items.get(item_id)

    def ids(self) -> list[str]:
        return list(self._items)

    def categories(self, item_id: str) -> tuple[str, ...]:
        item = self._items.get(item_id)
        return item.categories if item is not None else ()

    def keep(self, item_id: str, query: Query) -> bool:
        """Whether ``item_id`` may be returned for ``query`` (exists, not excluded,
        matches the category filter)."""
        if item_id in query.exclude:
            return False
        item = self._items.get(item_id)
        if item is None:
            return False
        if query.categories and query.categories.isdisjoint(item.categories):
            return False
        return True

    def filter_mask(self, item_ids: Sequence[str], query: Query) -> list[bool]:
        """``keep`` for many ids at once (what channels call after an over-fetch).

        An empty catalogue knows nothing, so it only applies ``query.exclude``."""
        items = self._items
        exclude, cats = query.exclude, query.categories
        # Comprehensions over `in` tests: this runs on every candidate list of every
        # channel (and again in the engine's safety net), so it is kept loop-light.
        if not items:
            return [i not in exclude for i in item_ids]
        if not cats:
            if not exclude or exclude.isdisjoint(item_ids):
                return list(map(items.__contains__, item_ids))
            return [i in items and i not in exclude for i in item_ids]
        get = items.get
        return [(it := get(i)) is not None and i not in exclude
                and not cats.isdisjoint(it.categories) for i in item_ids]

    # -- writing ---------------------------------------------------------------
    def upsert(self, items: Sequence[ItemRecord]) -> int:
        with self._lock:
            self._log([{"op": "upsert", **_to_json(it)} for it in items])
            new = dict(self._items)
            new.update((it.item_id, it) for it in items)
            self._items = new
        return len(items)

    def delete(self, item_ids: Sequence[str]) -> int:
        with self._lock:
            present = [i for i in item_ids if i in self._items]
            self._log([{"op": "delete", "item_id": i} for i in present])
            new = dict(self._items)
            for i in present:
                del new[i]
            self._items = new
        return len(present)

    def _log(self, rows: list[dict]) -> None:
        if self._folder is None or not rows:
            return
        self._folder.mkdir(parents=True, exist_ok=True)
        with open(self._folder / UPDATES_FILE, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # -- files -----------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        """Write ``items.jsonl`` (atomically) and clear the update log."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (ITEMS_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for it in self._items.values():
                fh.write(json.dumps(_to_json(it), ensure_ascii=False) + "\n")
        os.replace(tmp, folder / ITEMS_FILE)
        (folder / UPDATES_FILE).unlink(missing_ok=True)
        return folder / ITEMS_FILE

    @classmethod
    def load(cls, folder: Path) -> Catalog:
        """Read ``items.jsonl`` and replay ``updates.jsonl``. Errors name file and line."""
        path = folder / ITEMS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: catalogue file missing")
        items: dict[str, ItemRecord] = {}
        for lineno, obj in _read_jsonl(path):
            it = _record(obj, f"{path}:{lineno}")
            items[it.item_id] = it
        updates = folder / UPDATES_FILE
        if updates.exists():
            for lineno, obj in _read_jsonl(updates):
                where = f"{updates}:{lineno}"
                if obj.get("op") == "delete":
                    items.pop(str(obj.get("item_id")), None)
                elif obj.get("op") == "upsert":
                    it = _record(obj, where)
                    items[it.item_id] = it
                else:
                    raise ValueError(f"{where}: unknown op {obj.get('op')!r}")
        return cls(items.values(), folder=folder)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj
