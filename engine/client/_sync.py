"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from recall_engine._proto import recall_pb2 as _pb
from recall_engine._proto import recall_pb2_grpc as _pb_grpc
from recall_engine.client import _model
from recall_engine.client._model import BatchItem, RecallQuery, RecallResult, ServerChannels
from recall_engine.client._retry import Attempts
from recall_engine.client._settings import (
    BATCH_RECALL,
    HEALTH_CHECK,
    LIST_CHANNELS,
    LIST_TIMEOUT_S,
    RECALL,
    ClientBase,
)


class RecallClient(ClientBase):
    """A blocking client of ``recall_engine.v1.RecallService``. Thread-safe; make one and
    share it (it holds the connections). Settings: see :class:`ClientBase`."""

    def _open(self) -> None:
        creds = self._credentials()
        self._channel = (
            grpc.secure_channel(self._target, creds, options=self._options)
            if creds is not None
            else grpc.insecure_channel(self._target, options=self._options)
        )
        self._stub = _pb_grpc.RecallServiceStub(self._channel)
        # an empty HealthCheckRequest, sent as bytes (no grpc_health import needed)
        self._probe = self._channel.unary_unary(
            HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )

    def recall(self, query: RecallQuery, *, timeout: float | None = None) -> RecallResult:
        """Candidates for one user, best first, with every channel's rank and score."""
        request = _model.request_of(query)
        resp = self._call(RECALL, self._stub.Recall, request, timeout, self._timeout)
        return _model.result_of(resp)

    def batch_recall(
        self, queries: Sequence[RecallQuery], *, timeout: float | None = None
    ) -> list[BatchItem]:
        """One item per query, in order; a bad query fails alone (its item carries the
        status). The call as a whole fails only when the server refuses the batch."""
        request = _model.batch_request_of(queries)
        resp = self._call(
            BATCH_RECALL, self._stub.BatchRecall, request, timeout, self._batch_timeout
        )
        return _model.batch_of(resp, len(queries))

    def list_channels(self, *, timeout: float | None = None) -> ServerChannels:
        """What the server this call reaches has loaded."""
        request = _pb.ListChannelsRequest()
        resp = self._call(LIST_CHANNELS, self._stub.ListChannels, request, timeout, LIST_TIMEOUT_S)
        return _model.channels_of(resp)

    def wait_ready(self, timeout: float) -> None:
        """Block until the channel has a connection; ``TimeoutError`` after ``timeout``."""
        if not self._connected_within(timeout):
            raise TimeoutError(f"no connection to {self._target} in {timeout} s")

    def _connected(self, attempts: Attempts) -> bool:
        return self._connected_within(attempts.connection_wait_s())

    def _connected_within(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the channel to have a connection: a health
        check sent with ``wait_for_ready`` is answered (whatever it says) once there is
        one. Not ``grpc.channel_ready_future``: its polling thread outlives the wait, and
        raises "Channel closed!" when the client is closed soon after."""
        try:
            self._probe(b"", timeout=timeout, metadata=self._metadata, wait_for_ready=True)
        except grpc.RpcError as e:
            return not (isinstance(e, grpc.Call) and e.code() is grpc.StatusCode.DEADLINE_EXCEEDED)
        return True

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecallClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
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
                resp = rpc(
                    request,
                    timeout=attempts.next_timeout(),
                    metadata=self._metadata,
                    wait_for_ready=self._wait_for_ready,
                )
            except grpc.RpcError as e:
                if not isinstance(e, grpc.Call):
                    raise
                time.sleep(attempts.failed(e.code(), e.details(), e.trailing_metadata() or ()))
                if attempts.wait_for_connection and not self._connected(attempts):
                    raise attempts.no_connection() from None
                continue
            attempts.succeeded()
            return resp
