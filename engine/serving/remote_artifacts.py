"""Serving from an ``s3://`` artifacts root: pull into the local cache before the
engine loads, then follow the published pointers and swap through the engine's reload
(:mod:`recall_engine.runtime.object_store` does the storage side).

With replicas on an update stream ([cluster], :mod:`recall_engine.serving.process_group`)
the swap travels on the stream: the replica whose watcher swapped announces the version
(``op: reload``), and the others fetch it from the store (:func:`fetcher`) and swap, at
once, whatever their own ``poll_s`` (docs/scale-out.md, "Artifacts in object storage").
"""

from __future__ import annotations

from collections.abc import Callable

from recall_engine.config import Config
from recall_engine.observability.logs import get_logger
from recall_engine.runtime.artifacts import ArtifactError
from recall_engine.runtime.learned_weights import BUNDLE as LEARNED
from recall_engine.runtime.object_store import Apply, ArtifactSync, S3BundleStore
from recall_engine.serving.engine import Engine
from recall_engine.serving.process_group import ProcessGroup

log = get_logger(__name__)


def open_remote(config: Config) -> ArtifactSync | None:
    """For a config whose ``[artifacts] root`` is ``s3://...``: check the bucket, seed
    the catalogue and pull every enabled channel's current (or pinned) version into the
    cache, where the engine will load it. None for a local root. Raises
    :class:`~recall_engine.runtime.artifacts.ArtifactError` naming the setting, the
    URL or the pointer (a required channel with nothing published stops start-up)."""
    remote = config.remote_artifacts
    if remote is None:
        return None
    store = S3BundleStore(remote.url, cache=remote.cache, endpoint_url=remote.endpoint_url)
    # a channel given its own local folder is not served from the store
    followed = {
        name: cc.version
        for name, cc in config.channels.items()
        if cc.enabled and cc.artifacts == remote.cache / name
    }
    required = [name for name in followed if config.channels[name].required]
    # the fusion weights the build learned travel like a channel's bundle (optional:
    # a build with --no-fusion-fit publishes none, and the plan's weights serve)
    followed[LEARNED] = None
    sync = ArtifactSync(store, followed, required=required, quiet=[LEARNED])
    sync.pull_all()
    return sync


def swap_into(engine: Engine, group: ProcessGroup | None = None) -> Apply:
    """The ``apply`` of :meth:`ArtifactSync.start` for ``engine``: a loaded channel goes
    through :meth:`Engine.reload_channels` (new version beside the old, warmed, swapped;
    on failure the old one keeps serving and this raises); a channel that had nothing to
    load at start-up is loaded by a config reload of the same config. A version the
    engine already serves (the stream brought it first) is left alone. After a swap the
    version is announced to ``group`` (the other processes or replicas), best effort:
    they also watch the pointer, the announcement only makes them quicker."""

    def apply(channel: str, version: str) -> None:
        loaded = _loaded(engine)
        if loaded.get(channel) == version:
            return
        if channel == LEARNED:
            engine.reload_learned_weights(version)  # raises when refused
        elif channel in loaded:
            engine.reload_channels([channel], version)
        else:
            engine.reload_config(engine.config)
            if channel not in _loaded(engine):
                raise ArtifactError(f"{channel}/{version}: did not load (see the engine's log)")
        if group is not None:
            try:
                group.announce_reload({channel: version})
            except Exception as e:  # noqa: BLE001 - the others still poll the pointer
                log.warning(
                    "artifact_swap_not_announced", channel=channel, version=version, error=str(e)
                )

    return apply


def _loaded(engine: Engine) -> dict[str, str]:
    """The version of every loaded channel, and of the learned fusion weights."""
    loaded = {cc.name: info.version for cc, info in engine.channel_infos()}
    if engine.learned_weights is not None:
        loaded[LEARNED] = engine.learned_weights.version
    return loaded


def fetcher(sync: ArtifactSync | None) -> Callable[[str, str], None] | None:
    """For :func:`~recall_engine.serving.process_group.follow`: bring a version another
    process announced into the local cache (pulled and verified) before the engine
    loads it, for the channels served from the store; others are left to the engine."""
    if sync is None:
        return None

    def fetch(channel: str, version: str) -> None:
        if channel in sync.channels:
            sync.store.pull(channel, version)

    return fetch


def follow_remote(
    sync: ArtifactSync, engine: Engine, config: Config, group: ProcessGroup | None = None
) -> None:
    """Start ``sync``'s watcher for ``engine``: every ``[artifacts] poll_s`` and on every
    announcement, a pointer that moved is pulled, verified, swapped in and announced to
    ``group``."""
    poll_s = config.remote_artifacts.poll_s if config.remote_artifacts else 0.0
    sync.start(swap_into(engine, group), poll_s)
