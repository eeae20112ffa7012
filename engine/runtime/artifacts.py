"""Versioned artifact bundles with a manifest (DESIGN decision 8).

Layout under the artifact root::

    ARTIFACTS/<channel>/<version>/          one immutable bundle
        manifest.json                       what is in it (see below)
        model.onnx, index.usearch, ids.json ... whatever the channel writes
    ARTIFACTS/<channel>/current             text file: the version being served
    ARTIFACTS/<channel>/.staging-<uuid>/    a bundle being written (never read)

A bundle is written into a staging folder and becomes visible in one ``rename`` once its
manifest is complete, so a reader sees a whole bundle or none. The ``current`` pointer is
replaced with ``os.replace``, so a reader sees the old version or the new one, never a
missing or half-written pointer. Bundles are never modified after commit; a new build is
a new version.

``manifest.json``::

    {"schema_version": 2, "channel": "cf", "version": "20261123T101500Z",
     "created_at": "2026-11-23T10:15:00Z",
     "files": {"index.usearch": {"sha256": "...", "bytes": 4096}, ...},
     "dims": 64, "metric": "cos", "item_count": 5000,
     "model_hashes": {...}, "build_params": {...}, ...free extra fields}

Writing one::

    store = ArtifactStore("artifacts")
    with store.new_version("cf", make_current=True) as bundle:
        index.save(bundle.path)
        bundle.update(dims=64, metric="cos", item_count=len(index),
                      build_params={"factors": 64})
    # committed here (or removed, if the block raised); bundle.version names it

Reading one: ``store.open("cf")`` (the current version) checks the manifest and the
sha256 of every file it lists (``verify="size"``: sizes only, for tools that must be
quick), and raises :class:`ArtifactError` naming the file and the problem.

Trust no file (DESIGN decision 14). Every file of a bundle is covered by a digest: the
listed files by their ``sha256`` in the manifest, and the manifest itself by
``manifest.sha256`` beside it (``sha256sum -c`` reads it), so one flipped byte anywhere
in a bundle is refused, and a reload that is refused leaves the old version serving.
Hashing is streamed; it costs what reading the files costs (docs/reliability.md).
Bundles from before the manifest digest (``schema_version`` 1, no ``manifest.sha256``)
still open, with a ``manifest_unsealed`` warning; their listed files are still checked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.files import (
    atomic_write,
    fsync_dir,
    parse_json_object,
    sha256_file,
)

SCHEMA_VERSION = 2  # 2: manifest.sha256 seals the manifest
SUPPORTED_SCHEMAS = frozenset({1, 2})
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
CURRENT = "current"
STAGING_PREFIX = ".staging-"
VERIFY_MODES = ("size", "sha256")

_RESERVED = frozenset({"schema_version", "channel", "version", "created_at", "files"})
RESERVED_FIELDS = _RESERVED  # manifest fields set on commit, not by the builder
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TIMESTAMPED = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")

log = get_logger(__name__)


class ArtifactError(Exception):
    """A bundle or pointer is missing or does not match its manifest. The message starts
    with the offending path relative to the artifact root."""


@dataclass(slots=True, frozen=True)
class Bundle:
    """A committed, checked bundle: its folder and parsed manifest."""

    path: Path
    manifest: Mapping[str, Any]

    @property
    def channel(self) -> str:
        return str(self.manifest["channel"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists; ``ArtifactError`` if it lists none such."""
        if name not in self.manifest["files"]:
            raise ArtifactError(f"{self.channel}/{self.version}/{name}: not in {MANIFEST}")
        return self.path / name


