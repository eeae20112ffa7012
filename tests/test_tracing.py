"""OpenTelemetry tracing end to end: a real gRPC server on 127.0.0.1, channels registered
as real entry points (tests/fault_plugins.py, and an encoding channel on a real
MicroBatcher below), spans caught by an ``InMemorySpanExporter`` or sent over OTLP to a
collector served here. A caller's ``traceparent`` is continued; each channel call has a
span with its status, a timeout and an error included; fusion and the encoder wait
have spans; the trace id is in the log lines; off, nothing is traced and OpenTelemetry
is not even imported; on without the packages, start-up stops naming the extra."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import structlog

from recall_engine._proto import recall_pb2
from recall_engine.config import ConfigError, parse_config
from recall_engine.observability import logs, tracing
from recall_engine.serving.server import start_tracing
from tests.fault_plugins import CONTROL, fault_site, faults  # noqa: F401 - fixtures
from tests.harness import catalog_of, make_config, serve
from tests.helpers import ROOT, TESTS, require, wait_until
from tests.log_events import parse_events

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),)
ITEMS = [f"i{n}" for n in range(1, 13)]
OK, TIMEOUT, ERROR = (
    recall_pb2.CHANNEL_STATUS_OK,
    recall_pb2.CHANNEL_STATUS_TIMEOUT,
    recall_pb2.CHANNEL_STATUS_ERROR,
)

# A channel that embeds the query text through a real MicroBatcher (the encoders' path
# under the content and llm channels, without an ONNX model), installed as a real
# distribution like conftest.py's fake plugins.
ENCODING_PLUGIN = """
import numpy as np
from recall_engine.runtime.encoders import MicroBatcher
from recall_engine.sdk.channel import Candidates, Channel, ChannelInfo


class EncodingChannel(Channel):
    trusted_output = True

    def load(self):
        self.items = [str(i) for i in self.ctx.params.get("items", [])]
        self.batcher = MicroBatcher(self._embed, max_batch=4, max_delay_ms=1, name=self.ctx.name)

    def _embed(self, texts):
        return [np.full(4, len(t), np.float32) for t in texts]

    def warmup(self):
        pass

    def recall(self, query, k):
        vector = self.batcher.submit(query.text or "none")
        items = self.items[:k]
        scores = [float(vector[0]) / (i + 1) for i in range(len(items))]
        return Candidates(items, np.asarray(scores, np.float32))

    def info(self):
        return ChannelInfo(version="enc-1", item_count=len(self.items))

    def close(self):
        self.batcher.close()
"""


@pytest.fixture(scope="module")
def encoding_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    site = tmp_path_factory.mktemp("trace_site")
    (site / "tests_trace_plugins.py").write_text(ENCODING_PLUGIN)
    info = site / "recall_engine_trace_plugins-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: recall_engine_trace_plugins\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[recall_engine.channels]\nencoding = tests_trace_plugins:EncodingChannel\n"
    )
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))


@pytest.fixture()
def spans(faults) -> Iterator:  # noqa: F811 - needs the fault plugins (fixture above)
    """Tracing on, every span exported at once into memory; off again afterwards."""
    require("opentelemetry.sdk", extra="tracing")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.configure(exporter="console", span_exporter=exporter)
    yield exporter
    tracing.shutdown()


def config_with(tmp_path: Path, channels: dict, weights: dict | None = None, **tables):
    """The fallback ``popular`` and a healthy ``good`` channel, plus ``channels``."""
    all_channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ["i9", "i10"]}},
        "good": {"plugin": "fault", "timeout_ms": 2000, "params": {"items": ["i1", "i2", "i3"]}},
        **channels,
    }
    w = weights or {name: (0.1 if name == "popular" else 1.0) for name in all_channels}
    return make_config({"channels": all_channels, "plan": {"weights": w}, **tables}, tmp_path)


def by_name(exported, name: str) -> list:
    return [s for s in exported if s.name == name]


def channel_spans(exported) -> dict:
    return {s.attributes["recall.channel"]: s for s in by_name(exported, "recall.channel")}


def hex_id(n: int, digits: int) -> str:
    return format(n, f"0{digits}x")


def the_server_span(exporter, method: str = "recall_engine.v1.RecallService/Recall"):
    """The RPC's span: it ends as the call returns, so wait (bounded) for its export."""
    return wait_until(
        lambda: next((s for s in exporter.get_finished_spans() if s.name == method), None),
        10,
        what=f"the {method} span",
    )


