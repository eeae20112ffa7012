"""A real Prometheus for the tests: scrapes one target every second with the repository's
alerting rules loaded, on a free 127.0.0.1 port, stopped afterwards. Used by
tests/test_dashboard.py and tests/test_metrics_series.py (skipped where the
``prometheus`` binary is missing; ``make test`` installs it)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, wait_until

RULES = ROOT / "deploy" / "prometheus" / "recall-engine-alerts.yml"
JOB = "recall-engine"

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (Debian/Ubuntu package 'prometheus')",
)


@dataclass
class Prometheus:
    port: int
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """``/api/v1/<path>``'s data; fails the test unless the status is success."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def scrapes(self) -> float:
        """Scrapes of the target in the last minute."""
        query = f'count_over_time(up{{job="{JOB}"}}[1m])'
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def raised(self) -> set[str]:
        """The names of the alerts pending or firing."""
        return {a["labels"]["alertname"] for a in self.api("alerts")["alerts"]}

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:]


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, target: str, scrapes: int = 3) -> Iterator[Prometheus]:
    """Prometheus scraping ``target`` (HOST:PORT of a /metrics), ready and with at least
    ``scrapes`` scrapes of it done when this yields."""
    binary = shutil.which("prometheus")
    assert binary is not None, "mark the test with needs_prometheus"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    prom = Prometheus(port, tmp_path / "prometheus.log")
    with prom.log.open("w") as log:
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
        try:
            wait_until(lambda: _answers(port), 60, what=prom.log_tail)
            wait_until(lambda: prom.scrapes() >= scrapes, 60, what=prom.log_tail)
            yield prom
        finally:
            proc.terminate()
            proc.wait(30)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False
