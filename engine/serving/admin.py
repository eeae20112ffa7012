"""AdminService: config reload, artifact reload, online item updates. Token-guarded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from recall_engine._proto import admin_pb2 as _pb
from recall_engine._proto import admin_pb2_grpc as _pb_grpc
from recall_engine.config import Config, ConfigError
from recall_engine.observability.logs import get_logger
from recall_engine.sdk.types import ItemRecord
from recall_engine.serving.catalog_updates import write_ahead
from recall_engine.serving.engine import Engine
from recall_engine.serving.errors import (
    FailedPrecondition,
    InvalidArgument,
    status_of,
)
from recall_engine.serving.process_group import ProcessGroup
from recall_engine.serving.registry import PluginError

log = get_logger(__name__)

CONTROL_LOG = "control log (reload announcements)"


class AdminServicer(_pb_grpc.AdminServiceServicer):
    def __init__(
        self, engine: Engine, reload_config: Callable[[], Config], group: ProcessGroup | None = None
    ) -> None:
        """``reload_config`` re-reads the config file (the same function SIGHUP uses);
        ``group``: the other processes of ``serve --processes N``, told of reloads."""
        self.engine = engine
        self._read_config = reload_config
        self._group = group

    async def _guard(self, context, fn, *args):
        """Run ``fn`` off the event loop; map its errors to a status. The caller was
        authenticated by :class:`~recall_engine.serving.auth.AdminAuthInterceptor`
        before the request was even parsed."""
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as e:  # noqa: BLE001
            code, message = status_of(e)
            if code.name == "INTERNAL":
                log.exception("admin_call_failed")
                message = f"{type(e).__name__}: {e}"
            await context.abort(code, message)

    async def ReloadConfig(self, request, context):  # noqa: N802
        gen = await self._guard(context, self._reload_config)
        return _pb.ReloadConfigResponse(config_generation=gen)

    def _reload_config(self) -> int:
        """Re-read the config file and swap it in, telling the group before the swap. A
        file that does not parse is the caller's to fix (INVALID_ARGUMENT, naming the
        key); a channel the new config requires that fails to load leaves the old config
        serving (FAILED_PRECONDITION); an announcement that cannot be stored too
        (UNAVAILABLE)."""
        group = self._group
        row: dict[str, Any] = {}
        try:
            if group is None:
                new = self._read_config()
            else:  # a replica applies the replicated tables exactly as the others will
                new, row = group.prepare_config_reload(self._read_config)
        except ConfigError as e:
            raise InvalidArgument("config", str(e)) from e
        announce = None
        if group is not None:

            def announce() -> None:
                write_ahead(lambda: group.announce_config_reload(row), CONTROL_LOG)

        try:
            return self.engine.reload_config(new, announce)
        except (PluginError, ConfigError) as e:
            raise FailedPrecondition(f"the new config was not applied: {e}") from e

    async def Reload(self, request, context):  # noqa: N802
        versions = await self._guard(
            context,
            self.engine.reload_channels,
            list(request.channels),
            request.version or None,
            self._announce_reload,
        )
        return _pb.ReloadResponse(versions=versions)

    def _announce_reload(self, versions: dict[str, str]) -> None:
        """Tell the group the versions this process loaded (not "current", which may
        move on), before they are swapped in."""
        group = self._group
        if group is not None:
            write_ahead(lambda: group.announce_reload(versions), CONTROL_LOG)

    async def UpsertItems(self, request, context):  # noqa: N802
        items = []
        for i, it in enumerate(request.items):
            if not it.item_id:
                await context.abort(
                    *status_of(InvalidArgument(f"items[{i}].item_id", "must not be empty"))
                )
            items.append(ItemRecord(it.item_id, it.title, it.text, tuple(it.categories)))
        indexed = await self._guard(context, self.engine.upsert_items, items)
        return _pb.UpsertItemsResponse(indexed=indexed)

    async def DeleteItems(self, request, context):  # noqa: N802
        deleted = await self._guard(context, self.engine.delete_items, list(request.item_ids))
        return _pb.DeleteItemsResponse(deleted=deleted)
