"""RecallService: proto → domain, call the engine, domain → proto. No business logic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import structlog

from recall_engine._proto import recall_pb2 as _pb
from recall_engine._proto import recall_pb2_grpc as _pb_grpc
from recall_engine.observability import metrics
from recall_engine.observability.logs import get_logger
from recall_engine.serving.engine import Engine, RecallOutput
from recall_engine.serving.errors import InvalidArgument, Overloaded, RecallError, status_of
from recall_engine.serving.explain import Explanation
from recall_engine.serving.requests import recall_input

log = get_logger(__name__)


def to_proto(out: RecallOutput) -> _pb.RecallResponse:
    """Fill the packed-column response from the fused arrays (DESIGN decision 11)."""
    fused = out.fused
    resp = _pb.RecallResponse(
        experiment=out.assignment.experiment,
        variant=out.assignment.variant,
        fusion=out.assignment.plan.fusion,
        request_id=out.request_id,
    )
    resp.item_ids.extend(fused.item_ids)
    resp.scores.extend(fused.scores.tolist())
    for rep in out.reports:
        ch = resp.channels.add(
            channel=rep.channel,
            status=int(rep.status),
            latency_ms=rep.latency_ms,
            returned=rep.returned,
            error=rep.error,
            weight=rep.weight,
        )
        prov = fused.provenance.get(rep.channel)
        if prov:
            ch.candidate_index.extend(prov[0])
            ch.rank.extend(prov[1])
            ch.score.extend(prov[2])
    if out.explanation is not None:
        _fill_explanation(resp.explanation, out.explanation)
    return resp


RECALL_METHOD = "/" + _pb.DESCRIPTOR.services_by_name["RecallService"].full_name + "/Recall"


class ShedInterceptor(grpc.aio.ServerInterceptor):
    """Sheds a ``Recall`` call when the engine is at its bound on requests in flight,
    before anything else runs for it: no other interceptor, no handler look-up, no
    parse, no servicer (the request reaches the refusal as raw bytes). The servicer's
    own :meth:`Engine.admit_in_line` still decides for the calls let through, so the bound holds
    exactly; this only makes the common refusal cheaper. Put it first."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._refusal = grpc.unary_unary_rpc_method_handler(self._shed)  # no deserializer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method == RECALL_METHOD and self._engine.admission.full:
            return self._refusal
        return await continuation(handler_call_details)

    async def _shed(self, _request: bytes, context: grpc.aio.ServicerContext) -> None:
        t0 = time.perf_counter()
        e = self._engine.admission.refuse()
        try:
            await context.abort(*status_of(e), e.trailing_metadata())
        finally:
            _observe("Recall", e.code, t0)