class ArtifactStore:
    """Bundles of every channel under one root folder. Thread- and process-safe for one
    writer per channel and any number of readers."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- writing ---------------------------------------------------------------
    def new_version(
        self, channel: str, *, make_current: bool = False, version: str | None = None
    ) -> BundleWriter:
        """Start a bundle for ``channel`` in a fresh staging folder. ``version`` names it
        (default: the UTC time at commit, e.g. ``20261123T101500Z``, with ``-1``, ``-2``
        … appended if taken). Use it as a context manager, or call ``commit``/``abort``."""
        _check_name(channel, "channel")
        if version is not None:
            _check_name(version, "version")
        return BundleWriter(self, channel, make_current=make_current, version=version)

    def set_current(self, channel: str, version: str) -> None:
        """Point ``channel``'s ``current`` file at ``version`` atomically. The version's
        manifest must exist (a full check is ``open``'s job)."""
        _check_name(version, "version")
        if not (self.root / channel / version / MANIFEST).is_file():
            raise ArtifactError(f"{channel}/{version}/{MANIFEST}: missing")
        atomic_write(self.root / channel / CURRENT, version + "\n")
        log.info("artifact_current_set", channel=channel, version=version)

    def prune(self, channel: str, keep: int = 3) -> list[str]:
        """Delete all but the ``keep`` newest versions of ``channel``; the current one is
        always kept. Returns the deleted versions. Only for versions no process is
        loading right now (a loaded or memory-mapped index survives the deletion)."""
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        versions = self.versions(channel)
        current = self.current(channel)
        kept = set(versions[-keep:] if keep else ())
        doomed = [v for v in versions if v not in kept and v != current]
        for version in doomed:
            shutil.rmtree(self.root / channel / version)
        if doomed:
            log.info("artifact_pruned", channel=channel, removed=doomed)
        return doomed

    # -- reading ---------------------------------------------------------------
    def channels(self) -> list[str]:
        """Channels that have a folder under the root, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self, channel: str) -> list[str]:
        """Committed versions of ``channel``, oldest first (timestamp names by time,
        ``-N`` suffixes numerically; other names after them, alphabetically)."""
        folder = self.root / channel
        if not folder.is_dir():
            return []
        names = [
            p.name
            for p in folder.iterdir()
            if p.is_dir() and _NAME.match(p.name) and p.name != CURRENT
        ]
        return sorted(names, key=_version_order)

    def current(self, channel: str) -> str | None:
        """The version ``channel``'s ``current`` file names, or None without one."""
        pointer = self.root / channel / CURRENT
        try:
            version = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{channel}/{CURRENT}: unreadable ({exc})") from exc
        if not _NAME.match(version):
            raise ArtifactError(f"{channel}/{CURRENT}: does not name a version ({version!r})")
        return version

    def open(self, channel: str, version: str | None = None, *, verify: str = "sha256") -> Bundle:
        """Check and return a bundle (``version=None``: the current one).

        Checks that the manifest matches ``manifest.sha256`` and parses, its schema
        version is supported, its channel and version match the folder, and every listed
        file exists with the listed size and sha256 (``verify="size"``: sizes only).
        Raises ``ArtifactError`` naming the file and the problem.
        """
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
        if version is None:
            version = self.current(channel)
            if version is None:
                raise ArtifactError(
                    f"{channel}/{CURRENT}: missing (no current version; pass a version or set one)"
                )
        where = f"{channel}/{version}"
        folder = self.root / channel / version
        if not folder.is_dir():
            raise ArtifactError(f"{where}: missing")
        started = time.perf_counter()
        manifest = _read_manifest(folder, where)
        _check_manifest(manifest, channel, version, f"{where}/{MANIFEST}")
        for name, entry in manifest["files"].items():
            _check_file(folder / name, entry, f"{where}/{name}", verify)
        if verify == "sha256":
            log.info(
                "artifact_verified",
                channel=channel,
                version=version,
                files=len(manifest["files"]),
                bytes=sum(e["bytes"] for e in manifest["files"].values()),
                seconds=round(time.perf_counter() - started, 3),
            )
        return Bundle(folder, manifest)


class BundleWriter:
    """A bundle being written: put files under :attr:`path`, add manifest fields with
    :meth:`update`, then :meth:`commit` (or leave the ``with`` block). Leaving the block
    with an exception removes the staging folder instead."""

    def __init__(
        self, store: ArtifactStore, channel: str, *, make_current: bool, version: str | None
    ) -> None:
        self.store = store
        self.channel = channel
        self.make_current = make_current
        self.requested_version = version
        self.path = store.root / channel / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        self.path.mkdir(parents=True)
        self.fields: dict[str, Any] = {
            "dims": None,
            "metric": None,
            "item_count": None,
            "model_hashes": {},
            "build_params": {},
        }
        self.bundle: Bundle | None = None

    @property
    def version(self) -> str | None:
        """The committed version, or None before commit."""
        return self.bundle.version if self.bundle is not None else None

    def update(self, **fields: Any) -> None:
        """Set manifest fields (``dims``, ``metric``, ``item_count``, ``model_hashes``,
        ``build_params`` or any extra JSON-serialisable field)."""
        reserved = _RESERVED & fields.keys()
        if reserved:
            raise ValueError(f"manifest fields {', '.join(sorted(reserved))} are set on commit")
        json.dumps(fields)  # fail now, not at commit, on values JSON cannot hold
        self.fields.update(fields)

    def commit(self, *, make_current: bool | None = None) -> Bundle:
        """Hash the staged files, write the manifest, rename the staging folder to its
        version folder and, if asked, point ``current`` at it."""
        if self.bundle is not None:
            raise ArtifactError(f"{self.channel}/{self.bundle.version}: already committed")
        if not self.path.is_dir():
            raise ArtifactError(f"{self.channel}/{self.path.name}: staging folder is gone")
        files = {name: _describe(self.path / name) for name in _staged_files(self.path)}
        folder = self.store.root / self.channel
        for version in _candidate_versions(folder, self.requested_version):
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "channel": self.channel,
                "version": version,
                "created_at": _utc_iso(),
                "files": files,
                **self.fields,
            }
            text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
            atomic_write(self.path / MANIFEST, text)
            atomic_write(self.path / MANIFEST_DIGEST, _digest_line(text.encode()))
            try:
                # rename() onto an existing, non-empty folder fails: that claims the
                # name atomically even against a concurrent writer.
                os.rename(self.path, folder / version)
                break
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                if self.requested_version is not None:
                    raise ArtifactError(f"{self.channel}/{version}: already exists") from None
        else:
            raise ArtifactError(f"{self.channel}/{version}: no free version name left")
        fsync_dir(folder)
        self.bundle = Bundle(folder / version, manifest)
        log.info(
            "artifact_committed",
            channel=self.channel,
            version=version,
            files=len(files),
            bytes=sum(f["bytes"] for f in files.values()),
        )
        if self.make_current if make_current is None else make_current:
            self.store.set_current(self.channel, version)
        return self.bundle

    def abort(self) -> None:
        """Remove the staging folder (nothing was committed)."""
        if self.bundle is None:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif self.bundle is None:
            self.commit()


