"""The asyncio client (``grpc.aio``): the same calls, values and retry rules as
:class:`RecallClient`, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from recall_engine._proto import recall_pb2 as _pb
from recall_engine._proto import recall_pb2_grpc as _pb_grpc
from recall_engine.client import _model
from recall_engine.client._model import BatchItem, RecallQuery, RecallResult, ServerChannels
from recall_engine.client._retry import Attempts
from recall_engine.client._settings import (
    BATCH_RECALL,
    LIST_CHANNELS,
    LIST_TIMEOUT_S,
    RECALL,
    ClientBase,
)


class AsyncRecallClient(ClientBase):
    """An asyncio client of ``recall_engine.v1.RecallService``. Make it inside the event
    loop that uses it (a ``grpc.aio`` channel belongs to one loop) and ``await close()``
    (or ``async with``). Settings: see :class:`ClientBase`."""

    def _open(self) -> None:
        creds = self._credentials()
        self._channel = (
            grpc.aio.secure_channel(self._target, creds, options=self._options)
            if creds is not None
            else grpc.aio.insecure_channel(self._target, options=self._options)
        )
        self._stub = _pb_grpc.RecallServiceStub(self._channel)

    async def recall(self, query: RecallQuery, *, timeout: float | None = None) -> RecallResult:
        """Candidates for one user, best first, with every channel's rank and score."""
        request = _model.request_of(query)
        resp = await self._call(RECALL, self._stub.Recall, request, timeout, self._timeout)
        return _model.result_of(resp)

    async def batch_recall(
        self, queries: Sequence[RecallQuery], *, timeout: float | None = None
    ) -> list[BatchItem]:
        """One item per query, in order; a bad query fails alone (its item carries the
        status). The call as a whole fails only when the server refuses the batch."""
        request = _model.batch_request_of(queries)
        resp = await self._call(
            BATCH_RECALL, self._stub.BatchRecall, request, timeout, self._batch_timeout
        )
        return _model.batch_of(resp, len(queries))

    async def list_channels(self, *, timeout: float | None = None) -> ServerChannels:
        """What the server this call reaches has loaded."""
        request = _pb.ListChannelsRequest()
        resp = await self._call(
            LIST_CHANNELS, self._stub.ListChannels, request, timeout, LIST_TIMEOUT_S
        )
        return _model.channels_of(resp)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the channel has a connection; ``TimeoutError`` after ``timeout``."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no connection to {self._target} in {timeout} s") from None

    async def _connected(self, attempts: Attempts) -> bool:
        """Wait (within the call's time) for the channel to have a connection."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), attempts.connection_wait_s())
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncRecallClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self,
        method: str,
        rpc: Callable[..., Any],
        request: Any,
        timeout: float | None,
        default: float,
    ) -> Any:
        attempts = self._attempts(method, timeout, default)
        while True:
            try:
                resp = await rpc(
                    request,
                    timeout=attempts.next_timeout(),
                    metadata=self._metadata,
                    wait_for_ready=self._wait_for_ready,
                )
            except grpc.aio.AioRpcError as e:
                trailers = tuple(e.trailing_metadata() or ())
                await asyncio.sleep(attempts.failed(e.code(), e.details() or "", trailers))
                if attempts.wait_for_connection and not await self._connected(attempts):
                    raise attempts.no_connection() from None
                continue
            attempts.succeeded()
            return resp
