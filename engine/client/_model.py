"""The client's values (plain frozen dataclasses) and their conversion to and from the
wire messages. Shared by the sync and the async client; nothing here does I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc

from recall_engine._proto import recall_pb2 as _pb

#: Candidates asked for when a query does not say (the server's ``max_k`` caps it).
DEFAULT_K = 100

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ChannelStatus(enum.IntEnum):
    """A channel's outcome in one response (``recall_engine.v1.ChannelStatus``). A value
    this client does not know (a newer server) reads as ``UNSPECIFIED``."""

    UNSPECIFIED = 0
    OK = 1  # answered within its timeout
    TIMEOUT = 2  # did not answer in time; its candidates are missing
    ERROR = 3  # raised; see ChannelReport.error
    SKIPPED = 4  # not asked (weight 0, not in the plan, cannot serve this request)
    OVERLOADED = 5  # refused by its full bulkhead; the others answered


_STATUSES = frozenset(s.value for s in ChannelStatus)


def _strings(values: Sequence[str] | str, name: str) -> tuple[str, ...]:
    if isinstance(values, str):  # "abc" would silently become ("a", "b", "c")
        raise TypeError(f"{name}: give a sequence of strings, not one string")
    return tuple(values)


@dataclass(slots=True, frozen=True)
class RecallQuery:
    """One user's request (``RecallRequest``). Sequences may be given as lists; they
    are kept as tuples. ``history`` is oldest first, newest LAST; ``history_events`` and
    ``history_timestamps`` (Unix seconds) are empty or parallel to it."""

    user_id: str = ""
    history: Sequence[str] = ()
    text: str = ""
    k: int = DEFAULT_K
    exclude: Sequence[str] = ()
    categories: Sequence[str] = ()
    include_history: bool = False
    history_events: Sequence[str] = ()
    history_timestamps: Sequence[int] = ()
    #: debugging only, honoured when the server sets ``server.allow_weight_override``
    weight_override: Mapping[str, float] = field(default_factory=dict)
    #: the caller's id for log correlation; the server makes one when empty
    request_id: str = ""
    #: also return why each candidate is there (``Candidate.explanation``)
    explain: bool = False

    def __post_init__(self) -> None:
        for name in ("history", "exclude", "categories", "history_events"):
            object.__setattr__(self, name, _strings(getattr(self, name), name))
        object.__setattr__(self, "history_timestamps", tuple(self.history_timestamps))
        object.__setattr__(self, "weight_override", MappingProxyType(dict(self.weight_override)))


@dataclass(slots=True, frozen=True)
class ChannelHit:
    """One channel's opinion of a candidate: its own 1-based rank and raw score (on the
    channel's own scale; larger is better)."""

    channel: str
    rank: int
    score: float


@dataclass(slots=True, frozen=True)
class FusionTerm:
    """What one channel added to a candidate's fused score: ``value = weight *
    normalized`` (rrf: ``normalized = 1 / (rrf_k + rank)``; weighted_sum: the raw score
    normalised over the channel's list; quota: 0)."""

    channel: str
    weight: float
    rank: int
    raw_score: float
    normalized: float
    value: float


@dataclass(slots=True, frozen=True)
class NearItem:
    """A history item near a candidate (``ChannelEvidence.similarity`` says the measure)."""

    item_id: str
    similarity: float


@dataclass(slots=True, frozen=True)
class ChannelEvidence:
    """One channel's evidence for one candidate. ``text_similarity`` and
    ``two_tower_score`` are None when no text or no two-tower model took part;
    ``popularity_rank`` is 0 when the channel has none."""

    channel: str
    nearest: tuple[NearItem, ...]
    similarity: str
    text_similarity: float | None
    text_weight: float
    popularity_rank: int
    popularity_score: float
    two_tower_score: float | None


@dataclass(slots=True, frozen=True)
class CandidateExplanation:
    """Why a candidate is in the list (``RecallQuery.explain``): the fusion terms
    (their sum is the fused score unless ``placed_by_cold_quota`` capped it), a
    readable ``formula``, and the evidence of the channels that can explain."""

    terms: tuple[FusionTerm, ...]
    terms_sum: float
    placed_by_cold_quota: bool
    formula: str
    evidence: tuple[ChannelEvidence, ...]

    def channel(self, name: str) -> ChannelEvidence | None:
        """``name``'s evidence, or None when it gave none."""
        return next((e for e in self.evidence if e.channel == name), None)


