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

import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ServeProcess, catalog_of
from tests.helpers import wait_until
from tests.test_dashboard import RULES, _answers, _free_port, samples

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
        server.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: any('"sighup_reload"' in e for e in server.events),
            30,
            what=lambda: "\n".join(server.events[-20:]),
        )
        page = server.scrape()
        assert missing_or_nonzero(page, channel_series("c")) == []
        assert values(page, "recall_reloads_total", kind="config", outcome="ok") == [1.0]

        # the first failed reload counts on the series that was there at 0
        write_config(config_path, channel_c=True, bad=True)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: any('"sighup_reload_failed"' in e for e in server.events),
            30,
            what=lambda: "\n".join(server.events[-20:]),
        )
        page = server.scrape()
        assert values(page, "recall_reloads_total", kind="config", outcome="failed") == [1.0]
    finally:
        server.stop()


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (Debian/Ubuntu package 'prometheus')",
)
def test_the_first_failed_reload_of_a_process_raises_the_alert(config_path, fake_plugins, tmp_path):
    """The reproduction of the review: a fresh process, watched by a real Prometheus
    with the rules loaded, fails its first config reload (SIGHUP with a bad file):
    ``increase(recall_reloads_total{outcome="failed"}[15m])`` sees it and
    RecallEngineReloadFailed is raised (pending: its ``for`` is a minute)."""
    binary = shutil.which("prometheus")
    assert binary is not None
    server = ServeProcess(config_path, fake_site=fake_plugins, need_metrics=True)
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "recall-engine",
                        "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}],
                    }
                ],
            }
        )
    )
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def api(path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def scrapes() -> float:
        result = api("query", query='count_over_time(up{job="recall-engine"}[1m])')["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def raised() -> set[str]:
        return {a["labels"]["alertname"] for a in api("alerts")["alerts"]}

    try:
        what = lambda: log_path.read_text()[-3000:]  # noqa: E731
        wait_until(lambda: _answers(port), 60, what=what)
        wait_until(lambda: scrapes() >= 3, 60, what=what)
        assert raised() == set()
        write_config(config_path, bad=True)
        server.proc.send_signal(signal.SIGHUP)
        assert wait_until(raised, 60, what="an alert") == {"RecallEngineReloadFailed"}
        alert = next(a for a in api("alerts")["alerts"])
        assert alert["labels"]["kind"] == "config"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        server.stop()
