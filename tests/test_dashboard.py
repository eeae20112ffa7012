"""The Grafana dashboard and the Prometheus rules in deploy/ against a running server.

A real ``recall-engine serve`` process on built artifacts is sent real traffic (recalls
with history and with text, a batch, a bad request, an item upsert, reloads that work and
reloads that fail, an unauthenticated admin call), its ``/metrics`` page is scraped over
HTTP, and every metric name in the dashboard's PromQL and in the rules must be one the
page exports, with the suffix Prometheus sees (``_total`` for counters, ``_bucket`` /
``_sum`` / ``_count`` for histograms). The names come out of each expression through a
small PromQL tokenizer, tested here on its own and shown to report a made-up name.

Where the Debian/Ubuntu package ``prometheus`` is installed, two more tests run (each
skips, saying so, without it): ``promtool check rules`` must accept the rules and every
dashboard expression wrapped as a recording rule; and a real Prometheus scrapes the
server with the rules loaded, every rule must evaluate without error, every dashboard
query must run and return data (the failure panels of a healthy server too: their series
are exported at 0 from start-up, see tests/test_metrics_series.py), and a failed reload
made while it watches must raise ``RecallEngineReloadFailed`` and nothing else.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from recall_engine._proto import admin_pb2, admin_pb2_grpc, recall_pb2, recall_pb2_grpc
from tests.harness import ServeProcess
from tests.helpers import ROOT, wait_until
from tests.prometheus_server import RULES, needs_prometheus, running_prometheus

DASHBOARD = ROOT / "deploy" / "grafana" / "recall-engine-dashboard.json"
RELIABILITY = ROOT / "docs" / "reliability.md"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TOKEN = "dash-token"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)

#: Series Prometheus makes itself for every target; no server exports them.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


# -- a small PromQL tokenizer ---------------------------------------------------------

#: Keywords after which a parenthesised list holds label names, not expressions.
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
#: Aggregation operators: may be followed by ``by (...)`` before their parenthesis.
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?[A-Za-z0-9]*")
_GRAFANA_VAR = re.compile(r"\$(?:\{[^}]*\}|\[\[[^\]]*\]\]|\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<args>.*)\)\s*$", re.S)


def _skip_string(expr: str, i: int) -> int:
    quote, i = expr[i], i + 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    if i >= len(expr):
        raise ValueError(f"unterminated string in {expr!r}")
    return i + 1


def _closing(expr: str, i: int, open_: str, close: str) -> int:
    """The index just past the ``close`` that matches ``expr[i] == open_``."""
    depth = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        depth += c == open_
        depth -= c == close
        i += 1
        if depth == 0:
            return i
    raise ValueError(f"unbalanced {open_!r} in {expr!r}")


def selectors(expr: str) -> list[tuple[str, str]]:
    """Every metric selector in PromQL ``expr``, in order: (metric name, the text of its
    label matchers, '' when it has none). Function names, aggregation operators,
    keywords, label lists after ``by``/``on``/..., strings, ranges and numbers are not
    metric names; Grafana variables (``$job``, ``${x}``) are skipped."""
    out: list[tuple[str, str]] = []
    i, n, depth = 0, len(expr), 0
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c in "()":
            depth += 1 if c == "(" else -1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in {expr!r}")
            i += 1
        elif c == "{":  # a selector without a name: {__name__="x"} cannot be checked here
            end = _closing(expr, i, "{", "}")
            raise ValueError(f"selector without a metric name in {expr!r}: {expr[i:end]}")
        elif c == "[":
            i = _closing(expr, i, "[", "]")
        elif c == "#":
            end = expr.find("\n", i)
            i = n if end < 0 else end
        elif c == "$":
            m = _GRAFANA_VAR.match(expr, i)
            i = m.end() if m else i + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = _NUMBER.match(expr, i)
            assert m is not None
            i = m.end()
        elif _IDENT.match(expr, i):
            m = _IDENT.match(expr, i)
            assert m is not None
            word, i = m.group(), m.end()
            j = i
            while j < n and expr[j].isspace():
                j += 1
            low = word.lower()
            if low in _GROUPING:
                if j < n and expr[j] == "(":
                    i = _closing(expr, j, "(", ")")
            elif low in _AGGREGATIONS or low in _KEYWORDS or (j < n and expr[j] == "("):
                pass  # an operator, a keyword or a function call
            elif j < n and expr[j] == "{":
                end = _closing(expr, j, "{", "}")
                out.append((word, expr[j + 1 : end - 1]))
                i = end
            else:
                out.append((word, ""))
        else:
            i += 1
    if depth:
        raise ValueError(f"unbalanced '(' in {expr!r}")
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names PromQL ``expr`` reads (see :func:`selectors`)."""
    return {name for name, _ in selectors(expr)}


