"""Interaction, item and MovieLens loaders, on small files written to tmp_path."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recall_engine.offline.data.interactions import DataError, Interactions, load_interactions
from recall_engine.offline.data.items import load_items
from recall_engine.offline.data.movielens import (
    detect,
    load_dataset,
    load_melu_plots,
    load_ml1m,
    load_ml100k,
    load_ml_latest,
)
from recall_engine.sdk.channel import ItemRecord

HEADER = "user_id,item_id,timestamp,weight,event\n"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# -- interactions: happy paths -------------------------------------------------------------


def test_csv_with_all_columns_loads_typed_columns(tmp_path):
    path = write(tmp_path / "log.csv", HEADER + "u1,i1,100,1.5,view\nu2,i2,50,2,buy\n")
    log, report = load_interactions(path)
    assert log.user_ids.tolist() == ["u1", "u2"]
    assert log.item_ids.tolist() == ["i1", "i2"]
    assert log.timestamps.dtype == np.int64 and log.timestamps.tolist() == [100, 50]
    assert log.weights.dtype == np.float32 and log.weights.tolist() == [1.5, 2.0]
    assert log.events is not None and log.events.tolist() == ["view", "buy"]
    assert log.has_timestamps
    assert (report.rows, report.skipped) == (2, 0)


def test_optional_columns_absent_get_defaults(tmp_path):
    log, _ = load_interactions(write(tmp_path / "log.csv", "item_id,user_id\na,1\nb,2\n"))
    assert log.user_ids.tolist() == ["1", "2"]
    assert not log.has_timestamps and log.timestamps.tolist() == [0, 0]
    assert log.weights.tolist() == [1.0, 1.0]
    assert log.events is None


def test_csv_quotes_crlf_whitespace_and_blank_lines_are_handled(tmp_path):
    text = 'user_id,item_id,timestamp\r\n"u,1", i1 ,5\r\n\r\nu2,"i""2",6.9\r\n'
    log, _ = load_interactions(write(tmp_path / "log.csv", text))
    assert log.user_ids.tolist() == ["u,1", "u2"]
    assert log.item_ids.tolist() == ["i1", 'i"2']
    assert log.timestamps.tolist() == [5, 6]  # fractions are truncated


def test_gzipped_csv_and_tsv_are_read(tmp_path):
    gz = tmp_path / "log.csv.gz"
    gz.write_bytes(gzip.compress((HEADER + "u1,i1,1,1,view\n").encode()))
    tsv = write(tmp_path / "log.tsv", "user_id\titem_id\nu1\ti1\nu2\ti2\n")
    assert load_interactions(gz)[0].item_ids.tolist() == ["i1"]
    assert load_interactions(tsv)[0].item_ids.tolist() == ["i1", "i2"]


def test_utf8_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id\nu1,i1\n")
    assert load_interactions(path)[0].user_ids.tolist() == ["u1"]


def test_parquet_happy_path_with_numeric_ids(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": [7, 8],
                "item_id": ["a", "b"],
                "timestamp": [10, 20],
                "weight": [0.5, 2.0],
                "event": ["view", "like"],
            }
        ),
        path,
    )
    log, report = load_interactions(path)
    assert log.user_ids.tolist() == ["7", "8"]
    assert log.timestamps.tolist() == [10, 20]
    assert log.weights.tolist() == [0.5, 2.0]
    assert log.events is not None and log.events.tolist() == ["view", "like"]
    assert report.rows == 2


def test_parquet_timestamp_column_becomes_epoch_seconds(tmp_path):
    path = tmp_path / "log.pq"
    ts = pa.array([0, 86_400_000], type=pa.timestamp("ms"))
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": ts}), path)
    assert load_interactions(path)[0].timestamps.tolist() == [0, 86_400]


# -- interactions: bad rows ----------------------------------------------------------------

BAD_ROWS = [
    ("u1,i1,1,1", "wrong_column_count", "expected 5 fields, got 4"),
    ("u1,i1,1,1,view,extra", "wrong_column_count", "expected 5 fields, got 6"),
    (",i1,1,1,view", "empty_user_id", "empty user_id"),
    ("u1,  ,1,1,view", "empty_item_id", "empty item_id"),
    ("u1,i1,yesterday,1,view", "non_numeric_timestamp", "non-numeric timestamp 'yesterday'"),
    ("u1,i1,,1,view", "non_numeric_timestamp", "empty timestamp"),
    ("u1,i1,1,heavy,view", "non_numeric_weight", "non-numeric weight 'heavy'"),
    ("u1,i1,1,NaN,view", "non_finite_weight", "weight is NaN"),
    ("u1,i1,1,inf,view", "non_finite_weight", "weight is inf"),
    ("u1,i1,1,-0.5,view", "negative_weight", "negative weight -0.5"),
]


@pytest.mark.parametrize(("row", "code", "message"), BAD_ROWS, ids=[b[1] for b in BAD_ROWS])
def test_bad_row_fails_with_file_line_and_reason(tmp_path, row, code, message):
    path = write(tmp_path / "log.csv", HEADER + "u0,i0,1,1,view\n" + row + "\nu2,i2,3,1,view\n")
    with pytest.raises(DataError) as err:
        load_interactions(path)
    assert err.value.line == 3
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


@pytest.mark.parametrize(("row", "code", "message"), BAD_ROWS, ids=[b[1] for b in BAD_ROWS])
def test_bad_row_is_skipped_and_counted(tmp_path, row, code, message):
    path = write(tmp_path / "log.csv", HEADER + "u0,i0,1,1,view\n" + row + "\nu2,i2,3,1,view\n")
    log, report = load_interactions(path, on_error="skip")
    assert log.user_ids.tolist() == ["u0", "u2"]
    assert (report.rows, report.skipped) == (2, 1)
    assert report.reasons == {code: 1}
    assert len(report.first_errors) == 1
    assert report.first_errors[0].startswith(f"{path}:3: {message}")


def test_fail_reports_the_earliest_bad_line_whatever_the_reason(tmp_path):
    path = write(tmp_path / "log.csv", HEADER + "u1,i1,1,-1,view\nu2,i2\nu3,,1,1,view\n")
    with pytest.raises(DataError, match="negative weight") as err:
        load_interactions(path)
    assert err.value.line == 2
    path = write(tmp_path / "log2.csv", HEADER + "u1,i1\nu2,i2,1,-1,view\n")
    with pytest.raises(DataError, match="expected 5 fields") as err:
        load_interactions(path)
    assert err.value.line == 2


def test_skip_counts_every_reason_and_keeps_messages_in_file_order(tmp_path):
    rows = [
        "u1,i1,1,1,view",
        "u2,i2",
        ",i3,1,1,view",
        "u4,i4,x,1,view",
        "u5,i5,1,-2,view",
        "u6,i6,1,1,view",
        "u7,i7,1,nan,view",
        "u8,,1,1,view",
    ]
    path = write(tmp_path / "log.csv", HEADER + "\n".join(rows) + "\n")
    log, report = load_interactions(path, on_error="skip")
    assert log.user_ids.tolist() == ["u1", "u6"]
    assert report.rows == 2 and report.skipped == 6
    assert report.reasons == {
        "wrong_column_count": 1,
        "empty_user_id": 1,
        "empty_item_id": 1,
        "non_numeric_timestamp": 1,
        "negative_weight": 1,
        "non_finite_weight": 1,
    }
    lines = [int(e.split(":")[1]) for e in report.first_errors]
    assert lines == [3, 4, 5, 6, 8, 9]


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    path = write(tmp_path / "log.csv", HEADER + "\nu1,i1,1,1,view\n\n\nu2,i2,1,-1,view\n")
    with pytest.raises(DataError) as err:
        load_interactions(path)
    assert err.value.line == 6


def test_missing_required_column_names_column_and_file(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,timestamp\nu1,1\n")
    with pytest.raises(DataError, match="missing required column 'item_id'") as err:
        load_interactions(path, on_error="skip")
    assert str(path) in str(err.value)
    pq_path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"item_id": ["a"]}), pq_path)
    with pytest.raises(DataError, match=f"{pq_path}: missing required column 'user_id'"):
        load_interactions(pq_path)


def test_empty_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        load_interactions(write(tmp_path / "log.csv", ""))


def test_header_only_file_gives_an_empty_log(tmp_path):
    log, report = load_interactions(write(tmp_path / "log.csv", HEADER))
    assert len(log) == 0 and report.rows == 0 and log.has_timestamps


def test_parquet_bad_rows_are_reported_by_row_number(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", None, "u3", "u4"],
                "item_id": ["a", "b", "c", "d"],
                "timestamp": [1, 2, None, 4],
                "weight": [1.0, 1.0, 1.0, -3.0],
            }
        ),
        path,
    )
    with pytest.raises(DataError, match=r": row 2: empty user_id") as err:
        load_interactions(path)
    assert err.value.row == 2
    log, report = load_interactions(path, on_error="skip")
    assert log.user_ids.tolist() == ["u1"]
    assert report.reasons == {"empty_user_id": 1, "non_numeric_timestamp": 1, "negative_weight": 1}
    assert "row 3: missing timestamp" in report.first_errors[1]


def test_unknown_on_error_and_fmt_are_rejected(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id\nu,i\n")
    with pytest.raises(ValueError, match="on_error"):
        load_interactions(path, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fmt"):
        load_interactions(path, fmt="xlsx")  # type: ignore[arg-type]


def test_progress_bar_goes_to_stderr_only_when_asked(tmp_path, capsys):
    path = write(tmp_path / "log.csv", "user_id,item_id\nu,i\n")
    load_interactions(path)  # stderr is not a terminal under pytest: no bar
    assert capsys.readouterr().err == ""
    load_interactions(path, progress=True)
    assert "log.csv" in capsys.readouterr().err


# -- Interactions helpers ------------------------------------------------------------------


def make_log() -> Interactions:
    return Interactions(
        ["b", "a", "b", "a", "b"],
        ["x", "y", "z", "x", "y"],
        timestamps=[30, 20, 10, 20, 30],
        weights=[1, 2, 3, 4, 5],
        events=["v", "v", "c", "v", "c"],
    )


def test_by_user_gives_row_indices_oldest_first_ties_in_file_order():
    groups = make_log().by_user()
    assert list(groups) == ["a", "b"]
    assert groups["a"].tolist() == [1, 3]
    assert groups["b"].tolist() == [2, 0, 4]


def test_by_user_without_timestamps_keeps_file_order():
    log = Interactions(["b", "a", "b"], ["x", "y", "z"])
    assert {k: v.tolist() for k, v in log.by_user().items()} == {"a": [1], "b": [0, 2]}
    assert Interactions([], []).by_user() == {}


def test_sorted_by_time_subset_users_items():
    log = make_log()
    ordered = log.sorted_by_time()
    assert ordered.timestamps.tolist() == [10, 20, 20, 30, 30]
    assert ordered.item_ids.tolist() == ["z", "y", "x", "x", "y"]
    assert ordered.events is not None and ordered.events.tolist()[0] == "c"
    part = log.subset(log.user_ids == "a")
    assert part.weights.tolist() == [2, 4] and part.has_timestamps
    assert log.users().tolist() == ["a", "b"]
    assert log.items().tolist() == ["x", "y", "z"]
    assert len(log) == 5 and len(log.subset(np.array([0, 4]))) == 2


def test_columns_of_different_lengths_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        Interactions(["a", "b"], ["x"])


# -- items ---------------------------------------------------------------------------------


def test_items_csv_splits_categories_and_appends_extra_columns(tmp_path):
    text = (
        "item_id,title,text,categories,director,year\n"
        '1,Alien,"In space, no one can hear you scream.",Horror|Sci-Fi| |Horror,Ridley Scott,'
        "1979\n2,Heat,,,Michael Mann,\n"
    )
    items, report = load_items(write(tmp_path / "items.csv", text))
    assert items == [
        ItemRecord(
            "1",
            "Alien",
            "In space, no one can hear you scream.\ndirector: Ridley Scott\nyear: 1979",
            ("Horror", "Sci-Fi"),
        ),
        ItemRecord("2", "Heat", "director: Michael Mann", ()),
    ]
    assert report.rows == 2 and report.duplicates == 0


def test_items_duplicate_ids_last_wins_and_are_counted(tmp_path):
    text = "item_id,title\na,first\nb,other\na,second\n"
    items, report = load_items(write(tmp_path / "items.csv", text))
    assert [(it.item_id, it.title) for it in items] == [("a", "second"), ("b", "other")]
    assert report.duplicates == 1 and report.rows == 2


def test_items_bad_rows_fail_with_line_or_are_skipped(tmp_path):
    path = write(tmp_path / "items.csv", "item_id,title\na,A\n,nameless\nb,B,extra\nc,C\n")
    with pytest.raises(DataError, match=r"items.csv:3: empty item_id"):
        load_items(path)
    items, report = load_items(path, on_error="skip")
    assert [it.item_id for it in items] == ["a", "c"]
    assert report.reasons == {"empty_item_id": 1, "wrong_column_count": 1}


def test_items_missing_id_column_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="missing required column 'item_id'"):
        load_items(write(tmp_path / "items.csv", "id,title\n1,A\n"))


def test_items_parquet_with_list_categories(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": [1, 2],
                "title": ["A", None],
                "categories": [["x", "y"], []],
                "plot": ["p", ""],
            }
        ),
        path,
    )
    items, _ = load_items(path)
    assert items == [ItemRecord("1", "A", "plot: p", ("x", "y")), ItemRecord("2", "", "", ())]


# -- MovieLens formats ---------------------------------------------------------------------

GENRES = "unknown|0\nAction|1\nComedy|2\nDrama|3\n\n"


def ml100k_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write(folder / "u.data", "1\t10\t5\t881250949\n2\t11\t3\t881250950\n1\t11\t4\t881250000\n")
    write(folder / "u.genre", GENRES)
    write(
        folder / "u.item",
        "10|Misérables, Les (1995)|01-Jan-1995||http://x|0|0|0|1\n"
        "11|Toy Story (1995)|01-Jan-1995||http://y|0|1|1|0\n"
        "12|unknown||||1|0|0|0\n",
        encoding="latin-1",
    )
    return folder


def test_ml100k_reads_tab_ratings_and_latin1_items_with_genre_flags(tmp_path):
    log, items = load_ml100k(ml100k_folder(tmp_path))
    assert log.user_ids.tolist() == ["1", "2", "1"]
    assert log.weights.tolist() == [5, 3, 4] and log.timestamps[0] == 881250949
    by_id = {it.item_id: it for it in items}
    assert by_id["10"].title == "Misérables, Les (1995)"
    assert by_id["10"].categories == ("Drama", "year:1995")
    assert by_id["11"].categories == ("Action", "Comedy", "year:1995")
    assert by_id["11"].text == "Genres: Action, Comedy\nReleased: 01-Jan-1995"
    assert by_id["12"].categories == ("unknown",)


def test_ml100k_bad_rating_line_names_file_and_line(tmp_path):
    folder = ml100k_folder(tmp_path)
    write(folder / "u.data", "1\t10\t5\t881250949\n2\t11\n")
    with pytest.raises(DataError, match=r"u.data:2: expected 4 fields, got 2"):
        load_ml100k(folder)


MOVIES_DAT = "1::Toy Story (1995)::Animation|Children's|Comedy\n73::Misérables, Les (1995)::Drama\n"
PLOTS = (
    "1::Toy Story::1995::G::22 Nov 1995::Animation, Comedy::John Lasseter::Joss Whedon::"
    "Tom Hanks, Tim Allen::Toys come to life.::https://img\r\n"
    "73::Les Misérables::1995::R::N/A::Drama::N/A::N/A::N/A::N/A::N/A\r\n"
)


def ml1m_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ratings = tmp_path / "ratings.dat.gz"
    ratings.write_bytes(
        gzip.compress(b"1::1::5::978300760\n1::73::3::978302109\n2::1::4::978301968\n")
    )
    movies = write(tmp_path / "movies.dat", MOVIES_DAT, encoding="latin-1")
    plots = write(tmp_path / "movies_extrainfos.dat", PLOTS)
    return ratings, movies, plots


def test_melu_plots_are_keyed_by_movie_id_without_na_values(tmp_path):
    plots = load_melu_plots(ml1m_files(tmp_path)[2])
    assert plots["1"]["plot"] == "Toys come to life."
    assert plots["1"]["director"] == "John Lasseter" and plots["1"]["rated"] == "G"
    assert plots["73"] == {
        "title": "Les Misérables",
        "year": "1995",
        "rated": "R",
        "genre": "Drama",
    }


def test_ml1m_reads_gz_ratings_latin1_movies_and_merges_plots(tmp_path):
    ratings, movies, plots = ml1m_files(tmp_path)
    log, items = load_ml1m(ratings, movies, plots)
    assert log.item_ids.tolist() == ["1", "73", "1"]
    assert log.timestamps.tolist() == [978300760, 978302109, 978301968]
    toy, mis = items
    assert mis.title == "Misérables, Les (1995)" and mis.categories == ("Drama", "year:1995")
    assert toy.text == (
        "Toys come to life.\nGenres: Animation, Children's, Comedy\n"
        "Director: John Lasseter\nStarring: Tom Hanks, Tim Allen\nRated: G"
    )
    assert mis.text == "Genres: Drama\nRated: R"


def test_ml1m_without_movies_file_gives_bare_items(tmp_path):
    ratings, movies, _ = ml1m_files(tmp_path)
    movies.unlink()
    _, items = load_ml1m(ratings)
    assert items == [ItemRecord("1"), ItemRecord("73")]


def test_ml1m_bad_separator_line_fails_and_can_be_skipped(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::1::5::978300760\n1:73:3:978302109\n")
    with pytest.raises(DataError, match=r"ratings.dat:2: expected 4 fields, got 1"):
        load_ml1m(path)
    log, _ = load_ml1m(path, on_error="skip")
    assert len(log) == 1


def ml_latest_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    write(
        folder / "ratings.csv",
        "userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,2,0.5,964981247\r\n",
    )
    write(
        folder / "movies.csv",
        "movieId,title,genres\r\n1,Toy Story (1995),Animation|Comedy\r\n"
        '2,"American President, The (1995) ",Comedy|Drama|Romance\r\n'
        "3,Babylon 5,(no genres listed)\r\n",
    )
    write(
        folder / "tags.csv",
        "userId,movieId,tag,timestamp\r\n2,1,Pixar,1\r\n3,1,fun,2\r\n"
        '4,1,pixar,3\r\n5,2,"romantic, political",4\r\n',
    )
    return folder


def test_ml_latest_reads_crlf_csv_quoted_titles_and_tags(tmp_path):
    log, items = load_ml_latest(ml_latest_folder(tmp_path))
    assert log.weights.tolist() == [4.0, 0.5]
    toy, president, babylon = items
    assert toy.categories == ("Animation", "Comedy", "year:1995", "tag:pixar", "tag:fun")
    assert toy.text == "Genres: Animation, Comedy\nTags: Pixar, fun"
    assert president.title == "American President, The (1995)"
    assert "tag:romantic, political" in president.categories
    assert babylon.categories == () and babylon.text == ""


def test_detect_recognises_each_movielens_layout(tmp_path):
    ratings, _, _ = ml1m_files(tmp_path)
    assert detect(ml100k_folder(tmp_path)) == f"ml-100k:{tmp_path / 'ml-100k'}"
    assert detect(ml_latest_folder(tmp_path)) == f"ml-latest:{tmp_path / 'ml-latest-small'}"
    assert detect(ratings) == f"ml-1m:{ratings}"
    assert detect(tmp_path / "ml-100k" / "u.data") == f"ml-100k:{tmp_path / 'ml-100k'}"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert detect(empty) is None


def test_load_dataset_dispatches_specs(tmp_path):
    ratings, movies, plots = ml1m_files(tmp_path)
    log, items = load_dataset(f"ml-1m:{ratings},{movies},{plots}")
    assert len(log) == 3 and items[0].text.startswith("Toys come to life.")
    log, items = load_dataset(f"ml-1m:{tmp_path}")  # a folder: ratings, movies, plots inside
    assert len(log) == 3 and items[0].text.startswith("Toys come to life.")
    assert len(load_dataset(f"ml-100k:{ml100k_folder(tmp_path)}")[0]) == 3
    assert len(load_dataset(str(ml_latest_folder(tmp_path)))[1]) == 3  # detected
    inter = write(tmp_path / "log.csv", "user_id,item_id\nu,a\nu,b\n")
    item_file = write(tmp_path / "items.csv", "item_id,title\na,A\n")
    assert load_dataset(f"files:{inter}")[1] == [ItemRecord("a"), ItemRecord("b")]
    assert load_dataset(f"files:{inter},{item_file}")[1] == [ItemRecord("a", "A")]
    with pytest.raises(ValueError, match="can't tell what dataset"):
        load_dataset("netflix:/nowhere")


def test_fast_and_line_by_line_readers_agree(tmp_path):
    # A blank line sends the file down the csv-module path; without it pyarrow reads it.
    body = 'u1,i1,5,1.5,view\r\n"u,2",i2,6,2,"a ""quoted"" event"\r\nu3,i3,7,0,\r\n'
    fast, _ = load_interactions(write(tmp_path / "fast.csv", HEADER + body))
    slow, _ = load_interactions(write(tmp_path / "slow.csv", HEADER + "\r\n" + body))
    for name in ("user_ids", "item_ids", "timestamps", "weights", "events"):
        assert getattr(fast, name).tolist() == getattr(slow, name).tolist(), name
    assert fast.events is not None and fast.events.tolist()[1] == 'a "quoted" event'


def test_ml_latest_tags_written_after_a_users_training_part_stay_out_of_item_text(tmp_path):
    """A tag is training data like a rating: with ``train_part`` (what eval and
    tune-weights pass) only tags no newer than their user's newest training rating and
    by users with training ratings reach an item's text and categories."""
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    write(
        folder / "ratings.csv",
        "userId,movieId,rating,timestamp\r\n"
        "1,1,4.0,100\r\n1,2,3.0,200\r\n1,3,5.0,300\r\n"  # user 1: train up to 200
        "2,1,2.0,100\r\n2,2,4.0,150\r\n",  # user 2: train up to 100
    )
    write(folder / "movies.csv", "movieId,title,genres\r\n1,A,Drama\r\n2,B,Drama\r\n3,C,Drama\r\n")
    write(
        folder / "tags.csv",
        "userId,movieId,tag,timestamp\r\n"
        "1,1,early,150\r\n"  # before user 1's cut: kept
        "1,3,spoiler,300\r\n"  # user 1 tags the held-out movie: dropped
        "2,2,late,150\r\n"  # after user 2's cut: dropped
        "2,1,ontime,100\r\n"  # at user 2's newest training rating: kept
        "9,2,stranger,1\r\n",  # a user with no ratings at all: dropped
    )
    rows = {"1": 200, "2": 100}  # newest training timestamp per user

    def train_part(log):
        users, stamps = log.user_ids.tolist(), log.timestamps.tolist()
        return log.subset(np.asarray([ts <= rows[u] for u, ts in zip(users, stamps, strict=True)]))

    _, everything = load_ml_latest(folder)
    assert [it.categories for it in everything] == [
        ("Drama", "tag:early", "tag:ontime"),
        ("Drama", "tag:late", "tag:stranger"),
        ("Drama", "tag:spoiler"),
    ]
    _, items = load_ml_latest(folder, train_part=train_part)
    assert [it.categories for it in items] == [
        ("Drama", "tag:early", "tag:ontime"),
        ("Drama",),
        ("Drama",),
    ]
    assert "spoiler" not in items[2].text and "late" not in items[1].text
    _, via_spec = load_dataset(f"ml-latest:{folder}", train_part=train_part)
    assert via_spec == items