def check_sealed_manifest(
    data: bytes, seal: bytes, channel: str, version: str, where: str
) -> dict[str, Any]:
    """A manifest read from somewhere else than a bundle folder (object storage:
    :mod:`recall_engine.runtime.object_store`), checked as :meth:`ArtifactStore.open`
    checks one: ``data`` must match ``seal`` (the ``manifest.sha256`` line), parse, and
    name ``channel`` and ``version``; every file entry must be well formed. Unsealed
    (schema 1) manifests are refused here. Errors start with ``where``."""
    if seal != _digest_line(data).encode():
        raise ArtifactError(
            f"{where}/{MANIFEST}: sha256 mismatch with {MANIFEST_DIGEST} (the manifest or "
            "its digest changed after the build)"
        )
    manifest = parse_json_object(data, f"{where}/{MANIFEST}", error=ArtifactError)
    _check_manifest(manifest, channel, version, f"{where}/{MANIFEST}")
    return manifest


def is_version_name(name: str) -> bool:
    """Whether ``name`` can name a version (what a ``current`` pointer may hold)."""
    return bool(_NAME.match(name)) and name != CURRENT


# -- helpers ---------------------------------------------------------------------------
def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or name == CURRENT:
        raise ValueError(
            f"bad {what} name {name!r}: use letters, digits, '.', '_' and '-', "
            f"not starting with '.' or '-', and not {CURRENT!r}"
        )


