"""``recall-engine bench load``: an end-to-end load test of the Recall RPC.

Drives a running server (``--addr``) with grpc.aio clients, or an in-process engine
(``--artifacts DIR --in-process``: no network, no proto work, the engine alone), at a
fixed concurrency (closed loop) or a target rate (open loop), for a duration, with a
request mix of known users (their real histories), users unseen in training (fresh
histories sampled from the catalogue), free-text queries, and unseen users' histories
with a free text (``unseen_text``). Reports requests/s, p50/p90/p99/p99.9 latency,
errors by status code and per-channel latency, and CPU time per request: the
generator's, and the server's with ``--server-pid`` (in process, the generator's figure
includes the engine).

``--serve`` starts ``recall-engine serve`` itself on ``--artifacts`` (the default config:
what a new user gets) in a child process instead of ``--addr``. ``--echo`` then measures
the limit in the same run (issue 14): an echo gRPC server that answers the same
requests with the engine's own response bytes (:mod:`recall_engine.benchmarks.servers`),
driven by the same generator, and reports the engine's throughput as a share of it::

    recall-engine bench load --serve --echo --artifacts demo/artifacts \
        --mix unseen=0.75,unseen_text=0.25 --history-len 10-50 -k 200 --concurrency 16

``--native-floor`` samples the server with Linux ``perf`` over the same window and
reports the CPU spent inside usearch and ONNX Runtime, and the server's CPU per request
as a multiple of it (:mod:`recall_engine.benchmarks.native_floor`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recall_engine.benchmarks.native_floor import NativeProfile, floor_summary

MIXES = ("known", "unseen", "text", "unseen_text")


@dataclass
class RequestPool:
    """Pre-built requests, so the generator spends no time making them."""

    requests: list = field(default_factory=list)  # (kind, RecallRequest)

    @classmethod
    def build(
        cls,
        artifacts: Path,
        *,
        mix: dict[str, float],
        k: int,
        n: int = 2000,
        history_len: int | tuple[int, int] = 20,
        seed: int = 0,
        interactions: Path | None = None,
    ) -> RequestPool:
        from recall_engine._proto import recall_pb2
        from recall_engine.runtime.catalog import Catalog

        rng = random.Random(seed)
        catalog = Catalog.load(artifacts / "catalog")
        items = list(catalog)
        ids = [it.item_id for it in items]
        lo, hi = (history_len, history_len) if isinstance(history_len, int) else history_len
        known = _known_histories(interactions, hi) if interactions else {}
        known_users = list(known)
        kinds = rng.choices(list(mix), weights=list(mix.values()), k=n)
        pool = cls()
        for i, kind in enumerate(kinds):
            if kind == "known" and known_users:
                user = rng.choice(known_users)
                req = recall_pb2.RecallRequest(user_id=user, history_item_ids=known[user], k=k)
            elif kind == "text":
                item = rng.choice(items)
                text = item.title or item.text[:80]
                req = recall_pb2.RecallRequest(user_id=f"bench-text-{i}", text=text, k=k)
            else:
                hist = rng.sample(ids, min(rng.randint(lo, hi), len(ids)))
                req = recall_pb2.RecallRequest(user_id=f"bench-new-{i}", history_item_ids=hist, k=k)
                if kind == "unseen_text":  # a user with a history who also typed a query
                    item = rng.choice(items)
                    req.text = item.title or item.text[:80]
                else:
                    kind = "unseen"
            pool.requests.append((kind, req))
        return pool


def _known_histories(path: Path, history_len: int) -> dict[str, list[str]]:
    from recall_engine.offline.data.interactions import load_interactions

    data, _ = load_interactions(path, progress=False)
    out = {}
    for user, rows in data.by_user().items():
        out[user] = data.item_ids[rows[-history_len:]].tolist()
        if len(out) >= 5000:
            break
    return out


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    channel_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    channel_status: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    elapsed_s: float = 0.0
    cpu: CpuMeter | None = None
    retries: int = 0  # calls shed with a retry hint and retried after it (measured window)

    def record(self, kind: str, ms: float, resp) -> None:
        self.latencies_ms.append(ms)
        self.by_kind[kind].append(ms)
        for ch in resp.channels:
            self.channel_status[ch.channel][ch.status] += 1
            if ch.status == 1:
                self.channel_ms[ch.channel].append(ch.latency_ms)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        total = len(self.latencies_ms) + sum(self.errors.values())

        def pct(a) -> dict[str, float]:
            a = np.asarray(a) if len(a) else np.zeros(1)
            return {f"p{p}": round(float(np.percentile(a, p)), 3) for p in (50, 90, 99, 99.9)}

        done = max(total, 1)
        cpu: dict[str, Any] = {}
        if self.cpu is not None:
            cpu["cpu_ms_per_request"] = {"generator": round(1000 * self.cpu.client_s / done, 3)}
            if self.cpu.pids:
                cpu["cpu_ms_per_request"]["server"] = round(1000 * self.cpu.server_s / done, 3)
                cpu["server_context_switches_per_request"] = round(
                    self.cpu.server_switches / done, 1
                )
                if self.cpu.native_shares is not None:
                    cpu["native_floor"] = floor_summary(
                        self.cpu.native_shares, cpu["cpu_ms_per_request"]["server"]
                    )
        return {
            **cpu,
            "requests": total,
            "ok": len(self.latencies_ms),
            "seconds": round(self.elapsed_s, 2),
            "rps": round(len(self.latencies_ms) / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": pct(lat),
            "errors": dict(self.errors),
            "retries_after_shed": self.retries,
            "by_kind": {k: {"n": len(v), **pct(v)} for k, v in self.by_kind.items()},
            "channels_ms": {c: pct(v) for c, v in self.channel_ms.items()},
            "channel_status": {c: dict(v) for c, v in self.channel_status.items()},
        }


class CpuMeter:
    """CPU seconds spent during the measured window by this process (the load generator,
    or generator + engine in process) and by the server's process tree (``pids`` and
    all their descendants when the window opens, from ``/proc``): CPU time per request
    moves far less with other jobs' load than latency does. Also the server's context
    switches (every thread's, voluntary and not): each hand-off between threads, and
    each wait for the GIL, is one."""

    def __init__(self, pids: Sequence[int] = (), profile: NativeProfile | None = None) -> None:
        self.pids = list(pids)
        self.profile = profile  # --native-floor: perf samples the same tree and window
        self.native_shares: dict[str, float] | None = None
        self.client_s = self.server_s = 0.0
        self.server_switches = 0
        self._c0 = self._s0 = 0.0
        self._w0 = 0
        self._tree: list[int] = []

    def start(self) -> None:
        # The process tree is listed once, before the window: scanning /proc costs
        # this process CPU, which must not land inside one figure and not the other.
        self._tree = _tree(self.pids) if self.pids else []
        if self.profile is not None:
            self.profile.start(self._tree)
        self._w0 = self._switches()
        self._s0 = self._server()
        self._c0 = time.process_time()

    def stop(self) -> None:
        self.client_s = time.process_time() - self._c0
        self.server_s = self._server() - self._s0
        self.server_switches = self._switches() - self._w0
        if self.profile is not None:
            self.profile.stop()
            self.native_shares = self.profile.shares()  # read before its file goes

    def _server(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self._tree)

    def _switches(self) -> int:
        # threads that end inside the window take theirs along: a lower bound
        return sum(_context_switches(pid) for pid in self._tree)


def _tree(roots: Sequence[int]) -> list[int]:
    """``roots`` and their descendants (Linux ``/proc``)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(child for child, ppid in parent.items() if ppid == pid)
    return out


def _context_switches(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _drive(
    call,
    pool: RequestPool,
    *,
    concurrency: int,
    rate: float | None,
    duration: float,
    warmup: float,
    meter: CpuMeter | None = None,
) -> Results:
    """Closed loop (``concurrency`` workers back to back) or open loop (``rate``/s)."""
    results = Results()
    reqs = pool.requests
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration
    counter = 0
    meter = meter or CpuMeter()

    async def window() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        meter.start()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        meter.stop()

    timer = asyncio.ensure_future(window())

    async def one(kind: str, req) -> None:
        t0 = time.perf_counter()
        try:
            resp = await call(req)
        except Exception as e:  # noqa: BLE001 - counted by status code
            if t0 >= t_measure:
                code = getattr(e, "code", None)  # a method on RpcError, a value on RecallError
                code = code() if callable(code) else code
                results.errors[getattr(code, "name", type(e).__name__)] += 1
            return
        if t0 >= t_measure:
            results.record(kind, (time.perf_counter() - t0) * 1000, resp)

    async def worker(offset: int) -> None:
        nonlocal counter
        i = offset
        while time.perf_counter() < t_end:
            kind, req = reqs[i % len(reqs)]
            i += concurrency
            await one(kind, req)

    if rate:
        tasks: set[asyncio.Task] = set()
        interval = 1.0 / rate
        next_t = time.perf_counter()
        while next_t < t_end:
            now = time.perf_counter()
            if now < next_t:
                await asyncio.sleep(next_t - now)
            kind, req = reqs[counter % len(reqs)]
            counter += 1
            task = asyncio.ensure_future(one(kind, req))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_t += interval
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    else:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    await timer
    results.elapsed_s = min(time.perf_counter(), t_end) - t_measure
    results.cpu = meter
    return results


async def run_grpc(
    addr: str,
    pool: RequestPool,
    *,
    concurrency: int,
    rate: float | None,
    duration: float,
    warmup: float,
    channels: int,
    timeout: float,
    server_pids: Sequence[int] = (),
    pushback: bool = True,
    native_floor: bool = False,
) -> Results:
    """Drive the server at ``addr``. With ``pushback`` a call shed with
    ``RESOURCE_EXHAUSTED`` and a ``grpc-retry-pushback-ms`` hint is retried after the
    hint (+-50 % jitter) within its deadline, as a gRPC retry policy (or
    :mod:`recall_engine.client`) does; its latency counts from the first attempt."""
    import grpc

    from recall_engine._proto import recall_pb2_grpc
    from recall_engine.serving.client_target import balanced_target

    target, options = balanced_target(addr)
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1), *options])
        for _ in range(channels)
    ]
    stubs = [recall_pb2_grpc.RecallServiceStub(c) for c in chans]
    n = 0
    retries: list[float] = []  # when each retry after a shed happened
    rng = random.Random(0)

    async def call(req):
        nonlocal n
        n += 1
        stub = stubs[n % len(stubs)]
        deadline = time.perf_counter() + timeout
        while True:
            try:
                return await stub.Recall(req, timeout=max(0.001, deadline - time.perf_counter()))
            except grpc.aio.AioRpcError as e:
                if not pushback or e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                hint = dict(e.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                wait = float(hint) / 1000 * rng.uniform(0.5, 1.5) if hint else -1.0
                if wait < 0 or time.perf_counter() + wait >= deadline:
                    raise
                retries.append(time.perf_counter())
                await asyncio.sleep(wait)

    profile = NativeProfile() if native_floor else None
    try:
        t_measure = time.perf_counter() + warmup
        results = await _drive(
            call,
            pool,
            concurrency=concurrency,
            rate=rate,
            duration=duration,
            warmup=warmup,
            meter=CpuMeter(server_pids, profile),
        )
        results.retries = sum(1 for t in retries if t_measure <= t <= t_measure + duration)
        return results
    finally:
        if profile is not None:
            profile.close()
        for c in chans:
            await c.close()


def _config(artifacts: Path, config_file: Path | None):
    """The config to serve in process: ``config_file`` (``--config``), else the default
    config over ``artifacts``."""
    from recall_engine.config import default_config, load_config

    return load_config(config_file) if config_file else default_config(artifacts.resolve())


def add_in_process_arguments(p: argparse.ArgumentParser, *, requests: int) -> None:
    """The options of :func:`engine_with_inputs`, for the in-process bench scripts."""
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--interactions", type=Path, help="known users' histories (CSV)")
    p.add_argument(
        "--mix",
        default="known=0.5,unseen=0.3,text=0.2",
        help="request mix shares (known, unseen, text)",
    )
    p.add_argument("--requests", type=int, default=requests, help="requests in the pool")


def engine_with_inputs(
    config_file: Path, *, mix: str, requests: int, interactions: Path | None
) -> tuple[Any, list]:
    """For the in-process bench scripts (``bench/channel_cost.py``,
    ``bench/index_recall.py``): the engine loaded from ``config_file`` as ``serve`` would
    load it, and the request pool as ``(kind, RecallInput)`` pairs (no known users
    without ``interactions``)."""
    from recall_engine.serving.engine import Engine
    from recall_engine.serving.requests import recall_input

    config = _config(Path("."), config_file)
    shares = _parse_mix(mix)
    if not interactions:
        shares.pop("known", None)
    pool = RequestPool.build(
        config.artifacts_root, mix=shares, k=200, n=requests, interactions=interactions
    )
    engine = Engine(config)
    engine.load()
    names = list(config.channels)
    return engine, [(kind, recall_input(req, config.server, names)) for kind, req in pool.requests]


async def run_in_process(
    artifacts: Path,
    pool: RequestPool,
    *,
    concurrency: int,
    rate: float | None,
    duration: float,
    warmup: float,
    config_file: Path | None = None,
) -> Results:
    from recall_engine.serving.admission import OverloadSettings, machine_in_flight
    from recall_engine.serving.engine import Engine
    from recall_engine.serving.requests import recall_input
    from recall_engine.serving.servicer import to_proto

    config = _config(artifacts, config_file)
    # The generator runs on the engine's own event loop here: the loop's lag is the
    # generator's, so admission keeps a fixed bound that admits every worker (`bench
    # overload` measures admission against a real server).
    overload = OverloadSettings(
        max_in_flight=max(concurrency, machine_in_flight()),
        target_loop_lag_ms=None,
        latency_tolerance=None,
    )
    engine = Engine(config, overload=overload)
    await asyncio.to_thread(engine.load)
    names = list(config.channels)

    async def call(req):
        inp = recall_input(req, config.server, names)
        return to_proto(await engine.recall(inp))

    try:
        return await _drive(
            call, pool, concurrency=concurrency, rate=rate, duration=duration, warmup=warmup
        )
    finally:
        engine.close()


def stage_benchmark(
    artifacts: Path, pool: RequestPool, rounds: int = 500, config_file: Path | None = None
) -> dict:
    """Time each stage of the request path in isolation, on the same request pool:
    request decode, validation, A/B assignment, each channel, fusion, response encode.
    Wall time, and the CPU time of the whole process (every thread: ONNX Runtime and
    usearch threads included), which a busy machine inflates much less."""
    from recall_engine._proto import recall_pb2
    from recall_engine.serving.engine import Engine
    from recall_engine.serving.fusion import RankedList, fuse
    from recall_engine.serving.requests import recall_input
    from recall_engine.serving.servicer import to_proto

    config = _config(artifacts, config_file)
    engine = Engine(config)
    engine.load()
    names = list(config.channels)
    state = engine._state  # noqa: SLF001 - the benchmark looks inside on purpose
    assert state is not None
    wire = [req.SerializeToString() for _, req in pool.requests[:rounds]]
    timings: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)

    def timed(stage: str, fn, *a, **kw):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn(*a, **kw)
        timings[stage].append((time.perf_counter() - t0) * 1000)
        cpu[stage].append((time.process_time() - c0) * 1000)
        return out

    for raw in wire:
        req = timed("decode", recall_pb2.RecallRequest.FromString, raw)
        inp = timed("validate", recall_input, req, config.server, names)
        plan = timed("assign", state.assigner.assign, inp.query.user_id).plan
        lists = []
        for name, slot in state.slots.items():
            if plan.weights.get(name, 0) <= 0 or not slot.channel.accepts(inp.query):
                continue
            k_c = plan.channel_k.get(name, slot.config.k)
            cands = timed(f"channel {name}", slot.channel.recall, inp.query, k_c)
            lists.append(RankedList(name, cands.item_ids, cands.scores))
        fused = timed(
            "fusion",
            fuse,
            plan.fusion,
            lists,
            plan.weights,
            inp.k,
            priority=names,
            params=plan.fusion_params,
        )
        from recall_engine.serving.engine import ChannelReport, RecallOutput, Status

        out = RecallOutput(
            fused,
            tuple(ChannelReport(rl.channel, Status.OK, 1.0) for rl in lists),
            state.assigner.assign(""),
            "bench",
        )
        timed("response encode", lambda o: to_proto(o).SerializeToString(), out)
    engine.close()
    return {
        stage: {
            "n": len(v),
            "mean": round(float(np.mean(v)), 4),
            "p50": round(float(np.percentile(v, 50)), 4),
            "p99": round(float(np.percentile(v, 99)), 4),
            "cpu_mean": round(float(np.mean(cpu[stage])), 4),
        }
        for stage, v in timings.items()
    }


