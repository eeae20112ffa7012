"""recall_engine.client against real servers: popular and item2item cf channels built
from the demo catalogue, served on 127.0.0.1 free ports."""

from __future__ import annotations

import asyncio
import json
import os
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


def hold(port: int) -> socket.socket:
    """A bound, never-listening socket on ``port``: nothing else takes the port while a
    test's server is down. Close it (:func:`release`) before the server binds again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def release(held: list[socket.socket]) -> None:
    for sock in held:
        sock.close()
    held.clear()


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
    # a value of the wrong type is named too, not a TypeError from deep inside
    with pytest.raises(ValueError, match="^timeout: must be a finite number, got '1'"):
        RecallClient("127.0.0.1:1", timeout="1")
    with pytest.raises(ValueError, match="^batch_timeout: must be a finite number, got nan"):
        RecallClient("127.0.0.1:1", batch_timeout=float("nan"))
    with pytest.raises(ValueError, match="^max_attempts: must be a whole number >= 1, got 2.5"):
        RetryPolicy(max_attempts=2.5)
    with pytest.raises(ValueError, match="^initial_backoff_s: must be a finite number, got None"):
        RetryPolicy(initial_backoff_s=None)
    with pytest.raises(ValueError, match="^max_tokens"):
        RetryBudget(max_tokens="10")
    with RecallClient("127.0.0.1:1") as client, pytest.raises(ValueError, match="^timeout"):
        client.recall(RecallQuery(user_id="u"), timeout="0.5")


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


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_unavailable_during_a_restart_is_retried_until_the_server_is_back(
    artifacts, history, flavour
):
    """The server stops; a call made with the client's default retry policy and budget
    fails its first attempt with UNAVAILABLE; its retry waits for the connection; the
    server comes back on the same port within the call's deadline; the same call then
    succeeds, without spending its attempts. (Retries spaced by milliseconds would have
    spent every attempt while gRPC's reconnect backoff ran, and failed the call.)"""
    port, held = reserve_consecutive_ports(1)
    config = config_for(artifacts, f"127.0.0.1:{port}")
    failed = threading.Event()
    events: list[RetryEvent] = []

    def on_retry(event: RetryEvent) -> None:
        events.append(event)
        failed.set()

    address = f"127.0.0.1:{port}"
    query = RecallQuery(user_id="u1", history=history, k=10)
    client = RecallClient(address, on_retry=on_retry)

    def call_during_the_restart():
        if flavour == "sync":
            return client.recall(query, timeout=60)

        async def main():
            async with AsyncRecallClient(address, on_retry=on_retry) as aclient:
                return await aclient.recall(query, timeout=60)

        return asyncio.run(main())

    try:
        # a lone server does not share its port (SO_REUSEPORT is for serve --processes):
        # give the reservation up just before each bind, hold the port while it is down
        release(held)
        with serve(config):
            before = client.recall(query, timeout=10)
        held = [hold(port)]
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(call_during_the_restart)
            assert failed.wait(30), "the call never failed while the server was down"
            time.sleep(0.5)  # well past the client's backoff: the retry is waiting
            assert not call.done()
            release(held)
            with serve(config):
                after = call.result(60)
    finally:
        client.close()
        release(held)
    assert after.item_ids == before.item_ids
    # one retry waited for the connection; a server that answers UNAVAILABLE while it
    # loads its channels ("retry shortly") may take one more, within the default policy
    assert 1 <= len(events) < RetryPolicy().max_attempts
    assert all(e.code is grpc.StatusCode.UNAVAILABLE and e.pushback_ms is None for e in events)
    assert all(
        0 <= e.delay_s <= RetryPolicy().initial_backoff_s * 2**n for n, e in enumerate(events)
    )


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


@pytest.fixture(scope="module")
def loading(artifacts):
    """A server whose port is open while its engine has loaded nothing: it answers every
    Recall UNAVAILABLE ("engine is loading channels") over a live connection (to a
    pick_first client; round_robin sees its health NOT_SERVING and sends nothing)."""
    with serve(config_for(artifacts), load=False) as s:
        yield s


def test_retries_stop_after_max_attempts_against_a_server_that_keeps_answering_unavailable(
    loading,
):
    events: list[RetryEvent] = []
    # pick_first: round_robin watches health and would send nothing to a loading server
    with RecallClient(
        f"127.0.0.1:{loading.port}",
        retry=FAST,
        on_retry=events.append,
        seed=1,
        load_balancing="pick_first",
    ) as client:
        with pytest.raises(RecallCallError) as e:
            client.recall(RecallQuery(user_id="u1"), timeout=10)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "loading" in e.value.details()
    assert (e.value.attempts, e.value.reason) == (4, "attempts")
    caps = [0.01, 0.02, 0.04]  # min(max_backoff, initial * 2 ** (n - 1))
    assert [e.attempt for e in events] == [1, 2, 3]
    assert all(0 <= ev.delay_s <= cap for ev, cap in zip(events, caps, strict=True))


def test_against_a_server_that_is_gone_a_call_waits_for_a_connection_until_its_deadline():
    """Nothing listens: the first attempt fails at once, the retry waits for a connection,
    and when none comes the call ends at its deadline with UNAVAILABLE (nothing ran on
    a server), not DEADLINE_EXCEEDED, after one attempt and one token of the budget."""
    events: list[RetryEvent] = []
    budget = RetryBudget()
    with RecallClient(
        f"127.0.0.1:{closed_port()}", budget=budget, on_retry=events.append
    ) as client:
        started = time.monotonic()
        with pytest.raises(RecallCallError) as e:
            client.recall(RecallQuery(user_id="u1"), timeout=0.6)
        took = time.monotonic() - started
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    assert (e.value.attempts, e.value.reason) == (1, "deadline")
    assert e.value.details().endswith("(waited for a connection until the call's deadline)")
    assert len(events) == 1 and budget.tokens == budget.max_tokens - 1
    assert 0.5 < took  # it waited; not a speed target (a loaded host may take longer)


def test_no_retry_policy_makes_one_attempt():
    with RecallClient(f"127.0.0.1:{closed_port()}", retry=NO_RETRY) as client:
        with pytest.raises(RecallCallError) as e:
            client.recall(RecallQuery(user_id="u1"))
    assert (e.value.code(), e.value.attempts) == (grpc.StatusCode.UNAVAILABLE, 1)


# -- deadlines -------------------------------------------------------------------------


def test_retries_never_run_past_the_callers_deadline(loading):
    """A server that answers UNAVAILABLE to every call and a policy that would retry for
    minutes: the call gives up when the next wait would end past its deadline."""
    patient = RetryPolicy(max_attempts=10_000, initial_backoff_s=0.05, max_backoff_s=0.05)
    events: list[RetryEvent] = []
    with RecallClient(
        f"127.0.0.1:{loading.port}",
        retry=patient,
        budget=RetryBudget(max_tokens=100_000),
        on_retry=events.append,
        load_balancing="pick_first",  # see the test above
    ) as client:
        started = time.monotonic()
        with pytest.raises(RecallCallError) as e:
            client.recall(RecallQuery(user_id="u1"), timeout=0.5)
        took = time.monotonic() - started
    # the last retry may end in its wait for a connection (a health probe) rather than
    # in an attempt, when what is left of the deadline is shorter than the probe
    assert e.value.reason == "deadline" and e.value.attempts > 1
    assert e.value.attempts in (len(events), len(events) + 1)
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
                await gone.recall(RecallQuery(user_id="u1"), timeout=0.5)
        return got, batch, channels, bad.value, down.value, events

    got, batch, channels, bad, down, events = asyncio.run(main())
    with RecallClient(f"127.0.0.1:{server.port}") as sync:
        same = sync.recall(RecallQuery(user_id="u1", history=history, k=7))
    assert got.item_ids == same.item_ids and got.candidates == same.candidates
    assert batch[0].ok and not batch[1].ok and len(channels.channels) == 2
    assert (bad.code(), bad.attempts) == (grpc.StatusCode.INVALID_ARGUMENT, 1)
    # nothing listens: one attempt, then a wait for a connection until the deadline
    assert (down.code(), down.attempts, down.reason) == (grpc.StatusCode.UNAVAILABLE, 1, "deadline")
    assert len(events) == 1


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


# -- the query command's bad input, broken pipes and --tls-server-name ---------------------


def _query_cmd(port: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "recall_engine", "query", "--addr", f"127.0.0.1:{port}", *more]


def test_the_cli_query_command_refuses_malformed_weights_in_one_line(server, history):
    for bad in ("cf", "cf=x", "=1", "cf=1,llm"):
        cmd = _query_cmd(server.port, "--history", ",".join(history), "--weights", bad)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (bad, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith("--weights:") and "NAME=WEIGHT" in done.stderr


def test_the_cli_query_command_exits_quietly_when_its_reader_stops_reading(server, history):
    """As `recall-engine query ... | head -1`: the reader takes one line and closes the
    pipe. The output (tens of KiB, in a pipe shrunk to hold 4 KiB where Linux allows it,
    hundreds of KiB as JSON) cannot all have been written by then, so the command's next
    write finds the pipe closed: it stops without a traceback, with the status a shell
    reports for a process ended by SIGPIPE (128 + 13)."""
    import fcntl

    cmd = _query_cmd(server.port, "--history", ",".join(history), "-k", "400", "--explain")
    for more, first in (([], "variant=-/default"), (["--json"], "{")):
        read_end, write_end = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
        with open(read_end, encoding="utf-8") as reader:
            proc = subprocess.Popen(
                [*cmd, *more], stdout=write_end, stderr=subprocess.PIPE, text=True
            )
            os.close(write_end)
            try:
                assert reader.readline().startswith(first)
            except BaseException:
                proc.kill()
                proc.communicate()
                raise
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 141, err
        assert err == "", more


def test_the_cli_query_command_checks_the_servers_certificate_against_tls_server_name(
    artifacts, history, tmp_path
):
    if not __import__("shutil").which("openssl"):
        pytest.skip("needs openssl")
    from tests.test_tls import _cert, _run

    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/CN=test-ca", cwd=tmp_path)  # fmt: skip
    _cert(tmp_path, "server", "ca", "DNS:localhost")  # no IP:127.0.0.1 in it
    _cert(tmp_path, "client", "ca")
    tls = {
        "cert": str(tmp_path / "server.crt"),
        "key": str(tmp_path / "server.key"),
        "client_ca": str(tmp_path / "ca.crt"),
    }
    flags = ["--tls-ca", str(tmp_path / "ca.crt"), "--tls-cert", str(tmp_path / "client.crt")]
    flags += ["--tls-key", str(tmp_path / "client.key"), "--history", ",".join(history)]
    flags += ["-k", "3", "--timeout", "3"]
    with serve(config_for(artifacts, tls=tls)) as s:
        done = subprocess.run(
            _query_cmd(s.port, *flags), capture_output=True, text=True, timeout=120
        )
        # the handshake fails the certificate's name check: UNAVAILABLE, retried until
        # the deadline, and no answer
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert done.stderr.startswith(("UNAVAILABLE:", "DEADLINE_EXCEEDED:")), done.stderr
        named = _query_cmd(s.port, *flags, "--tls-server-name", "localhost")
        done = subprocess.run(named, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("variant=-/default fusion=rrf")
        assert [line.split()[0] for line in done.stdout.splitlines()[-3:]] == ["1.", "2.", "3."]


def test_wait_ready_returns_with_a_connection_and_times_out_without_one(server):
    with RecallClient(f"127.0.0.1:{server.port}") as client:
        client.wait_ready(10)
    with RecallClient(f"127.0.0.1:{closed_port()}") as gone:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no connection to 127.0.0.1:"):
            gone.wait_ready(0.3)
        assert time.monotonic() - started >= 0.25


# -- health-aware balancing ------------------------------------------------------------


def test_round_robin_sends_no_call_to_a_server_that_says_it_is_not_serving(artifacts, history):
    """Two servers, one still loading its channels (health NOT_SERVING; it answers a
    Recall UNAVAILABLE "loading"): every call goes to the one that serves, none fails or
    is retried. Without health checking every other call reached the loading one."""
    events: list[RetryEvent] = []
    with serve(config_for(artifacts)) as ready, serve(config_for(artifacts), load=False) as loading:
        addresses = [f"127.0.0.1:{ready.port}", f"127.0.0.1:{loading.port}"]
        with RecallClient(addresses, retry=NO_RETRY, on_retry=events.append) as client:
            client.wait_ready(10)
            got = [
                client.recall(RecallQuery(user_id="u1", history=history, k=5)) for _ in range(20)
            ]
    assert all(len(r.candidates) == 5 for r in got) and events == []


def test_a_call_to_a_loading_server_waits_until_it_serves(artifacts, history):
    """One server, restarted and still loading: a call made meanwhile does not come back
    with "loading" but waits (within its deadline) until the server says SERVING, and
    is answered."""
    events: list[RetryEvent] = []
    with serve(config_for(artifacts), load=False) as loading:

        async def finish_loading():
            await asyncio.to_thread(loading.engine.load)
            await loading.running.set_serving(True)

        with RecallClient(f"127.0.0.1:{loading.port}", on_retry=events.append) as client:
            with ThreadPoolExecutor(1) as pool:
                call = pool.submit(
                    client.recall, RecallQuery(user_id="u1", history=history, k=5), timeout=30
                )
                time.sleep(0.5)
                assert not call.done()
                asyncio.run_coroutine_threadsafe(finish_loading(), loading.loop).result(60)
                got = call.result(30)
    assert len(got.candidates) == 5
    assert all("loading" not in e.details for e in events)