# --------------------------------------------------------------------------- spans


def test_a_recall_continues_the_callers_trace_with_a_span_per_channel_fusion_and_encoder(
    tmp_path, spans, encoding_site
):
    from opentelemetry.trace import SpanKind, StatusCode

    config = config_with(tmp_path, {"enc": {"plugin": "encoding", "params": {"items": ["i4"]}}})
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(
            recall_pb2.RecallRequest(user_id="u", k=10, text="galaxies"),
            timeout=10,
            metadata=TRACEPARENT,
        )
        server = the_server_span(spans)
    assert {c.channel: c.status for c in resp.channels} == {"popular": OK, "good": OK, "enc": OK}
    exported = spans.get_finished_spans()
    assert {hex_id(s.context.trace_id, 32) for s in exported} == {TRACE_ID}

    assert server.kind == SpanKind.SERVER and server.parent is not None
    assert server.parent.is_remote and hex_id(server.parent.span_id, 16) == CALLER_SPAN
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.method"] == "Recall"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.status.status_code == StatusCode.UNSET

    (request,) = by_name(exported, "recall.request")
    assert request.parent.span_id == server.context.span_id
    assert request.attributes["recall.returned"] == len(resp.item_ids)
    assert request.attributes["recall.variant"] == resp.variant

    channels = channel_spans(exported)
    assert set(channels) == {"popular", "good", "enc"}
    for name, span in channels.items():
        report = next(c for c in resp.channels if c.channel == name)
        assert span.parent.span_id == request.context.span_id, name
        assert span.attributes["recall.channel.status"] == "OK"
        assert span.attributes["recall.channel.candidates"] == report.returned
        assert span.attributes["recall.channel.latency_ms"] == pytest.approx(report.latency_ms)
        assert span.status.status_code == StatusCode.UNSET

    (fusion,) = by_name(exported, "recall.fusion")
    assert fusion.parent.span_id == request.context.span_id
    assert fusion.attributes["recall.fusion.strategy"] == resp.fusion == "rrf"
    assert fusion.attributes["recall.fusion.lists"] == 3
    assert fusion.attributes["recall.fusion.candidates"] == len(resp.item_ids)

    (wait,) = by_name(exported, "recall.encoder.wait")
    assert wait.parent.span_id == channels["enc"].context.span_id  # across the thread hop
    assert wait.attributes["recall.encoder"] == "enc"
    assert wait.attributes["recall.encoder.batch_size"] == 1
    assert wait.attributes["recall.encoder.queue_ms"] >= 0


