"""AdminService: config reload, artifact reload, online item updates. Token-guarded."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

from recall_engine._proto import admin_pb2 as _pb
from recall_engine._proto import admin_pb2_grpc as _pb_grpc
from recall_engine.config.schema import Config
from recall_engine.observability.logs import get_logger
from recall_engine.sdk.types import ItemRecord
from recall_engine.serving.engine import Engine
from recall_engine.serving.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    status_of,
)
from recall_engine.serving.process_group import ProcessGroup

log = get_logger(__name__)


def check_token(metadata, expected: str | None) -> None:
    """``authorization: Bearer <token>`` must match the configured admin token."""
    if not expected:
        raise FailedPrecondition(
            "admin API disabled: set admin.token in the config or the "
            "RECALL_ENGINE_ADMIN_TOKEN environment variable"
        )
    given = next((v for k, v in metadata or () if k == "authorization"), None)
    if not given:
        raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise PermissionDenied("wrong admin token")


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
        try:
            check_token(context.invocation_metadata(), self.engine.config.admin.token)
            return await asyncio.to_thread(fn, *args)
        except Exception as e:  # noqa: BLE001
            code, message = status_of(e)
            if code.name == "INTERNAL":
                log.exception("admin_call_failed")
                message = f"{type(e).__name__}: {e}"
            await context.abort(code, message)

    async def ReloadConfig(self, request, context):  # noqa: N802
        gen = await self._guard(context, lambda: self.engine.reload_config(self._read_config()))
        if self._group is not None:
            self._group.announce_config_reload()
        return _pb.ReloadConfigResponse(config_generation=gen)

    async def Reload(self, request, context):  # noqa: N802
        versions = await self._guard(
            context, self.engine.reload_channels, list(request.channels), request.version or None
        )
        if self._group is not None:  # the versions this process resolved, not "current"
            self._group.announce_reload(versions)
        return _pb.ReloadResponse(versions=versions)

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
