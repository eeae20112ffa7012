"""Artifact bundles in S3-compatible object storage (DESIGN decisions 14 and 15).

The bucket mirrors the local layout (:mod:`recall_engine.runtime.artifacts`)::

    s3://BUCKET/PREFIX/<channel>/<version>/manifest.json, manifest.sha256, <files...>
    s3://BUCKET/PREFIX/<channel>/current      object: the version being served
    s3://BUCKET/PREFIX/catalog/<version>/...  the catalogue build wrote (a bundle too)
    s3://BUCKET/PREFIX/catalog/current

Publishing (:meth:`S3BundleStore.publish`, what ``recall-engine build --out s3://...``
calls) uploads every bundle's files, then its ``manifest.sha256``, then its
``manifest.json``, and only once every bundle is up the ``current`` pointers: a reader
follows pointers only, so it never sees a half-published version. Versions are
immutable: publishing a version that is already there with another manifest is refused.

Reading (:meth:`S3BundleStore.pull`) goes through a local cache folder laid out like a
local artifact root, which is what the channels then load::

    CACHE/<channel>/<version>/   verified bundles
    CACHE/<channel>/current      the version this machine serves
    CACHE/catalog/               the catalogue folder, seeded from the published one

A version already in the cache is checked (sha256 of every file) and reused, not
downloaded again. A missing one is downloaded into ``CACHE/<channel>/.staging-<uuid>/``
with each file hashed as it streams in and compared with the manifest (whose own bytes
must match ``manifest.sha256``); only a bundle whose every file matches is renamed to
``CACHE/<channel>/<version>/`` in one ``rename``. A corrupted download raises
:class:`~recall_engine.runtime.artifacts.ArtifactError` and leaves nothing in the cache.

Keeping replicas current: :class:`ArtifactSync` polls the pointers every ``poll_s`` and,
when one names a new version, pulls it and hands it to ``apply`` (the server's: the
engine's reload, which loads beside the old version and swaps, or keeps the old one when
the new one fails). An update stream can make that immediate with the hook
:func:`announce` (or :meth:`ArtifactSync.announce`); see the docstring there.

Credentials come from boto3's standard chain (environment, ``~/.aws``, instance or pod
role); ``endpoint_url`` (or ``AWS_ENDPOINT_URL``, which boto3 reads itself) points the
client at an S3-compatible store. boto3 is the ``[s3]`` extra, imported only here and
only when an ``s3://`` root is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.artifacts import (
    CURRENT,
    MANIFEST,
    MANIFEST_DIGEST,
    RESERVED_FIELDS,
    STAGING_PREFIX,
    ArtifactError,
    ArtifactStore,
    Bundle,
    check_sealed_manifest,
    is_version_name,
)
from recall_engine.runtime.files import HASH_CHUNK, fsync_dir

SCHEME = "s3://"
#: The catalogue's name under the prefix (not a channel: no channel is called this,
#: since ``ARTIFACTS/catalog`` is the catalogue folder in the local layout too).
CATALOG = "catalog"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_STALE_STAGING_S = 3600.0  # a staging folder this old is a crashed download's leftover

log = get_logger(__name__)


class RemoteStoreError(ArtifactError):
    """The object store could not be read or written (unreachable, no credentials,
    access denied, no such bucket). The message names the setting and the URL."""


def is_s3_url(value: object) -> bool:
    """Whether ``value`` is an ``s3://`` URL (so not a local folder)."""
    return isinstance(value, str) and value.startswith(SCHEME)


