"""Item metadata → weighted terms → padded term-id arrays: the content encoder's input.

Pure Python and NumPy, used unchanged at build and at serve time (so an item upserted
online gets exactly the vector the build would have given it).

Terms, each namespaced so that fields do not collide:

* ``cat:<category>`` for every category (``year:1995`` categories become
  ``year:1995`` and ``decade:1990s``);
* ``w:<word>`` for the words of the title and the text (lower-cased, stop words
  dropped); title words weigh more;
* ``f:<label>:<value>`` for short ``Label: value`` lines in the text (``Director: John
  Lasseter`` → ``f:director:john lasseter``; comma- or ``|``-separated values split);
* ``year:<yyyy>`` / ``decade:<yyy0>s`` from a ``(1995)`` in the title.

A term's weight is ``log1p(summed field weights) * idf``; ``idf`` comes from the
catalogue at build time (:class:`Vocabulary`). Terms the vocabulary does not know are
dropped: they were never trained.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from recall_engine.runtime.files import atomic_write, read_json_object
from recall_engine.sdk.channel import ItemRecord

FORMAT = 1
CATEGORY_WEIGHT = 3.0
FIELD_WEIGHT = 2.0
TITLE_WEIGHT = 2.0
TEXT_WEIGHT = 1.0
YEAR_WEIGHT = 1.0
#: Labels whose value is prose, read as words rather than as one field value.
PROSE_LABELS = frozenset({"plot", "description", "summary", "overview", "text", "review"})

_WORD = re.compile(r"[a-z0-9]+(?:['’\-][a-z0-9]+)*")
_FIELD = re.compile(r"^\s*([A-Za-z][A-Za-z _-]{0,30}):\s*(.+?)\s*$")
_YEAR = re.compile(r"\((\d{4})\)\s*$")
STOPWORDS = frozenset(
    """
a about after all also an and any are as at be been but by can could did do does for
from had has have he her here hers him his how i if in into is it its just me more most
my no not of on one only or our out over own she so some such than that the their them
then there these they this those through to too under up very was we were what when
where which while who whom why will with would you your
""".split()
)


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1]


def _year_terms(year: str, terms: defaultdict[str, float], weight: float) -> None:
    terms[f"year:{year}"] += weight
    terms[f"decade:{year[:3]}0s"] += weight


def item_terms(item: ItemRecord) -> dict[str, float]:
    """Raw (pre-idf) term weights of one item's metadata."""
    terms: defaultdict[str, float] = defaultdict(float)
    for category in item.categories:
        cat = category.strip().lower()
        if cat.startswith("year:") and cat[5:].isdigit() and len(cat) == 9:
            _year_terms(cat[5:], terms, YEAR_WEIGHT)
        elif cat:
            terms[f"cat:{cat}"] += CATEGORY_WEIGHT
    year = _YEAR.search(item.title)
    if year:
        _year_terms(year.group(1), terms, YEAR_WEIGHT)
    for w in words(item.title):
        terms[f"w:{w}"] += TITLE_WEIGHT
    for line in item.text.splitlines():
        field = _FIELD.match(line) if len(line) <= 300 else None
        label = field.group(1).strip().lower().replace(" ", "_") if field else ""
        if field and label not in PROSE_LABELS:
            for value in re.split(r"[,|]", field.group(2)):
                value = " ".join(value.lower().split())
                if value:
                    terms[f"f:{label}:{value}"] += FIELD_WEIGHT
            continue
        for w in words(field.group(2) if field else line):
            terms[f"w:{w}"] += TEXT_WEIGHT
    return dict(terms)


def query_terms(text: str) -> dict[str, float]:
    """Raw term weights of a free-text query: each word as a word and as a category."""
    terms: defaultdict[str, float] = defaultdict(float)
    for w in words(text):
        terms[f"w:{w}"] += TEXT_WEIGHT
        terms[f"cat:{w}"] += TEXT_WEIGHT
    return dict(terms)


class Vocabulary:
    """Known terms (id 1.., 0 is padding) with their idf, and the featuriser."""

    def __init__(self, terms: Sequence[str], idf: Sequence[float], max_terms: int) -> None:
        if len(terms) != len(idf):
            raise ValueError(f"{len(terms)} terms but {len(idf)} idf values")
        self.terms = list(terms)
        self.ids = {t: i + 1 for i, t in enumerate(self.terms)}
        self.idf = np.concatenate([[0.0], np.asarray(idf, dtype=np.float64)])
        self.max_terms = int(max_terms)

    def __len__(self) -> int:
        """Rows of the embedding table, padding included."""
        return len(self.terms) + 1

    @classmethod
    def fit(
        cls,
        documents: Iterable[Mapping[str, float]],
        *,
        min_df: int = 1,
        max_vocab: int = 500_000,
        max_terms: int = 64,
    ) -> Vocabulary:
        """Terms in at least ``min_df`` documents (the ``max_vocab`` most frequent),
        with smooth idf ``log((1 + N) / (1 + df)) + 1``."""
        df: Counter[str] = Counter()
        n = 0
        for doc in documents:
            df.update(doc.keys())
            n += 1
        kept = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))
        kept = kept[:max_vocab]
        idf = [math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept]
        return cls(kept, idf, max_terms)

    def featurize(self, documents: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        """``(term_ids int64 [B, L], term_weights float32 [B, L])``: each document's
        known terms, heaviest ``max_terms`` first, zero-padded to the longest (L >= 1)."""
        rows: list[list[tuple[int, float]]] = []
        for doc in documents:
            row = []
            for term, raw in doc.items():
                tid = self.ids.get(term)
                if tid is not None and raw > 0:
                    row.append((tid, math.log1p(raw) * self.idf[tid]))
            row.sort(key=lambda p: (-p[1], p[0]))
            rows.append(row[: self.max_terms])
        width = max([1, *(len(r) for r in rows)])
        ids = np.zeros((len(rows), width), dtype=np.int64)
        weights = np.zeros((len(rows), width), dtype=np.float32)
        for i, row in enumerate(rows):
            if row:
                ids[i, : len(row)] = [t for t, _ in row]
                weights[i, : len(row)] = [w for _, w in row]
        return ids, weights

    def save(self, path: str | os.PathLike[str]) -> None:
        data = {
            "format": FORMAT,
            "max_terms": self.max_terms,
            "terms": self.terms,
            "idf": self.idf[1:].tolist(),
        }
        atomic_write(path, json.dumps(data, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        data = read_json_object(path)
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a format-{FORMAT} vocabulary")
        return cls(data["terms"], data["idf"], data["max_terms"])