class RecallServicer(_pb_grpc.RecallServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _recall(self, req: _pb.RecallRequest, timeout: float | None) -> _pb.RecallResponse:
        """One request the caller has already admitted (``Engine.admit_in_line``)."""
        engine = self.engine
        cfg = engine.config
        inp = recall_input(req, cfg.server, cfg.channels.keys())
        structlog.contextvars.bind_contextvars(request_id=inp.request_id)
        out = await engine.recall(inp, timeout, admitted=True)
        structlog.contextvars.bind_contextvars(
            experiment=out.assignment.experiment, variant=out.assignment.variant
        )
        log.info(
            "recall",
            user_id=inp.query.user_id,
            k=inp.k,
            returned=len(out.fused.item_ids),
            channels={r.channel: r.status.name.lower() for r in out.reports},
        )
        return to_proto(out)

    async def Recall(self, request, context):  # noqa: N802 - gRPC method name
        structlog.contextvars.clear_contextvars()
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            # shed, or wait in line, before anything is parsed
            async with self.engine.admit_in_line(context.time_remaining()):
                return await self._recall(request, context.time_remaining())
        except Exception as e:  # noqa: BLE001 - mapped to a status in one place
            code, message = status_of(e)
            _log_failure(e, code)
            await context.abort(code, message, _trailers(e))
        finally:
            _observe("Recall", code, t0)

    async def BatchRecall(self, request, context):  # noqa: N802
        structlog.contextvars.clear_contextvars()
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            limit = self.engine.config.server.max_batch
            if len(request.requests) > limit:
                raise InvalidArgument(
                    "requests",
                    f"{len(request.requests)} requests is over "
                    f"the limit of {limit} (server.max_batch)",
                )
            # Admitted as one; its items then run ``width`` at a time, each starting its
            # channels' timeouts when it starts, not queued behind the others.
            with self.engine.admitted(len(request.requests)) as width:
                lane = asyncio.Semaphore(width)
                results = await asyncio.gather(
                    *(
                        self._batch_item(i, r, context.time_remaining, lane)
                        for i, r in enumerate(request.requests)
                    )
                )
            return _pb.BatchRecallResponse(results=results)
        except Exception as e:  # noqa: BLE001
            code, message = status_of(e)
            _log_failure(e, code)
            await context.abort(code, message, _trailers(e))
        finally:
            _observe("BatchRecall", code, t0)

    async def _batch_item(
        self,
        i: int,
        req: _pb.RecallRequest,
        remaining: Callable[[], float | None],
        lane: asyncio.Semaphore,
    ) -> _pb.BatchRecallResult:
        try:
            async with lane:
                response = await self._recall(req, remaining())
            return _pb.BatchRecallResult(response=response)
        except Exception as e:  # noqa: BLE001 - one bad request fails alone
            code, message = status_of(e)
            _log_failure(e, code)
            return _pb.BatchRecallResult(
                error_code=code.value[0],
                error_message=f"requests[{i}].{message}"
                if isinstance(e, InvalidArgument)
                else message,
            )

    async def ListChannels(self, request, context):  # noqa: N802
        try:
            infos = self.engine.channel_infos()
        except RecallError as e:
            await context.abort(*status_of(e))
        resp = _pb.ListChannelsResponse(config_generation=self.engine.generation)
        for cc, info in infos:
            resp.channels.add(
                name=cc.name,
                plugin=cc.plugin,
                version=info.version,
                item_count=info.item_count,
                required=cc.required,
                details={k: str(v) for k, v in info.details.items()},
            )
        return resp


def _observe(method: str, code: grpc.StatusCode, t0: float) -> None:
    status = code.name
    metrics.REQUESTS.labels(method, status).inc()
    metrics.REQUEST_LATENCY.labels(method, status).observe(time.perf_counter() - t0)


def _trailers(e: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of a failed call: the retry hint of a shed request."""
    return e.trailing_metadata() if isinstance(e, Overloaded) else ()


def _log_failure(e: BaseException, code: grpc.StatusCode) -> None:
    if isinstance(e, Overloaded):
        return  # counted in metrics and logged once a second by the admission control
    if isinstance(e, RecallError):
        log.info("request_rejected", code=code.name, error=str(e))
    else:
        log.exception("request_failed", code=code.name)


def _fill_explanation(msg: _pb.Explanation, why: Explanation) -> None:
    """``RecallResponse.explanation`` (RecallRequest.explain), one entry per candidate."""
    msg.fusion = why.fusion
    msg.rrf_k = float(why.params.get("rrf_k", 0.0))
    msg.normalization = str(why.params.get("normalization", ""))
    msg.cold_quota = why.cold_quota
    msg.cold_slots = why.cold_slots
    msg.channel_errors.update(why.channel_errors)
    for cand in why.candidates:
        c = msg.candidates.add(
            terms_sum=cand.terms_sum,
            placed_by_cold_quota=cand.placed_by_cold_quota,
            formula=cand.formula,
        )
        for t in cand.terms:
            c.terms.add(
                channel=t.channel,
                weight=t.weight,
                rank=t.rank,
                raw_score=t.raw_score,
                normalized=t.normalized,
                value=t.value,
            )
        for channel, ev in cand.evidence.items():
            e = c.evidence.add(
                channel=channel,
                similarity=ev.similarity,
                text_used=ev.text_similarity is not None,
                text_similarity=ev.text_similarity or 0.0,
                text_weight=ev.text_weight,
                popularity_rank=ev.popularity_rank,
                popularity_score=ev.popularity_score,
                two_tower_used=ev.two_tower_score is not None,
                two_tower_score=ev.two_tower_score or 0.0,
            )
            for near in ev.nearest:
                e.nearest.add(item_id=near.item_id, similarity=near.similarity)
