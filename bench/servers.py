"""Servers the load benchmarks start in child processes on 127.0.0.1, port 0.

* :class:`ServeCommand`: the ``recall-engine serve --artifacts`` command itself, with its
  defaults (the default overload settings; ``--processes`` as asked): what a user who
  runs it gets; ``bench load --serve`` drives it;
* :class:`ServerProcess`: one server process (:func:`recall_engine.serving.server.serve`
  with the default config over an artifacts folder) whose ``[overload]`` settings an
  experiment can change (``bench overload``);
* :class:`EchoServerProcess`: the limit the engine is measured against (issue 14). A
  plain ``grpc.aio`` server with the same ``RecallService/Recall`` method that parses
  each request (as any server must) and answers it with the engine's own response
  bytes for that request, recorded beforehand. Same generator, same requests, same
  response sizes, same machine, same run: what is left is what the engine costs.

Both are spawned (not forked: no grpc or ONNX Runtime state is inherited) and stopped
with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["EchoServerProcess", "ServeCommand", "ServerProcess", "record_responses"]


class ServeCommand:
    """``recall-engine serve --artifacts ARTIFACTS --addr 127.0.0.1:0`` in a child process,
    as a user runs it (``processes``: ``--processes``, default the command's own
    default). Waits until every process serves; ``pid`` is the command's (the workers
    of ``--processes N`` are its children), ``processes`` how many serve. Stopped with
    SIGTERM."""

    def __init__(self, artifacts: Path, processes: str | None = None, start_s: float = 300) -> None:
        self.artifacts = artifacts.resolve()
        self._argv = [sys.executable, "-m", "recall_engine", "serve", "--artifacts"]
        self._argv += [str(self.artifacts), "--addr", "127.0.0.1:0", "--metrics-addr", ""]
        self._argv += ["--log-json", *(["--processes", processes] if processes else [])]
        self._start_s = start_s
        from recall_engine.serving.cores import auto_processes

        count = processes or "auto"  # serve's default
        self.processes = auto_processes() if count == "auto" else int(count)
        self.addr, self.pid = "", 0
        self._serving = 0
        self._lines: list[str] = []
        self._ready = threading.Event()

    def __enter__(self) -> ServeCommand:
        self._proc = subprocess.Popen(self._argv, stderr=subprocess.PIPE, text=True)
        self.pid = self._proc.pid
        threading.Thread(target=self._read, daemon=True).start()
        self._ready.wait(self._start_s)
        if self._serving < self.processes or not self.addr:  # too slow, failed or exited
            self.__exit__()
            tail = "\n".join(self._lines[-20:])
            raise SystemExit(f"recall-engine serve did not serve within {self._start_s} s:\n{tail}")
        return self

    def _read(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._lines.append(line.rstrip())
            try:
                event = json.loads(line)
            except ValueError:
                continue
            name = event.get("event")
            if name in ("processes_started", "server_listening"):  # the shared address
                self.addr = event["addr"]
            elif name == "serving":
                self._serving += 1
            elif name in ("startup_failed", "config_invalid"):
                self._ready.set()
            if self._serving >= self.processes:
                self._ready.set()
        self._ready.set()  # it exited

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class _Child:
    """A spawned child that sends ``(port, info)`` once it serves."""

    def __init__(self, target, *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=target, args=(*args, child))
        self.addr = ""
        self.pid = 0
        self.settings: dict[str, Any] = {}

    def __enter__(self):
        self._proc.start()
        if not self._parent.poll(300):
            self._proc.kill()
            raise SystemExit("the server did not start within 300 s")
        try:
            port, self.settings = self._parent.recv()
        except EOFError:  # it died before serving; its error went to its stderr
            self._proc.join(5)
            raise SystemExit(
                f"the server process exited before serving (exit code {self._proc.exitcode})"
            ) from None
        self.addr, self.pid = f"127.0.0.1:{port}", self._proc.pid or 0
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()


class ServerProcess(_Child):
    """``recall-engine serve`` (:func:`recall_engine.serving.server.serve`) with the
    default config over ``artifacts``: the default overload settings, no metrics port,
    no drain window. ``overload``: ``[overload]`` keys set over the defaults (an
    experiment's). ``settings`` reports the admission bounds it sized."""

    def __init__(self, artifacts: Path, overload: dict[str, Any] | None = None) -> None:
        self.artifacts = artifacts.resolve()
        super().__init__(_serve_child, str(self.artifacts), dict(overload or {}))


class EchoServerProcess(_Child):
    """The echo server over ``responses`` (:func:`record_responses`: serialized request
    → serialized response)."""

    def __init__(self, responses: dict[bytes, bytes], scratch: Path) -> None:
        path = scratch / "echo-responses.pickle"
        path.write_bytes(pickle.dumps(responses))
        super().__init__(_echo_child, str(path))


def record_responses(addr: str, requests: list, timeout: float = 30.0) -> dict[bytes, bytes]:
    """The server at ``addr``'s response to each request (once each, one at a time),
    keyed by the request's serialized bytes: what the echo server answers with.
    Raises SystemExit naming the status if a request fails."""
    import grpc

    from recall_engine._proto import recall_pb2_grpc

    out: dict[bytes, bytes] = {}
    with grpc.insecure_channel(addr) as channel:
        stub = recall_pb2_grpc.RecallServiceStub(channel)
        for req in requests:
            key = req.SerializeToString()
            if key in out:
                continue
            try:
                out[key] = stub.Recall(req, timeout=timeout).SerializeToString()
            except grpc.RpcError as e:
                raise SystemExit(
                    f"recording the engine's responses for the echo server: {e.code().name}: "
                    f"{e.details()}"
                ) from None
    return out


def _serve_child(artifacts: str, overload: dict[str, Any], conn) -> None:
    import dataclasses
    import sys

    from recall_engine.config import default_config
    from recall_engine.observability.logs import configure
    from recall_engine.serving.server import serve

    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the server's logs: JSON, as served
    configure("INFO", json=True)
    config = default_config(Path(artifacts))
    server = dataclasses.replace(config.server, addr="127.0.0.1:0", metrics_addr="", drain_s=0.0)
    config = dataclasses.replace(
        config, server=server, overload=dataclasses.replace(config.overload, **overload)
    )

    def ready(running) -> None:
        overload = running.engine.overload
        settings = {
            "max_in_flight": overload.max_in_flight,
            "channel_limits": {n: overload.channel_limit(n) for n in config.channels},
            "fallback": overload.fallback,
            "target_loop_lag_ms": config.overload.target_loop_lag_ms,
            "queue_ms": config.overload.queue_ms,
            "switch_interval_ms": config.overload.switch_interval_ms,
            "cpus": os.cpu_count(),
        }
        conn.send((running.port, settings))

    asyncio.run(serve(config, reload_config=lambda: config, ready=ready))


def _echo_child(path: str, conn) -> None:
    import grpc

    from recall_engine._proto import recall_pb2

    responses: dict[bytes, bytes] = pickle.loads(Path(path).read_bytes())  # noqa: S301 - ours
    parse = recall_pb2.RecallRequest.FromString

    async def recall(raw: bytes, context) -> bytes:
        parse(raw)  # the parse every server pays; the answer is looked up by the bytes
        return responses[raw]

    handler = grpc.method_handlers_generic_handler(
        "recall_engine.v1.RecallService",
        {"Recall": grpc.unary_unary_rpc_method_handler(recall)},  # raw bytes in and out
    )

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send((port, {"responses": len(responses)}))
        await server.wait_for_termination()

    asyncio.run(main())
