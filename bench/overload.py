"""``recall-engine bench overload``: goodput under overload, against the peak.

Starts the real server on a built artifacts folder (the demo catalogue: ``make serve``
builds it under ``demo/artifacts``) in a child process on a free port, with the default
config and the default overload settings (sized from the machine), and drives it with a
closed loop of grpc.aio clients at each ``--concurrency`` for each kind of traffic:

* ``history``: 20-item histories of catalogue items (users unseen in training), k = 200;
* ``text``: the same plus a free text (an item title), which runs the text encoders.

For every point it reports OK answers/s, their share of the peak (the best OK/s of that
traffic over the concurrencies), the requests shed with RESOURCE_EXHAUSTED and how fast
they were answered (p50/p99 ms), DEADLINE_EXCEEDED and any other status. The clients
behave like gRPC clients with a retry policy: a shed request waits the server's
``grpc-retry-pushback-ms`` hint (with +-50 % jitter) before that client's next call
(``--no-pushback``: retry at once, a client that ignores the hint).

Target (issue 13): goodput at 64 and 256 >= 90 % of the peak, no DEADLINE_EXCEEDED for
admitted requests, shed requests answered in <= 5 ms (p99).

``--echo`` then drives an echo gRPC server (``bench load --echo``'s: the engine's own
response bytes, recorded first) at the same points: what a do-nothing server answers in
on this machine under the same client load, the reference the shed latency is put
against where 5 ms is out of any server's reach (a 2-core host shared with the clients).

``--check-cost`` also times the engine's channel-output check (``check_answer``) on the
demo channels' real answers to the same traffic, in process: microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

TRAFFIC = ("history", "text")
TARGET_SHARE = 0.9
TARGET_SHED_MS = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts",
        type=Path,
        default=Path("demo/artifacts"),
        help="built artifacts to serve (default: demo/artifacts, what make serve builds)",
    )
    p.add_argument("--concurrency", default="1,8,64,256", help="closed-loop clients per point")
    p.add_argument("--traffic", default="history,text", help=f"kinds, of: {', '.join(TRAFFIC)}")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per point")
    p.add_argument("--timeout", type=float, default=1.0, help="client deadline per call, seconds")
    p.add_argument("-k", type=int, default=200)
    p.add_argument("--history-len", type=int, default=20)
    p.add_argument("--grpc-channels", type=int, default=8, help="client connections")
    p.add_argument(
        "--max-in-flight",
        type=int,
        help="the engine's admission bound (default: sized from the machine)",
    )
    p.add_argument(
        "--overload",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an [overload] setting for the engine, as TOML (repeatable; for example "
        "target_loop_lag_ms=0 or switch_interval_ms=5): an experiment against the default",
    )
    p.add_argument(
        "--no-pushback",
        action="store_true",
        help="clients retry a shed request at once instead of waiting the hint",
    )
    p.add_argument("--check-cost", action="store_true", help="also time the output check")
    p.add_argument(
        "--echo",
        action="store_true",
        help="also drive an echo gRPC server (the engine's own response bytes, recorded "
        "first) at the same points, in the same run: the latency a do-nothing server "
        "reaches on this machine under this load, the reference for the shed latency",
    )
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    traffic = [t.strip() for t in args.traffic.split(",") if t.strip()]
    for t in traffic:
        if t not in TRAFFIC:
            raise SystemExit(f"--traffic: unknown kind {t!r} (known: {', '.join(TRAFFIC)})")
    levels = [int(c) for c in args.concurrency.split(",")]
    if not (args.artifacts / "catalog").is_dir():
        raise SystemExit(
            f"--artifacts {args.artifacts}: no catalogue there; build the demo first "
            "(make serve, or recall-engine serve once)"
        )
    overrides = overload_overrides(args.overload, args.max_in_flight)
    pools = {t: build_pool(args.artifacts, t, args.k, args.history_len, args.seed) for t in traffic}
    report: dict[str, Any] = {"settings": {}, "points": [], "overrides": overrides}
    from recall_engine.benchmarks.servers import ServerProcess

    with ServerProcess(args.artifacts, overrides) as server:
        report["settings"] = server.settings
        report["points"] = _sweep(server, pools, levels, args)
        if args.echo:
            from recall_engine.benchmarks.servers import record_responses

            responses: dict[bytes, bytes] = {}
            for pool in pools.values():
                responses.update(record_responses(server.addr, pool))
    if args.echo:
        import tempfile

        from recall_engine.benchmarks.servers import EchoServerProcess

        with (
            tempfile.TemporaryDirectory() as scratch,
            EchoServerProcess(responses, Path(scratch)) as echo,
        ):
            report["echo"] = _sweep(echo, pools, levels, args, "echo ")
    add_shares(report["points"])
    if args.check_cost:
        report["check_cost"] = check_cost(args.artifacts, pools)
    print(render(report, args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def overload_overrides(pairs: list[str], max_in_flight: int | None) -> dict[str, Any]:
    """``--overload KEY=VALUE`` (and ``--max-in-flight``) as ``[overload]`` keys, the
    values read as TOML and checked as the config file's would be; a bad one stops the
    run naming the flag."""
    import dataclasses
    import tomllib

    from recall_engine.config import OverloadConfig, parse_config

    known = {f.name for f in dataclasses.fields(OverloadConfig)}
    table: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise SystemExit(
                f"--overload {pair!r}: expected KEY=VALUE, KEY one of {', '.join(sorted(known))}"
            )
        try:
            table[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"--overload {pair!r}: the value is not TOML ({e})") from None
    if max_in_flight is not None:
        table["max_in_flight"] = max_in_flight
    try:  # checked as [overload] in a config file would be
        parse_config({"overload": table, "channels": {"popular": {}}}, Path("."))
    except Exception as e:  # noqa: BLE001 - ConfigError names the key
        raise SystemExit(f"--overload: {e}") from None
    return table


def _sweep(server, pools: dict[str, list], levels: list[int], args, label: str = "") -> list:
    """One closed-loop point per traffic kind and concurrency against ``server``."""
    points = []
    for kind, pool in pools.items():
        for c in levels:
            point = asyncio.run(
                drive(
                    server.addr,
                    pool,
                    concurrency=c,
                    duration=args.duration,
                    warmup=args.warmup,
                    timeout=args.timeout,
                    channels=args.grpc_channels,
                    pushback=not args.no_pushback,
                    server_pid=server.pid,
                )
            )
            point.update(traffic=kind, concurrency=c)
            points.append(point)
            print(
                f"{label}{kind} c={c}: {point['ok_per_s']} OK/s, shed {point['shed']}, "
                f"deadline {point['deadline_exceeded']}",
                flush=True,
            )
    return points


# -- traffic ---------------------------------------------------------------------------


def build_pool(artifacts: Path, kind: str, k: int, history_len: int, seed: int, n: int = 2000):
    from recall_engine._proto import recall_pb2
    from recall_engine.runtime.catalog import Catalog

    rng = random.Random(seed)
    items = list(Catalog.load(artifacts / "catalog"))
    ids = [it.item_id for it in items]
    pool = []
    for i in range(n):
        req = recall_pb2.RecallRequest(
            user_id=f"overload-{kind}-{i}",
            history_item_ids=rng.sample(ids, min(history_len, len(ids))),
            k=k,
        )
        if kind == "text":
            item = rng.choice(items)
            req.text = item.title or item.text[:80]
        pool.append(req)
    return pool


# -- the load ----------------------------------------------------------------------------


async def drive(
    addr: str,
    pool: list,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    timeout: float,
    channels: int,
    pushback: bool,
    server_pid: int,
) -> dict[str, Any]:
    import grpc

    from recall_engine._proto import recall_pb2_grpc

    chans = [
        grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [recall_pb2_grpc.RecallServiceStub(c) for c in chans]
    ok_ms: list[float] = []
    shed_ms: list[float] = []
    codes: Counter[str] = Counter()
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + duration
    cpu0: list[float] = []

    async def window() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        cpu0.append(_cpu_seconds(server_pid))

    async def client(w: int) -> None:
        rng = random.Random(w)
        stub = stubs[w % len(stubs)]
        i = w
        while (t0 := time.perf_counter()) < t_end:
            req = pool[i % len(pool)]
            i += concurrency
            wait = 0.0
            try:
                await stub.Recall(req, timeout=timeout)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                if code == "RESOURCE_EXHAUSTED" and pushback:
                    hint = dict(e.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                    wait = float(hint or 0) / 1000 * rng.uniform(0.5, 1.5)
            ms = (time.perf_counter() - t0) * 1000
            if t0 >= t_measure and time.perf_counter() <= t_end:
                codes[code] += 1
                if code == "OK":
                    ok_ms.append(ms)
                elif code == "RESOURCE_EXHAUSTED":
                    shed_ms.append(ms)
            if wait:
                await asyncio.sleep(wait)

    lag: list[float] = []

    async def probe() -> None:
        """The client's own event-loop lag: a slow client would inflate every figure."""
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            if t >= t_measure:
                lag.append((time.perf_counter() - t - 0.01) * 1000)

    timer = asyncio.ensure_future(window())
    prober = asyncio.ensure_future(probe())
    try:
        await asyncio.gather(*(client(w) for w in range(concurrency)))
        await timer
        await prober
    finally:
        for c in chans:
            await c.close()
    cpu_s = _cpu_seconds(server_pid) - (cpu0[0] if cpu0 else 0.0)
    ok = codes.get("OK", 0)
    return {
        "ok_per_s": round(ok / duration, 1),
        "ok": ok,
        "ok_ms": _pct(ok_ms),
        "shed": codes.get("RESOURCE_EXHAUSTED", 0),
        "shed_ms": _pct(shed_ms),
        "deadline_exceeded": codes.get("DEADLINE_EXCEEDED", 0),
        "other": {
            c: n
            for c, n in codes.items()
            if c not in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
        },
        "client_loop_lag_ms": _pct(lag),
        "server_cpu_ms_per_ok": round(1000 * cpu_s / ok, 2) if ok else None,
    }


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {f"p{p}": round(float(np.percentile(a, p)), 2) for p in (50, 99)}


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def add_shares(points: list[dict[str, Any]]) -> None:
    """Each point's OK/s as a share of its traffic's peak."""
    for kind in {p["traffic"] for p in points}:
        same = [p for p in points if p["traffic"] == kind]
        peak = max(p["ok_per_s"] for p in same) or 1.0
        for p in same:
            p["share_of_peak"] = round(p["ok_per_s"] / peak, 3)


