"""Labelled series exist at 0 before their first event.

``increase()`` and ``rate()`` see a change only between two samples of one series, so a
labelled counter whose series appears when it is first incremented (at 1) hides its
first event: ``RecallEngineReloadFailed`` would miss the first failed reload of every
process, the channel timeout and error ratios a channel's first timeout or error. A real
``recall-engine serve`` process is scraped before anything happened: every series the
rules in deploy/prometheus and the dashboard in deploy/grafana read whose label values
are known up front (reload kinds and outcomes, each loaded channel, each experiment
variant, the recall methods' OK status, the admin methods' refusals) is already there at
0; a channel loaded by a reload gets its series when it loads. Where Prometheus is
installed, a real one scrapes a fresh server and the first failed reload of the process
raises ``RecallEngineReloadFailed``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.harness import ServeProcess, catalog_of
from tests.helpers import wait_until
from tests.prometheus_server import needs_prometheus, running_prometheus
from tests.test_dashboard import samples

CONFIG = """
[server]
addr = "127.0.0.1:0"
metrics_addr = "127.0.0.1:0"
catalog_sync_ms = 0
drain_s = 0
grace_s = 5
{bad}

[admin]
token = "t0k"

[channels.a]
plugin = "fixed"
params = {{ items = ["i1", "i2", "i3"] }}

[channels.b]
plugin = "fixed_b"
params = {{ items = ["i4", "i5"] }}
{extra_channel}
[plan]
weights = {{ a = 1.0, b = 0.5{extra_weight} }}

[[experiments]]
name = "exp"
salt = "s"
  [[experiments.variants]]
  name = "control"
  traffic = 0.5
  [[experiments.variants]]
  name = "treatment"
  traffic = 0.5
"""

CHANNEL_COUNTERS = (
    "recall_channel_timeouts_total",
    "recall_channel_errors_total",
    "recall_channel_rejected_total",
    "recall_channel_abandoned_total",
    "recall_channel_bad_output_total",
)


def write_config(path: Path, *, channel_c: bool = False, bad: bool = False) -> None:
    path.write_text(
        CONFIG.format(
            bad="request_timeout_ms = -5" if bad else "",
            extra_channel='\n[channels.c]\nplugin = "fixed"\nparams = { items = ["i6"] }\n'
            if channel_c
            else "",
            extra_weight=", c = 0.2" if channel_c else "",
        )
    )


@pytest.fixture()
def config_path(tmp_path: Path) -> Path:
    catalog_of([f"i{n}" for n in range(1, 10)]).save(tmp_path / "artifacts" / "catalog")
    path = tmp_path / "recall.toml"
    write_config(path)
    return path


def values(page: str, name: str, **labels: str) -> list[float]:
    """The values of the series of ``name`` whose labels include ``labels`` (none: the
    series is not exported)."""
    return [
        v
        for n, have, v in samples(page)
        if n == name and all(have.get(k) == want for k, want in labels.items())
    ]


def missing_or_nonzero(page: str, wanted: list[tuple[str, dict[str, str]]]) -> list[str]:
    """The ``(name, labels)`` of ``wanted`` that are not exported as exactly one series
    at 0, with what was found."""
    return [
        f"{name}{labels}: {found}"
        for name, labels in wanted
        if (found := values(page, name, **labels)) != [0.0]
    ]


def channel_series(channel: str) -> list[tuple[str, dict[str, str]]]:
    wanted = [(name, {"channel": channel}) for name in CHANNEL_COUNTERS]
    wanted.append(("recall_channel_hung_calls", {"channel": channel}))
    wanted += [
        ("recall_channel_seconds_count", {"channel": channel, "status": status})
        for status in ("ok", "timeout", "error")
    ]
    wanted.append(("recall_channel_candidates_count", {"channel": channel}))
    return wanted


def test_a_fresh_server_exports_the_series_alerts_need_at_zero(config_path, fake_plugins):
    server = ServeProcess(config_path, fake_site=fake_plugins, need_metrics=True)
    try:
        page = server.scrape()
        wanted = [
            ("recall_reloads_total", {"kind": kind, "outcome": outcome})
            for kind in ("config", "artifacts")
            for outcome in ("ok", "failed")
        ]
        for channel in ("a", "b"):
            wanted += channel_series(channel)
        wanted += [
            ("recall_variant_requests_total", {"experiment": "exp", "variant": variant})
            for variant in ("control", "treatment")
        ]
        wanted += [
            ("recall_variant_requests_total", {"experiment": "", "variant": "default"}),
            ("recall_requests_total", {"method": "Recall", "status": "OK"}),
            ("recall_requests_total", {"method": "BatchRecall", "status": "OK"}),
            ("recall_request_seconds_count", {"method": "Recall", "status": "OK"}),
            ("recall_request_seconds_count", {"method": "BatchRecall", "status": "OK"}),
        ]
        wanted += [
            ("recall_admin_auth_failures_total", {"method": "ReloadConfig", "code": code})
            for code in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        ]
        assert missing_or_nonzero(page, wanted) == []
        # only what is known up front: no made-up channel, no error status per method
        assert values(page, "recall_channel_errors_total", channel="c") == []
        assert values(page, "recall_requests_total", status="INTERNAL") == []

        # a channel a reload loads gets its series at 0 when it loads
        write_config(config_path, channel_c=True)
        sighup(server, "sighup_reload")
        page = server.scrape()
        assert missing_or_nonzero(page, channel_series("c")) == []
        assert values(page, "recall_reloads_total", kind="config", outcome="ok") == [1.0]

        # the first failed reload counts on the series that was there at 0
        write_config(config_path, channel_c=True, bad=True)
        sighup(server, "sighup_reload_failed")
        page = server.scrape()
        assert values(page, "recall_reloads_total", kind="config", outcome="failed") == [1.0]
    finally:
        server.stop()


def sighup(server: ServeProcess, event: str) -> None:
    """Send SIGHUP and wait for the log line ``event`` it ends in."""
    server.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any(f'"{event}"' in e for e in server.events),
        30,
        what=lambda: "\n".join(server.events[-20:]),
    )


@needs_prometheus
def test_the_first_failed_reload_of_a_process_raises_the_alert(config_path, fake_plugins, tmp_path):
    """The reproduction of the review: a fresh process, watched by a real Prometheus
    with the rules loaded, fails its first config reload (SIGHUP with a bad file):
    ``increase(recall_reloads_total{outcome="failed"}[15m])`` sees it and
    RecallEngineReloadFailed is raised (pending: its ``for`` is a minute)."""
    server = ServeProcess(config_path, fake_site=fake_plugins, need_metrics=True)
    try:
        with running_prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}") as prom:
            assert prom.raised() == set()
            write_config(config_path, bad=True)
            server.proc.send_signal(signal.SIGHUP)
            assert wait_until(prom.raised, 60, what="an alert") == {"RecallEngineReloadFailed"}
            alert = next(a for a in prom.api("alerts")["alerts"])
            assert alert["labels"]["kind"] == "config"
    finally:
        server.stop()
