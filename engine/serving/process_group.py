"""Admin reloads across the processes of ``serve --processes N``.

An admin ``Reload`` (a new artifact version) or ``ReloadConfig`` call reaches one
process. That process announces what it did in the group's control log (a
:class:`~recall_engine.runtime.shared_log.SharedLog` in a folder the parent makes for the group
and removes when it exits); every other process reads the log every
``server.catalog_sync_ms`` (the same poll that applies the catalogue's item updates) and
does the same: it loads the same artifact versions (the versions the first process
resolved, not whatever ``current`` says by then) or re-reads the config file. A process
skips its own lines and channels already on the announced version.

The caller's response reports the process that took the call; the others follow within
the poll interval plus their load time, and say so in their logs (``group_reloaded``,
or ``group_reload_failed`` with the reason, in which case that process keeps serving the
old version). ``ListChannels`` on each process's own address (``server.worker_port_base``)
shows which version each one serves.

Replicas (``[cluster] log = "nats"``, :func:`open_replication`): the control log is the
update stream's ``control`` side (:mod:`recall_engine.runtime.update_log_nats`), and
every process of every replica follows it. An announcement is written before the swap
(the new version or config is loaded and warmed beside the old, announced, then
swapped), so an announcement that cannot be stored leaves the caller's process as it
was. Replicas read their own config files, so a config announcement carries the
replicated tables of the new config (:data:`REPLICATED_TABLES`: channels, plan,
experiments, plugins, overload); each replica keeps its own host's tables (server,
admin, tls, artifacts, cluster and any other) from its own file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from recall_engine.config import Config, ConfigError
from recall_engine.config.schema import parse_config
from recall_engine.observability.logs import get_logger
from recall_engine.runtime.catalog import Catalog
from recall_engine.runtime.learned_weights import BUNDLE as LEARNED
from recall_engine.runtime.shared_log import SharedLog
from recall_engine.runtime.update_log import UpdateLog
from recall_engine.serving.engine import Engine
from recall_engine.serving.workers import GROUP_DIR_ENV

log = get_logger(__name__)

CONTROL_FILE = "control.log"  # framed records (runtime/shared_log.py)

#: The config tables a config announcement carries to the other replicas; every other
#: table describes the host and stays as each replica's own file says.
REPLICATED_TABLES = ("channels", "plan", "experiments", "plugins", "overload")


class ProcessGroup:
    """The processes that follow one control log. ``folder``: the file log of ``serve
    --processes N``; ``log``: another :class:`UpdateLog` (the update stream), whose
    records name their process by ``origin``. A file group skips its own records; a
    stream hands a process its own records back, and applying one again changes nothing
    (the version is already served), while a record of another process read just
    before is never left to be applied after it."""

    def __init__(
        self, folder: Path | None = None, *, log: UpdateLog | None = None, origin: str = ""
    ) -> None:
        self.log: UpdateLog
        self.pid: int | str
        if log is None:
            if folder is None:
                raise ValueError("ProcessGroup needs a folder or a log")
            self.log = SharedLog(folder / CONTROL_FILE)
            self.pid = os.getpid()
        else:
            self.log = log
            self.pid = origin or f"{os.uname().nodename}:{os.getpid()}"
        self.replicated = log is not None

    @classmethod
    def from_env(cls) -> ProcessGroup | None:
        folder = os.environ.get(GROUP_DIR_ENV)
        return cls(Path(folder)) if folder else None

    def announce_reload(self, versions: Mapping[str, str]) -> None:
        self.log.append([{"op": "reload", "pid": self.pid, "versions": dict(versions)}])

    def announce_config_reload(self, row: Mapping[str, Any] | None = None) -> None:
        """``row``: what :meth:`prepare_config_reload` returned (the replicated tables)."""
        self.log.append([{**(row or {}), "op": "reload_config", "pid": self.pid}])

    def prepare_config_reload(
        self, read_config: Callable[[], Config]
    ) -> tuple[Config, dict[str, Any]]:
        """The config a ``ReloadConfig`` call swaps in, and the record that tells the
        others. A replica publishes the replicated tables of its file and applies them
        exactly as the others will (:func:`replicated_config`)."""
        config = read_config()
        if not self.replicated:
            return config, {}
        tables = replicated_tables(config)
        return replicated_config(tables, config), {"config": tables}

    def read_others(self) -> list[dict]:
        """The other processes' announcements since the last read, in log order. Raises
        ``ValueError`` naming the file and byte offset of a malformed line (a stream's
        malformed record is logged and skipped: it must not stop every replica)."""
        rows = []
        for where, row in self.log.read_new():
            if not self.replicated and row.get("pid") == self.pid:
                continue
            try:
                _check(row, where)
            except ValueError as e:
                if not self.replicated:
                    raise
                log.error("group_record_skipped", error=str(e))
                continue
            rows.append(row)
        return rows


def _check(row: dict, where: str) -> None:
    op = row.get("op")
    if op == "reload":
        versions = row.get("versions")
        if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
            raise ValueError(f"{where}: 'versions' must map channel names to version strings")
    elif op == "reload_config":
        if not isinstance(row.get("config", {}), dict):
            raise ValueError(f"{where}: 'config' must be a table")
    else:
        raise ValueError(f"{where}: unknown op {op!r}")


def replicated_tables(config: Config) -> dict[str, Any]:
    """The :data:`REPLICATED_TABLES` of ``config``'s file, as written there."""
    if config.source is None:
        raise ConfigError("a replicated config reload needs a config file (serve --config)")
    try:
        with open(config.source, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{config.source}: {e}") from None
    return {k: data[k] for k in REPLICATED_TABLES if k in data}


def replicated_config(tables: Mapping[str, Any], local: Config) -> Config:
    """``local`` (this host's config) with the replicated tables of another replica's
    (``tables``): paths in them resolve against this host's config folder and artifacts
    root. Raises :class:`ConfigError` naming the key."""
    base = local.source.parent if local.source is not None else Path(".")
    data = {**tables, "artifacts": {"root": str(local.artifacts_root)}}
    other = parse_config(data, base, local.source)
    return replace(
        local,
        channels=other.channels,
        plan=other.plan,
        experiments=other.experiments,
        plugins=other.plugins,
        overload=other.overload,
    )


def follow(
    engine: Engine,
    announcements: list[dict],
    read_config: Callable[[], Config],
    fetch: Callable[[str, str], object] | None = None,
) -> list[str]:
    """Do what the other processes announced, in order; returns a line per action
    taken. ``fetch(channel, version)`` first brings an announced version this process
    does not hold into its artifacts (an ``s3://`` root's cache:
    :func:`recall_engine.serving.remote_artifacts.fetcher`). An action that fails does
    not stop the later ones (the log has moved past them all): the failures are raised
    together at the end, as :class:`GroupFollowError` with what was done."""
    done: list[str] = []
    errors: list[str] = []
    for row in announcements:
        try:
            if row["op"] == "reload_config":
                new = read_config()
                if "config" in row:
                    new = replicated_config(row["config"], new)
                gen = engine.reload_config(new)
                done.append(f"config generation {gen}")
                continue
            serving = {cc.name: info.version for cc, info in engine.channel_infos()}
            by_version: dict[str, list[str]] = {}
            for name, version in row["versions"].items():
                if name == LEARNED:  # the build's fusion weights, not a channel
                    done.extend(_follow_learned(engine, version, fetch))
                elif name in serving and serving[name] != version:
                    by_version.setdefault(version, []).append(name)
            for version, names in by_version.items():
                if fetch is not None:
                    for name in names:
                        fetch(name, version)
                engine.reload_channels(names, version)
                done.extend(f"{n} {version}" for n in names)
        except Exception as e:  # noqa: BLE001 - one failed action must not drop the rest
            errors.append(f"{row['op']} from process {row.get('pid')}: {e}")
    if errors:
        raise GroupFollowError(done, errors)
    return done


def _follow_learned(
    engine: Engine, version: str, fetch: Callable[[str, str], object] | None
) -> list[str]:
    """Serve the learned fusion weights ``version`` another process announced."""
    learned = engine.learned_weights
    if learned is not None and learned.version == version:
        return []
    if fetch is not None:
        fetch(LEARNED, version)
    engine.reload_learned_weights(version)  # raises when refused
    return [f"{LEARNED} {version}"]


class GroupFollowError(Exception):
    def __init__(self, done: list[str], errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.done = done


@dataclass(slots=True)
class Replication:
    """What ``[cluster] log = "nats"`` gives a server: the catalogue and the process
    group on the update stream. :meth:`close` disconnects."""

    catalog: Catalog
    group: ProcessGroup
    stream: Any  # NatsLog

    def close(self) -> None:
        self.stream.close()


def open_replication(config: Config) -> Replication | None:
    """Connect to the update stream when the config says so (None for ``log =
    "file"``) and load the catalogue from it. Blocking (call it off the event loop).
    Raises ``OSError`` naming the servers when they cannot be reached."""
    cluster = config.cluster
    if cluster.log != "nats":
        return None
    try:
        import nats  # noqa: F401
    except ImportError:
        raise ConfigError(
            'cluster.log: "nats" needs nats-py: pip install "recall-engine[cluster]"'
        ) from None
    from recall_engine.runtime.update_log_nats import ITEMS, NatsLog, StreamSettings

    stream = NatsLog.open(
        StreamSettings(
            servers=tuple(cluster.servers),
            stream=cluster.stream,
            replicas=cluster.replicas,
            publish_timeout_s=cluster.publish_timeout_s,
            connect_timeout_s=cluster.connect_timeout_s,
        )
    )
    try:
        catalog = Catalog.load(
            config.artifacts_root / "catalog",
            compact_records=config.server.catalog_compact_records,
            compact_bytes=config.server.catalog_compact_bytes,
            stream=stream.view(ITEMS),
        )
    except BaseException:
        stream.close()
        raise
    group = ProcessGroup(log=stream.view("control"), origin=stream.origin)
    return Replication(catalog, group, stream)
