"""MovieLens loaders (ml-100k, ml-1m, ml-latest) and the ``load_dataset`` dispatcher.

Every loader returns ``(Interactions, list[ItemRecord])``:

* interactions: user and movie ids as strings, ``timestamps`` from the files, and the
  star rating as ``weight`` (1–5, or 0.5–5 for ml-latest); no ``events``.
* items: the title exactly as MovieLens spells it (year included, e.g. ``"Toy Story
  (1995)"``, so people recognise it); ``categories`` are the genres plus a
  ``year:1995`` token parsed from the last ``(dddd)`` in the title (so a category
  filter can ask for a year) and, for ml-latest, ``tag:<lower-cased tag>`` for each user
  tag; ``text`` is ``"label: value"`` lines (``Genres``, and where the files have them
  ``Plot`` first as plain text, ``Director``, ``Starring``, ``Rated``, ``Tags``) that
  text encoders read.

ml-latest's tags are written by users at a time, like ratings: in an offline evaluation
a tag written after the split would tell the content channels about the held-out part.
``train_part`` (a function from the ratings to their training part, which the
``eval`` and ``tune-weights`` commands pass with the split they make) keeps a tag only
when its user has training ratings and it is no newer than that user's newest one.

``load_dataset(spec)`` understands ``ml-100k:FOLDER``, ``ml-1m:RATINGS[,MOVIES[,PLOTS]]``
(RATINGS may be a folder holding ``ratings.dat[.gz]``), ``ml-latest:FOLDER``,
``amazon:FOLDER`` or ``amazon:REVIEWS[,META]`` (Amazon Review Data 2018,
:mod:`recall_engine.offline.data.amazon`), ``files:INTERACTIONS[,ITEMS]`` (the generic
formats), ``demo`` and, failing those, any path :func:`detect` recognises.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recall_engine.offline.data.interactions import (
    Interactions,
    OnError,
    Problems,
    build_interactions,
    check_on_error,
    load_interactions,
    read_bytes,
    read_csv_columns,
    read_text_table,
)
from recall_engine.offline.data.items import compose_text, load_items, split_categories
from recall_engine.sdk.types import ItemRecord

__all__ = [
    "detect",
    "load_dataset",
    "load_melu_plots",
    "load_ml100k",
    "load_ml1m",
    "load_ml_latest",
    "tags_known_by",
]

Dataset = tuple[Interactions, list[ItemRecord]]
#: ratings -> the part of them a model may learn from (the training part of a split)
TrainPart = Callable[[Interactions], Interactions]

_YEAR = re.compile(r"\((\d{4})\)")
LATIN1 = "latin-1"  # ml-100k u.item and ml-1m *.dat are ISO-8859-1
MELU_FIELDS = (
    "movie_id",
    "title",
    "year",
    "rated",
    "released",
    "genre",
    "director",
    "writer",
    "actors",
    "plot",
    "poster",
)


def movie_record(
    item_id: str,
    title: str,
    genres: Sequence[str],
    *,
    plot: str = "",
    details: Sequence[tuple[str, str]] = (),
    tags: Sequence[str] = (),
) -> ItemRecord:
    """One movie as an :class:`ItemRecord` (see the module docstring for the layout)."""
    title = title.strip()
    years = _YEAR.findall(title)
    cats = [*genres, *(f"year:{years[-1]}" for _ in years[-1:])]
    cats.extend(f"tag:{t.lower()}" for t in tags)
    lines = [("Genres", ", ".join(genres)), *details, ("Tags", ", ".join(tags))]
    return ItemRecord(item_id, title, compose_text(plot, lines), tuple(dict.fromkeys(cats)))


def _ratings(path: Path, sep: str, on_error: OnError, progress: bool | None) -> Interactions:
    """``user SEP movie SEP rating SEP timestamp`` lines, no header."""
    names, columns, lines, problems = read_text_table(
        path,
        delimiter=sep,
        header=False,
        names=("user_id", "item_id", "weight", "timestamp"),
        quoting=False,
        progress=progress,
        numeric=("weight", "timestamp"),
    )
    interactions = build_interactions(dict(zip(names, columns, strict=True)), lines, problems)
    problems.finish(on_error, rows=len(interactions))
    return interactions


def _table(
    path: Path,
    sep: str,
    ncols: int,
    encoding: str,
    progress: bool | None,
) -> tuple[list[list[str]], np.ndarray, Problems]:
    """A small headerless ``sep``-separated file as Python lists of strings per column."""
    _, columns, lines, problems = read_text_table(
        path,
        delimiter=sep,
        header=False,
        names=[f"c{i}" for i in range(ncols)],
        quoting=False,
        encoding=encoding,
        progress=progress,
    )
    return [c.tolist() for c in columns], lines, problems


# -- ml-100k ------------------------------------------------------------------------------


def load_ml100k(
    folder: str | Path, *, on_error: OnError = "fail", progress: bool | None = None
) -> Dataset:
    """``u.data`` (``user\\titem\\trating\\ttimestamp``) and ``u.item`` (``|``-separated,
    latin-1: id, title, release date, video release date, IMDb URL, 19 genre flags
    named by ``u.genre``)."""
    check_on_error(on_error)
    folder = Path(folder)
    interactions = _ratings(folder / "u.data", "\t", on_error, progress)
    genres = _ml100k_genres(folder / "u.genre")
    cols, lines, problems = _table(folder / "u.item", "|", 5 + len(genres), LATIN1, progress)
    items = []
    for i, row in enumerate(zip(*cols, strict=True)):
        item_id, title, released = row[0].strip(), row[1], row[2].strip()
        if not item_id:
            problems.add(int(lines[i]), "empty_item_id", "empty item id")
            continue
        flags = row[5:]
        names = [g for g, flag in zip(genres, flags, strict=True) if flag.strip() == "1"]
        items.append(movie_record(item_id, title, names, details=[("Released", released)]))
    problems.finish(on_error, rows=len(items))
    return interactions, items


def _ml100k_genres(path: Path) -> list[str]:
    """``u.genre`` lines ``name|index`` → names in index order."""
    pairs = []
    for line in read_bytes(path, progress=False).decode(LATIN1).splitlines():
        name, _, index = line.strip().rpartition("|")
        if name:
            pairs.append((int(index), name))
    return [name for _, name in sorted(pairs)]


# -- ml-1m --------------------------------------------------------------------------------


def load_ml1m(
    ratings_path: str | Path,
    movies_path: str | Path | None = None,
    plots_path: str | Path | None = None,
    *,
    on_error: OnError = "fail",
    progress: bool | None = None,
) -> Dataset:
    """``ratings.dat[.gz]`` (``user::movie::rating::timestamp``) and ``movies.dat``
    (``movie::title::genre|genre``, latin-1), optionally enriched with the MeLU plot
    file (see :func:`load_melu_plots`).

    ``movies_path=None`` uses ``movies.dat`` beside the ratings when there is one;
    otherwise items are bare ids. Items come from the movie file, whether rated or not.
    """
    check_on_error(on_error)
    ratings_path = Path(ratings_path)
    interactions = _ratings(ratings_path, "::", on_error, progress)
    if movies_path is None and (ratings_path.parent / "movies.dat").exists():
        movies_path = ratings_path.parent / "movies.dat"
    if movies_path is None:
        return interactions, [ItemRecord(i) for i in interactions.items().tolist()]
    plots = load_melu_plots(plots_path, progress=progress) if plots_path else {}
    movies_path = Path(movies_path)
    cols, lines, problems = _table(movies_path, "::", 3, LATIN1, progress)
    items = []
    for i, (item_id, title, genres) in enumerate(zip(*cols, strict=True)):
        if not item_id.strip():
            problems.add(int(lines[i]), "empty_item_id", "empty movie id")
            continue
        extra = plots.get(item_id.strip(), {})
        details = [
            ("Director", extra.get("director", "")),
            ("Starring", extra.get("actors", "")),
            ("Rated", extra.get("rated", "")),
        ]
        items.append(
            movie_record(
                item_id.strip(),
                title,
                split_categories(genres),
                plot=extra.get("plot", ""),
                details=details,
            )
        )
    problems.finish(on_error, rows=len(items))
    return interactions, items


def load_melu_plots(
    path: str | Path,
    *,
    progress: bool | None = False,
) -> dict[str, dict[str, str]]:
    """MeLU's ``movies_extrainfos.dat`` (UTF-8, CRLF, ``::``-separated): movie id →
    ``{"title", "year", "rated", "released", "genre", "director", "writer", "actors",
    "plot", "poster"}``. ``N/A`` and empty values are left out. ``title`` is the
    IMDb title ("The American President"), not the MovieLens one."""
    path = Path(path)
    cols, _, problems = _table(path, "::", len(MELU_FIELDS), "utf-8", progress)
    problems.finish("fail", rows=len(cols[0]))
    out: dict[str, dict[str, str]] = {}
    for row in zip(*cols, strict=True):
        fields = {k: v.strip() for k, v in zip(MELU_FIELDS[1:], row[1:], strict=True)}
        out[row[0].strip()] = {k: v for k, v in fields.items() if v and v != "N/A"}
    return out


# -- ml-latest ----------------------------------------------------------------------------


def load_ml_latest(
    folder: str | Path,
    *,
    on_error: OnError = "fail",
    progress: bool | None = None,
    train_part: TrainPart | None = None,
) -> Dataset:
    """``ratings.csv`` (``userId,movieId,rating,timestamp``), ``movies.csv``
    (``movieId,title,genres``, titles quoted when they hold commas, ``(no genres
    listed)`` for none) and, when present, ``tags.csv`` (``userId,movieId,tag,timestamp``):
    each movie's distinct tags go into ``text`` and ``tag:`` categories.

    With ``train_part`` only the tags its training ratings allow (see the module
    docstring): a tag by a user with no training rating, or newer than that user's
    newest training rating, is dropped. Without it every tag is used (a production
    build, where every rating is training data)."""
    check_on_error(on_error)
    folder = Path(folder)
    names = ("userid", "movieid", "rating", "timestamp")
    header, columns, lines, problems = read_text_table(
        folder / "ratings.csv",
        delimiter=",",
        required=names,
        progress=progress,
        numeric=("rating", "timestamp"),
    )
    cols = dict(zip(header, columns, strict=True))
    renamed = dict(
        zip(("user_id", "item_id", "weight", "timestamp"), (cols[n] for n in names), strict=True)
    )
    interactions = build_interactions(renamed, lines, problems)
    problems.finish(on_error, rows=len(interactions))
    tags: dict[str, list[str]] = {}
    if (folder / "tags.csv").exists():
        train = train_part(interactions) if train_part is not None else None
        tags = _ml_latest_tags(folder / "tags.csv", progress, train)
    cols, lines, problems = read_csv_columns(
        folder / "movies.csv", ("movieid", "title", "genres"), (), progress=progress
    )
    items = []
    for i, (item_id, title, genres) in enumerate(
        zip(cols["movieid"].tolist(), cols["title"].tolist(), cols["genres"].tolist(), strict=True)
    ):
        item_id = item_id.strip()
        if not item_id:
            problems.add(int(lines[i]), "empty_item_id", "empty movieId")
            continue
        genre_names = [] if genres.strip() == "(no genres listed)" else split_categories(genres)
        items.append(movie_record(item_id, title, genre_names, tags=tags.get(item_id, ())))
    problems.finish(on_error, rows=len(items))
    return interactions, items


def _ml_latest_tags(
    path: Path, progress: bool | None, train: Interactions | None = None
) -> dict[str, list[str]]:
    """Movie id → distinct tags (case-insensitively), most used first, then first seen;
    with ``train``, only the tags :func:`tags_known_by` keeps."""
    cols, _, _ = read_csv_columns(
        path, ("movieid", "tag"), ("userid", "timestamp"), progress=progress
    )
    movies, texts = cols["movieid"], cols["tag"]
    if train is not None:
        if "userid" not in cols or "timestamp" not in cols:
            raise ValueError(
                f"{path}: needs userId and timestamp columns to keep the tags of the "
                "training part out of the test part"
            )
        keep = tags_known_by(cols["userid"], np.asarray(cols["timestamp"], np.int64), train)
        movies, texts = movies[keep], texts[keep]
    counts: dict[str, Counter[str]] = {}
    spelling: dict[str, str] = {}
    for movie, tag in zip(movies.tolist(), texts.tolist(), strict=True):
        tag = " ".join(tag.split())
        if tag:
            key = tag.lower()
            spelling.setdefault(key, tag)
            counts.setdefault(movie.strip(), Counter())[key] += 1
    return {movie: [spelling[k] for k, _ in c.most_common()] for movie, c in counts.items()}


def tags_known_by(users: np.ndarray, timestamps: np.ndarray, train: Interactions) -> np.ndarray:
    """Mask of the tag rows ``(user, timestamp)`` a model trained on ``train`` may see:
    the user has training rows and the tag is no newer than the newest of them. Under a
    per-user split that is the user's own cut; under a global time cut, before it."""
    if len(train) == 0 or len(users) == 0:
        return np.zeros(len(users), dtype=bool)
    known, codes = np.unique(train.user_ids, return_inverse=True)
    newest = np.full(len(known), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(newest, codes, train.timestamps)
    users = np.asarray(users)
    at = np.clip(np.searchsorted(known, users), 0, len(known) - 1)
    has = known[at] == users
    return has & (np.asarray(timestamps, dtype=np.int64) <= newest[at])


# -- dispatch -----------------------------------------------------------------------------


def detect(path: str | Path) -> str | None:
    """A ``load_dataset`` spec for ``path`` or ``None``: a folder with ``u.data`` is
    ml-100k, one with ``ratings.csv`` and ``movies.csv`` ml-latest, one with
    ``ratings.dat[.gz]`` (or such a file itself) ml-1m, one with an Amazon 5-core
    reviews file (``*_5.json[.gz]``) amazon."""
    p = Path(path)
    if p.is_dir():
        if (p / "u.data").is_file():
            return f"ml-100k:{p}"
        if (p / "ratings.csv").is_file() and (p / "movies.csv").is_file():
            return f"ml-latest:{p}"
        if any((p / n).is_file() for n in ("ratings.dat", "ratings.dat.gz")):
            return f"ml-1m:{p}"
        if any(p.glob("*_5.json*")):
            return f"amazon:{p}"
    elif p.is_file():
        if p.name in ("ratings.dat", "ratings.dat.gz"):
            return f"ml-1m:{p}"
        if p.name == "u.data":
            return f"ml-100k:{p.parent}"
    return None


def load_dataset(
    spec: str,
    *,
    on_error: OnError = "fail",
    progress: bool | None = None,
    train_part: TrainPart | None = None,
) -> Dataset:
    """Load what ``spec`` names (see the module docstring for the forms). ``train_part``
    limits what users wrote into item metadata (ml-latest's tags) to the training part;
    the other datasets' metadata does not depend on when anyone rated."""
    kind, sep, rest = spec.partition(":")
    parts = [p for p in rest.split(",") if p] if sep else []
    if kind == "ml-100k" and len(parts) == 1:
        return load_ml100k(parts[0], on_error=on_error, progress=progress)
    if kind == "ml-1m" and 1 <= len(parts) <= 3:
        ratings, movies, plots = _ml1m_paths(parts)
        return load_ml1m(ratings, movies, plots, on_error=on_error, progress=progress)
    if kind == "ml-latest" and len(parts) == 1:
        return load_ml_latest(parts[0], on_error=on_error, progress=progress, train_part=train_part)
    if kind == "files" and 1 <= len(parts) <= 2:
        interactions, _ = load_interactions(parts[0], on_error=on_error, progress=progress)
        if len(parts) == 1:
            return interactions, [ItemRecord(i) for i in interactions.items().tolist()]
        items, _ = load_items(parts[1], on_error=on_error, progress=progress)
        return interactions, items
    if kind == "amazon" and 1 <= len(parts) <= 2:
        from recall_engine.offline.data.amazon import amazon_paths, load_amazon

        reviews, meta = amazon_paths(parts)
        return load_amazon(reviews, meta, on_error=on_error, progress=progress)
    if spec == "demo":
        from recall_engine.offline.data.demo import make_demo

        demo = make_demo()
        return demo.interactions, demo.items
    guess = detect(spec)
    if guess is not None:
        return load_dataset(guess, on_error=on_error, progress=progress, train_part=train_part)
    raise ValueError(
        f"can't tell what dataset {spec!r} is: use ml-100k:FOLDER, "
        "ml-1m:RATINGS[,MOVIES[,PLOTS]], ml-latest:FOLDER, amazon:FOLDER|REVIEWS[,META], "
        "files:INTERACTIONS[,ITEMS], demo, or a MovieLens or Amazon reviews folder"
    )


def _ml1m_paths(parts: list[str]) -> tuple[Path, Path | None, Path | None]:
    ratings = Path(parts[0])
    movies = Path(parts[1]) if len(parts) > 1 else None
    plots = Path(parts[2]) if len(parts) > 2 else None
    if ratings.is_dir():
        folder = ratings
        ratings = next(
            (folder / n for n in ("ratings.dat", "ratings.dat.gz") if (folder / n).is_file()),
            folder / "ratings.dat",
        )
        if plots is None and (folder / "movies_extrainfos.dat").is_file():
            plots = folder / "movies_extrainfos.dat"
    return ratings, movies, plots