def variable_query_names(query: str) -> set[str]:
    """The metric names a Grafana Prometheus variable query reads: ``label_values(
    SELECTOR, label)`` reads SELECTOR's, ``label_values(label)`` none, ``query_result(
    EXPR)`` EXPR's."""
    m = _LABEL_VALUES.match(query)
    if m:
        args = m.group("args")
        head, comma, _label = args.rpartition(",")
        return metric_names(head) if comma else set()
    m = re.match(r"^\s*query_result\((?P<expr>.*)\)\s*$", query, re.S)
    if m:
        return metric_names(m.group("expr"))
    if re.match(r"^\s*(label_names|metrics)\(", query):
        return set()
    return metric_names(query)


# -- what a /metrics page exports -------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def exported_names(page: str) -> set[str]:
    """The series names a Prometheus server scraping ``page`` can query: each family's
    names as its type exposes them (a counter ``x`` as ``x_total``, a histogram ``x`` as
    ``x_bucket``/``x_sum``/``x_count``), whether or not a labelled family has a series
    yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(page):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def samples(page: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(page)
        for s in family.samples
    ]


# -- what the dashboard and the rules read -----------------------------------------------


def all_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    return [
        (f"panel {p['id']} {p.get('title', '')!r} target {t.get('refId')}", t["expr"])
        for p in all_panels(dashboard["panels"])
        for t in p.get("targets", [])
    ]


def variable_queries(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        out.append((f"variable {var['name']}", query))
    return out


def rule_queries(rules: dict) -> list[tuple[str, str]]:
    return [
        (f"{g['name']}: {r.get('record') or r.get('alert')}", r["expr"])
        for g in rules["groups"]
        for r in g["rules"]
    ]


def recorded(rules: dict) -> set[str]:
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def unknown_metrics(dashboard: dict, rules: dict, exported: set[str]) -> dict[str, set[str]]:
    """Where the dashboard or the rules read a metric that is neither exported, nor
    recorded by a rule, nor made by Prometheus itself, and which names."""
    known = exported | recorded(rules) | SCRAPE_SERIES
    found: dict[str, set[str]] = {}
    for where, expr in dashboard_queries(dashboard) + rule_queries(rules):
        missing = metric_names(expr) - known
        if missing:
            found[where] = missing
    for where, query in variable_queries(dashboard):
        missing = variable_query_names(query) - known
        if missing:
            found[where] = missing
    return found


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


# -- the tokenizer on its own -----------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('rate(a_total{job=~"$job", x="by (y)"}[$__rate_interval])', {"a_total"}),
        (
            'histogram_quantile(0.99, sum by (le, channel) (rate(h_bucket{c="}"}[5m])))',
            {"h_bucket"},
        ),
        (
            "sum without (instance) (g) / on (job) group_left (x) max(k:rec:rate5m)",
            {"g", "k:rec:rate5m"},
        ),
        ("time() - (ts_seconds > 0) > 60 and bool 1e-9 < Inf", {"ts_seconds"}),
        ("SUM BY (job) (RATE(c_total[1h30m] offset 5m))", {"c_total"}),
        ("changes(gauge[15m]) >= 3 or vector(0) unless absent(other)", {"gauge", "other"}),
        ('topk(5, x) + count_values("v", y) + ${var} * $__range_s', {"x", "y"}),
    ],
)
def test_the_tokenizer_finds_metric_names_and_nothing_else(expr, names):
    assert metric_names(expr) == names


def test_the_tokenizer_refuses_what_it_cannot_check():
    with pytest.raises(ValueError, match="without a metric name"):
        metric_names('{__name__="recall_requests_total"}')
    with pytest.raises(ValueError, match="unbalanced"):
        metric_names("sum(rate(x[5m])")


def test_variable_queries_read_the_selector_not_the_label():
    assert variable_query_names('label_values(a_total{job=~"$job"}, instance)') == {"a_total"}
    assert variable_query_names("label_values(job)") == set()
    assert variable_query_names("query_result(topk(3, b))") == {"b"}


def test_exported_names_carry_the_suffixes_prometheus_queries():
    page = (
        "# HELP c_total c\n# TYPE c_total counter\n"
        "# HELP h h\n# TYPE h histogram\n"
        "# HELP g g\n# TYPE g gauge\ng 1.0\n"
    )
    names = exported_names(page)
    assert {"c_total", "h_bucket", "h_sum", "h_count", "g"} <= names
    assert not {"c", "h", "g_total"} & names


# -- structure ----------------------------------------------------------------------------


def test_the_dashboard_is_an_importable_grafana_dashboard():
    dash = load_dashboard()
    assert dash["title"] and dash["uid"] and dash.get("id") is None
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
    panels = list(all_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        pos = p["gridPos"]
        assert {"h", "w", "x", "y"} <= pos.keys(), p["title"]
        assert pos["w"] > 0 and pos["h"] > 0 and 0 <= pos["x"] and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panels {cells.get((x, y))} and {p['id']} overlap"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), p["id"]
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), p["title"]


def test_every_dashboard_selector_follows_the_job_and_instance_variables():
    for where, expr in dashboard_queries(load_dashboard()):
        for name, matchers in selectors(expr):
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, (
                f"{where}: {name} ignores the $job/$instance variables"
            )


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of ``markdown``."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_the_rules_file_is_well_formed_and_every_runbook_section_exists():
    rules = load_rules()
    anchors = _anchors(RELIABILITY.read_text())
    groups = rules["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    records = [r for g in groups for r in g["rules"] if "record" in r]
    assert alerts and records
    assert len({r["alert"] for r in alerts}) == len(alerts)
    for r in records:
        assert set(r) <= {"record", "expr", "labels"}, r
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", r["record"]), r["record"]
    for r in alerts:
        name = r["alert"]
        assert set(r) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert re.fullmatch(r"RecallEngine[A-Za-z]+", name)
        assert re.fullmatch(r"\d+[smh]", r["for"]), name
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes = r["annotations"]
        assert notes["summary"] and notes["description"], name
        page, _, anchor = notes["runbook"].partition("#")
        assert page == "docs/reliability.md" and anchor in anchors, f"{name}: {notes['runbook']}"
    wanted = {
        "RecallEngineHighErrorRatio",
        "RecallEngineChannelTimeouts",
        "RecallEngineShedding",
        "RecallEngineCatalogSyncLagging",
        "RecallEngineWorkerRestarting",
        "RecallEngineHungChannelCalls",
        "RecallEngineNotServing",
    }
    assert wanted <= {r["alert"] for r in alerts}


# -- against a running server ----------------------------------------------------------------


def _config_text(root: Path, content: bool, sync_ms: int = 50) -> str:
    channels = (
        "[channels.popular]\nrequired = true\n\n[channels.cf]\nparams = { two_tower = false }\n"
    )
    weights = "popular = 0.3, cf = 1.0"
    if content:
        channels += "\n[channels.content]\nparams = { epochs = 1 }\n"
        weights += ", content = 0.6"
    return f"""
