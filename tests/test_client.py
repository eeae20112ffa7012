"""recall_engine.client against real servers: popular and item2item cf channels built
from the demo catalogue, served on 127.0.0.1 free ports."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from recall_engine._proto import recall_pb2
from recall_engine.client import (
    NO_RETRY,
    TLS,
    AsyncRecallClient,
    ChannelStatus,
    RecallCallError,
    RecallClient,
    RecallQuery,
    RetryBudget,
    RetryEvent,
    RetryPolicy,
)
from recall_engine.client._channel import target_of
from recall_engine.client._retry import pushback_ms
from tests.harness import make_config, serve
from tests.helpers import reserve_consecutive_ports, wait_until

CHANNELS = {"popular": {"required": True}, "cf": {"params": {"two_tower": False}}}
WEIGHTS = {"popular": 0.3, "cf": 1.0}
HEAVY = ("onnxruntime", "numpy", "usearch", "torch", "pydantic")
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, demo_small) -> Path:
    from recall_engine.offline.build import build_all

    root = tmp_path_factory.mktemp("client_artifacts")
    # no learned fusion weights: the tests check the weights their plan sets
    build_all(demo_small.interactions, demo_small.items, root, config_for(root), fit_fusion=False)
    return root


def config_for(root: Path, addr: str = "127.0.0.1:0", **tables):
    server = {"addr": addr, **tables.pop("server", {})}
    return make_config(
        {
            **tables,
            "server": server,
            "artifacts": {"root": str(root)},
            "channels": CHANNELS,
            "plan": {"weights": WEIGHTS},
        },
        root,
    )


@pytest.fixture(scope="module")
def server(artifacts):
    with serve(config_for(artifacts)) as s:
        yield s


@pytest.fixture()
def history(demo_small) -> list[str]:
    space = sorted(i for i, t in demo_small.topics.items() if t == "space")
    return space[:3]


def closed_port() -> int:
    """A port nothing listens on (bound by no one once this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- what it is and what it imports ------------------------------------------------------


def test_the_client_imports_without_the_servers_dependencies():
    code = (
        "import sys\n"
        "import recall_engine.client\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_channel_status_mirrors_the_proto_enum():
    names = {
        v.name.removeprefix("CHANNEL_STATUS_"): v.number
        for v in recall_pb2.ChannelStatus.DESCRIPTOR.values
    }
    assert names == {s.name: s.value for s in ChannelStatus}


def test_addresses_become_one_target():
    assert target_of("127.0.0.1:50051") == "127.0.0.1:50051"
    assert target_of("recall-headless.ns.svc:50051") == "recall-headless.ns.svc:50051"
    assert target_of("dns:///recall:50051") == "dns:///recall:50051"
    assert target_of(["127.0.0.1:1", "localhost:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert target_of("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
    for bad, message in [
        ("", "addresses: give HOST:PORT"),
        ("127.0.0.1", "addresses: '127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:1,[::1]:2", "addresses: mixes IPv4 and IPv6"),
        ("127.0.0.1:1,dns:///x:2", "addresses: 'dns:///x:2': a gRPC target"),
    ]:
        with pytest.raises(ValueError, match="^" + message.replace("[", r"\[")):
            target_of(bad)


def test_the_servers_retry_hint_is_read_from_either_trailer():
    assert pushback_ms([("grpc-retry-pushback-ms", "25")]) == 25
    assert pushback_ms([("retry-after-ms", b"7")]) == 7
    assert pushback_ms([("grpc-retry-pushback-ms", "-1")]) == -1
    assert pushback_ms([("grpc-retry-pushback-ms", "soon")]) == -1
    assert pushback_ms([("other", "1")]) is None


def test_bad_settings_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match="^max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="^timeout"):
        RecallClient("127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="^load_balancing"):
        RecallClient("127.0.0.1:1", load_balancing="random")
    with pytest.raises(ValueError, match="^tls: give both cert and key"):
        TLS(cert=b"x")
    with pytest.raises(TypeError, match="^history: give a sequence"):
        RecallQuery(history="item-1")


# -- answers ---------------------------------------------------------------------------


def test_recall_returns_typed_candidates_with_every_channels_provenance(server, history):
    query = RecallQuery(user_id="u1", history=history, k=20, request_id="client-test")
    raw = server.stub.Recall(
        recall_pb2.RecallRequest(user_id="u1", history_item_ids=history, k=20), timeout=10
    )
    with RecallClient(f"127.0.0.1:{server.port}") as client:
        got = client.recall(query)
    assert got.item_ids == tuple(raw.item_ids) and len(got.candidates) == 20
    assert got.request_id == "client-test" and got.variant == "default" and got.fusion == "rrf"
    assert {c.channel: c.status for c in got.channels} == {
        "popular": ChannelStatus.OK,
        "cf": ChannelStatus.OK,
    }
    for ch in raw.channels:
        report = got.channel(ch.channel)
        assert report is not None and report.weight == pytest.approx(WEIGHTS[ch.channel])
        assert report.candidate_index == tuple(ch.candidate_index)
        for i, rank, score in zip(ch.candidate_index, ch.rank, ch.score, strict=True):
            hit = got.candidates[i].hit(ch.channel)
            assert hit is not None and (hit.rank, hit.score) == (rank, pytest.approx(score))
    both = [c for c in got.candidates if len(c.hits) == 2]
    assert both, "some candidate should come from both channels"
    assert not set(history) & set(got.item_ids)


def test_batch_recall_answers_each_query_and_a_bad_one_fails_alone(server, history):
    queries = [RecallQuery(user_id="u1", history=history, k=5), RecallQuery(user_id="u2", k=0)]
    with RecallClient(f"127.0.0.1:{server.port}") as client:
        first, bad = client.batch_recall(queries)
        channels = client.list_channels()
    assert first.ok and first.unwrap().item_ids and len(first.unwrap().candidates) == 5
    assert not bad.ok and bad.code is grpc.StatusCode.INVALID_ARGUMENT
    assert bad.message.startswith("requests[1].k:")
    with pytest.raises(RecallCallError) as e:
        bad.unwrap()
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert {c.name for c in channels.channels} == {"popular", "cf"}
    assert all(c.item_count > 0 for c in channels.channels)


def test_the_cli_query_command_prints_what_the_client_got(server, history):
    def query(*more: str) -> subprocess.CompletedProcess[str]:
        addr = f"127.0.0.1:{server.port}"
        args = ["query", "--addr", addr, "--history", ",".join(history), *more]
        cmd = [sys.executable, "-m", "recall_engine", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    done = query("-k", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("variant=-/default fusion=rrf")
    assert any(line.split()[:3] == ["channel", "cf", "OK"] for line in lines)
    assert [line.split()[0] for line in lines[-3:]] == ["1.", "2.", "3."]
    done = query("-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert len(data["candidates"]) == 3
    assert {c["channel"]: c["status"] for c in data["channels"]} == {"popular": "OK", "cf": "OK"}
    done = query("-k", "0")
    assert done.returncode == 1 and done.stderr.startswith("INVALID_ARGUMENT: k:")


# -- retries ---------------------------------------------------------------------------


def test_invalid_argument_is_never_retried(server):
    events: list[RetryEvent] = []
    budget = RetryBudget()
    with RecallClient(
        f"127.0.0.1:{server.port}", retry=FAST, budget=budget, on_retry=events.append
    ) as client:
        with pytest.raises(RecallCallError) as e:
            client.recall(RecallQuery(user_id="u1", k=0))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("k:")
    assert (e.value.attempts, e.value.reason, events) == (1, "not_retryable", [])
    assert budget.tokens == budget.max_tokens  # a bad request is not the server's trouble
    assert isinstance(e.value, grpc.RpcError)


def test_unavailable_during_a_restart_is_retried_until_the_server_is_back(artifacts, history):
    """The server stops; a call starts and fails with UNAVAILABLE, again and again; the
    server comes back on the same port within the call's deadline; the same call then
    succeeds."""
    port, held = reserve_consecutive_ports(1)
    config = config_for(artifacts, f"127.0.0.1:{port}")
    failed = threading.Event()
    events: list[RetryEvent] = []

    def on_retry(event: RetryEvent) -> None:
        events.append(event)
        failed.set()

    patient = RetryPolicy(max_attempts=200, initial_backoff_s=0.02, max_backoff_s=0.2)
    client = RecallClient(
        f"127.0.0.1:{port}", retry=patient, budget=RetryBudget(max_tokens=1000), on_retry=on_retry
    )
    query = RecallQuery(user_id="u1", history=history, k=10)
    try:
        with serve(config):
            before = client.recall(query, timeout=10)
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.recall, query, timeout=60)
            assert failed.wait(30), "the call never failed while the server was down"
            assert not call.done()
            with serve(config):
                after = call.result(60)
    finally:
        client.close()
        for sock in held:
            sock.close()
    assert after.item_ids == before.item_ids
    assert events and all(e.code is grpc.StatusCode.UNAVAILABLE for e in events)
    assert all(e.pushback_ms is None and 0 <= e.delay_s <= 0.2 for e in events)


def shedding_config(artifacts: Path):
    """A fixed bound of one request in flight and short retry hints."""
    return config_for(
        artifacts,
        overload={
            "max_in_flight": 1,
            "min_in_flight": 1,
            "target_loop_lag_ms": 0,
            "retry_after_ms_max": 20,
        },
    )


def test_a_shed_call_is_retried_after_the_wait_the_server_asks_for(artifacts, history):
    """The one admission slot is taken, so the call is shed with RESOURCE_EXHAUSTED and a
    retry hint; the slot is given back before the client waits; the retry, after exactly
    the hinted wait, is answered."""
    events: list[RetryEvent] = []
    with serve(shedding_config(artifacts)) as s:
        s.engine.admission.enter()  # the slot a long request would hold

        def on_retry(event: RetryEvent) -> None:
            events.append(event)
            if len(events) == 1:
                s.engine.admission.leave()

        with RecallClient(f"127.0.0.1:{s.port}", retry=FAST, on_retry=on_retry) as client:
            got = client.recall(RecallQuery(history=history, k=5), timeout=10)
    assert len(got.candidates) == 5
    assert len(events) == 1 and events[0].code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert events[0].pushback_ms is not None and 1 <= events[0].pushback_ms <= 20
    assert events[0].delay_s == events[0].pushback_ms / 1000


def test_the_retry_budget_stops_retries_while_the_server_keeps_shedding(artifacts):
    """Every call is shed. A budget of 4 tokens allows retries while more than 2 are
    left: the first call retries once, later calls are tried once each; successes put
    tokens back (0.5 each) and retries resume."""
    budget = RetryBudget(max_tokens=4, token_ratio=0.5)
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.01, max_backoff_s=0.05)
    query = RecallQuery(user_id="u1", k=5)
    with serve(shedding_config(artifacts)) as s:
        client = RecallClient(f"127.0.0.1:{s.port}", retry=policy, budget=budget)
        s.engine.admission.enter()
        outcomes = []
        for _ in range(4):
            with pytest.raises(RecallCallError) as e:
                client.recall(query, timeout=10)
            assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            outcomes.append((e.value.attempts, e.value.reason))
        assert outcomes == [(2, "budget"), (1, "budget"), (1, "budget"), (1, "budget")]
        assert budget.tokens == 0
        s.engine.admission.leave()
        for _ in range(7):  # 7 successes: 3.5 tokens, one failure leaves 2.5 > 4 / 2
            client.recall(query, timeout=10)
        assert budget.tokens == 3.5
        s.engine.admission.enter()
        with pytest.raises(RecallCallError) as e:
            client.recall(query, timeout=10)
        assert (e.value.attempts, e.value.reason) == (2, "budget")
        client.close()


def test_retries_stop_after_max_attempts_against_a_server_that_is_gone():
    events: list[RetryEvent] = []
    with RecallClient(
        f"127.0.0.1:{closed_port()}", retry=FAST, on_retry=events.append, seed=1
    ) as client:
        with pytest.raises(RecallCallError) as e:
            client.recall(RecallQuery(user_id="u1"), timeout=10)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    assert (e.value.attempts, e.value.reason) == (4, "attempts")
    caps = [0.01, 0.02, 0.04]  # min(max_backoff, initial * 2 ** (n - 1))
    assert [e.attempt for e in events] == [1, 2, 3]
    assert all(0 <= ev.delay_s <= cap for ev, cap in zip(events, caps, strict=True))


def test_no_retry_policy_makes_one_attempt():
    with RecallClient(f"127.0.0.1:{closed_port()}", retry=NO_RETRY) as client:
        with pytest.raises(RecallCallError) as e:
            client.recall(RecallQuery(user_id="u1"))
    assert (e.value.code(), e.value.attempts) == (grpc.StatusCode.UNAVAILABLE, 1)


# -- deadlines -------------------------------------------------------------------------


def test_retries_never_run_past_the_callers_deadline():
    """A server that is gone and a policy that would retry for minutes: the call gives up
    when the next wait would end past its deadline."""
    patient = RetryPolicy(max_attempts=10_000, initial_backoff_s=0.05, max_backoff_s=0.05)
    events: list[RetryEvent] = []
    with RecallClient(
        f"127.0.0.1:{closed_port()}",
        retry=patient,
        budget=RetryBudget(max_tokens=100_000),
        on_retry=events.append,
    ) as client:
        started = time.monotonic()
        with pytest.raises(RecallCallError) as e:
            client.recall(RecallQuery(user_id="u1"), timeout=0.5)
        took = time.monotonic() - started
    assert e.value.reason == "deadline" and e.value.attempts == len(events) + 1 > 1
    assert sum(ev.delay_s for ev in events) < 0.5
    # not a speed target: a client that ignored the deadline would retry for minutes
    assert took < 0.5 + 1.5, f"gave up {took - 0.5:.3f} s after the deadline"


def test_a_call_that_runs_out_of_time_on_the_server_is_not_retried(tmp_path):
    """Every channel still busy at the deadline: DEADLINE_EXCEEDED, one attempt."""
    config = make_config(
        {
            "channels": {
                "slow": {
                    "plugin": "hang",
                    "timeout_ms": 5000,
                    "params": {"items": ["i1"], "sleep_s": 1.0},
                }
            }
        },
        tmp_path,
    )
    from tests.harness import catalog_of

    with serve(config, catalog_of(["i1"])) as s:
        with RecallClient(f"127.0.0.1:{s.port}", retry=FAST) as client:
            with pytest.raises(RecallCallError) as e:
                client.recall(RecallQuery(user_id="u1", k=1), timeout=0.2)
    assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert (e.value.attempts, e.value.reason) == (1, "not_retryable")


# -- balancing -------------------------------------------------------------------------


def test_round_robin_sends_calls_to_both_of_two_real_servers(artifacts):
    """Server b puts every user in variant "b", so each answer says who gave it."""
    b_only = {
        "experiments": [{"name": "srv", "salt": "s", "variants": [{"name": "b", "traffic": 1.0}]}]
    }
    with serve(config_for(artifacts)) as a, serve(config_for(artifacts, **b_only)) as b:
        client = RecallClient([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        query = RecallQuery(user_id="u1", k=3)
        seen: set[str] = set()
        wait_until(
            lambda: seen.add(client.recall(query, timeout=10).variant) or len(seen) == 2,
            30,
            what="answers from both servers",
        )
        variants = [client.recall(query, timeout=10).variant for _ in range(10)]
        client.close()
    assert seen == {"default", "b"}
    assert variants.count("default") == variants.count("b") == 5


def test_a_dns_name_target_is_served(server):
    with RecallClient(f"dns:///localhost:{server.port}") as client:
        assert client.recall(RecallQuery(user_id="u1", k=2)).item_ids


# -- async -----------------------------------------------------------------------------


def test_the_async_client_recalls_batches_and_follows_the_same_retry_rules(server, history):
    async def main():
        async with AsyncRecallClient(f"127.0.0.1:{server.port}", retry=FAST) as client:
            got = await client.recall(RecallQuery(user_id="u1", history=history, k=7))
            batch = await client.batch_recall([RecallQuery(user_id="u1", k=2), RecallQuery(k=0)])
            channels = await client.list_channels()
            with pytest.raises(RecallCallError) as bad:
                await client.recall(RecallQuery(k=0))
        events: list[RetryEvent] = []
        async with AsyncRecallClient(
            f"127.0.0.1:{closed_port()}", retry=FAST, on_retry=events.append
        ) as gone:
            with pytest.raises(RecallCallError) as down:
                await gone.recall(RecallQuery(user_id="u1"), timeout=10)
        return got, batch, channels, bad.value, down.value, events

    got, batch, channels, bad, down, events = asyncio.run(main())
    with RecallClient(f"127.0.0.1:{server.port}") as sync:
        same = sync.recall(RecallQuery(user_id="u1", history=history, k=7))
    assert got.item_ids == same.item_ids and got.candidates == same.candidates
    assert batch[0].ok and not batch[1].ok and len(channels.channels) == 2
    assert (bad.code(), bad.attempts) == (grpc.StatusCode.INVALID_ARGUMENT, 1)
    assert (down.code(), down.attempts, down.reason) == (grpc.StatusCode.UNAVAILABLE, 4, "attempts")
    assert len(events) == 3


# -- TLS and the token -----------------------------------------------------------------


def test_tls_with_a_client_certificate(artifacts, history, tmp_path):
    if not __import__("shutil").which("openssl"):
        pytest.skip("needs openssl")
    from tests.test_tls import _cert, _run

    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/CN=test-ca", cwd=tmp_path)  # fmt: skip
    _cert(tmp_path, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _cert(tmp_path, "client", "ca")
    tls = {
        "cert": str(tmp_path / "server.crt"),
        "key": str(tmp_path / "server.key"),
        "client_ca": str(tmp_path / "ca.crt"),
    }
    with serve(config_for(artifacts, tls=tls)) as s:
        addr = f"127.0.0.1:{s.port}"
        mutual = TLS(
            ca=tmp_path / "ca.crt", cert=tmp_path / "client.crt", key=tmp_path / "client.key"
        )
        with RecallClient(addr, tls=mutual) as client:
            assert client.recall(RecallQuery(history=history, k=3)).item_ids
        for refused in (TLS(ca=str(tmp_path / "ca.crt")), None):  # no client cert; plaintext
            with RecallClient(addr, tls=refused, retry=NO_RETRY) as client:
                with pytest.raises(RecallCallError) as e:
                    client.recall(RecallQuery(history=history, k=3), timeout=5)
            assert e.value.code() is grpc.StatusCode.UNAVAILABLE


def test_the_token_is_sent_as_bearer_metadata_on_every_call():
    """The recall service checks no token, so what the client sends is seen by a real
    gRPC server in its place (as a gateway would see it)."""
    seen: list[dict[str, str]] = []

    def recall(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()))
        return recall_pb2.RecallResponse(item_ids=["i1"], scores=[1.0]).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "recall_engine.v1.RecallService", {"Recall": grpc.unary_unary_rpc_method_handler(recall)}
    )
    gateway = grpc.server(ThreadPoolExecutor(2), handlers=[handler])
    port = gateway.add_insecure_port("127.0.0.1:0")
    gateway.start()
    try:
        with RecallClient(f"127.0.0.1:{port}", token="s3cret", metadata=[("x-tenant", "t1")]) as c:
            assert c.recall(RecallQuery(user_id="u1")).item_ids == ("i1",)
            assert c.recall(RecallQuery(user_id="u2")).item_ids == ("i1",)
    finally:
        gateway.stop(0)
    assert [(m["authorization"], m["x-tenant"]) for m in seen] == [("Bearer s3cret", "t1")] * 2


def test_the_async_client_waits_the_servers_hint_too(artifacts, history):
    events: list[RetryEvent] = []
    with serve(shedding_config(artifacts)) as s:
        s.engine.admission.enter()

        def on_retry(event: RetryEvent) -> None:
            events.append(event)
            s.engine.admission.leave()

        async def main():
            async with AsyncRecallClient(
                f"127.0.0.1:{s.port}", retry=FAST, on_retry=on_retry
            ) as client:
                return await client.recall(RecallQuery(history=history, k=4), timeout=10)

        got = asyncio.run(main())
    assert len(got.candidates) == 4 and len(events) == 1
    assert events[0].code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert events[0].pushback_ms is not None and events[0].delay_s == events[0].pushback_ms / 1000


def test_the_readme_example_runs(server, capsys):
    from tests.helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python client") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    assert '"10.0.0.5:50061,10.0.0.5:50062"' in code
    code = code.replace('"10.0.0.5:50061,10.0.0.5:50062"', f'"127.0.0.1:{server.port}"')
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("default {") and len(printed) >= 2