def test_a_timed_out_and_a_failing_channel_have_spans_with_their_status_and_error(tmp_path, spans):
    from opentelemetry.trace import StatusCode

    config = config_with(
        tmp_path,
        {
            "slow": {
                "plugin": "fault",
                "timeout_ms": 50,
                "params": {"items": ["i4"], "fault": "hang"},
            },
            "boom": {"plugin": "fault", "params": {"items": ["i5"], "fault": "raise"}},
            # its encoder wait (a real MicroBatcher whose batch hangs) ends at the deadline
            "late": {
                "plugin": "fault",
                "timeout_ms": 100,
                "params": {"items": ["i6"], "fault": "encoder_deadline"},
            },
        },
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(
            recall_pb2.RecallRequest(user_id="u", k=10), timeout=10, metadata=TRACEPARENT
        )
        server = the_server_span(spans)
        # the encoder wait ends on the channel's own thread, at the call's deadline
        wait = wait_until(lambda: by_name(spans.get_finished_spans(), "recall.encoder.wait"), 10)
        CONTROL.release.set()
    statuses = {c.channel: c.status for c in resp.channels}
    assert statuses == {"popular": OK, "good": OK, "slow": TIMEOUT, "boom": ERROR, "late": TIMEOUT}
    assert server.attributes["rpc.grpc.status_code"] == 0  # answered: fail-open
    channels = channel_spans(spans.get_finished_spans())

    slow = channels["slow"]
    assert slow.attributes["recall.channel.status"] == "TIMEOUT"
    assert slow.status.status_code == StatusCode.ERROR
    assert slow.status.description == "no answer within 50 ms"
    assert slow.attributes["recall.channel.candidates"] == 0
    assert slow.end_time < server.end_time  # ended at the deadline, not when it returns

    boom = channels["boom"]
    assert boom.attributes["recall.channel.status"] == "ERROR"
    assert boom.status.status_code == StatusCode.ERROR
    assert "recall raised RuntimeError: injected fault in recall" in boom.status.description
    (event,) = [e for e in boom.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "injected fault in recall"

    late = channels["late"]
    assert late.attributes["recall.channel.status"] == "TIMEOUT"
    assert late.status.status_code == StatusCode.ERROR
    (wait,) = wait
    assert wait.parent.span_id == late.context.span_id
    assert wait.status.status_code == StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in wait.events] == ["TimeoutError"]
    for span in channels.values():
        assert span.parent.span_id != server.context.span_id  # under recall.request
        assert hex_id(span.context.trace_id, 32) == TRACE_ID


def test_a_refused_request_has_its_code_on_the_server_span_and_no_exception(tmp_path, spans):
    from opentelemetry.trace import StatusCode

    with serve(config_with(tmp_path, {}), catalog_of(ITEMS)) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5000), timeout=10)
        server = the_server_span(spans)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.parent is None  # no traceparent: a trace of its own
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.status.status_code == StatusCode.UNSET  # the caller's fault, not ours
    assert server.events == ()


# A ranking service, as its own process: its global tracer provider keeps spans in
# memory, its gRPC clients are instrumented the usual way (opentelemetry-instrumentation-
# grpc, sync and asyncio), and it calls recall through recall_engine.client inside a
# span of its own. It prints the spans it made as JSON lines.
RANKING_SERVICE = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
GrpcInstrumentorClient().instrument()
GrpcAioInstrumentorClient().instrument()

from recall_engine.client import AsyncRecallClient, RecallClient, RecallQuery

address, tracer = sys.argv[1], trace.get_tracer("ranking-service")
with tracer.start_as_current_span("rank.page"), RecallClient(address) as client:
    client.recall(RecallQuery(user_id="u", k=5))

async def page():
    with tracer.start_as_current_span("rank.page.async"):
        async with AsyncRecallClient(address) as client:
            await client.recall(RecallQuery(user_id="u", k=5))

asyncio.run(page())
for s in exporter.get_finished_spans():
    print(json.dumps({
        "name": s.name, "kind": s.kind.name, "trace_id": s.context.trace_id,
        "span_id": s.context.span_id, "parent": s.parent.span_id if s.parent else None,
    }))
