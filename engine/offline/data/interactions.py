"""Interaction logs: the columnar :class:`Interactions` and :func:`load_interactions`.

File format (CSV, TSV or Parquet), one interaction per row::

    user_id,item_id[,timestamp][,weight][,event]

``timestamp`` is a number (seconds; a fractional part is dropped), ``weight`` a finite,
non-negative number (1.0 when the column is absent), ``event`` free text ("view",
"purchase", ...). Other columns are ignored. Ids are kept as strings, stripped.

Bad rows are found per reason, with the line number (CSV/TSV) or 1-based row number
(Parquet). ``on_error="fail"`` raises :class:`DataError` for the earliest one;
``on_error="skip"`` drops them and counts them in the :class:`LoadReport`.

Text files are read whole into memory (gunzipped on the way) and parsed by pyarrow's
CSV reader; files it rejects are parsed again line by line to name every bad line.
Validation and conversion are vectorised NumPy: 500k rows load in well under a second.

This module also holds the reading helpers that ``items.py`` and ``movielens.py`` share
(:func:`read_text_table`, :func:`read_csv_columns`, :class:`Problems`, ...).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
from tqdm import tqdm

__all__ = [
    "DataError",
    "Interactions",
    "LoadReport",
    "OnError",
    "load_interactions",
]

OnError = Literal["fail", "skip"]
Fmt = Literal["auto", "csv", "tsv", "parquet"]

REQUIRED_COLUMNS = ("user_id", "item_id")
OPTIONAL_COLUMNS = ("timestamp", "weight", "event")
NUMERIC = frozenset({"timestamp", "weight"})
MAX_FIRST_ERRORS = 10


class DataError(ValueError):
    """A data file that can't be used as it is: names the file, the line (or Parquet
    row) when there is one, and the reason."""

    def __init__(
        self, path: str | Path, reason: str, *, line: int | None = None, row: int | None = None
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.line = line
        self.row = row
        super().__init__(f"{self.path}{_where(line, row)}: {reason}")


def _where(line: int | None, row: int | None) -> str:
    if line is not None:
        return f":{line}"
    if row is not None:
        return f": row {row}"
    return ""


@dataclass(slots=True)
class LoadReport:
    """What a loader did with one file.

    ``rows`` rows were kept, ``skipped`` dropped (only under ``on_error="skip"``);
    ``reasons`` counts the dropped rows per reason code (``wrong_column_count``,
    ``empty_user_id``, ``empty_item_id``, ``non_numeric_timestamp``,
    ``non_numeric_weight``, ``non_finite_weight``, ``negative_weight``); ``first_errors``
    holds the first few messages in file order. ``duplicates`` counts item rows that
    replaced an earlier row with the same id (item files only).
    """

    rows: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    duplicates: int = 0
    path: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{self.path}: {self.rows} rows"]
        if self.skipped:
            why = ", ".join(f"{k}={v}" for k, v in self.reasons.most_common())
            parts.append(f"{self.skipped} skipped ({why})")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate ids (last wins)")
        parts.append(f"{self.seconds:.2f}s")
        return ", ".join(parts)


# -- the columnar log ----------------------------------------------------------------------


class Interactions:
    """An interaction log as parallel NumPy columns, in file order.

    ``user_ids`` and ``item_ids`` are unicode arrays (``dtype.kind == "U"``),
    ``timestamps`` int64 (all 0 when ``has_timestamps`` is false), ``weights`` float32
    (1.0 by default), ``events`` a unicode array or ``None`` when the log has none.
    Treat the arrays as read-only; methods return new objects sharing nothing mutable.
    """

    __slots__ = ("user_ids", "item_ids", "timestamps", "weights", "events", "has_timestamps")

    def __init__(
        self,
        user_ids: Sequence[str] | np.ndarray,
        item_ids: Sequence[str] | np.ndarray,
        timestamps: Sequence[int] | np.ndarray | None = None,
        weights: Sequence[float] | np.ndarray | None = None,
        events: Sequence[str] | np.ndarray | None = None,
    ) -> None:
        self.user_ids = _as_str_array(user_ids)
        self.item_ids = _as_str_array(item_ids)
        n = len(self.user_ids)
        self.has_timestamps = timestamps is not None
        self.timestamps = (
            np.zeros(n, np.int64) if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        )
        self.weights = (
            np.ones(n, np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        )
        self.events = None if events is None else _as_str_array(events)
        lengths = {
            len(self.item_ids),
            len(self.timestamps),
            len(self.weights),
            n if self.events is None else len(self.events),
        }
        if lengths != {n}:
            raise ValueError(
                f"Interactions columns differ in length: user_ids has {n}, "
                f"others {sorted(lengths - {n})}"
            )

    def __len__(self) -> int:
        return len(self.user_ids)

    def __repr__(self) -> str:
        return (
            f"Interactions({len(self)} rows, {len(self.users())} users, "
            f"{len(self.items())} items, timestamps={self.has_timestamps}, "
            f"events={self.events is not None})"
        )

    def users(self) -> np.ndarray:
        """Distinct user ids, sorted."""
        return np.unique(self.user_ids)

    def items(self) -> np.ndarray:
        """Distinct item ids, sorted."""
        return np.unique(self.item_ids)

    def take(self, indices: np.ndarray) -> Interactions:
        """The rows at ``indices`` (an int array), in that order."""
        idx = np.asarray(indices, dtype=np.intp)
        return Interactions(
            self.user_ids[idx],
            self.item_ids[idx],
            self.timestamps[idx] if self.has_timestamps else None,
            self.weights[idx],
            None if self.events is None else self.events[idx],
        )

    def subset(self, mask: np.ndarray | Sequence[bool]) -> Interactions:
        """The rows where the boolean ``mask`` is true (or, given an int array, those rows)."""
        m = np.asarray(mask)
        if m.dtype == bool:
            if len(m) != len(self):
                raise ValueError(f"mask has {len(m)} entries, the log {len(self)} rows")
            m = np.flatnonzero(m)
        return self.take(m)

    def sorted_by_time(self) -> Interactions:
        """Rows ordered by timestamp; ties (and logs without timestamps) keep file order."""
        if not self.has_timestamps:
            return self
        return self.take(np.argsort(self.timestamps, kind="stable"))

    def by_user(self) -> dict[str, np.ndarray]:
        """Row indices per user, oldest first (file order breaks ties).

        One stable sort over (user, timestamp) and a split: no per-row Python loop.
        """
        if len(self) == 0:
            return {}
        uniq, codes = np.unique(self.user_ids, return_inverse=True)
        if self.has_timestamps:
            order = np.lexsort((self.timestamps, codes))  # lexsort is stable
        else:
            order = np.argsort(codes, kind="stable")
        cuts = np.flatnonzero(np.diff(codes[order])) + 1
        return dict(zip(uniq.tolist(), np.split(order, cuts), strict=True))


def _as_str_array(values: Sequence[str] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind != "U":
        arr = arr.astype(str) if len(arr) else np.zeros(0, dtype="<U1")
    return arr


# -- loading -----------------------------------------------------------------------------


def load_interactions(
    path: str | Path, *, on_error: OnError = "fail", fmt: Fmt = "auto", progress: bool | None = None
) -> tuple[Interactions, LoadReport]:
    """Read an interaction log (CSV, TSV or Parquet; ``.gz`` text is fine).

    ``fmt="auto"`` looks at the Parquet magic bytes and the suffix (``.tsv`` → tab).
    ``progress``: a tqdm bar on stderr; ``None`` shows it only when stderr is a terminal.
    Raises :class:`DataError` for a missing required column and, under
    ``on_error="fail"``, for the first malformed row.
    """
    check_on_error(on_error)
    path = Path(path)
    started = time.perf_counter()
    kind = detect_format(path, fmt)
    if kind == "parquet":
        cols, positions, problems = read_parquet_columns(
            path, REQUIRED_COLUMNS, OPTIONAL_COLUMNS, progress=progress
        )
    else:
        cols, positions, problems = read_csv_columns(
            path,
            REQUIRED_COLUMNS,
            OPTIONAL_COLUMNS,
            delimiter="\t" if kind == "tsv" else ",",
            progress=progress,
        )
    interactions = build_interactions(cols, positions, problems)
    report = problems.finish(on_error, rows=len(interactions))
    report.seconds = time.perf_counter() - started
    return interactions, report


def build_interactions(
    cols: Mapping[str, np.ndarray], positions: np.ndarray, problems: Problems
) -> Interactions:
    """Validate raw columns (``user_id``, ``item_id`` and any of ``timestamp``,
    ``weight``, ``event``) and keep the good rows; bad ones go to ``problems``.

    ``positions`` gives each row's line (or Parquet row) number for messages.
    """
    users = _strip(cols["user_id"])
    items = _strip(cols["item_id"])
    bad = np.zeros(len(users), dtype=bool)
    bad = problems.flag(users == "", bad, positions, "empty_user_id", lambda i: "empty user_id")
    bad = problems.flag(items == "", bad, positions, "empty_item_id", lambda i: "empty item_id")
    timestamps = None
    if "timestamp" in cols:
        raw_ts = cols["timestamp"]
        timestamps, ts_bad = parse_ints(raw_ts)
        bad = problems.flag(
            ts_bad,
            bad,
            positions,
            "non_numeric_timestamp",
            lambda i: _describe("timestamp", raw_ts[i]),
        )
    weights = None
    if "weight" in cols:
        raw_w = cols["weight"]
        weights, w_bad = parse_floats(raw_w)
        bad = problems.flag(
            w_bad, bad, positions, "non_numeric_weight", lambda i: _describe("weight", raw_w[i])
        )
        finite = np.isfinite(weights)
        bad = problems.flag(
            ~finite & ~w_bad,
            bad,
            positions,
            "non_finite_weight",
            lambda i: f"weight is {raw_w[i]!s}, expected a finite number",
        )
        bad = problems.flag(
            finite & (weights < 0),
            bad,
            positions,
            "negative_weight",
            lambda i: f"negative weight {raw_w[i]!s}",
        )
    events = None if "event" not in cols else _strip(cols["event"])
    keep = ~bad if bad.any() else slice(None)
    return Interactions(
        users[keep],
        items[keep],
        None if timestamps is None else timestamps[keep],
        None if weights is None else weights[keep],
        None if events is None else events[keep],
    )


def _describe(name: str, value: Any) -> str:
    if isinstance(value, float | np.floating) and math.isnan(value):
        return f"missing {name} (null)"  # a Parquet null
    text = str(value).strip()
    return f"empty {name}" if not text else f"non-numeric {name} {text!r}"


def _strip(values: np.ndarray) -> np.ndarray:
    return np.strings.strip(_as_str_array(values))


def parse_ints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (strings or numbers) as int64 and a mask of those that aren't numbers.
    Fractions are truncated. Vectorised; the per-value loop runs only for dirty columns."""
    n = len(values)
    if values.dtype.kind in "iub":
        return values.astype(np.int64), np.zeros(n, dtype=bool)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        return np.where(bad, 0, values).astype(np.int64), bad
    strings = _strip(values)
    try:
        return strings.astype(np.int64), np.zeros(n, dtype=bool)
    except (ValueError, OverflowError):
        pass
    out = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for i, s in enumerate(strings.tolist()):
        try:
            out[i] = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                bad[i] = True
                continue
            if math.isfinite(f):
                out[i] = int(f)
            else:
                bad[i] = True
        except OverflowError:
            bad[i] = True
    return out, bad