[server]
addr = "127.0.0.1:0"
metrics_addr = "127.0.0.1:0"
catalog_sync_ms = {sync_ms}
drain_s = 0
grace_s = 5

[admin]
token = "{TOKEN}"

[artifacts]
root = "{root}"

{channels}
[plan]
fusion = "rrf"
weights = {{ {weights} }}

[[experiments]]
name = "dashboard-test"
salt = "dash"
  [[experiments.variants]]
  name = "control"
  traffic = 0.5
  [[experiments.variants]]
  name = "more-cf"
  traffic = 0.5
  [experiments.variants.plan]
  weights = {{ {weights.replace("cf = 1.0", "cf = 2.0")} }}
"""


class Served(NamedTuple):
    server: ServeProcess
    content: bool  # whether the content channel (an encoder) was served


class Scraped(NamedTuple):
    page: str
    content: bool


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_small) -> Iterator[Served]:
    """A real server, after real traffic of every kind and a catalogue sync round."""
    from recall_engine.config import load_config
    from recall_engine.offline.build import build_all

    try:  # the content channel (and so an encoder) is built with PyTorch, the [train] extra
        import torch  # noqa: F401

        content = True
    except ImportError:
        content = False
    tmp = tmp_path_factory.mktemp("dashboard")
    root = tmp / "artifacts"
    path = tmp / "recall.toml"
    path.write_text(_config_text(root, content))
    built = build_all(demo_small.interactions, demo_small.items, root, load_config(path))
    assert all(b.version for b in built), built

    # one process: the test's traffic and its Prometheus scrape meet on one /metrics
    # port (with --processes N, Prometheus scrapes each worker's port, metrics_addr + i)
    server = ServeProcess(path, cwd=ROOT, start_s=180, need_metrics=True, processes=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            _send_traffic(channel, demo_small, path, root, content)
        wait_until(
            lambda: _value(server.scrape(), "recall_catalog_last_sync_timestamp_seconds") > 0,
            30,
            what="a catalogue sync round",
        )
        yield Served(server, content)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scraped(served: Served) -> Scraped:
    """The server's /metrics page, scraped over HTTP."""
    return Scraped(served.server.scrape(), served.content)