@dataclass(slots=True, frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing ``/``; ``""`` for the root)."""

    bucket: str
    prefix: str

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def url(self, *parts: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.key(*parts)}".rstrip("/")

    def __str__(self) -> str:
        return self.url()


def parse_s3_url(url: str, setting: str = "artifacts.root") -> S3Location:
    """``s3://bucket/prefix`` → :class:`S3Location`; ``ValueError`` naming ``setting``
    when it is not one."""
    if not is_s3_url(url):
        raise ValueError(f"{setting}: not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(
            f"{setting}: bad bucket name {bucket!r} in {url!r} (3-63 characters: lowercase "
            "letters, digits, '.' and '-'); write s3://BUCKET/PREFIX"
        )
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or "?" in prefix or "#" in prefix:
        raise ValueError(f"{setting}: bad key prefix {prefix!r} in {url!r}")
    return S3Location(bucket, prefix)


def default_cache(location: S3Location) -> Path:
    """Where bundles from ``location`` are kept when no cache folder is configured:
    ``$XDG_CACHE_HOME/recall-engine/artifacts/<bucket>/<prefix>`` (``~/.cache`` without
    it), one folder per store so that two stores never mix."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recall-engine" / "artifacts" / location.bucket / location.prefix


class S3BundleStore:
    """Bundles under one ``s3://bucket/prefix``, read through the local ``cache``
    folder (needed to pull, not to publish). Thread-safe; processes sharing a cache are
    safe too (every download is renamed in whole, or discarded)."""

    def __init__(
        self,
        url: str,
        *,
        cache: str | os.PathLike[str] | None = None,
        endpoint_url: str | None = None,
        setting: str = "artifacts.root",
        client: Any = None,
    ) -> None:
        self.location = parse_s3_url(url, setting)
        self.setting = setting
        self.cache = Path(cache) if cache is not None else None
        self.endpoint_url = endpoint_url
        self._client = client if client is not None else _make_client(endpoint_url, setting)

    def __repr__(self) -> str:
        return f"S3BundleStore({self.location.url()!r}, cache={str(self.cache)!r})"

    # -- reading -----------------------------------------------------------------
    def current(self, channel: str) -> str | None:
        """The version ``channel``'s ``current`` object names, or None without one."""
        data = self._get_bytes(self.location.key(channel, CURRENT), missing_ok=True)
        if data is None:
            return None
        version = data.decode("utf-8", "replace").strip()
        if not is_version_name(version):
            raise ArtifactError(
                f"{self.location.url(channel, CURRENT)}: does not name a version ({version!r})"
            )
        return version

    def check_bucket(self) -> None:
        """Raise :class:`RemoteStoreError` naming the setting when the bucket is missing
        or cannot be read with these credentials."""
        self._call(
            f"bucket {self.location.bucket!r}",
            lambda: self._client.head_bucket(Bucket=self.location.bucket),
        )

    def pull(self, channel: str, version: str | None = None) -> Bundle:
        """The checked bundle of ``channel`` (``version=None``: the one ``current``
        names) in the cache: reused when a cached copy passes every digest, else
        downloaded and verified first. Raises :class:`ArtifactError` (a refused
        bundle, a missing pointer) or :class:`RemoteStoreError` (the store)."""
        cache = self._require_cache()
        if version is None:
            version = self.current(channel)
            if version is None:
                raise ArtifactError(
                    f"{self.location.url(channel, CURRENT)}: missing (nothing published for "
                    f"channel {channel!r} under {self.setting} = {self.location.url()!r})"
                )
        store = ArtifactStore(cache)
        folder = cache / channel / version
        if folder.is_dir():
            try:
                bundle = store.open(channel, version)
                log.info("artifact_cache_hit", channel=channel, version=version)
                return bundle
            except ArtifactError as e:
                # disk damage or an interrupted older copy: fetch it again, whole
                log.warning(
                    "artifact_cache_corrupt", channel=channel, version=version, error=str(e)
                )
                _remove(folder)
        self._download(channel, version, cache / channel)
        return store.open(channel, version, verify="size")  # hashed while downloading

    def pull_catalog(self) -> str | None:
        """Seed ``CACHE/catalog/`` from the published catalogue when the cache has none
        (a catalogue already there holds this machine's online updates: it is kept).
        Returns the version seeded, or None (kept, or nothing published)."""
        cache = self._require_cache()
        target = cache / CATALOG
        if target.is_dir() and any(target.iterdir()):
            return None
        version = self.current(CATALOG)
        if version is None:
            log.warning("catalog_not_published", url=self.location.url(CATALOG, CURRENT))
            return None
        bundles = cache / ".catalog-bundles"
        self._download(CATALOG, version, bundles / CATALOG)
        bundle = ArtifactStore(bundles).open(CATALOG, version, verify="size")
        staging = cache / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            for name in bundle.manifest["files"]:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle.path / name, staging / name)
            with contextlib.suppress(FileNotFoundError):
                target.rmdir()  # an empty folder left by someone: take its place
            try:
                os.rename(staging, target)
            except OSError:  # another process seeded it first: theirs is as good
                return None
        finally:
            _remove(staging)
        fsync_dir(cache)
        log.info("catalog_seeded", version=version, folder=str(target))
        return version

    # -- publishing --------------------------------------------------------------
    def publish(self, root: str | os.PathLike[str], channels: Iterable[str] | None = None) -> dict:
        """Publish the current bundle of every channel under the local artifact root
        ``root`` (or of ``channels``) and the catalogue in ``root/catalog``: all files
        first, then the pointers. Every bundle is checked (sha256) before it is sent.
        Returns ``{channel: version}`` of what the pointers now name."""
        root = Path(root)
        local = ArtifactStore(root)
        wanted = [c for c in local.channels() if c != CATALOG] if channels is None else channels
        bundles = [local.open(c) for c in wanted]
        catalog_dir = root / CATALOG
        if catalog_dir.is_dir() and any(p.is_file() for p in catalog_dir.iterdir()):
            bundles.insert(0, _catalog_bundle(catalog_dir, root / ".publish"))
        self.check_bucket()
        bundles = [self._claim(b, root / ".publish") for b in bundles]
        for bundle in bundles:
            self.upload(bundle)
        for bundle in bundles:  # pointers last: a reader never sees a half-published one
            self.set_current(bundle.channel, bundle.version)
        shutil.rmtree(root / ".publish", ignore_errors=True)
        return {b.channel: b.version for b in bundles}

    def upload(self, bundle: Bundle) -> bool:
        """Upload one bundle: its files, then ``manifest.sha256``, then ``manifest.json``
        (the manifest is the version's commit). False when it was already there, the
        same; :class:`ArtifactError` when the version is there with other content."""
        channel, version = bundle.channel, bundle.version
        seal = (bundle.path / MANIFEST_DIGEST).read_bytes()
        there = self._get_bytes(self.location.key(channel, version, MANIFEST_DIGEST), True)
        if there is not None and self._exists(self.location.key(channel, version, MANIFEST)):
            if there != seal:
                raise ArtifactError(
                    f"{self.location.url(channel, version)}: already published with another "
                    "manifest (versions are immutable; build a new version)"
                )
            log.info("artifact_already_published", channel=channel, version=version)
            return False
        t0 = time.perf_counter()
        for name in bundle.manifest["files"]:
            self._upload_file(bundle.path / name, self.location.key(channel, version, name))
        for name in (MANIFEST_DIGEST, MANIFEST):
            self._put(self.location.key(channel, version, name), (bundle.path / name).read_bytes())
        log.info(
            "artifact_published",
            channel=channel,
            version=version,
            url=self.location.url(channel, version),
            files=len(bundle.manifest["files"]),
            seconds=round(time.perf_counter() - t0, 3),
        )
        return True

    def set_current(self, channel: str, version: str) -> None:
        """Point ``channel``'s ``current`` object at ``version`` (one PUT: readers see
        the old version or the new one). The version's manifest must be there."""
        if not is_version_name(version):
            raise ValueError(f"bad version name {version!r}")
        if not self._exists(self.location.key(channel, version, MANIFEST)):
            raise ArtifactError(f"{self.location.url(channel, version, MANIFEST)}: missing")
        self._put(self.location.key(channel, CURRENT), (version + "\n").encode())
        log.info("artifact_current_published", channel=channel, version=version)

    # -- internals ---------------------------------------------------------------
    def _claim(self, bundle: Bundle, scratch: Path) -> Bundle:
        """``bundle``, or, when another build already published its version name (two
        builds in the same second), a copy sealed under the first free ``-N`` name."""
        channel, version = bundle.channel, bundle.version
        seal = (bundle.path / MANIFEST_DIGEST).read_bytes()
        there = self._get_bytes(self.location.key(channel, version, MANIFEST_DIGEST), True)
        if there is None or there == seal:
            return bundle
        base = version.rsplit("-", 1)[0] if re.match(r".*Z-\d+$", version) else version
        for n in range(1, 1000):
            name = f"{base}-{n}"
            if self._get_bytes(self.location.key(channel, name, MANIFEST_DIGEST), True) is None:
                break
        else:
            raise ArtifactError(f"{self.location.url(channel, base)}: no free version name left")
        fields = {k: v for k, v in bundle.manifest.items() if k not in RESERVED_FIELDS}
        with ArtifactStore(scratch).new_version(channel, version=name) as writer:
            for file in bundle.manifest["files"]:
                (writer.path / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle.path / file, writer.path / file)
            writer.update(**fields)
            renamed = writer.commit()
        log.info("artifact_version_renamed", channel=channel, taken=version, version=name)
        return renamed

    def _require_cache(self) -> Path:
        if self.cache is None:
            raise ValueError("S3BundleStore: pulling needs a cache folder (cache=...)")
        return self.cache

    def _download(self, channel: str, version: str, parent: Path) -> None:
        """Download ``channel/version`` into a staging folder under ``parent``, checking
        every digest, then rename it to ``parent/version``."""
        where = self.location.url(channel, version)
        t0 = time.perf_counter()
        seal = self._get_bytes(self.location.key(channel, version, MANIFEST_DIGEST), True)
        data = self._get_bytes(self.location.key(channel, version, MANIFEST), True)
        if seal is None or data is None:
            missing = MANIFEST_DIGEST if seal is None else MANIFEST
            raise ArtifactError(f"{where}/{missing}: missing (not a published version)")
        manifest = check_sealed_manifest(data, seal, channel, version, where)
        parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(parent)
        staging = parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            total = 0
            for name, entry in manifest["files"].items():
                key = self.location.key(channel, version, name)
                total += self._fetch_checked(key, staging / name, entry)
            (staging / MANIFEST).write_bytes(data)
            (staging / MANIFEST_DIGEST).write_bytes(seal)
            fsync_dir(staging)
            try:
                os.rename(staging, parent / version)
            except OSError:
                if not (parent / version / MANIFEST).is_file():
                    raise
                # another process of this machine downloaded it meanwhile: keep theirs
            fsync_dir(parent)
        finally:
            _remove(staging)
        log.info(
            "artifact_downloaded",
            channel=channel,
            version=version,
            files=len(manifest["files"]),
            bytes=total,
            seconds=round(time.perf_counter() - t0, 3),
        )

    def _fetch_checked(self, key: str, path: Path, entry: Mapping[str, Any]) -> int:
        """Stream one object to ``path``, hashing it; refuse it unless its size and
        sha256 match the manifest's ``entry``."""
        response = self._call(
            key, lambda: self._client.get_object(Bucket=self.location.bucket, Key=key)
        )
        digest = hashlib.sha256()
        size = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            try:
                for chunk in response["Body"].iter_chunks(HASH_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            except Exception as e:  # noqa: BLE001 - a broken stream is the store's
                raise RemoteStoreError(f"{self.setting}: reading {key} failed: {e}") from e
            out.flush()
            os.fsync(out.fileno())
        url = f"{SCHEME}{self.location.bucket}/{key}"
        if size != entry["bytes"]:
            raise ArtifactError(
                f"{url}: wrong size ({size} bytes, manifest says {entry['bytes']}); "
                "refused, not cached"
            )
        got = digest.hexdigest()
        if got != entry["sha256"]:
            raise ArtifactError(
                f"{url}: sha256 mismatch (downloaded {got[:12]}…, manifest "
                f"{entry['sha256'][:12]}…); refused, not cached"
            )
        return size

    def _get_bytes(self, key: str, missing_ok: bool = False) -> bytes | None:
        try:
            response = self._call(
                key,
                lambda: self._client.get_object(Bucket=self.location.bucket, Key=key),
                missing_ok=missing_ok,
            )
        except _Missing:
            return None
        body: bytes = response["Body"].read()
        return body

    def _exists(self, key: str) -> bool:
        try:
            self._call(
                key,
                lambda: self._client.head_object(Bucket=self.location.bucket, Key=key),
                missing_ok=True,
            )
        except _Missing:
            return False
        return True

    def _upload_file(self, path: Path, key: str) -> None:
        # upload_file: multipart (and parallel) for large files, a PUT for small ones
        self._call(key, lambda: self._client.upload_file(str(path), self.location.bucket, key))

    def _put(self, key: str, data: bytes) -> None:
        self._call(
            key,
            lambda: self._client.put_object(Bucket=self.location.bucket, Key=key, Body=data),
        )

    def _call(self, what: str, fn: Callable[[], Any], *, missing_ok: bool = False) -> Any:
        """Run one boto3 call; its failures as :class:`RemoteStoreError` naming the
        setting (``_Missing`` for a missing key when ``missing_ok``)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        url = f"{SCHEME}{self.location.bucket}/{what}" if "/" in what else what
        try:
            return fn()
        except ClientError as e:
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (what.startswith("bucket ") and status == 404):
                raise RemoteStoreError(
                    f"{self.setting}: bucket {self.location.bucket!r} does not exist "
                    f"({self.location.url()}{self._at()})"
                ) from None
            if code in ("NoSuchKey", "404", "NotFound") and missing_ok:
                raise _Missing() from None
            if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId"):
                raise RemoteStoreError(
                    f"{self.setting}: access denied to {url}{self._at()} ({code}); check the "
                    "credentials boto3 finds (environment, ~/.aws, instance role)"
                ) from None
            raise RemoteStoreError(f"{self.setting}: {url}{self._at()}: {code or e}") from None
        except NoCredentialsError:
            raise RemoteStoreError(
                f"{self.setting}: no credentials for {self.location.url()} (boto3's chain: "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, instance or pod role)"
            ) from None
        except BotoCoreError as e:
            raise RemoteStoreError(f"{self.setting}: {url}{self._at()}: {e}") from None

    def _at(self) -> str:
        endpoint = self.endpoint_url or getattr(self._client.meta, "endpoint_url", None)
        return f" at {endpoint}" if endpoint else ""


class _Missing(Exception):
    """A key that is not there (internal: ``missing_ok``)."""


def _make_client(endpoint_url: str | None, setting: str) -> Any:
    try:
        import boto3
        from botocore.config import Config as BotoConfig
    except ImportError:
        raise RemoteStoreError(
            f"{setting}: an s3:// store needs boto3, the [s3] extra: "
            "pip install 'recall-engine[s3]'"
        ) from None
    config = BotoConfig(
        retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60
    )
    # endpoint_url None: boto3's own resolution, which reads AWS_ENDPOINT_URL(_S3)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _catalog_bundle(folder: Path, scratch: Path) -> Bundle:
    """The catalogue folder ``build`` wrote, as a bundle to publish (a copy, sealed)."""
    store = ArtifactStore(scratch)
    with store.new_version(CATALOG) as writer:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                dest = writer.path / path.relative_to(folder)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
        bundle = writer.commit()
    return bundle


def _remove(folder: Path) -> None:
    """Remove ``folder`` (a staging folder, or a damaged cached copy: renamed aside
    first, so that no reader ever sees it half deleted)."""
    if not folder.exists():
        return
    doomed = folder.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    try:
        os.rename(folder, doomed)
    except OSError:
        doomed = folder
    shutil.rmtree(doomed, ignore_errors=True)


def _clean_stale_staging(parent: Path) -> None:
    now = time.time()
    for path in parent.glob(f"{STAGING_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > _STALE_STAGING_S:
                shutil.rmtree(path, ignore_errors=True)


# -- keeping a replica current -----------------------------------------------------------

#: apply(channel, version): make the engine serve ``version`` of ``channel`` (already in
#: the cache, verified), or raise, leaving the old one serving.
Apply = Callable[[str, str], object]

_SYNCS: weakref.WeakSet[ArtifactSync] = weakref.WeakSet()


def announce(channel: str, version: str | None = None) -> int:
    """THE HOOK for an update stream (e.g. the cluster's): "``channel`` has a newly
    published version" (``version``: the one the announcer saw, or None). Wakes every
    running :class:`ArtifactSync` of this process, which re-reads that channel's
    ``current`` pointer at once instead of at its next poll, and pulls, verifies and
    swaps in what the pointer names.

    Non-blocking, thread-safe, idempotent; callable from any thread or event loop.
    The pointer stays the source of truth: an announcement never makes a replica serve
    a version the pointer does not name (a late or replayed message cannot roll a
    replica back), and an announced version that was refused before is tried once
    more. Returns how many syncs were told (0: this process serves no s3:// root;
    nothing to do)."""
    told = 0
    for sync in list(_SYNCS):
        if sync.announce(channel, version):
            told += 1
    return told


class ArtifactSync:
    """Keeps the cache, and through ``apply`` the engine, on the published pointers.

    ``channels``: the channels served from this store, each with its pinned version
    (None: follow ``current``); ``required``: those whose missing pointer stops
    :meth:`pull_all`; ``quiet``: optional bundles (the learned fusion weights) whose
    missing pointer is logged as information, not as an error. Lifecycle:
    :meth:`pull_all` (start-up, before the engine loads) → :meth:`start` (the watcher
    thread) → :meth:`stop`."""

    def __init__(
        self,
        store: S3BundleStore,
        channels: Mapping[str, str | None],
        *,
        required: Iterable[str] = (),
        quiet: Iterable[str] = (),
        keep: int = 3,
    ) -> None:
        self.store = store
        self.channels = dict(channels)
        self.required = frozenset(required)
        self.quiet = frozenset(quiet)  # optional bundles whose absence is no error
        self.keep = keep
        self.serving: dict[str, str] = {}  # what apply last made current, by channel
        self.refused: dict[str, str] = {}  # a version that failed, not retried by polls
        self._lock = threading.Lock()  # one check at a time (poll or announcement)
        self._wake = threading.Event()
        self._pending: dict[str, str | None] = {}
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._apply: Apply | None = None

    # -- start-up ----------------------------------------------------------------
    def pull_all(self) -> dict[str, str]:
        """Seed the catalogue and pull every channel's current (or pinned) version into
        the cache, pointing the cache's ``current`` at it. A required channel with
        nothing published raises :class:`ArtifactError` naming the pointer; an optional
        one is logged and left out (the engine then skips it)."""
        self.store.check_bucket()
        self.store.pull_catalog()
        cache = ArtifactStore(self.store._require_cache())
        pulled: dict[str, str] = {}
        for channel, pinned in self.channels.items():
            try:
                bundle = self.store.pull(channel, pinned)
            except RemoteStoreError:
                raise
            except ArtifactError as e:
                if channel in self.required:
                    raise
                if channel in self.quiet and self.store.current(channel) is None:
                    log.info("optional_bundle_not_published", bundle=channel)
                else:
                    log.error("optional_channel_not_pulled", channel=channel, error=str(e))
                continue
            cache.set_current(channel, bundle.version)
            pulled[channel] = bundle.version
        self.serving.update(pulled)
        log.info("artifacts_pulled", store=self.store.location.url(), versions=pulled)
        return pulled

    # -- the watcher -------------------------------------------------------------
    def start(self, apply: Apply, poll_s: float) -> None:
        """Start the watcher thread: every ``poll_s`` (0: never; announcements only)
        and on every announcement, check the pointers and swap through ``apply``."""
        self._apply = apply
        _SYNCS.add(self)
        self._thread = threading.Thread(
            target=self._run, args=(poll_s,), name="artifact-sync", daemon=True
        )
        self._thread.start()
        log.info("artifact_watch_started", store=self.store.location.url(), poll_s=poll_s)

    def stop(self, timeout: float = 10.0) -> None:
        _SYNCS.discard(self)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def announce(self, channel: str, version: str | None = None) -> bool:
        """See the module's :func:`announce`. False for a channel this sync does not
        follow (pinned to a version, or served from elsewhere)."""
        if channel not in self.channels or self.channels[channel] is not None:
            return False
        with self._pending_lock:
            self._pending[channel] = version
        self._wake.set()
        return True

    def check(self, channels: Iterable[str] | None = None, *, retry: bool = False) -> dict:
        """One round, in the caller's thread: for each followed channel (or
        ``channels``), read the pointer and, when it names a version other than the
        one serving, pull it and ``apply`` it. Returns ``{channel: version}`` swapped.
        A refused version is logged, remembered and skipped by later rounds unless
        ``retry``; the old one keeps serving."""
        names = [c for c in (channels or self.channels) if self.channels.get(c, "") is None]
        swapped: dict[str, str] = {}
        with self._lock:
            for channel in names:
                version = self._check_one(channel, retry)
                if version is not None:
                    swapped[channel] = version
        return swapped

    def _run(self, poll_s: float) -> None:
        while not self._stop.is_set():
            self._wake.wait(poll_s if poll_s > 0 else None)
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._pending_lock:
                announced, self._pending = self._pending, {}
            try:
                if announced:
                    self.check(announced, retry=True)
                else:
                    self.check()
            except Exception as e:  # noqa: BLE001 - the watcher never dies; next round
                log.error("artifact_watch_failed", error=str(e), error_type=type(e).__name__)

    def _check_one(self, channel: str, retry: bool) -> str | None:
        try:
            version = self.store.current(channel)
        except ArtifactError as e:
            log.error("artifact_pointer_unreadable", channel=channel, error=str(e))
            return None
        if version is None or version == self.serving.get(channel):
            return None
        if not retry and self.refused.get(channel) == version:
            return None
        cache = ArtifactStore(self.store._require_cache())
        serving = self.serving.get(channel)
        try:
            self.store.pull(channel, version)
            # the cache's pointer first: a channel that had nothing to load reads it
            cache.set_current(channel, version)
            if self._apply is not None:
                self._apply(channel, version)
        except RemoteStoreError as e:  # the store, not the bundle: try again next round
            log.error("artifact_pull_failed", channel=channel, version=version, error=str(e))
            return None
        except Exception as e:  # noqa: BLE001 - refused: the old version keeps serving
            self.refused[channel] = version
            if serving is not None:
                with contextlib.suppress(OSError, ArtifactError):
                    cache.set_current(channel, serving)
            log.error(
                "artifact_refused",
                channel=channel,
                version=version,
                serving=serving,
                error=str(e),
            )
            return None
        self.serving[channel] = version
        self.refused.pop(channel, None)
        with contextlib.suppress(OSError, ArtifactError, ValueError):
            cache.prune(channel, keep=self.keep)
        log.info("artifact_swapped", channel=channel, version=version)
        return version