# -- the output check's cost -------------------------------------------------------------


def check_cost(artifacts: Path, pools: dict[str, list], n: int = 300) -> dict[str, float]:
    """Microseconds per request spent in ``check_answer`` on the demo channels' real
    answers (every channel that accepts the request), in process."""
    from recall_engine.config import default_config
    from recall_engine.serving.engine import Engine
    from recall_engine.serving.output_check import check_answer
    from recall_engine.serving.requests import recall_input

    config = default_config(artifacts.resolve())
    engine = Engine(config)
    engine.load()
    out: dict[str, float] = {}
    try:
        state = engine._state  # noqa: SLF001 - the benchmark looks inside on purpose
        assert state is not None
        for kind, pool in pools.items():
            answers = []
            for req in pool[:n]:
                query = recall_input(req, config.server, list(config.channels)).query
                for slot in state.slots.values():
                    if slot.channel.accepts(query):
                        answers.append((slot.channel.recall(query, slot.config.k), slot.config.k))
            t0 = time.perf_counter()
            rounds = 5
            for _ in range(rounds):
                for answer, k in answers:
                    check_answer(answer, k)
            out[kind] = round((time.perf_counter() - t0) / (rounds * min(n, len(pool))) * 1e6, 1)
    finally:
        engine.close()
    return out