def _parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        if name not in MIXES:
            raise SystemExit(f"--mix: unknown kind {name!r} (known: {', '.join(MIXES)})")
        mix[name] = float(share or 1)
    return mix


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--addr",
        help="running server HOST:PORT; several, comma-separated (e.g. "
        "the worker addresses of serve --processes N with "
        "server.worker_port_base): every call goes to the next one "
        "(gRPC round_robin)",
    )
    p.add_argument(
        "--artifacts",
        type=Path,
        help="artifacts folder (its catalogue feeds the request mix; with "
        "--in-process the engine serves it); default: --config's "
        "artifacts.root",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config for --in-process and --stages (per-channel k, params); "
        "default: the built-in channels over --artifacts",
    )
    p.add_argument(
        "--in-process", action="store_true", help="drive an in-process engine instead of a server"
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="start recall-engine serve on --artifacts (default config) in a child process "
        "and drive it (instead of --addr); its CPU per request is reported",
    )
    p.add_argument(
        "--processes",
        help="with --serve: serve's --processes, N or auto (default: serve's own, auto)",
    )
    p.add_argument(
        "--echo",
        action="store_true",
        help="also drive an echo gRPC server answering the same requests with the engine's "
        "own response bytes, in the same run, and report the engine's throughput as a "
        "share of it (needs --serve or --addr)",
    )
    p.add_argument(
        "--interactions", type=Path, help="interactions file: known users and their real histories"
    )
    p.add_argument("--concurrency", type=int, default=8, help="closed-loop workers")
    p.add_argument("--rate", type=float, help="open loop: requests per second instead")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument(
        "--mix",
        default="known=0.5,unseen=0.3,text=0.2",
        help="request mix shares (known, unseen, text, unseen_text)",
    )
    p.add_argument("-k", type=int, default=200)
    p.add_argument(
        "--history-len",
        type=_history_len,
        default=20,
        help="items in an unseen user's history: N, or LO-HI drawn uniformly per request",
    )
    p.add_argument(
        "--grpc-channels",
        type=int,
        default=16,
        help="client gRPC channels, used in turn; each holds one HTTP/2 "
        "connection per --addr address",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="per-call deadline, seconds")
    p.add_argument(
        "--no-pushback",
        action="store_true",
        help="count a shed call (RESOURCE_EXHAUSTED) as an error at once instead of retrying "
        "it after the server's retry hint, as gRPC retry policies and recall_engine.client do",
    )
    p.add_argument("--json", type=Path, help="write the summary as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="the server's PID (repeatable; children count too, e.g. serve "
        "--processes N): report its CPU time per request (Linux)",
    )
    p.add_argument(
        "--native-floor",
        action="store_true",
        help="also sample the server with Linux perf over the measured window and report "
        "the CPU spent inside usearch and ONNX Runtime (the native floor) and the server's "
        "CPU per request as a multiple of it (needs --server-pid or --serve, and perf)",
    )
    p.add_argument(
        "--stages",
        action="store_true",
        help="also time each request stage in isolation (in-process)",
    )