"""


def test_a_caller_instrumented_by_opentelemetry_grpc_continues_its_trace_through_the_client(
    tmp_path, spans
):
    """The story of a slow page, across two processes: the ranking service's span, the
    client span its instrumentation makes around ``recall_engine.client``, then recall's
    server span and a span per channel, all in one trace. Sync and asyncio clients."""
    require("opentelemetry.instrumentation.grpc", extra="tracing")
    with serve(config_with(tmp_path, {}), catalog_of(ITEMS)) as s:
        ranking = subprocess.run(
            [sys.executable, "-c", RANKING_SERVICE, f"127.0.0.1:{s.port}"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert ranking.returncode == 0, ranking.stderr
        wait_until(lambda: len(by_name(spans.get_finished_spans(), "recall.request")) == 2, 10)
    caller = [json.loads(line) for line in ranking.stdout.splitlines()]
    ours = spans.get_finished_spans()
    servers = {
        s.parent.span_id: s for s in ours if s.name == "recall_engine.v1.RecallService/Recall"
    }
    for page_name in ("rank.page", "rank.page.async"):
        (page,) = [c for c in caller if c["name"] == page_name]
        (client,) = [c for c in caller if c["kind"] == "CLIENT" and c["parent"] == page["span_id"]]
        assert client["name"] == "/recall_engine.v1.RecallService/Recall"
        assert client["trace_id"] == page["trace_id"], page_name
        server = servers[client["span_id"]]  # recall continued the client's span
        assert server.parent.is_remote and server.context.trace_id == page["trace_id"]
        (request,) = [
            r for r in by_name(ours, "recall.request") if r.parent.span_id == server.context.span_id
        ]
        under = [
            c.attributes["recall.channel"]
            for c in by_name(ours, "recall.channel")
            if c.parent.span_id == request.context.span_id
        ]
        assert sorted(under) == ["good", "popular"], page_name


@pytest.mark.usefixtures("faults")
def test_the_sampling_ratio_applies_to_new_traces_and_the_callers_decision_is_followed(tmp_path):
    require("opentelemetry.sdk", extra="tracing")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.configure(exporter="console", span_exporter=exporter, sampling_ratio=0.0)
    try:
        with serve(config_with(tmp_path, {}), catalog_of(ITEMS)) as s:
            s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5), timeout=10)
            unsampled = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-00"),)
            s.stub.Recall(
                recall_pb2.RecallRequest(user_id="u", k=5), timeout=10, metadata=unsampled
            )
            assert exporter.get_finished_spans() == ()
            s.stub.Recall(
                recall_pb2.RecallRequest(user_id="u", k=5), timeout=10, metadata=TRACEPARENT
            )
            server = the_server_span(exporter)
    finally:
        tracing.shutdown()
    assert hex_id(server.context.trace_id, 32) == TRACE_ID
    assert len(channel_spans(exporter.get_finished_spans())) == 2


def test_tracing_off_exports_no_span(tmp_path, spans):
    tracing.configure(exporter="none")  # the exporter of the fixture stays attached to nothing
    assert not tracing.ENABLED
    with serve(config_with(tmp_path, {}), catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(
            recall_pb2.RecallRequest(user_id="u", k=5), timeout=10, metadata=TRACEPARENT
        )
    assert len(resp.item_ids) == 5
    assert spans.get_finished_spans() == ()


# --------------------------------------------------------------------------- logs


@contextlib.contextmanager
def json_logs() -> Iterator[None]:
    """The service's log set-up (JSON lines), without caching loggers so that the
    previous set-up comes back afterwards."""
    saved = structlog.get_config()
    logs.configure(level="INFO", json=True)
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.configure(**saved)


def test_log_lines_logged_inside_a_span_carry_its_trace_and_span_id(tmp_path, spans, capsys):
    config = config_with(tmp_path, {"boom": {"plugin": "fault", "params": {"fault": "raise"}}})
    with serve(config, catalog_of(ITEMS)) as s:
        capsys.readouterr()
        with json_logs():
            s.stub.Recall(
                recall_pb2.RecallRequest(user_id="u", k=5), timeout=10, metadata=TRACEPARENT
            )
            the_server_span(spans)
        out = capsys.readouterr()
    (request,) = by_name(spans.get_finished_spans(), "recall.request")
    (line,) = parse_events(out.out + out.err, "channel_error")  # logged by the engine
    assert line["channel"] == "boom"
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == hex_id(request.context.span_id, 16)


def test_no_trace_ids_in_log_lines_while_tracing_is_off(capsys):
    tracing.shutdown()
    with json_logs():
        structlog.get_logger("test").warning("untraced_event")
    (line,) = parse_events(capsys.readouterr().err, "untraced_event")
    assert "trace_id" not in line and "span_id" not in line


# --------------------------------------------------------------------------- OTLP


@pytest.mark.usefixtures("faults")
def test_the_config_turns_tracing_on_and_spans_reach_an_otlp_collector(tmp_path):
    require("opentelemetry.exporter.otlp.proto.grpc", extra="tracing")
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list = []
    got = threading.Event()

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 - gRPC method name
            received.append(request)
            got.set()
            return trace_service_pb2.ExportTraceServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    tracing_table = {
        "exporter": "otlp",
        "endpoint": f"http://127.0.0.1:{port}",
        "sampling_ratio": 1.0,
        "service_name": "recall-test",
    }
    config = config_with(tmp_path, {}, tracing=tracing_table)
    try:
        start_tracing(config.tracing)
        assert tracing.ENABLED
        with serve(config, catalog_of(ITEMS)) as s:
            s.stub.Recall(
                recall_pb2.RecallRequest(user_id="u", k=5), timeout=10, metadata=TRACEPARENT
            )
        tracing.shutdown()  # flushes the batch
        assert got.wait(10)
    finally:
        tracing.shutdown()
        collector.stop(0)
    resources = [rs for req in received for rs in req.resource_spans]
    names = {span.name for rs in resources for scope in rs.scope_spans for span in scope.spans}
    assert {"recall_engine.v1.RecallService/Recall", "recall.request", "recall.channel"} <= names
    assert {"recall.fusion"} <= names
    service = {
        a.value.string_value
        for rs in resources
        for a in rs.resource.attributes
        if a.key == "service.name"
    }
    assert service == {"recall-test"}
    trace_ids = {
        span.trace_id.hex() for rs in resources for scope in rs.scope_spans for span in scope.spans
    }
    assert trace_ids == {TRACE_ID}


# --------------------------------------------------------------------------- config


TRACING_ERRORS = [
    ({"exporter": "jaeger"}, "tracing.exporter: must be one of 'none', 'otlp', 'console', got"),
    ({"endpoint": "127.0.0.1:4317"}, "tracing.endpoint: must be an http:// or https:// URL"),
    ({"sampling_ratio": 1.5}, "tracing.sampling_ratio: must be between 0 and 1, got 1.5"),
    ({"sampling_ratio": -0.1}, "tracing.sampling_ratio: must be between 0 and 1, got -0.1"),
    ({"service_name": ""}, "tracing.service_name: must be a non-empty string, got ''"),
    ({"sample_ratio": 0.5}, "tracing.sample_ratio: unknown key (known: exporter, endpoint, "),
]


@pytest.mark.parametrize(
    ("table", "expected"), TRACING_ERRORS, ids=[t[1][:40] for t in TRACING_ERRORS]
)
def test_a_bad_tracing_key_is_a_config_error_naming_it(tmp_path, table, expected):
    with pytest.raises(ConfigError) as e:
        parse_config({"channels": {"popular": {}}, "tracing": table}, tmp_path)
    assert str(e.value).startswith(expected), str(e.value)


def test_tracing_is_off_by_default_and_the_table_is_read(tmp_path):
    default = parse_config({"channels": {"popular": {}}}, tmp_path).tracing
    assert (default.exporter, default.enabled) == ("none", False)
    table = {"exporter": "otlp", "endpoint": "https://otel.example:4317", "sampling_ratio": 0.1}
    cfg = parse_config({"channels": {"popular": {}}, "tracing": table}, tmp_path).tracing
    assert (cfg.exporter, cfg.endpoint, cfg.sampling_ratio) == ("otlp", table["endpoint"], 0.1)
    assert cfg.service_name == "recall-engine" and cfg.enabled


# --------------------------------------------------------------------------- without the extra


def hidden_opentelemetry_env() -> dict[str, str]:
    """The environment of a child that sees no OpenTelemetry installed."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "without_extras"), str(ROOT)]),
        "RECALL_ENGINE_HIDE_MODULES": "opentelemetry",
    }