def parse_floats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` as float64 and a mask of non-numbers (``nan``/``inf`` parse fine; the
    caller decides about them)."""
    n = len(values)
    if values.dtype.kind in "iubf":
        return values.astype(np.float64), np.zeros(n, dtype=bool)
    strings = _strip(values)
    try:
        return strings.astype(np.float64), np.zeros(n, dtype=bool)
    except ValueError:
        pass
    out = np.zeros(n, dtype=np.float64)
    bad = np.zeros(n, dtype=bool)
    for i, s in enumerate(strings.tolist()):
        try:
            out[i] = float(s)
        except ValueError:
            bad[i] = True
    return out, bad


# -- shared reading helpers -----------------------------------------------------------------


class Problems:
    """Bad rows of one file: counts per reason, the earliest few messages, and (under
    ``on_error="fail"``) the earliest one as a :class:`DataError`.

    Positions are line numbers for text files and 1-based row numbers for Parquet
    (``unit="row"``).
    """

    def __init__(self, path: str | Path, unit: Literal["line", "row"] = "line") -> None:
        self.path = str(path)
        self.unit = unit
        self.counts: Counter[str] = Counter()
        self._first: list[tuple[int, str]] = []  # (position, reason), a few per source

    def add(self, position: int, code: str, reason: str) -> None:
        self.counts[code] += 1
        if self.counts[code] <= MAX_FIRST_ERRORS:
            self._first.append((position, reason))

    def flag(
        self,
        mask: np.ndarray,
        already: np.ndarray,
        positions: np.ndarray,
        code: str,
        reason: Callable[[int], str],
    ) -> np.ndarray:
        """Record the rows in ``mask`` not already bad under ``code``; return the union."""
        new = mask & ~already
        if not new.any():
            return already
        rows = np.flatnonzero(new)
        self.counts[code] += len(rows)
        self._first.extend((int(positions[i]), reason(int(i))) for i in rows[:MAX_FIRST_ERRORS])
        return already | new

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def error(self, position: int, reason: str) -> DataError:
        if self.unit == "line":
            return DataError(self.path, reason, line=position)
        return DataError(self.path, reason, row=position)

    def finish(self, on_error: OnError, rows: int) -> LoadReport:
        """Raise the earliest problem under ``"fail"``; otherwise the report."""
        first = sorted(self._first, key=lambda p: p[0])
        if first and on_error == "fail":
            raise self.error(*first[0])
        return LoadReport(
            rows=rows,
            skipped=self.total,
            reasons=Counter(self.counts),
            first_errors=[str(self.error(pos, why)) for pos, why in first[:MAX_FIRST_ERRORS]],
            path=self.path,
        )


def check_on_error(on_error: str) -> None:
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")


def detect_format(path: Path, fmt: str = "auto") -> Literal["csv", "tsv", "parquet"]:
    """``csv``, ``tsv`` or ``parquet``: ``fmt`` unless it is ``"auto"``, else the Parquet
    magic bytes, else the suffix (``.tsv``/``.tsv.gz`` → tsv, anything else csv)."""
    if fmt != "auto":
        if fmt not in ("csv", "tsv", "parquet"):
            raise ValueError(f"fmt must be 'auto', 'csv', 'tsv' or 'parquet', not {fmt!r}")
        return fmt  # type: ignore[return-value]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return "tsv" if suffixes and suffixes[-1] == ".tsv" else "csv"


class _CountingReader(io.RawIOBase):
    """Raw bytes from ``fh``, advancing a tqdm bar by what was read (so a bar over a
    ``.gz`` file counts compressed bytes against the compressed size)."""

    def __init__(self, fh: io.BufferedReader, bar: tqdm) -> None:
        self._fh = fh
        self._bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        self._bar.update(n)
        return n


def progress_bar(total: int | None, desc: str, progress: bool | None, unit: str = "B") -> tqdm:
    """A tqdm bar on stderr; ``progress=None`` shows it only when stderr is a terminal."""
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        unit_divisor=1024,
        disable=disable,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def read_bytes(path: str | Path, progress: bool | None = None) -> bytes:
    """The whole file (gunzipped when it starts with the gzip magic bytes), read under a
    byte progress bar; a leading UTF-8 byte-order mark is dropped."""
    path = Path(path)
    with open(path, "rb") as fh, progress_bar(path.stat().st_size, path.name, progress) as bar:
        gz = fh.peek(2)[:2] == b"\x1f\x8b"
        stream: Any = io.BufferedReader(_CountingReader(fh, bar), buffer_size=1 << 20)
        if gz:
            stream = gzip.GzipFile(fileobj=stream, mode="rb")
        data = stream.read()
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


RawColumns = dict[str, np.ndarray]


def read_text_table(
    path: str | Path,
    *,
    delimiter: str,
    header: bool = True,
    names: Sequence[str] = (),
    required: Sequence[str] = (),
    quoting: bool = True,
    encoding: str = "utf-8",
    progress: bool | None = None,
    numeric: Collection[str] = (),
) -> tuple[list[str], list[np.ndarray], np.ndarray, Problems]:
    """A delimited text file as string columns.

    With ``header`` the first line names the columns (stripped, lower-cased; DataError
    when one of ``required`` is missing); without, ``names`` does. Returns the names,
    one unicode array per column, each kept row's line number, and the
    :class:`Problems` (rows with another field count). ``quoting`` honours CSV quotes;
    without it lines are split on ``delimiter`` (which may be ``::``) as MovieLens
    writes them.

    Clean files go through pyarrow's CSV reader; anything it rejects (and files with
    blank lines, whose line numbers it would lose) is read again with the :mod:`csv`
    module or ``str.split``, which find every bad line and its number. On that fast path
    the columns named in ``numeric`` come back as int64 or float64 arrays when every
    value is a finite number (the parsers downstream accept both).
    """
    path = Path(path)
    data = read_bytes(path, progress)
    first_line = 1
    if header:
        end = data.find(b"\n")
        head = (data if end < 0 else data[:end]).decode(encoding).rstrip("\r")
        names = [h.strip().lower() for h in _split_line(head, delimiter, quoting)]
        if not any(names):
            raise DataError(path, "empty file: expected a header row", line=1)
        first_line = 2
    names = list(names)
    check_columns(names, required, path)
    problems = Problems(path)
    columns = _fast_columns(
        data, len(names), delimiter, quoting, encoding, header, [name in numeric for name in names]
    )
    if columns is not None:
        n = len(columns[0]) if columns else 0
        return names, columns, np.arange(first_line, first_line + n, dtype=np.int64), problems
    text = io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline="")
    if header:
        text.readline()
    if quoting:
        rows, lines = read_csv_rows(
            text, len(names), problems, delimiter=delimiter, first_line=first_line
        )
    else:
        rows, lines = read_split_rows(
            text, len(names), problems, sep=delimiter, first_line=first_line
        )
    return names, [_unicode(col) for col in rows], lines, problems


def _split_line(line: str, delimiter: str, quoting: bool) -> list[str]:
    if quoting:
        return next(csv.reader([line], delimiter=delimiter), [])
    return line.split(delimiter)


def _unicode(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=str)
    return arr if len(arr) else np.zeros(0, dtype="<U1")


_UNIT_SEP = b"\x1f"


def _fast_columns(
    data: bytes,
    ncols: int,
    delimiter: str,
    quoting: bool,
    encoding: str,
    header: bool,
    numeric: list[bool],
) -> list[np.ndarray] | None:
    """pyarrow's CSV parse, or ``None`` when it can't be trusted: a parse error, or blank
    lines (which it skips silently, shifting line numbers).

    One thread: it is as fast here, and arrow's thread pool has been seen to abort the
    interpreter at exit (apache/arrow#34314).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if b"\n\n" in data or b"\n\r\n" in data or data[:1] in (b"\n", b"\r"):
        return None
    body_start = data.find(b"\n") + 1 if header else 0
    if (header and body_start == 0) or (
        len(data) - body_start < 64 and not data[body_start:].strip()
    ):
        return [np.zeros(0, dtype="<U1") for _ in range(ncols)]
    if len(delimiter) > 1:  # pyarrow wants one character: swap "::" for a unit separator
        if _UNIT_SEP in data or quoting:
            return None
        data = data.replace(delimiter.encode(encoding), _UNIT_SEP)
        delimiter = _UNIT_SEP.decode()
    columns = [f"c{i}" for i in range(ncols)]
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(
                column_names=columns, skip_rows=int(header), use_threads=False, encoding=encoding
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char='"' if quoting else False, newlines_in_values=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(columns, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    return [_from_arrow(table.column(c), num) for c, num in zip(columns, numeric, strict=True)]


def _from_arrow(col: Any, numeric: bool) -> np.ndarray:
    """An arrow string column as NumPy: numbers when ``numeric`` and all are finite
    numbers; otherwise unicode, converted through a dictionary encoding (ids repeat a
    lot, so only the distinct values become Python strings)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks()
    if numeric:
        trimmed = pc.utf8_trim_whitespace(col)
        for kind in (pa.int64(), pa.float64()):
            try:
                values = pc.cast(trimmed, kind)
            except pa.ArrowInvalid:
                continue
            if kind == pa.int64() or pc.all(pc.is_finite(values)).as_py() is not False:
                return values.to_numpy(zero_copy_only=False)
            break
    encoded = pc.dictionary_encode(col)
    distinct = _unicode(encoded.dictionary.to_numpy(zero_copy_only=False))
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)]


def read_csv_rows(
    fh: TextIO, ncols: int, problems: Problems, *, delimiter: str = ",", first_line: int = 1
) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Split the rest of ``fh`` with :mod:`csv` (quotes honoured) into ``ncols`` columns.

    Returns the columns (tuples of strings) and each kept row's line number (the line it
    ends on). Blank lines are skipped; rows with another field count are reported.
    """
    reader = csv.reader(fh, delimiter=delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    offset = first_line - 1
    for row in reader:
        if len(row) == ncols:
            rows.append(row)
            lines.append(reader.line_num + offset)
        elif row and row != [""]:
            problems.add(
                reader.line_num + offset,
                "wrong_column_count",
                f"expected {ncols} fields, got {len(row)}",
            )
    return _columns(rows, ncols), np.asarray(lines, dtype=np.int64)


def read_split_rows(
    fh: TextIO, ncols: int, problems: Problems, *, sep: str, first_line: int = 1
) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Like :func:`read_csv_rows` for unquoted formats split on ``sep`` (``::`` or
    ``|``, as MovieLens writes them)."""
    rows: list[list[str]] = []
    lines: list[int] = []
    for lineno, line in enumerate(fh, first_line):
        line = line.rstrip("\r\n")
        if not line:
            continue
        parts = line.split(sep)
        if len(parts) == ncols:
            rows.append(parts)
            lines.append(lineno)
        else:
            problems.add(lineno, "wrong_column_count", f"expected {ncols} fields, got {len(parts)}")
    return _columns(rows, ncols), np.asarray(lines, dtype=np.int64)


def _columns(rows: list[list[str]], ncols: int) -> list[tuple[str, ...]]:
    if not rows:
        return [() for _ in range(ncols)]
    return list(zip(*rows, strict=True))


def check_columns(names: Sequence[str], required: Sequence[str], path: Path) -> None:
    for col in required:
        if col not in names:
            raise DataError(
                path,
                f"missing required column {col!r} (header has: {', '.join(names) or 'nothing'})",
            )


def read_csv_columns(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str],
    *,
    delimiter: str = ",",
    progress: bool | None = None,
    all_columns: bool = False,
) -> tuple[RawColumns, np.ndarray, Problems]:
    """A headed CSV/TSV file as string columns by name: the required ones (DataError
    when absent) plus those of ``optional`` present (every column when ``all_columns``)."""
    names, columns, lines, problems = read_text_table(
        path, delimiter=delimiter, required=required, progress=progress, numeric=NUMERIC
    )
    wanted = names if all_columns else [*required, *(c for c in optional if c in names)]
    return {name: columns[names.index(name)] for name in wanted}, lines, problems


def read_parquet_columns(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str],
    *,
    progress: bool | None = None,
    all_columns: bool = False,
) -> tuple[RawColumns, np.ndarray, Problems]:
    """Like :func:`read_csv_columns` for Parquet. Id and text columns come back as
    strings (nulls as ""), numeric ones as numbers (nulls as NaN)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    lowered = {name.strip().lower(): name for name in schema.names}
    check_columns(list(lowered), required, path)
    wanted = list(lowered) if all_columns else [*required, *(c for c in optional if c in lowered)]
    pf = pq.ParquetFile(path)
    schema = pa.schema([pf.schema_arrow.field(lowered[c]) for c in wanted])
    batches = []
    with progress_bar(pf.metadata.num_rows, path.name, progress, unit="rows") as bar:
        for batch in pf.iter_batches(columns=[lowered[c] for c in wanted], use_threads=False):
            batches.append(batch)
            bar.update(batch.num_rows)
    table = pa.Table.from_batches(batches, schema=schema)
    out: RawColumns = {}
    for name in wanted:
        out[name] = _parquet_column(table.column(lowered[name]), numeric=name in NUMERIC)
    positions = np.arange(1, table.num_rows + 1, dtype=np.int64)
    return out, positions, Problems(path, unit="row")


def _parquet_column(col: Any, *, numeric: bool) -> np.ndarray:
    """One Parquet column as NumPy: numbers stay numbers (nulls → NaN, which the
    parsers reject), timestamps become epoch seconds, lists are joined with ``|``,
    everything else is cast to strings (nulls → "")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = col.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        col = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
        kind = col.type
    if numeric and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        if pa.types.is_integer(kind) and col.null_count == 0:
            return col.to_numpy()
        return pc.fill_null(col.cast(pa.float64()), math.nan).to_numpy()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return np.asarray(["|".join(map(str, v or ())) for v in col.to_pylist()], dtype=str)
    strings = pc.fill_null(col.cast(pa.string()), "").to_numpy(zero_copy_only=False)
    return np.asarray(strings, dtype=str) if len(strings) else np.zeros(0, dtype="<U1")
