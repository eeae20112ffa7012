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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from recall_engine.config import Config
from recall_engine.runtime.shared_log import SharedLog
from recall_engine.serving.engine import Engine

CONTROL_FILE = "control.log"  # framed records (runtime/shared_log.py)
GROUP_DIR_ENV = "RECALL_ENGINE_GROUP_DIR"
"""Set by the parent of ``serve --processes N`` for its children."""


class ProcessGroup:
    def __init__(self, folder: Path) -> None:
        self.log = SharedLog(folder / CONTROL_FILE)
        self.pid = os.getpid()

    @classmethod
    def from_env(cls) -> ProcessGroup | None:
        folder = os.environ.get(GROUP_DIR_ENV)
        return cls(Path(folder)) if folder else None

    def announce_reload(self, versions: Mapping[str, str]) -> None:
        self.log.append([{"op": "reload", "pid": self.pid, "versions": dict(versions)}])

    def announce_config_reload(self) -> None:
        self.log.append([{"op": "reload_config", "pid": self.pid}])

    def read_others(self) -> list[dict]:
        """The other processes' announcements since the last read, in log order. Raises
        ``ValueError`` naming the file and byte offset of a malformed line."""
        rows = []
        for where, row in self.log.read_new():
            if row.get("pid") == self.pid:
                continue
            op = row.get("op")
            if op == "reload":
                versions = row.get("versions")
                if not isinstance(versions, dict) or not all(
                    isinstance(v, str) for v in versions.values()
                ):
                    raise ValueError(
                        f"{where}: 'versions' must map channel names to version strings"
                    )
            elif op != "reload_config":
                raise ValueError(f"{where}: unknown op {op!r}")
            rows.append(row)
        return rows


def follow(
    engine: Engine, announcements: list[dict], read_config: Callable[[], Config]
) -> list[str]:
    """Do what the other processes announced, in order; returns a line per action
    taken. An action that fails does not stop the later ones (the log has moved past
    them all): the failures are raised together at the end, as :class:`GroupFollowError`
    with what was done."""
    done: list[str] = []
    errors: list[str] = []
    for row in announcements:
        try:
            if row["op"] == "reload_config":
                gen = engine.reload_config(read_config())
                done.append(f"config generation {gen}")
                continue
            serving = {cc.name: info.version for cc, info in engine.channel_infos()}
            by_version: dict[str, list[str]] = {}
            for name, version in row["versions"].items():
                if name in serving and serving[name] != version:
                    by_version.setdefault(version, []).append(name)
            for version, names in by_version.items():
                engine.reload_channels(names, version)
                done.extend(f"{n} {version}" for n in names)
        except Exception as e:  # noqa: BLE001 - one failed action must not drop the rest
            errors.append(f"{row['op']} from process {row.get('pid')}: {e}")
    if errors:
        raise GroupFollowError(done, errors)
    return done


class GroupFollowError(Exception):
    def __init__(self, done: list[str], errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.done = done