def _send_traffic(channel: grpc.Channel, demo: Any, path: Path, root: Path, content: bool) -> None:
    stub = recall_pb2_grpc.RecallServiceStub(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    history = [i for i, t in demo.topics.items() if t == "jazz"][:5]
    for n in range(12):  # both variants of the experiment
        resp = stub.Recall(
            recall_pb2.RecallRequest(user_id=f"u{n}", history_item_ids=history, k=20), timeout=20
        )
        assert len(resp.item_ids) == 20
    resp = stub.Recall(
        recall_pb2.RecallRequest(user_id="t", text="late night jazz records with a trumpet", k=10),
        timeout=20,
    )
    assert resp.item_ids
    stub.Recall(recall_pb2.RecallRequest(user_id="nobody", k=5), timeout=20)
    stub.BatchRecall(
        recall_pb2.BatchRecallRequest(
            requests=[
                recall_pb2.RecallRequest(user_id="b1", history_item_ids=history, k=5),
                recall_pb2.RecallRequest(user_id="b2", k=5),
            ]
        ),
        timeout=20,
    )
    with pytest.raises(grpc.RpcError) as bad:
        stub.Recall(recall_pb2.RecallRequest(user_id="x", k=100_000), timeout=20)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as anonymous:
        admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), timeout=20)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

    item = admin_pb2.Item(
        item_id="dash-1", title="Dashboard jazz", text="jazz", categories=["jazz"]
    )
    admin.UpsertItems(admin_pb2.UpsertItemsRequest(items=[item]), metadata=ADMIN, timeout=60)
    admin.Reload(admin_pb2.ReloadRequest(channels=["popular"]), metadata=ADMIN, timeout=60)
    with pytest.raises(grpc.RpcError) as missing:
        admin.Reload(
            admin_pb2.ReloadRequest(channels=["popular"], version="no-such-version"),
            metadata=ADMIN,
            timeout=60,
        )
    assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=ADMIN, timeout=60)
    path.write_text(_config_text(root, content, sync_ms=-5))
    with pytest.raises(grpc.RpcError) as broken:
        admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=ADMIN, timeout=60)
    assert broken.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    path.write_text(_config_text(root, content))


def _value(page: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for n, have, v in samples(page)
        if n == name and all(have.get(k) == want for k, want in labels.items())
    )


def test_every_metric_the_dashboard_and_the_rules_read_is_exported(scraped):
    assert unknown_metrics(load_dashboard(), load_rules(), exported_names(scraped.page)) == {}


def test_a_made_up_or_mis_suffixed_metric_in_the_dashboard_is_reported(scraped):
    dash = copy.deepcopy(load_dashboard())
    panel = next(p for p in all_panels(dash["panels"]) if p["type"] == "timeseries")
    panel["targets"].append(
        {"refId": "Y", "datasource": DATASOURCE, "expr": "sum(rate(recall_made_up_total[5m]))"}
    )
    panel["targets"].append(  # a histogram is queried through _bucket/_sum/_count only
        {"refId": "Z", "datasource": DATASOURCE, "expr": "rate(recall_request_seconds[5m])"}
    )
    found = unknown_metrics(dash, load_rules(), exported_names(scraped.page))
    assert sorted(sorted(names) for names in found.values()) == [
        ["recall_made_up_total"],
        ["recall_request_seconds"],
    ]
    assert all(f"panel {panel['id']} " in where for where in found)


