"""protos/breaking.py: the current protos keep the last released contract, and each kind
of breaking change, made to a copy of the protos, is caught."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytest.importorskip("grpc_tools", reason="needs grpcio-tools, from the [test] extra")

V1 = Path("recall_engine") / "v1"


def _load_checker():
    spec = importlib.util.spec_from_file_location("proto_breaking", ROOT / "protos" / "breaking.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


breaking = _load_checker()


@pytest.fixture(scope="module")
def released():
    return breaking.load(breaking.latest_release())


def test_the_current_protos_keep_the_last_released_contract():
    done = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "breaking.py")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("no breaking changes against 0.1.0.binpb")


def test_the_released_contract_is_no_newer_than_the_package():
    from recall_engine import __version__

    newest = breaking.latest_release()
    assert breaking._version_key(newest) <= breaking._version_key(Path(f"{__version__}.binpb"))
    names = {f.name for f in breaking.load(newest).file}
    assert names == {"recall_engine/v1/recall.proto", "recall_engine/v1/admin.proto"}


def edit(old: str, new: str, file: str = "recall.proto") -> Callable[[Path], None]:
    """Replace ``old`` (which must be there: the test fails when the proto moved on)."""

    def apply(root: Path) -> None:
        path = root / V1 / file
        text = path.read_text()
        assert old in text, f"{old!r} is no longer in {file}: update this test"
        path.write_text(text.replace(old, new))

    return apply


def both(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        for e in edits:
            e(root)

    return apply


def delete_file(file: str) -> Callable[[Path], None]:
    return lambda root: (root / V1 / file).unlink()


def mutated(tmp_path: Path, change: Callable[[Path], None]):
    root = tmp_path / "protos"
    shutil.copytree(ROOT / "protos" / "recall_engine", root / "recall_engine")
    change(root)
    return breaking.compile_protos(root)


BREAKING = {
    "field number changed": (
        edit("uint32 k = 6;", "uint32 k = 99;"),
        "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
        'field "k" (6) of message "recall_engine.v1.RecallRequest" was deleted without '
        "reserving its number, now number 99",
    ),
    "scalar type changed": (
        edit("uint32 k = 6;", "int32 k = 6;"),
        "FIELD_SAME_TYPE",
        "changed type from uint32 to int32",
    ),
    "enum field became an int": (
        edit("ChannelStatus status = 2;", "uint32 status = 2;"),
        "FIELD_SAME_TYPE",
        "changed type from recall_engine.v1.ChannelStatus to uint32",
    ),
    "message field type changed": (
        edit("RecallResponse response = 1;", "ListChannelsResponse response = 1;"),
        "FIELD_SAME_TYPE",
        'field "response" (1) of message "recall_engine.v1.BatchRecallResult"',
    ),
    "map value type changed": (
        edit(
            "map<string, float> weight_override = 10;", "map<string, double> weight_override = 10;"
        ),
        "FIELD_SAME_TYPE",
        'field "value" (2) of message "recall_engine.v1.RecallRequest.WeightOverrideEntry"',
    ),
    "field deleted": (
        edit("  string text = 5;\n", "\n"),
        "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
        'field "text" (5) of message "recall_engine.v1.RecallRequest" was deleted',
    ),
    "field deleted, number reserved, name not": (
        edit("  string text = 5;\n", "  reserved 5;\n"),
        "FIELD_NO_DELETE_UNLESS_NAME_RESERVED",
        'field "text" (5)',
    ),
    "field renamed": (
        edit("string text = 5;", "string query_text = 5;"),
        "FIELD_SAME_NAME",
        "changed name from text to query_text",
    ),
    "json name changed": (
        edit("string text = 5;", 'string text = 5 [json_name = "q"];'),
        "FIELD_SAME_JSON_NAME",
        "changed json name from text to q",
    ),
    "repeated became singular": (
        edit("repeated string exclude_item_ids = 7;", "string exclude_item_ids = 7;"),
        "FIELD_SAME_CARDINALITY",
        "changed cardinality from repeated to singular",
    ),
    "field moved into a oneof": (
        edit("  string text = 5;\n", "  oneof seed {\n    string text = 5;\n  }\n"),
        "FIELD_SAME_ONEOF",
        "changed oneof from (none) to seed",
    ),
    "message renamed": (
        edit("ReloadConfigResponse", "ReloadConfigReply", "admin.proto"),
        "MESSAGE_NO_DELETE",
        'message "recall_engine.v1.ReloadConfigResponse" was deleted (or renamed)',
    ),
    "message moved to another file": (
        both(
            edit("message ListChannelsRequest {}\n", ""),
            edit(
                "package recall_engine.v1;\n",
                "package recall_engine.v1;\n\nmessage ListChannelsRequest {}\n",
                "admin.proto",
            ),
            edit(
                "package recall_engine.v1;\n",
                'package recall_engine.v1;\n\nimport "recall_engine/v1/admin.proto";\n',
            ),
        ),
        "MESSAGE_NO_DELETE",
        'message "recall_engine.v1.ListChannelsRequest" moved to recall_engine/v1/admin.proto',
    ),
    "enum value deleted": (
        edit("  CHANNEL_STATUS_SKIPPED = 4;\n", ""),
        "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED",
        'enum value "CHANNEL_STATUS_SKIPPED" (4)',
    ),
    "enum value renamed": (
        edit("CHANNEL_STATUS_SKIPPED = 4;", "CHANNEL_STATUS_NOT_ASKED = 4;"),
        "ENUM_VALUE_SAME_NAME",
        'was renamed to "CHANNEL_STATUS_NOT_ASKED"',
    ),
    "enum renamed": (
        edit("ChannelStatus", "ChannelState"),
        "ENUM_NO_DELETE",
        'enum "recall_engine.v1.ChannelStatus" was deleted (or renamed)',
    ),
    "service deleted": (
        edit(
            "service AdminService {",
            "service AdminServiceGone {",
            "admin.proto",
        ),
        "SERVICE_NO_DELETE",
        'service "recall_engine.v1.AdminService" was deleted (or renamed)',
    ),
    "method deleted": (
        edit("  rpc ListChannels(ListChannelsRequest) returns (ListChannelsResponse);\n", ""),
        "RPC_NO_DELETE",
        'method "ListChannels" of service "recall_engine.v1.RecallService" was deleted',
    ),
    "method renamed": (
        edit("rpc BatchRecall(", "rpc RecallMany("),
        "RPC_NO_DELETE",
        'method "BatchRecall" of service "recall_engine.v1.RecallService"',
    ),
    "request type changed": (
        edit("rpc Recall(RecallRequest)", "rpc Recall(BatchRecallRequest)"),
        "RPC_SAME_REQUEST_TYPE",
        "changed request type from recall_engine.v1.RecallRequest to "
        "recall_engine.v1.BatchRecallRequest",
    ),
    "response type changed": (
        edit("returns (RecallResponse);", "returns (BatchRecallResponse);"),
        "RPC_SAME_RESPONSE_TYPE",
        'method "Recall" of service "recall_engine.v1.RecallService" changed response type',
    ),
    "method became streaming": (
        edit("returns (RecallResponse);", "returns (stream RecallResponse);"),
        "RPC_SAME_SERVER_STREAMING",
        "changed server streaming from False to True",
    ),
    "package changed": (
        both(
            edit("package recall_engine.v1;", "package recall_engine.v2;"),
            edit("package recall_engine.v1;", "package recall_engine.v2;", "admin.proto"),
        ),
        "FILE_SAME_PACKAGE",
        'package "recall_engine.v1" -> "recall_engine.v2"',
    ),
    "go package changed": (
        edit("gen/go/recall_engine/v1;recallv1", "gen/go/recall/v1;recallv1"),
        "FILE_SAME_GO_PACKAGE",
        "option go_package",
    ),
    "file deleted": (delete_file("admin.proto"), "FILE_NO_DELETE", "file was deleted"),
}


@pytest.mark.parametrize("kind", list(BREAKING))
def test_each_kind_of_breaking_change_is_caught(kind, tmp_path, released):
    change, rule, words = BREAKING[kind]
    findings = breaking.breaking_changes(released, mutated(tmp_path, change))
    hits = [str(f) for f in findings if f.rule == rule]
    assert any(words in h for h in hits), "\n".join(map(str, findings)) or "no findings"


COMPATIBLE = {
    "field deleted with its number and name reserved": edit(
        "  string text = 5;\n", '  reserved 5;\n  reserved "text";\n'
    ),
    "enum value deleted with its number and name reserved": edit(
        "  CHANNEL_STATUS_SKIPPED = 4;\n", '  reserved 4;\n  reserved "CHANNEL_STATUS_SKIPPED";\n'
    ),
    "additions": both(
        edit("  string request_id = 11;\n", "  string request_id = 11;\n  string locale = 98;\n"),
        edit(
            "  CHANNEL_STATUS_OVERLOADED = 5;\n",
            "  CHANNEL_STATUS_OVERLOADED = 5;\n  CHANNEL_STATUS_STALE = 6;\n",
        ),
        edit(
            "message ListChannelsRequest {}\n",
            "message ListChannelsRequest {}\n\nmessage PingRequest {}\nmessage PingResponse {}\n",
        ),
        edit(
            "  rpc ListChannels(ListChannelsRequest) returns (ListChannelsResponse);\n",
            "  rpc ListChannels(ListChannelsRequest) returns (ListChannelsResponse);\n"
            "  rpc Ping(PingRequest) returns (PingResponse);\n",
        ),
    ),
    "comments and order": edit("  // Candidates for one user.\n", ""),
}


@pytest.mark.parametrize("kind", list(COMPATIBLE))
def test_compatible_changes_pass(kind, tmp_path, released):
    assert breaking.breaking_changes(released, mutated(tmp_path, COMPATIBLE[kind])) == []


def test_the_command_fails_naming_the_rule(tmp_path):
    root = tmp_path / "protos"
    shutil.copytree(ROOT / "protos" / "recall_engine", root / "recall_engine")
    edit("uint32 k = 6;", "int32 k = 6;")(root)
    done = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "breaking.py"), "--protos", str(root)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stdout.startswith("recall_engine/v1/recall.proto: FIELD_SAME_TYPE: ")
    assert "1 breaking change(s) against 0.1.0.binpb" in done.stdout


def test_a_removed_reservation_is_caught(tmp_path):
    """Reserving a number and then taking the reservation back (to reuse the number)."""
    reserved = mutated(
        tmp_path / "a", edit("  string text = 5;\n", '  reserved 5;\n  reserved "text";\n')
    )
    reused = mutated(tmp_path / "b", edit("  string text = 5;\n", "  bytes blob = 5;\n"))
    findings = breaking.breaking_changes(reserved, reused)
    assert {f.rule for f in findings} == {"RESERVED_MESSAGE_NO_DELETE"}
    assert any("no longer reserves 5" in str(f) for f in findings)
    assert any('no longer reserves the name "text"' in str(f) for f in findings)
