"""Serving from an ``s3://`` artifacts root: pull into the local cache before the
engine loads, then follow the published pointers and swap through the engine's reload
(:mod:`recall_engine.runtime.object_store` does the storage side).

An update stream announces a new version with
``recall_engine.runtime.object_store.announce(channel, version)`` (docs/scale-out.md,
"Artifacts in object storage"); this module needs nothing from it.
"""

from __future__ import annotations

from recall_engine.config import Config
from recall_engine.runtime.artifacts import ArtifactError
from recall_engine.runtime.object_store import Apply, ArtifactSync, S3BundleStore
from recall_engine.serving.engine import Engine


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
    sync = ArtifactSync(store, followed, required=required)
    sync.pull_all()
    return sync


def swap_into(engine: Engine) -> Apply:
    """The ``apply`` of :meth:`ArtifactSync.start` for ``engine``: a loaded channel goes
    through :meth:`Engine.reload_channels` (new version beside the old, warmed, swapped;
    on failure the old one keeps serving and this raises); a channel that had nothing to
    load at start-up is loaded by a config reload of the same config."""

    def apply(channel: str, version: str) -> None:
        if channel in _loaded(engine):
            engine.reload_channels([channel], version)
            return
        engine.reload_config(engine.config)
        if channel not in _loaded(engine):
            raise ArtifactError(f"{channel}/{version}: did not load (see the engine's log)")

    return apply


def _loaded(engine: Engine) -> set[str]:
    return {cc.name for cc, _ in engine.channel_infos()}


def follow_remote(sync: ArtifactSync, engine: Engine, config: Config) -> None:
    """Start ``sync``'s watcher for ``engine``: every ``[artifacts] poll_s`` and on every
    announcement, a pointer that moved is pulled, verified and swapped in."""
    poll_s = config.remote_artifacts.poll_s if config.remote_artifacts else 0.0
    sync.start(swap_into(engine), poll_s)
