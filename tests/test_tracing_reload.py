"""``[tracing]`` is read at start-up: a config reload (ReloadConfig, SIGHUP; both call
``Engine.reload_config``) that changes it logs ``tracing_change_needs_restart`` naming
the keys that differ from the ones in force, and reloads that leave it alone log
nothing. A real gRPC server on 127.0.0.1 (tests/harness.py)."""

from __future__ import annotations

from recall_engine._proto import admin_pb2
from tests.harness import catalog_of, make_config, serve
from tests.log_events import parse_events

ITEMS = ["i1", "i2", "i3"]
TOKEN = (("authorization", "Bearer t0k"),)


def config(tmp_path, **tracing):
    return make_config(
        {
            "admin": {"token": "t0k"},
            "channels": {"a": {"plugin": "fixed", "params": {"items": ITEMS}}},
            "tracing": tracing,
        },
        tmp_path,
    )


def test_a_reload_that_changes_tracing_warns_that_it_needs_a_restart(tmp_path, capsys):
    current = {"cfg": config(tmp_path)}
    with serve(current["cfg"], catalog_of(ITEMS), reload_config=lambda: current["cfg"]) as s:
        # nothing changed in [tracing]: no warning
        assert s.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=TOKEN, timeout=30)
        out = capsys.readouterr()
        assert parse_events(out.out + out.err, "config_reloaded")
        assert parse_events(out.out + out.err, "tracing_change_needs_restart") == []

        # exporter stays "none": nothing needs OpenTelemetry, the keys still differ
        current["cfg"] = config(tmp_path, sampling_ratio=0.25, service_name="elsewhere")
        resp = s.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=TOKEN, timeout=30)
        assert resp.config_generation == 3  # the rest of the config is applied
        out = capsys.readouterr()
        warned = parse_events(out.out + out.err, "tracing_change_needs_restart")
        assert len(warned) == 1, out
        assert warned[0]["level"] == "warning"
        assert warned[0]["keys"] == ["sampling_ratio", "service_name"]

        # still not in force: the next reload says so again, against the start-up values
        current["cfg"] = config(tmp_path, sampling_ratio=0.25)
        s.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=TOKEN, timeout=30)
        out = capsys.readouterr()
        warned = parse_events(out.out + out.err, "tracing_change_needs_restart")
        assert [w["keys"] for w in warned] == [["sampling_ratio"]]