SERVE_UNTRACED = """
import json, sys, tempfile
from pathlib import Path
from tests.fault_plugins import install
site = install(Path(tempfile.mkdtemp()))
sys.path.insert(0, str(site))
from recall_engine._proto import recall_pb2
from tests.harness import catalog_of, make_config, serve

channels = {"popular": {"plugin": "fault", "required": True, "params": {"items": ["a", "b"]}}}
config = make_config({"channels": channels}, site)
with serve(config, catalog_of(["a", "b"])) as s:
    resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5), timeout=30,
                         metadata=[("traceparent", sys.argv[1])])
print(json.dumps({"items": list(resp.item_ids),
                  "imported": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
"""


def test_without_the_extra_a_server_with_tracing_off_serves_and_never_imports_it():
    done = subprocess.run(
        [sys.executable, "-c", SERVE_UNTRACED, TRACEPARENT[0][1]],
        cwd=ROOT,
        env=hidden_opentelemetry_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"items": ["a", "b"], "imported": []}


def test_without_the_extra_turning_tracing_on_stops_start_up_naming_the_extra(tmp_path):
    (tmp_path / "config.toml").write_text(
        '[server]\naddr = "127.0.0.1:0"\nmetrics_addr = ""\n'
        "[channels.popular]\nrequired = true\n"
        '[tracing]\nexporter = "otlp"\nendpoint = "http://127.0.0.1:4317"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "recall_engine", "serve", "--config", "config.toml", "--log-json"],
        cwd=tmp_path,
        env=hidden_opentelemetry_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    failed = parse_events(done.stderr, "startup_failed")  # each process that got that far
    assert failed and all(
        "[tracing]" in f["error"] and "pip install 'recall-engine[tracing]'" in f["error"]
        for f in failed
    )
    assert not parse_events(done.stderr, "server_listening")  # stopped before the port opened
    assert not parse_events(done.stderr, "worker_restarted")  # a start-up is not retried


def test_the_llm_channels_encode_on_its_own_thread_has_a_span_naming_its_encoder(
    tmp_path, spans, demo_small, minilm_onnx
):
    """The CPU default of the ``llm`` channel (int8) encodes a request's text on the
    channel call's own thread, with no micro-batcher: its ``recall.encoder.encode`` span,
    a child of the channel's span, names the encoder (``recall.encoder``, the name the
    batcher's wait span would carry) beside the model file and the text count."""
    from recall_engine.offline.build import build_all

    config = make_config(
        {
            "artifacts": {"root": str(tmp_path)},
            "channels": {
                "llm": {
                    "plugin": "llm",
                    "required": True,
                    "timeout_ms": 10000,
                    "params": {
                        "model_dir": str(minilm_onnx),
                        "variants": ["int8"],
                        "precision": "int8",
                    },
                }
            },
        },
        tmp_path,
    )
    build_all(demo_small.interactions, demo_small.items, tmp_path, config)
    with serve(config) as s:
        resp = s.stub.Recall(
            recall_pb2.RecallRequest(k=10, text="rockets, astronauts and telescopes"),
            timeout=30,
            metadata=TRACEPARENT,
        )
        the_server_span(spans)
    assert {c.channel: c.status for c in resp.channels} == {"llm": OK}
    exported = spans.get_finished_spans()
    channel = channel_spans(exported)["llm"]
    assert not by_name(exported, "recall.encoder.wait")  # no micro-batcher on this path
    (encode,) = by_name(exported, "recall.encoder.encode")
    assert encode.parent.span_id == channel.context.span_id
    assert encode.attributes["recall.encoder"] == "llm"
    assert encode.attributes["recall.encoder.texts"] == 1
    model = Path(encode.attributes["recall.encoder.model"])
    assert model.is_file() and "int8" in model.name


def test_a_librarys_stdlib_warning_is_a_json_log_line_naming_its_logger(capsys):
    """OpenTelemetry's exporters (and gRPC, boto3, Ray) log through the standard library;
    an exporter that cannot reach its collector must not print plain text between the
    service's JSON lines."""
    import logging

    with json_logs():
        logging.getLogger("opentelemetry.exporter.otlp").warning(
            "Transient error %s encountered while exporting traces", "StatusCode.UNAVAILABLE"
        )
        logging.getLogger("some.library").info("chatter below the level")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    (only,) = [json.loads(line) for line in lines]
    assert only["event"] == (
        "Transient error StatusCode.UNAVAILABLE encountered while exporting traces"
    )
    assert (only["level"], only["logger"]) == ("warning", "opentelemetry.exporter.otlp")