@dataclass(slots=True, frozen=True)
class ResponseExplanation:
    """The fusion a response ran with (``RecallQuery.explain``): strategy, its params,
    the cold quota, and the channels whose evidence failed (channel -> why)."""

    fusion: str
    rrf_k: float
    normalization: str
    cold_quota: float
    cold_slots: int
    channel_errors: Mapping[str, str]


@dataclass(slots=True, frozen=True)
class Candidate:
    """A fused candidate: the fused score and every channel that returned it (and,
    when the query asked to ``explain``, why)."""

    item_id: str
    score: float
    hits: tuple[ChannelHit, ...]
    explanation: CandidateExplanation | None = None

    def hit(self, channel: str) -> ChannelHit | None:
        """``channel``'s rank and score for this item, or None when it did not return it."""
        return next((h for h in self.hits if h.channel == channel), None)


@dataclass(slots=True, frozen=True)
class ChannelReport:
    """What one channel did for a response. ``candidate_index``/``rank``/``score`` are
    the response's packed provenance columns as they came (index into the candidates),
    for callers that build ranker features column-wise."""

    channel: str
    status: ChannelStatus
    latency_ms: float
    returned: int
    weight: float
    error: str
    candidate_index: tuple[int, ...]
    rank: tuple[int, ...]
    score: tuple[float, ...]


@dataclass(slots=True, frozen=True)
class RecallResult:
    """A ``RecallResponse``: candidates best first, the channels' reports, the A/B
    assignment and the fusion that merged the lists."""

    candidates: tuple[Candidate, ...]
    channels: tuple[ChannelReport, ...]
    experiment: str
    variant: str
    fusion: str
    request_id: str
    explanation: ResponseExplanation | None = None

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(c.item_id for c in self.candidates)

    @property
    def scores(self) -> tuple[float, ...]:
        return tuple(c.score for c in self.candidates)

    def channel(self, name: str) -> ChannelReport | None:
        return next((c for c in self.channels if c.channel == name), None)


@dataclass(slots=True, frozen=True)
class BatchItem:
    """One query's outcome inside a ``batch_recall``: a result, or the status it failed
    with (a bad query fails alone)."""

    result: RecallResult | None
    code: grpc.StatusCode
    message: str

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    def unwrap(self) -> RecallResult:
        """The result, or raise its failure as :class:`RecallCallError`."""
        if self.result is None:
            raise RecallCallError(self.code, self.message, reason="not_retryable")
        return self.result


@dataclass(slots=True, frozen=True)
class ChannelInfo:
    """A channel the server has loaded (``ListChannels``)."""

    name: str
    plugin: str
    version: str
    item_count: int
    required: bool
    details: Mapping[str, str]


@dataclass(slots=True, frozen=True)
class ServerChannels:
    channels: tuple[ChannelInfo, ...]
    config_generation: int