# -- report ------------------------------------------------------------------------------


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    s = report["settings"]
    lines = [
        f"server: default config over {args.artifacts}"
        + "".join(f", {k} = {v!r}" for k, v in report.get("overrides", {}).items())
        + f", max_in_flight {s.get('max_in_flight')}, "
        f"channel limits {s.get('channel_limits')}, {s.get('cpus')} CPUs; clients "
        f"{'obey' if not args.no_pushback else 'ignore'} the retry hint; deadline "
        f"{args.timeout} s; {args.duration} s per point",
        "",
        "| traffic | clients | OK/s | % of peak | OK p50 / p99 ms | shed | shed p50 / p99 ms "
        "| DEADLINE_EXCEEDED | other | server CPU ms / OK |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["points"]:
        ok, shed = p["ok_ms"], p["shed_ms"]
        lines.append(
            f"| {p['traffic']} | {p['concurrency']} | {p['ok_per_s']} | "
            f"{100 * p['share_of_peak']:.0f} % | {ok.get('p50', '-')} / {ok.get('p99', '-')} | "
            f"{p['shed']} | {shed.get('p50', '-')} / {shed.get('p99', '-')} | "
            f"{p['deadline_exceeded']} | {p['other'] or '-'} | {p['server_cpu_ms_per_ok']} |"
        )
    verdict = []
    for p in report["points"]:
        if p["concurrency"] >= 64 and p["share_of_peak"] < TARGET_SHARE:
            verdict.append(
                f"{p['traffic']} c={p['concurrency']}: {100 * p['share_of_peak']:.0f} % of peak"
            )
        if p["deadline_exceeded"]:
            verdict.append(
                f"{p['traffic']} c={p['concurrency']}: {p['deadline_exceeded']} DEADLINE_EXCEEDED"
            )
        if p["shed_ms"].get("p99", 0) > TARGET_SHED_MS:
            verdict.append(
                f"{p['traffic']} c={p['concurrency']}: shed p99 {p['shed_ms']['p99']} ms"
            )
    lines += ["", "target met" if not verdict else "target missed: " + "; ".join(verdict)]
    if "echo" in report:
        lines += ["", _render_echo(report)]
    if "check_cost" in report:
        lines.append(
            "output check, µs per request: "
            + ", ".join(f"{k} {v}" for k, v in report["check_cost"].items())
        )
    return "\n".join(lines)


def _render_echo(report: dict[str, Any]) -> str:
    """The echo server at the same points: its own latency is what a do-nothing server
    reaches on this machine under that load; the shed latency is put against it."""
    echo = {(p["traffic"], p["concurrency"]): p for p in report["echo"]}
    lines = [
        "echo server, same requests and points (the reference for the shed latency):",
        "",
        "| traffic | clients | echo OK/s | echo p50 / p99 ms | engine shed p50 / p99 ms "
        "| shed / echo p50, p99 |",
        "|---|---|---|---|---|---|",
    ]
    for p in report["points"]:
        e = echo.get((p["traffic"], p["concurrency"]))
        if e is None:
            continue
        ems, shed = e["ok_ms"], p["shed_ms"]
        ratio = "-"
        if shed and ems.get("p50") and ems.get("p99"):
            ratio = f"{shed['p50'] / ems['p50']:.2f}, {shed['p99'] / ems['p99']:.2f}"
        lines.append(
            f"| {p['traffic']} | {p['concurrency']} | {e['ok_per_s']} | "
            f"{ems.get('p50', '-')} / {ems.get('p99', '-')} | "
            f"{shed.get('p50', '-')} / {shed.get('p99', '-')} | {ratio} |"
        )
    return "\n".join(lines)