def run(args: argparse.Namespace) -> int:
    mix = _parse_mix(args.mix)
    if args.serve and (args.addr or args.in_process):
        raise SystemExit("--serve starts its own server: not with --addr or --in-process")
    if args.echo and args.in_process:
        raise SystemExit("--echo compares gRPC servers: give --serve or --addr, not --in-process")
    if args.serve and args.artifacts is None:
        raise SystemExit("--serve: give --artifacts DIR (e.g. demo/artifacts)")
    if not args.in_process and not args.addr and not args.serve:
        raise SystemExit("give --addr HOST:PORT, --serve or --in-process")
    if args.native_floor and not (args.serve or (args.addr and args.server_pid)):
        raise SystemExit(
            "--native-floor profiles a server: give --serve, or --addr with --server-pid"
        )
    if args.addr:
        from recall_engine.serving.client_target import balanced_target

        try:
            balanced_target(args.addr)
        except ValueError as e:
            raise SystemExit(f"--{e}") from None
    if args.artifacts is None:
        if args.config is None:
            raise SystemExit("give --artifacts DIR or --config FILE")
        args.artifacts = _config(Path("."), args.config).artifacts_root
    if "known" in mix and not args.interactions:
        mix.pop("known")
        mix.setdefault("unseen", 1.0)
    pool = RequestPool.build(
        args.artifacts,
        mix=mix,
        k=args.k,
        history_len=args.history_len,
        seed=args.seed,
        interactions=args.interactions,
    )
    common = dict(
        concurrency=args.concurrency, rate=args.rate, duration=args.duration, warmup=args.warmup
    )
    if args.in_process:
        res = asyncio.run(run_in_process(args.artifacts, pool, config_file=args.config, **common))
        summary = summarise(res, args, "in-process")
        print(render(summary))
    else:
        summary = _run_servers(args, pool, common)
    if args.stages:
        summary["stages_ms"] = stage_benchmark(args.artifacts, pool, config_file=args.config)
        print("| stage | mean ms | p50 | p99 | CPU ms (mean) |\n|---|---|---|---|---|")
        for stage, v in summary["stages_ms"].items():
            print(f"| {stage} | {v['mean']} | {v['p50']} | {v['p99']} | {v['cpu_mean']} |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


def _run_servers(args: argparse.Namespace, pool: RequestPool, common: dict) -> dict:
    """The gRPC runs: the engine (``--addr``, or the one ``--serve`` starts), then with
    ``--echo`` the echo server over the engine's recorded responses."""
    import contextlib
    import tempfile

    from recall_engine.benchmarks.servers import (
        EchoServerProcess,
        ServeCommand,
        record_responses,
    )

    def drive(addr: str, pids: Sequence[int], floor: bool = False) -> Results:
        return asyncio.run(
            run_grpc(
                addr,
                pool,
                channels=args.grpc_channels,
                timeout=args.timeout,
                server_pids=pids,
                pushback=not args.no_pushback,
                native_floor=floor,
                **common,
            )
        )

    with contextlib.ExitStack() as stack:
        if args.serve:
            spawned = stack.enter_context(ServeCommand(args.artifacts, args.processes))
            addr, pids = spawned.addr, [spawned.pid]
            n = spawned.processes
            target = f"serve {args.artifacts} ({n} process{'' if n == 1 else 'es'})"
        else:
            addr, pids, target = args.addr, args.server_pid, args.addr
        summary = summarise(drive(addr, pids, args.native_floor), args, target)
        if args.serve:
            summary["server_processes"] = spawned.processes
        print(render(summary))
        if args.echo:
            first = addr.split(",")[0].removeprefix("ipv4:")
            responses = record_responses(first, [req for _, req in pool.requests])
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            echo = stack.enter_context(EchoServerProcess(responses, scratch))
            summary["echo"] = summarise(drive(echo.addr, [echo.pid]), args, "echo")
            print(render(summary["echo"]))
            summary["engine_to_echo"] = _ratios(summary, summary["echo"])
            print(render_ratios(summary["engine_to_echo"]))
    return summary


def _ratios(engine: dict, echo: dict) -> dict:
    """The engine against the echo server: OK answers/s as a share of the echo's, and
    server CPU per request as a multiple of the echo's."""
    out: dict[str, Any] = {
        "throughput": round(engine["rps"] / echo["rps"], 3) if echo["rps"] else None,
        "engine_errors": engine["errors"],
        "echo_errors": echo["errors"],
    }
    cpu_e = engine.get("cpu_ms_per_request", {}).get("server")
    cpu_x = echo.get("cpu_ms_per_request", {}).get("server")
    if cpu_e and cpu_x:
        out["server_cpu_per_request"] = round(cpu_e / cpu_x, 2)
    return out


def render_floor(f: dict) -> str:
    """One line for ``--native-floor``'s figures."""
    parts = ", ".join(f"{lib} {100 * v:.1f} %" for lib, v in f["by_library"].items())
    line = f"native floor: {100 * f['share']:.1f} % of the server's CPU ({parts})"
    if "ms_per_request" in f:
        line += (
            f", {f['ms_per_request']} ms per request; server CPU per request "
            f"= {f['server_to_floor']} x the floor"
        )
    return line


def render_ratios(r: dict) -> str:
    line = f"engine / echo: throughput {r['throughput']}"
    if "server_cpu_per_request" in r:
        line += f", server CPU per request {r['server_cpu_per_request']}x"
    if r["engine_errors"] or r["echo_errors"]:
        line += f" (errors: engine {r['engine_errors'] or 0}, echo {r['echo_errors'] or 0})"
    return line


def _history_len(text: str) -> int | tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        span = (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI, got {text!r}") from None
    if not 0 <= span[0] <= span[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= LO <= HI, got {text!r}")
    return span if sep else span[0]


def summarise(res: Results, args: argparse.Namespace, target: str) -> dict:
    s = res.summary()
    s["target"] = target
    s["mode"] = f"rate {args.rate}/s" if args.rate else f"concurrency {args.concurrency}"
    s["k"] = args.k
    return s


def render(s: dict) -> str:
    lat = s["latency_ms"]
    lines = [
        f"target={s['target']} {s['mode']} k={s['k']} seconds={s['seconds']}",
        f"requests/s {s['rps']}   ok {s['ok']}   errors {s['errors'] or 0}   "
        f"retries after a shed {s.get('retries_after_shed', 0)}",
        *(
            [
                "CPU ms per request: "
                + ", ".join(f"{who} {ms}" for who, ms in s["cpu_ms_per_request"].items())
            ]
            if "cpu_ms_per_request" in s
            else []
        ),
        *(
            [f"server context switches per request: {s['server_context_switches_per_request']}"]
            if "server_context_switches_per_request" in s
            else []
        ),
        *([render_floor(s["native_floor"])] if "native_floor" in s else []),
        "| latency ms | p50 | p90 | p99 | p99.9 |",
        "|---|---|---|---|---|",
        f"| all | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['p99.9']} |",
    ]
    for kind, v in s["by_kind"].items():
        lines.append(
            f"| {kind} (n={v['n']}) | {v['p50']} | {v['p90']} | {v['p99']} | {v['p99.9']} |"
        )
    for ch, v in s["channels_ms"].items():
        lines.append(f"| channel {ch} | {v['p50']} | {v['p90']} | {v['p99']} | {v['p99.9']} |")
    return "\n".join(lines)