def test_eval_flags_filter_ml_latest_tags_with_the_split_they_name(tmp_path):
    """``eval``/``tune-weights`` load through ``load_data``, which hands the loader the
    training part of the split the flags name (here the per-user temporal 50 %)."""
    import argparse

    from recall_engine.cli._data_flags import add_input_arguments, add_split_arguments, load_data

    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    write(
        folder / "ratings.csv",
        "userId,movieId,rating,timestamp\r\n1,1,4.0,100\r\n1,2,3.0,200\r\n",
    )
    write(folder / "movies.csv", "movieId,title,genres\r\n1,A,Drama\r\n2,B,Drama\r\n")
    write(folder / "tags.csv", "userId,movieId,tag,timestamp\r\n1,1,seen,100\r\n1,2,later,200\r\n")
    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    add_split_arguments(parser)
    args = parser.parse_args(["--dataset", f"ml-latest:{folder}", "--test-fraction", "0.5"])
    _, items = load_data(args)
    assert [it.categories for it in items] == [("Drama", "tag:seen"), ("Drama",)]


def test_eval_help_states_the_default_plan_the_default_config_has():
    """``eval --help`` (and ``tune-weights --help``) say what runs without --config,
    read from default_config: its fusion and every channel's weight."""
    import argparse
    from pathlib import Path

    from recall_engine.cli._data_flags import add_input_arguments
    from recall_engine.config import default_config

    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    plan = default_config(Path("artifacts")).plan
    assert plan.fusion.upper() in text
    for name, weight in plan.weights.items():
        assert f"{name} {weight:g}" in text
    assert "weight 1, RRF" not in text
