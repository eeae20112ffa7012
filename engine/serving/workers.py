"""``serve --processes N``: the parent that starts the worker processes and keeps them up.

Python serves one core per process, so a host runs one worker per core, all listening
on one port (``SO_REUSEPORT``). The parent:

* reserves the port when the config says port 0 (a bound, non-listening socket with
  ``SO_REUSEPORT`` keeps the number; only the workers listen, so only they get
  connections) and hands the real number to every worker;
* stops the group at once when a worker dies before it ever served (its first start:
  a config, an artifact or an extra that cannot load will not load on a retry either),
  and exits with that worker's exit code, as one process would;
* restarts a worker that dies (``kill -9``, a crash, an out-of-memory kill) after a
  backoff that doubles per consecutive quick death (0.5 s up to 30 s), and gives up —
  stopping the others and exiting 1 — when one slot dies quickly ``max_quick_deaths``
  times in a row (a config or artifact that cannot load will not fix itself);
* reaps every child as soon as it exits (no zombies), forwards SIGTERM / SIGINT /
  SIGHUP, and exits non-zero when any worker died abnormally during the run;
* takes its workers with it when it dies without a word (``kill -9``, an out-of-memory
  kill): each worker asks the kernel for SIGKILL when its parent goes
  (:func:`die_with_parent`), so no orphan keeps serving on the port, holding the data
  folder's locks, or sharing the port with the next server started there.

Each worker learns how often its slot was restarted from ``RECALL_ENGINE_RESTARTS``
and exports it as the ``recall_worker_restarts`` gauge.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recall_engine.observability.logs import get_logger

log = get_logger("recall_engine.serve")

INDEX_ENV = "RECALL_ENGINE_PROCESS"
"""The worker's index in ``serve --processes N``, 0 to N - 1 (set for the worker)."""
PARENT_ENV = "RECALL_ENGINE_PARENT_PID"
"""The PID of the parent of ``serve --processes N`` (set for its workers)."""
RESTARTS_ENV = "RECALL_ENGINE_RESTARTS"
"""How many times the parent restarted this worker's slot (set for the worker)."""
GROUP_DIR_ENV = "RECALL_ENGINE_GROUP_DIR"
"""Set by the parent of ``serve --processes N`` for its children (serving/process_group.py)."""

#: A worker that dies within this many seconds of its start counts as a quick death.
QUICK_DEATH_S = 10.0


@dataclass(slots=True)
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    restart_at: float | None = None