class RecallCallError(grpc.RpcError):
    """A call that failed after every attempt the client was allowed to make. It is a
    ``grpc.RpcError`` with the usual ``code()``, ``details()`` and
    ``trailing_metadata()`` of the last attempt, plus ``attempts`` (how many were made)
    and ``reason``, why the client stopped: ``"not_retryable"`` (the status is never
    retried), ``"attempts"`` (RetryPolicy.max_attempts), ``"budget"`` (the retry budget
    is spent), ``"deadline"`` (the next attempt could not start before the deadline) or
    ``"pushback"`` (the server asked not to retry)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        trailing_metadata: tuple[tuple[str, str], ...] = (),
        attempts: int = 1,
        reason: str = "not_retryable",
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing = trailing_metadata
        self.attempts = attempts
        self.reason = reason

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing

    def __str__(self) -> str:
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{self._code.name}: {self._details}{tries} ({self.reason})"


# -- conversion ------------------------------------------------------------------------


def request_of(q: RecallQuery) -> _pb.RecallRequest:
    return _pb.RecallRequest(
        user_id=q.user_id,
        history_item_ids=q.history,
        history_events=q.history_events,
        history_timestamps=q.history_timestamps,
        text=q.text,
        k=q.k,
        exclude_item_ids=q.exclude,
        categories=q.categories,
        include_history=q.include_history,
        weight_override=dict(q.weight_override),
        request_id=q.request_id,
        explain=q.explain,
    )


def batch_request_of(queries: Sequence[RecallQuery]) -> _pb.BatchRecallRequest:
    return _pb.BatchRecallRequest(requests=[request_of(q) for q in queries])


def result_of(resp: _pb.RecallResponse) -> RecallResult:
    """The packed columns (``item_ids``, ``scores``, per channel ``candidate_index`` /
    ``rank`` / ``score``) turned into one :class:`Candidate` per item."""
    ids, scores = resp.item_ids, resp.scores
    n = len(ids)
    if len(scores) != n:
        raise _malformed(f"{n} item_ids but {len(scores)} scores")
    hits: list[list[ChannelHit]] = [[] for _ in range(n)]
    reports = []
    for ch in resp.channels:
        index, rank, score = tuple(ch.candidate_index), tuple(ch.rank), tuple(ch.score)
        if not len(index) == len(rank) == len(score):
            raise _malformed(f"channel {ch.channel!r}: provenance columns differ in length")
        name = ch.channel
        for i, r, s in zip(index, rank, score, strict=True):
            if i >= n:
                raise _malformed(f"channel {name!r}: candidate_index {i} past {n} items")
            hits[i].append(ChannelHit(name, r, s))
        status = ChannelStatus(ch.status) if ch.status in _STATUSES else ChannelStatus.UNSPECIFIED
        reports.append(
            ChannelReport(
                channel=name,
                status=status,
                latency_ms=ch.latency_ms,
                returned=ch.returned,
                weight=ch.weight,
                error=ch.error,
                candidate_index=index,
                rank=rank,
                score=score,
            )
        )
    why: list[CandidateExplanation | None] = [None] * n
    summary = None
    if resp.HasField("explanation"):
        summary, why = _explanation_of(resp.explanation, n)
    return RecallResult(
        candidates=tuple(
            Candidate(item, score, tuple(h), w)
            for item, score, h, w in zip(ids, scores, hits, why, strict=True)
        ),
        channels=tuple(reports),
        experiment=resp.experiment,
        variant=resp.variant,
        fusion=resp.fusion,
        request_id=resp.request_id,
        explanation=summary,
    )


def _explanation_of(
    msg: _pb.Explanation, n: int
) -> tuple[ResponseExplanation, list[CandidateExplanation | None]]:
    if len(msg.candidates) != n:
        raise _malformed(f"{len(msg.candidates)} explanations for {n} candidates")
    summary = ResponseExplanation(
        fusion=msg.fusion,
        rrf_k=msg.rrf_k,
        normalization=msg.normalization,
        cold_quota=msg.cold_quota,
        cold_slots=msg.cold_slots,
        channel_errors=MappingProxyType(dict(msg.channel_errors)),
    )
    why: list[CandidateExplanation | None] = [
        CandidateExplanation(
            terms=tuple(
                FusionTerm(t.channel, t.weight, t.rank, t.raw_score, t.normalized, t.value)
                for t in c.terms
            ),
            terms_sum=c.terms_sum,
            placed_by_cold_quota=c.placed_by_cold_quota,
            formula=c.formula,
            evidence=tuple(
                ChannelEvidence(
                    channel=e.channel,
                    nearest=tuple(NearItem(x.item_id, x.similarity) for x in e.nearest),
                    similarity=e.similarity,
                    text_similarity=e.text_similarity if e.text_used else None,
                    text_weight=e.text_weight,
                    popularity_rank=e.popularity_rank,
                    popularity_score=e.popularity_score,
                    two_tower_score=e.two_tower_score if e.two_tower_used else None,
                )
                for e in c.evidence
            ),
        )
        for c in msg.candidates
    ]
    return summary, why


def batch_of(resp: _pb.BatchRecallResponse, expected: int) -> list[BatchItem]:
    if len(resp.results) != expected:
        raise _malformed(f"{len(resp.results)} batch results for {expected} requests")
    items = []
    for r in resp.results:
        if r.error_code:
            code = _CODES.get(r.error_code, grpc.StatusCode.UNKNOWN)
            items.append(BatchItem(None, code, r.error_message))
        else:
            items.append(BatchItem(result_of(r.response), grpc.StatusCode.OK, ""))
    return items


def channels_of(resp: _pb.ListChannelsResponse) -> ServerChannels:
    return ServerChannels(
        channels=tuple(
            ChannelInfo(
                name=c.name,
                plugin=c.plugin,
                version=c.version,
                item_count=c.item_count,
                required=c.required,
                details=MappingProxyType(dict(c.details)),
            )
            for c in resp.channels
        ),
        config_generation=resp.config_generation,
    )


def _malformed(what: str) -> RecallCallError:
    return RecallCallError(grpc.StatusCode.INTERNAL, f"malformed response from the server: {what}")
