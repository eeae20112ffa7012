"""The update log of replicas on several hosts: one NATS JetStream stream
(``[cluster] log = "nats"``; the ``cluster`` extra installs ``nats-py``).

What travels (subjects ``recall.<stream>.items`` and ``recall.<stream>.control``, one
message per admin call, its payload the same JSON array of rows the file log frames):
item upserts and deletes (:mod:`recall_engine.runtime.catalog`), artifact reloads (the
version each channel now serves) and config reloads (the replicated tables of the new
config) (:mod:`recall_engine.serving.process_group`). One stream gives every record one
sequence number: every replica and every process applies them in that order, from the
last sequence it applied.

Write-ahead. :meth:`NatsLog.append` returns once JetStream acknowledged the message
(with ``replicas = 3``: stored by a quorum of the stream's servers); the caller applies
the change to memory only then. Until ``publish_timeout_s`` passes, a write that finds
no connection or no stream leader (an election after a server died) is retried with the
same ``Nats-Msg-Id``, so the stream stores it once; past that the caller gets
:class:`~recall_engine.runtime.update_log.LogUnavailable` and applies nothing. (A retry
that JetStream stored after the caller gave up is applied later by every replica,
including the caller's, when they read it: the client was told "not known to be
stored", and upserts and deletes are idempotent, so retrying is safe.)

Following. Each process reads the stream with an ephemeral pull consumer that starts at
the sequence after the last one it applied; when its server fails, the next read starts
another where it stopped. A process's own item write is not handed back when nothing it
had not read came before it (as the file log does); otherwise it is, after the others'
(upserts and deletes are idempotent). Its own control records always are, and applying
one again is a no-op (a channel already on the announced version is skipped).

Snapshots. Once the rows since the last snapshot pass the catalogue's compaction
thresholds, the process that notices writes the catalogue (and the control state: the
version per channel and the replicated config) to the object store
``<stream>-snapshots`` as ``catalog-<seq>``, points the key ``catalog`` of the key-value
bucket ``<stream>-snapshot`` at it (compare-and-set: an older snapshot never replaces a
newer one), then purges the stream up to that sequence. A process starts from the newest
snapshot and the stream after it; one that finds that a purge removed records it had
not read yet jumps to the newest snapshot (and applies the difference).

Which loop. The client runs on an event loop of its own, in a thread of its own: the
engine's writes and reads are synchronous (worker threads), they bridge to it with
``run_coroutine_threadsafe`` and a timeout, and a busy serving loop never delays a
heartbeat or an acknowledgement. Never call the synchronous methods on that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.update_log import LogUnavailable, RecordTooLarge, Row

log = get_logger(__name__)

T = TypeVar("T")

ITEMS = "items"
CONTROL = "control"
KINDS = (ITEMS, CONTROL)
#: The key of the snapshot pointer in the ``<stream>-snapshot`` bucket.
POINTER = "catalog"
#: Messages per fetch.
BATCH = 512
SNAPSHOT_FORMAT = 1
#: How long a fetch of records known to exist waits before the consumer is replaced.
FETCH_TIMEOUT_S = 1.0


@dataclass(slots=True, frozen=True)
class StreamSettings:
    """``[cluster]`` as this module needs it (see ``ClusterConfig`` in the config)."""

    servers: tuple[str, ...]
    stream: str = "recall-engine"
    replicas: int = 1
    publish_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0


@dataclass(slots=True)
class Snapshot:
    seq: int
    control: dict[str, Any]
    items: list[Row]


@dataclass(slots=True)
class _Fetched:
    first: int  # the stream's first and last sequence when read
    last: int
    msgs: list[tuple[int, str, bytes]] = field(default_factory=list)


def _empty_control() -> dict[str, Any]:
    return {"versions": {}, "config": None}


class NatsLog:
    """This process's connection to the update stream. Thread-safe; see the module
    docstring. :meth:`open` connects; :meth:`view` gives the catalogue's and the process
    group's side of it; :meth:`close` disconnects."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.name = f"NATS stream {settings.stream!r} ({', '.join(settings.servers)})"
        self.origin = uuid.uuid4().hex[:12]  # tags this process's control records
        self._subject = f"recall.{settings.stream}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nats-update-log", daemon=True
        )
        self._thread.start()
        self._lock = threading.RLock()  # the follower's state below
        self._next = 1  # the next stream sequence to read
        self._queues: dict[str, deque[tuple[int, str, Row]]] = {k: deque() for k in KINDS}
        self._control = _empty_control()  # the stream's control state through _next - 1
        self._snapshot_seq = 0
        self._initial: list[Row] | None = None
        self._resync: list[Row] | None = None
        self.records = 0  # item rows after the newest known snapshot
        self.size = 0
        # loop side only
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._obs: Any = None
        self._sub: Any = None
        self._sub_at = 0  # the sequence the consumer delivers next
        self._max_payload = 1 << 20

    # -- life cycle --------------------------------------------------------------
    @classmethod
    def open(cls, settings: StreamSettings) -> NatsLog:
        """Connect, make the stream and the snapshot buckets if they are missing, read
        the newest snapshot. Raises :class:`LogUnavailable` naming the servers when
        they cannot be reached within ``connect_timeout_s``."""
        stream = cls(settings)
        try:
            stream._run(stream._connect(), settings.connect_timeout_s, "connect")
            snap = stream._run(stream._read_snapshot(), settings.connect_timeout_s, "read snapshot")
        except BaseException:
            stream.close()
            raise
        if snap is not None:
            stream._initial = snap.items
            stream._start_from(snap)
        log.info(
            "update_stream_opened",
            stream=settings.stream,
            servers=list(settings.servers),
            snapshot_seq=stream._snapshot_seq,
            origin=stream.origin,
        )
        return stream

    def close(self) -> None:
        """Disconnect and stop the client's loop. Idempotent."""
        if self._loop.is_closed():
            return
        if self._nc is not None and self._thread.is_alive():
            try:
                self._run(self._nc.close(), 5.0, "close")
            except LogUnavailable as e:
                log.warning("update_stream_close_failed", error=str(e))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def view(self, kind: str) -> StreamView:
        """The side of the stream that ``kind`` (``"items"`` or ``"control"``) reads
        and writes."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: expected one of {KINDS}")
        return StreamView(self, kind)

    # -- writing -----------------------------------------------------------------
    def append(self, kind: str, rows: list[Row]) -> int:
        """Publish ``rows`` as one message and wait for JetStream's acknowledgement;
        returns its sequence. See the module docstring for retries and failures."""
        payload = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()
        if len(payload) > self._max_payload:
            raise RecordTooLarge(
                f"{len(payload)} bytes in one call, above the {self._max_payload} bytes a "
                f"message of {self.name} may hold (the servers' max_payload): split the call"
            )
        timeout = self.settings.publish_timeout_s
        seq = self._run(self._publish(f"{self._subject}.{kind}", payload), timeout + 2, "write")
        with self._lock:
            # An item write is applied by its caller at once, under the engine's lock that
            # also covers applying what was read: it is not handed back unless something
            # unread came first. A control record always is: a reload read but not yet
            # applied may be waiting for that lock, and must not end up applied last.
            if kind == ITEMS and seq == self._next and not self._queues[kind]:
                self._next = seq + 1
                self._track(kind, rows, len(payload))
        return seq

    async def _publish(self, subject: str, payload: bytes) -> int:
        from nats.errors import (
            ConnectionReconnectingError,
            NoRespondersError,
            StaleConnectionError,
        )
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

        # what a server's failure, a reconnect or a leader election look like: retried
        transient = (
            NatsTimeout,
            TimeoutError,
            NoRespondersError,
            NoStreamResponseError,
            ServiceUnavailableError,
            StaleConnectionError,
            ConnectionReconnectingError,
        )

        headers = {"Nats-Msg-Id": uuid.uuid4().hex}  # the same on every retry: stored once
        deadline = time.monotonic() + self.settings.publish_timeout_s
        reason = "not connected to any server"
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._nc.is_connected:
                reason = "not connected to any server"
                await asyncio.sleep(min(0.05, remaining))
                continue
            try:
                ack = await self._js.publish(
                    subject,
                    payload,
                    timeout=remaining,
                    stream=self.settings.stream,
                    headers=headers,
                )
                return int(ack.seq)
            except transient as e:
                reason = f"{type(e).__name__}: {e}".rstrip(": ")  # e.g. a leader election
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        raise LogUnavailable(
            f"{self.name}: not acknowledged within {self.settings.publish_timeout_s} s "
            f"({reason}); nothing was applied"
        )

    # -- reading -----------------------------------------------------------------
    def read_new(self, kind: str) -> list[tuple[str, Row]]:
        """Read the stream to the end it had when called, hand out the rows of
        ``kind`` not handed out yet, in stream order."""
        with self._lock:
            self._pull()
            queue = self._queues[kind]
            out = [(where, row) for _, where, row in queue]
            queue.clear()
            return out

    def take_resync(self) -> list[Row] | None:
        with self._lock:
            rows, self._resync = self._resync, None
            return rows

    def _pull(self) -> None:
        """Fetch what was appended since ``_next`` up to the stream's end as of now."""
        target: int | None = None
        stalls = 0
        while stalls < 4:
            fetched = self._run(
                self._fetch(self._next), self.settings.publish_timeout_s * 2, "read"
            )
            target = fetched.last if target is None else target
            if fetched.first > self._next:  # a compaction removed records not read yet
                self._jump(fetched.first)
                continue
            if self._next > target:
                return
            progressed = False
            for seq, subject, data in fetched.msgs:
                if seq < self._next:
                    continue
                if seq > self._next:
                    break  # records skipped: the next fetch starts another consumer
                self._accept(seq, subject, data)
                progressed = True
            if self._next > target:
                return
            stalls = 0 if progressed else stalls + 1
        raise LogUnavailable(f"{self.name}: no progress reading from sequence {self._next}")

    async def _fetch(self, start: int) -> _Fetched:
        info = await self._js.stream_info(self.settings.stream)
        got = _Fetched(int(info.state.first_seq), int(info.state.last_seq))
        if got.first > start or got.last < start:
            return got
        try:
            if self._sub is None or self._sub_at > start:
                await self._subscribe(start)
            expected = self._sub_at
            # the records exist: a live consumer answers in milliseconds, and a dead one
            # (its server failed) must not hold up the engine's lock for long
            msgs = await self._sub.fetch(
                min(BATCH, got.last - start + 1),
                timeout=min(FETCH_TIMEOUT_S, self.settings.publish_timeout_s),
            )
        except TimeoutError:  # its server is gone, or it was: start another next time
            await self._drop_consumer()
            return got
        except BaseException:
            await self._drop_consumer()
            raise
        got.msgs = [(int(m.metadata.sequence.stream), m.subject, m.data) for m in msgs]
        if got.msgs:
            self._sub_at = got.msgs[-1][0] + 1
            if got.msgs[0][0] > expected:  # it skipped records: a purge, or a lost place
                await self._drop_consumer()
        return got

    async def _subscribe(self, start: int) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        await self._drop_consumer()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,  # the server removes it when this process is gone
            mem_storage=True,
            num_replicas=1,
        )
        self._sub = await self._js.pull_subscribe(
            f"{self._subject}.>", stream=self.settings.stream, config=config
        )
        self._sub_at = start

    async def _drop_consumer(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection or the consumer is gone
                pass

    def _accept(self, seq: int, subject: str, data: bytes) -> None:
        kind = subject.rpartition(".")[2]
        self._next = seq + 1
        where = f"{self.name} at sequence {seq}"
        try:
            rows = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            rows = None
            error = str(e)
        else:
            error = "expected a JSON array of objects"
        if (
            kind not in KINDS
            or not isinstance(rows, list)
            or not all(isinstance(r, dict) for r in rows)
        ):  # skipped: a record no process can apply must not stop them all
            log.error("update_stream_bad_record", where=where, subject=subject, error=error)
            return
        queue = self._queues[kind]
        for row in rows:
            queue.append((seq, where, row))
        self._track(kind, rows, len(data))

    def _track(self, kind: str, rows: list[Any], size: int) -> None:
        """Keep the counters and the control state (what a snapshot stores) in step."""
        if kind == ITEMS:
            self.records += len(rows)
            self.size += size
            return
        for row in rows:
            if not isinstance(row, dict):
                continue
            if row.get("op") == "reload" and isinstance(row.get("versions"), dict):
                self._control["versions"].update(row["versions"])
            elif row.get("op") == "reload_config" and isinstance(row.get("config"), dict):
                self._control["config"] = row["config"]

    def _jump(self, first: int) -> None:
        snap = self._run(self._read_snapshot(), self.settings.connect_timeout_s, "read snapshot")
        if snap is None or snap.seq + 1 < first:
            raise LogUnavailable(
                f"{self.name}: records from sequence {self._next} to {first - 1} were "
                "removed and no snapshot covers them (was the stream purged by hand?)"
            )
        log.warning(
            "update_stream_resync",
            stream=self.settings.stream,
            behind=self._next,
            snapshot=snap.seq,
        )
        self._resync = snap.items
        self._start_from(snap)

    def _start_from(self, snap: Snapshot) -> None:
        """Continue after ``snap``: what it covers leaves the queues, its control state
        is handed to the process group first."""
        self._next = snap.seq + 1
        self._snapshot_seq = snap.seq
        self._control = snap.control
        self.records = self.size = 0
        self._queues[ITEMS] = deque(e for e in self._queues[ITEMS] if e[0] > snap.seq)
        control = deque(e for e in self._queues[CONTROL] if e[0] > snap.seq)
        where = f"{self.name} snapshot at sequence {snap.seq}"
        if snap.control.get("versions"):
            versions = dict(snap.control["versions"])
            control.appendleft((snap.seq, where, {"op": "reload", "versions": versions}))
        if snap.control.get("config") is not None:
            row = {"op": "reload_config", "config": snap.control["config"]}
            control.appendleft((snap.seq, where, row))
        self._queues[CONTROL] = control

    # -- snapshots ---------------------------------------------------------------
    def snapshot(self) -> list[Row] | None:
        with self._lock:
            rows, self._initial = self._initial, None
            return rows

    def write_snapshot(self, rows: Iterable[Row]) -> bool:
        with self._lock:
            queued = self._queues[ITEMS]
            seq = (queued[0][0] - 1) if queued else self._next - 1
            if seq <= self._snapshot_seq:
                return False
            header = {"format": SNAPSHOT_FORMAT, "seq": seq, "control": self._control}
            lines = [json.dumps(header, ensure_ascii=False)]
            lines.extend(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows)
            payload = ("\n".join(lines) + "\n").encode()
            timeout = self.settings.connect_timeout_s + len(payload) / 1e6
            won = self._run(self._store_snapshot(seq, payload), timeout, "write snapshot")
            self._snapshot_seq = max(self._snapshot_seq, seq)
            self.records = self.size = 0  # lost to a newer one: that one is as recent
            log.info(
                "update_stream_snapshot",
                stream=self.settings.stream,
                seq=seq,
                items=len(lines) - 1,
                bytes=len(payload),
                stored=won,
            )
            return won

    async def _store_snapshot(self, seq: int, payload: bytes) -> bool:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        try:
            entry = await self._kv.get(POINTER)
            current, revision = json.loads(entry.value), entry.revision
        except KeyNotFoundError:
            current, revision = None, None
        if current is not None and int(current["seq"]) >= seq:
            return False
        name = f"catalog-{seq}"
        await self._obs.put(name, payload)
        pointer = json.dumps({"seq": seq, "object": name, "bytes": len(payload)}).encode()
        try:
            if revision is None:
                await self._kv.create(POINTER, pointer)
            else:
                await self._kv.update(POINTER, pointer, last=revision)
        except KeyWrongLastSequenceError:  # another process's snapshot landed first
            await self._delete_object(name)
            return False
        await self._js.purge_stream(self.settings.stream, seq=seq + 1)
        if current is not None:
            await self._delete_object(str(current["object"]))
        return True

    async def _delete_object(self, name: str) -> None:
        try:
            await self._obs.delete(name)
        except Exception as e:  # noqa: BLE001 - an orphan is harmless; say so
            log.warning("update_stream_snapshot_not_deleted", object=name, error=str(e))

    async def _read_snapshot(self) -> Snapshot | None:
        from nats.js.errors import KeyNotFoundError, ObjectNotFoundError

        for _ in range(5):  # the pointer may move on while its object is read
            try:
                entry = await self._kv.get(POINTER)
            except KeyNotFoundError:
                return None
            pointer = json.loads(entry.value)
            try:
                found = await self._obs.get(str(pointer["object"]))
            except ObjectNotFoundError:
                continue
            return _parse_snapshot(found.data or b"", str(pointer["object"]))
        raise LogUnavailable(f"{self.name}: the snapshot kept changing while being read")

    # -- connection --------------------------------------------------------------
    async def _connect(self) -> None:
        import nats
        from nats.js.api import ObjectStoreConfig, StreamConfig
        from nats.js.errors import BucketNotFoundError, NotFoundError

        s = self.settings
        self._nc = await nats.connect(
            servers=list(s.servers),
            name=f"recall-engine {self.origin}",
            connect_timeout=min(2.0, s.connect_timeout_s),
            reconnect_time_wait=0.25,
            max_reconnect_attempts=-1,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._max_payload = int(self._nc.max_payload) - 1024  # headers
        self._js = self._nc.jetstream(timeout=s.publish_timeout_s)
        try:
            info = await self._js.stream_info(s.stream)
            if info.config.num_replicas != s.replicas:
                log.warning(
                    "update_stream_replicas_differ",
                    stream=s.stream,
                    configured=s.replicas,
                    actual=info.config.num_replicas,
                )
        except NotFoundError:
            await self._js.add_stream(
                StreamConfig(
                    name=s.stream,
                    subjects=[f"{self._subject}.>"],
                    num_replicas=s.replicas,
                    duplicate_window=120.0,
                )
            )
        bucket = f"{s.stream}-snapshot"
        try:
            self._kv = await self._js.key_value(bucket)
        except BucketNotFoundError:
            from nats.js.api import KeyValueConfig

            self._kv = await self._js.create_key_value(
                KeyValueConfig(bucket=bucket, history=1, replicas=s.replicas)
            )
        objects = f"{s.stream}-snapshots"
        try:
            self._obs = await self._js.object_store(objects)
        except (BucketNotFoundError, NotFoundError):
            self._obs = await self._js.create_object_store(
                objects, ObjectStoreConfig(bucket=objects, replicas=s.replicas)
            )

    async def _on_error(self, e: Exception) -> None:
        log.warning("update_stream_error", stream=self.settings.stream, error=repr(e))

    async def _on_disconnected(self) -> None:
        log.warning("update_stream_disconnected", stream=self.settings.stream)

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url
        log.info("update_stream_reconnected", stream=self.settings.stream, server=str(url))

    # -- the bridge --------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run ``coro`` on the client's loop and wait up to ``timeout`` seconds; every
        failure of the client becomes :class:`LogUnavailable` naming the log."""
        from nats.errors import Error as NatsError

        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("NatsLog's synchronous methods must not run on its own loop")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LogUnavailable(f"{self.name}: {what}: no answer within {timeout:.1f} s") from None
        except LogUnavailable:
            raise
        except (NatsError, OSError, TimeoutError, concurrent.futures.CancelledError) as e:
            raise LogUnavailable(f"{self.name}: {what} failed: {type(e).__name__}: {e}") from e


class StreamView:
    """One kind of record on the stream: the catalogue's (``items``, a
    :class:`~recall_engine.runtime.update_log.SnapshotLog`) or the process group's
    (``control``, an :class:`~recall_engine.runtime.update_log.UpdateLog`)."""

    def __init__(self, stream: NatsLog, kind: str) -> None:
        self.stream = stream
        self.kind = kind

    def append(self, rows: list[Row]) -> None:
        if rows:
            self.stream.append(self.kind, rows)

    def read_new(self) -> list[tuple[str, Row]]:
        return self.stream.read_new(self.kind)

    @property
    def records(self) -> int:
        return self.stream.records

    @property
    def size(self) -> int:
        return self.stream.size

    def snapshot(self) -> list[Row] | None:
        return self.stream.snapshot()

    def take_resync(self) -> list[Row] | None:
        return self.stream.take_resync()

    def write_snapshot(self, rows: Iterable[Row]) -> bool:
        return self.stream.write_snapshot(rows)


def _parse_snapshot(data: bytes, name: str) -> Snapshot:
    lines = data.decode().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
        if header.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {SNAPSHOT_FORMAT}")
        items = [json.loads(line) for line in lines[1:] if line.strip()]
        control = header.get("control") or _empty_control()
        control.setdefault("versions", {})
        control.setdefault("config", None)
        return Snapshot(int(header["seq"]), control, items)
    except (ValueError, KeyError, TypeError) as e:
        raise LogUnavailable(f"snapshot {name}: unreadable ({e})") from e