@dataclass(slots=True)
class WorkerPool:
    """Run ``count`` workers; ``command(index, restarts)`` gives a worker's argv and env."""

    count: int
    command: Callable[[int, int], tuple[Sequence[str], dict[str, str]]]
    max_quick_deaths: int = 5
    backoff_s: tuple[float, float] = (0.5, 30.0)
    poll_s: float = 0.1
    served: Callable[[int], bool] | None = None
    """Whether worker ``index`` has served since the group started (:func:`mark_serving`);
    None: a worker that dies on its first start is restarted like any other."""
    _slots: list[_Slot] = field(default_factory=list)
    _stopping: bool = False
    _stop_signal: int = 0
    _abnormal: bool = False

    def run(self, **log_fields: object) -> int:
        """Start the workers and supervise them until a stop signal, or until a slot
        keeps dying. Returns the exit code for the parent. ``log_fields`` go into the
        ``processes_started`` log line."""
        self._slots = [_Slot(i) for i in range(self.count)]
        for slot in self._slots:
            self._start(slot)
        pids = [s.proc.pid for s in self._slots if s.proc is not None]
        log.info("processes_started", count=self.count, pids=pids, **log_fields)
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            code = self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            self._stopping = True
            self._stop_signal = signum
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)

    def _start(self, slot: _Slot) -> None:
        argv, env = self.command(slot.index, slot.restarts)
        env = {**env, RESTARTS_ENV: str(slot.restarts), PARENT_ENV: str(os.getpid())}
        slot.proc = subprocess.Popen(list(argv), env=env)
        slot.started = time.monotonic()
        slot.restart_at = None

    def _supervise(self) -> int:
        while True:
            now = time.monotonic()
            for slot in self._slots:
                if slot.proc is not None and slot.proc.poll() is not None:
                    if self._stopping:
                        continue
                    if self._never_served(slot):
                        return self._failed_to_start(slot)
                    if not self._on_death(slot, now):
                        self._stop_all()
                        return 1
                if slot.restart_at is not None and now >= slot.restart_at and not self._stopping:
                    slot.restarts += 1
                    self._start(slot)
                    log.warning(
                        "worker_restarted",
                        slot=slot.index,
                        pid=slot.proc.pid if slot.proc else None,
                        restarts=slot.restarts,
                    )
            if self._stopping and all(
                s.proc is None or s.proc.poll() is not None for s in self._slots
            ):
                codes = [s.proc.returncode for s in self._slots if s.proc is not None]
                # a worker still loading has no handler yet: the stop signal ends it
                bad = [c for c in codes if c not in (0, None, -self._stop_signal)]
                return 1 if self._abnormal or bad else 0
            time.sleep(self.poll_s)

    def _never_served(self, slot: _Slot) -> bool:
        return slot.restarts == 0 and self.served is not None and not self.served(slot.index)

    def _failed_to_start(self, slot: _Slot) -> int:
        """A worker died on its first start, before serving: stop the group, and exit
        with its code (2 for a config error, 1 otherwise) after its own log line."""
        assert slot.proc is not None
        code = slot.proc.returncode
        log.error(
            "worker_failed_to_start",
            slot=slot.index,
            pid=slot.proc.pid,
            cause=_cause(code),
            reason="a worker died before it served; see its log above",
        )
        self._stop_all()
        return code if code > 0 else 1

    def _on_death(self, slot: _Slot, now: float) -> bool:
        """Log a worker's death and schedule its restart; False: stop trying."""
        assert slot.proc is not None
        code = slot.proc.returncode
        lived = now - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        if code != 0:
            self._abnormal = True
        log.error(
            "worker_died",
            slot=slot.index,
            pid=slot.proc.pid,
            cause=_cause(code),
            lived_s=round(lived, 1),
            quick_deaths=slot.quick_deaths,
        )
        slot.proc = None
        if slot.quick_deaths >= self.max_quick_deaths:
            log.error(
                "worker_giving_up",
                slot=slot.index,
                quick_deaths=slot.quick_deaths,
                reason="the worker keeps dying right after it starts; see its log above",
            )
            return False
        first, cap = self.backoff_s
        delay = min(cap, first * 2 ** max(slot.quick_deaths - 1, 0))
        slot.restart_at = now + delay
        return True

    def _stop_all(self) -> None:
        self._stopping = True
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.terminate()
        for slot in self._slots:
            if slot.proc is not None:
                try:
                    slot.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    slot.proc.kill()
                    slot.proc.wait()


def reserve_port(host: str, port: int = 0) -> socket.socket:
    """Bind ``host:port`` (0: a free port) with ``SO_REUSEPORT`` and keep the socket: the
    port stays ours, and the workers can bind it too. The socket never listens, so it
    takes no connections. Close it when the workers are gone.

    A fixed port is first bound plainly, without ``SO_REUSEPORT``, which fails if anyone
    holds it: the workers' ``SO_REUSEPORT`` would otherwise share the port with another
    server of the same user (a second ``serve`` started by mistake), which would then
    take part of the calls without a word. Raises OSError naming the address."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host.strip("[]"), port))
            except OSError as e:
                raise OSError(e.errno, f"{host}:{port} is in use: {e.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def _cause(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def _serving_mark(group_dir: str | Path, index: int) -> Path:
    return Path(group_dir) / f"serving.{index}"


def group_member() -> tuple[Path, int] | None:
    """In a worker of ``serve --processes N``: the group's folder and this worker's
    index (what the parent put in its environment); elsewhere None."""
    folder, index = os.environ.get(GROUP_DIR_ENV), os.environ.get(INDEX_ENV)
    if folder and index is not None:
        return Path(folder), int(index)
    return None


def mark_serving() -> None:
    """In a worker of ``serve --processes N``: tell the parent this worker serves (a
    file in the group's folder), so a later death is a crash to restart, not a start-up
    that failed. Elsewhere, a no-op."""
    member = group_member()
    if member is not None:
        _serving_mark(*member).touch()


def served_marks(group_dir: str) -> Callable[[int], bool]:
    """For :attr:`WorkerPool.served`: whether worker ``index`` marked itself serving."""
    return lambda index: _serving_mark(group_dir, index).exists()


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a worker of ``serve --processes N``: have the kernel SIGKILL this process when
    its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and exit at once if the parent
    ``parent`` is already gone (it died before the request was made). Elsewhere than
    Linux, a no-op."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:
        log.error("parent_gone", parent=parent)
        os._exit(1)