def _version_order(name: str) -> tuple[int, str, int]:
    match = _TIMESTAMPED.match(name)
    if match:
        return (0, match.group(1), int(match.group(2) or 0))
    return (1, name, 0)


def _candidate_versions(folder: Path, requested: str | None) -> list[str]:
    if requested is not None:
        return [requested]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return [stamp] + [f"{stamp}-{n}" for n in range(1, 1000)]


def _utc_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _staged_files(folder: Path) -> list[str]:
    names = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            name = path.relative_to(folder).as_posix()
            if name not in (MANIFEST, MANIFEST_DIGEST):
                names.append(name)
    return names


def _describe(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _digest_line(manifest: bytes) -> str:
    """``manifest.sha256``: the manifest's digest in ``sha256sum`` format."""
    return f"{hashlib.sha256(manifest).hexdigest()}  {MANIFEST}\n"


def _read_manifest(folder: Path, where: str) -> dict[str, Any]:
    """The parsed manifest, once its bytes match ``manifest.sha256``."""
    path = folder / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{where}/{MANIFEST}: missing") from None
    except OSError as exc:
        raise ArtifactError(f"{where}/{MANIFEST}: unreadable ({exc})") from exc
    try:
        sealed = (folder / MANIFEST_DIGEST).read_bytes()
    except FileNotFoundError:
        sealed = None
    except OSError as exc:
        raise ArtifactError(f"{where}/{MANIFEST_DIGEST}: unreadable ({exc})") from exc
    if sealed is not None and sealed != _digest_line(data).encode():
        raise ArtifactError(
            f"{where}/{MANIFEST}: sha256 mismatch with {MANIFEST_DIGEST} (the manifest or "
            "its digest changed after the build)"
        )
    manifest = parse_json_object(data, f"{where}/{MANIFEST}", error=ArtifactError)
    if sealed is None:
        if manifest.get("schema_version") != 1:
            raise ArtifactError(f"{where}/{MANIFEST_DIGEST}: missing")
        log.warning("manifest_unsealed", bundle=where, note="built before manifest digests")
    return manifest


def _check_manifest(manifest: dict[str, Any], channel: str, version: str, where: str) -> None:
    schema = manifest.get("schema_version")
    if schema not in SUPPORTED_SCHEMAS:
        raise ArtifactError(
            f"{where}: schema_version {schema!r} not supported "
            f"(this build reads {sorted(SUPPORTED_SCHEMAS)})"
        )
    if manifest.get("channel") != channel:
        raise ArtifactError(
            f"{where}: channel {manifest.get('channel')!r} in manifest, expected {channel!r}"
        )
    if manifest.get("version") != version:
        raise ArtifactError(
            f"{where}: version {manifest.get('version')!r} in manifest, expected {version!r}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{where}: 'files' must be an object of name -> {{sha256, bytes}}")
    for name, entry in files.items():
        bad_name = (
            not name
            or name.startswith("/")
            or ".." in Path(name).parts
            or name in (MANIFEST, MANIFEST_DIGEST)
        )
        bad_entry = (
            not isinstance(entry, dict)
            or not isinstance(entry.get("bytes"), int)
            or not isinstance(entry.get("sha256"), str)
        )
        if bad_name or bad_entry:
            raise ArtifactError(f"{where}: bad file entry {name!r}: {entry!r}")


def _check_file(path: Path, entry: Mapping[str, Any], where: str, verify: str) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ArtifactError(f"{where}: missing") from None
    if not path.is_file():
        raise ArtifactError(f"{where}: not a regular file")
    expected = entry["bytes"]
    if size < expected:
        raise ArtifactError(f"{where}: truncated ({size} bytes, manifest says {expected})")
    if size != expected:
        raise ArtifactError(f"{where}: wrong size ({size} bytes, manifest says {expected})")
    if verify == "sha256":
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ArtifactError(
                f"{where}: sha256 mismatch (file {digest[:12]}…, manifest {entry['sha256'][:12]}…)"
            )