def test_the_traffic_made_the_series_the_panels_plot(scraped):
    page = scraped.page
    assert _value(page, "recall_requests_total", method="Recall", status="OK") >= 14
    assert _value(page, "recall_requests_total", method="Recall", status="INVALID_ARGUMENT") == 1
    assert _value(page, "recall_requests_total", method="BatchRecall", status="OK") == 1
    assert _value(page, "recall_request_seconds_count", method="Recall", status="OK") >= 14
    variants = {
        labels["variant"]
        for name, labels, v in samples(page)
        if name == "recall_variant_requests_total" and labels["experiment"] == "dashboard-test"
    }
    assert variants == {"control", "more-cf"}
    for channel in ("popular", "cf"):
        assert _value(page, "recall_channel_seconds_count", channel=channel, status="ok") > 0
        assert _value(page, "recall_channel_candidates_count", channel=channel) > 0
        assert any(
            n == "recall_channel_in_flight" and lab.get("channel") == channel
            for n, lab, _ in samples(page)
        )
    assert _value(page, "recall_reloads_total", kind="artifacts", outcome="ok") == 1
    assert _value(page, "recall_reloads_total", kind="artifacts", outcome="failed") == 1
    assert _value(page, "recall_reloads_total", kind="config", outcome="ok") == 1
    assert _value(page, "recall_reloads_total", kind="config", outcome="failed") == 1
    assert _value(page, "recall_config_generation") == 2
    assert _value(page, "recall_admin_auth_failures_total", code="UNAUTHENTICATED") == 1
    assert _value(page, "recall_catalog_last_sync_timestamp_seconds") > 0
    assert _value(page, "recall_serving") == 1
    assert _value(page, "recall_engine_admission_limit") > 0
    assert _value(page, "recall_worker_restarts") == 0


def test_the_text_query_made_the_encoder_series(scraped):
    if not scraped.content:
        pytest.skip("the content channel (an encoder) is built with PyTorch: the [train] extra")
    for name in ("batch_size", "queue_seconds", "seconds"):
        assert _value(scraped.page, f"recall_encoder_{name}_count", encoder="content") >= 1


# -- promtool, where installed ------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian/Ubuntu package 'prometheus')",
)
def test_promtool_accepts_the_rules_and_every_dashboard_expression(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool is not None
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # Grafana's variables replaced by what they stand for, each expression a recording rule:
    # promtool then parses every one of them.
    subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
    exprs = []
    for _, expr in dashboard_queries(load_dashboard()):
        for var, value in subst.items():
            expr = expr.replace(var, value)
        exprs.append(_GRAFANA_VAR.sub(".*", expr))
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr:{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(exprs)} rules found" in done.stdout


# -- a real Prometheus, where installed ----------------------------------------------------

#: Dashboard targets (panel title and refId) that return no series from a healthy server
#: after the fixture's traffic. None: the channel failures it never had (errors, refused
#: answers, bulkhead refusals, hung and abandoned calls) are series at 0 from the moment
#: the channel loaded (metrics.channel_series), so their panels show 0, and a first
#: failure is a change. Every target must return data.
EMPTY_WHEN_HEALTHY: set[str] = set()


@needs_prometheus
def test_prometheus_evaluates_every_panel_and_rule_against_the_server(served, tmp_path):
    """A real Prometheus scrapes the server every second with the rules loaded: every
    rule evaluates without error, every dashboard query runs and returns data (the
    failure panels of a healthy server at 0), and a failed reload made now raises
    RecallEngineReloadFailed, the only alert that is raised."""
    with running_prometheus(tmp_path, f"127.0.0.1:{served.server.metrics_port}", 5) as prom:
        with grpc.insecure_channel(f"127.0.0.1:{served.server.port}") as channel:
            with pytest.raises(grpc.RpcError):
                admin_pb2_grpc.AdminServiceStub(channel).Reload(
                    admin_pb2.ReloadRequest(channels=["popular"], version="gone"),
                    metadata=ADMIN,
                    timeout=60,
                )
        assert wait_until(prom.raised, 60, what="an alert") == {"RecallEngineReloadFailed"}

        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == len(rule_queries(load_rules()))
        unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
        assert unhealthy == {}

        subst = {"$__rate_interval": "15s", "$__interval": "15s", "$__range": "1m"}
        empty, errors = set(), {}
        for (where, expr), panel in _with_titles(load_dashboard()):
            for var, value in subst.items():
                expr = expr.replace(var, value)
            expr = _GRAFANA_VAR.sub(".*", expr)
            try:
                result = prom.api("query", query=expr)["result"]
            except urllib.error.HTTPError as e:
                errors[where] = e.read().decode()
                continue
            if not result:
                empty.add(panel)
        assert errors == {}
        expected = set(EMPTY_WHEN_HEALTHY)
        if not served.content:  # no channel with an encoder was served
            expected |= {t for _, t in _with_titles(load_dashboard()) if t.startswith("Encoder")}
        assert empty == expected


def _with_titles(dashboard: dict) -> list[tuple[tuple[str, str], str]]:
    return [
        ((f"panel {p['id']} target {t['refId']}", t["expr"]), f"{p['title']} {t['refId']}")
        for p in all_panels(dashboard["panels"])
        for t in p.get("targets", [])
    ]
