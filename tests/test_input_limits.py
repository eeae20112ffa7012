"""Input limits: ids, categories and text are capped before any work; a request that
does not parse is INVALID_ARGUMENT; log fields stay short whatever reaches them."""

from __future__ import annotations

import grpc
import pytest

from recall_engine._proto import recall_pb2
from recall_engine.observability.logs import MAX_FIELD_CHARS, truncate_long_values
from tests.harness import catalog_of, make_config, serve

ITEMS = ["i1", "i2", "i3"]


@pytest.fixture()
def server(tmp_path):
    cfg = make_config(
        {
            "server": {"max_id_chars": 64, "max_categories": 3, "max_text_chars": 100},
            "channels": {"a": {"plugin": "fixed", "params": {"items": ITEMS}}},
        },
        tmp_path,
    )
    with serve(cfg, catalog_of(ITEMS)) as s:
        yield s


def _code(server, **fields) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Recall(recall_pb2.RecallRequest(k=2, **fields), timeout=10)
    return e.value.code(), e.value.details()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"user_id": "u" * 1_000_000}, "user_id"),
        ({"user_id": "u", "request_id": "r" * 65}, "request_id"),
        ({"history_item_ids": ["i1", "x" * 65]}, "history_item_ids[1]"),
        ({"user_id": "u", "exclude_item_ids": ["x" * 65]}, "exclude_item_ids[0]"),
        ({"user_id": "u", "categories": ["a", "b", "c", "d"]}, "categories"),
        ({"user_id": "u", "categories": ["c" * 65]}, "categories[0]"),
    ],
)
def test_ids_and_categories_over_their_caps_are_refused_naming_the_field(server, fields, named):
    code, details = _code(server, **fields)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(named + ":") and len(details) < 200


def test_long_text_is_cut_before_any_channel_sees_it(server):
    seen = []
    engine = server.engine
    original = engine.recall

    async def spy(inp, *args, **kwargs):
        seen.append(inp.query.text)
        return await original(inp, *args, **kwargs)

    engine.recall = spy
    resp = server.stub.Recall(recall_pb2.RecallRequest(text="word " * 200_000, k=2), timeout=10)
    assert list(resp.item_ids) == ["i1", "i2"]
    assert len(seen[0]) <= 100


def test_a_request_that_does_not_parse_is_invalid_argument(server):
    # field 1 (user_id), wire type 2, length 2, two bytes that are not UTF-8
    bad = bytes([0x0A, 0x02, 0xFF, 0xFE])
    call = server.channel.unary_unary("/recall_engine.v1.RecallService/Recall")
    with pytest.raises(grpc.RpcError) as e:
        call(bad, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Error" not in e.value.details() and "RecallRequest" not in e.value.details()
    # the server still answers good requests
    assert server.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i1"]


def test_log_fields_are_truncated():
    event = truncate_long_values(None, "info", {"event": "recall", "user_id": "u" * 10_000})
    assert len(event["user_id"]) < MAX_FIELD_CHARS + 40
    assert event["user_id"].endswith(f"[{10_000 - MAX_FIELD_CHARS} more chars]")


def test_each_log_line_is_one_write_newline_included(monkeypatch):
    """The processes of serve --processes N share one stderr: a line written in two
    parts (text, then newline) could be glued to another process's line."""
    import json
    import sys

    from recall_engine.observability.logs import configure, get_logger

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    configure("INFO", json=True)
    get_logger("t").info("one_line", field="x" * 100)
    assert len(recorder.writes) == 1 and recorder.writes[0].endswith("\n")
    assert json.loads(recorder.writes[0])["event"] == "one_line"
