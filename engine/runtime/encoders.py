"""Encoders at serving time: ONNX Runtime sessions, exported models, text encoders and
a micro-batcher that turns concurrent single encode calls into one batched run.

No PyTorch here (DESIGN.md, decision 6): models come from an exported folder whose
``manifest.json`` says which files, inputs and variants exist.

Device and precision are chosen once, when a model is opened: ``device="auto"`` uses
CUDA when ONNX Runtime has the CUDA provider *and* the driver reports a GPU (probed
with ctypes, so a CPU machine with ``onnxruntime-gpu`` installed stays quiet), else the
CPU; ``precision="auto"`` serves the fp16 variant on GPU and, on CPU, the int8 variant
when its measured agreement with fp32 is good enough (:data:`INT8_MIN_COSINE`), else
fp32 (:func:`choose_file`). TensorRT is
opt-in (``tensorrt=True`` or ``RECALL_ENGINE_TENSORRT=1``): without optimisation
profiles it rebuilds its engine for every new input shape, which free-text lengths
make constant.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import onnxruntime as ort

from recall_engine.observability import tracing
from recall_engine.observability.logs import get_logger
from recall_engine.observability.metrics import (
    ENCODER_BATCH_SIZE,
    ENCODER_BATCHER_RESTARTS,
    ENCODER_EXPIRED,
    ENCODER_QUEUE_SECONDS,
    ENCODER_SECONDS,
)
from recall_engine.runtime import native_time
from recall_engine.runtime.files import sha256_file
from recall_engine.runtime.model_manifest import ManifestError, ModelManifest
from recall_engine.runtime.tokenizer import TextTokenizer

log = get_logger(__name__)

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "int8", "fp16"]
GraphOptimization = Literal["all", "extended", "basic", "disable"]

_GRAPH_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


# --------------------------------------------------------------------------- sessions


@functools.cache
def cuda_device_count() -> int:
    """GPUs the CUDA driver reports (0 without a driver); no CUDA runtime needed."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def resolve_device(device: Device) -> Literal["cpu", "cuda"]:
    """``auto`` -> ``cuda`` when ONNX Runtime can have CUDA and a GPU is present."""
    if device == "auto":
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        return "cuda" if has_cuda and cuda_device_count() > 0 else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    return device


def create_session(
    model_path: str | os.PathLike[str],
    *,
    device: Device = "auto",
    intra_op_threads: int = 0,
    graph_optimization: GraphOptimization = "all",
    tensorrt: bool | None = None,
) -> ort.InferenceSession:
    """Open an ONNX Runtime session with providers chosen for ``device`` and log them.

    ``intra_op_threads=0`` lets ONNX Runtime use one thread per physical core. Raises
    ``RuntimeError`` when ``device="cuda"`` was asked for and CUDA could not be used;
    with ``"auto"`` a failed CUDA provider falls back to the CPU (logged).
    """
    if graph_optimization not in _GRAPH_LEVELS:
        raise ValueError(
            f"graph_optimization must be one of {sorted(_GRAPH_LEVELS)}, not {graph_optimization!r}"
        )
    target = resolve_device(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = _GRAPH_LEVELS[graph_optimization]
    options.intra_op_num_threads = int(intra_op_threads)
    options.log_severity_level = 3  # provider fallbacks are logged below, once, as events
    # No spinning: by default ONNX Runtime's pool threads busy-wait for more work after
    # each run, which on a serving host steals the cores the other requests' channels,
    # the event loop and gRPC need. Measured on the demo (2 cores, concurrency 16, one
    # request in four with text): +28 % requests/s, -40 % server CPU per request; at
    # concurrency 1 the p50 moved by under 5 % and the p99 improved
    # (docs/reports/2026-12-05-issue-14-speed-per-core.md, "The default install
    # against an echo server").
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers: list[Any] = ["CPUExecutionProvider"]
    if target == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
        if _tensorrt_wanted(tensorrt):
            providers.insert(
                0,
                (
                    "TensorrtExecutionProvider",
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": os.environ.get(
                            "RECALL_ENGINE_TRT_CACHE",
                            os.path.join(tempfile.gettempdir(), "recall_trt"),
                        ),
                    },
                ),
            )
    session = ort.InferenceSession(os.fspath(model_path), sess_options=options, providers=providers)
    chosen = session.get_providers()
    if target == "cuda" and "CUDAExecutionProvider" not in chosen:
        if device == "cuda":
            raise RuntimeError(
                f"device='cuda' but ONNX Runtime could not create the CUDA "
                f"provider for {model_path} (got {chosen}); check the CUDA "
                "and cuDNN libraries onnxruntime-gpu needs, or use device='cpu'"
            )
        log.warning("onnx_cuda_fallback", model=os.fspath(model_path), providers=chosen)
    log.info(
        "onnx_session_created",
        model=os.fspath(model_path),
        providers=chosen,
        device=session_device(session),
        graph_optimization=graph_optimization,
        intra_op_threads=intra_op_threads,
    )
    return session


def session_device(session: ort.InferenceSession) -> Literal["cpu", "cuda"]:
    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    return "cuda" if gpu & set(session.get_providers()) else "cpu"


def _tensorrt_wanted(tensorrt: bool | None) -> bool:
    if tensorrt is None:
        tensorrt = os.environ.get("RECALL_ENGINE_TENSORRT", "") in ("1", "true", "yes")
    return tensorrt and "TensorrtExecutionProvider" in ort.get_available_providers()


# --------------------------------------------------------------------------- models


def choose_file(
    manifest: ModelManifest, precision: Precision, device: str, *, prefer_optimized: bool = False
) -> tuple[str, str]:
    """``(file, precision)`` to serve. ``auto`` is fp16 on GPU (when exported); on CPU
    it is int8 when the export ships it and measured its mean cosine to fp32 on real
    sentences at :data:`INT8_MIN_COSINE` or more (MiniLM: 0.992, at about half the CPU
    time of fp32; docs/reports/2026-12-05-issue-14-speed-per-core.md, "The default
    install against an echo server"), else fp32. fp32 uses the fused ``optimized``
    graph only with ``prefer_optimized``.

    Off by default: ONNX Runtime applies equivalent fusions itself when it loads the plain
    graph on CPU, and the offline-fused MiniLM measured no faster (one thread: 11.2 vs
    11.3 ms at batch 1, 415 vs 465 ms at batch 64, plain first).
    """
    if precision == "auto":
        precision = _auto_precision(manifest, device)
    if precision == "fp32":
        if prefer_optimized and "optimized" in manifest.variants:
            return manifest.variants["optimized"].file, "fp32"
        return manifest.file, "fp32"
    if precision not in ("int8", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'int8' or 'fp16', not {precision!r}")
    if precision not in manifest.variants:
        raise ManifestError(
            f"no {precision} variant in this export (has: "
            f"{sorted(manifest.variants) or 'none'}); re-export with --{precision}"
        )
    return manifest.variants[precision].file, precision


INT8_MIN_COSINE = 0.99
"""The least mean cosine to fp32 (measured at export on real sentences) at which
``precision="auto"`` serves an int8 variant on CPU."""


def _auto_precision(manifest: ModelManifest, device: str) -> Precision:
    if device == "cuda":
        return "fp16" if "fp16" in manifest.variants else "fp32"
    int8 = manifest.variants.get("int8")
    agreement = int8.cosine_vs_fp32_mean if int8 is not None else None
    return "int8" if agreement is not None and agreement >= INT8_MIN_COSINE else "fp32"


class OnnxModel:
    """One exported model folder opened for serving.

    ``run`` is thread-safe (ONNX Runtime sessions are); open once, share everywhere.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        precision: Precision = "auto",
        device: Device = "auto",
        intra_op_threads: int = 0,
        graph_optimization: GraphOptimization = "all",
        prefer_optimized: bool = False,
        verify_hash: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = ModelManifest.read(self.folder)
        target = resolve_device(device)
        file, self.precision = choose_file(
            self.manifest, precision, target, prefer_optimized=prefer_optimized
        )
        self.path = self.folder / file
        if verify_hash:
            self._verify(file)
        self.session = create_session(
            self.path,
            device=device,
            intra_op_threads=intra_op_threads,
            graph_optimization=graph_optimization,
        )
        self.device = session_device(self.session)
        if (
            self.device == "cpu"
            and target == "cuda"
            and precision == "auto"
            and self.precision == "fp16"
        ):
            # CUDA was expected but did not come up: fp16 on the CPU is slow; serve fp32.
            file, self.precision = choose_file(
                self.manifest, "fp32", "cpu", prefer_optimized=prefer_optimized
            )
            self.path = self.folder / file
            self.session = create_session(
                self.path,
                device="cpu",
                intra_op_threads=intra_op_threads,
                graph_optimization=graph_optimization,
            )
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._dtypes = {spec.name: np.dtype(spec.dtype) for spec in self.manifest.inputs}
        self._validate()
        self._io_binding = self.device == "cuda"

    def _verify(self, file: str) -> None:
        if file == self.manifest.file:
            want, data_files = self.manifest.model_sha256, self.manifest.data_files
        else:
            variant = next(v for v in self.manifest.variants.values() if v.file == file)
            want, data_files = variant.sha256, variant.data_files
        if sha256_file(self.path) != want:
            raise ManifestError(
                f"{self.path}: sha256 differs from the manifest; the file "
                "was replaced after export (re-export, or copy both)"
            )
        for name, digest in data_files.items():  # its weights kept beside it
            path = self.folder / name
            if not path.is_file() or sha256_file(path) != digest:
                raise ManifestError(
                    f"{path}: missing, or its sha256 differs from the manifest (the "
                    "weights of the model file; re-export, or copy the folder whole)"
                )

    def _validate(self) -> None:
        declared = {spec.name: spec for spec in self.manifest.inputs}
        actual = {i.name: i for i in self.session.get_inputs()}
        if set(declared) != set(actual):
            raise ManifestError(
                f"{self.path}: manifest inputs {sorted(declared)} != graph inputs {sorted(actual)}"
            )
        for name, spec in declared.items():
            got = _ORT_TYPES.get(actual[name].type, actual[name].type)
            if got != spec.dtype or len(actual[name].shape) != len(spec.shape):
                raise ManifestError(
                    f"{self.path}: input {name!r} is {got}{list(actual[name].shape)} in the "
                    f"graph but {spec.dtype}{list(spec.shape)} in the manifest"
                )

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run on named inputs (cast to the manifest's dtypes); return the first output."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(
                f"missing model inputs {missing}; this model takes {list(self.input_names)}"
            )
        arrays = {
            n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self.input_names
        }
        t0 = time.perf_counter()
        try:
            if self._io_binding:
                try:
                    return self._run_bound(arrays)
                except Exception as exc:  # noqa: BLE001 - any binding failure: plain run
                    self._io_binding = False
                    log.warning("onnx_io_binding_disabled", model=str(self.path), error=str(exc))
            out = self.session.run(self.output_names[:1], arrays)[0]
            return out if out.dtype != np.float16 else out.astype(np.float32)
        finally:
            native_time.add(time.perf_counter() - t0)  # ONNX Runtime runs without the GIL

    def _run_bound(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Bind CPU inputs and a CPU output so ONNX Runtime copies once each way and
        allocates the output where the caller reads it."""
        binding = self.session.io_binding()
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self.output_names[0])
        self.session.run_with_iobinding(binding)
        out = binding.copy_outputs_to_cpu()[0]
        return out if out.dtype != np.float16 else out.astype(np.float32)


def _one_text_per_run(
    folder: str | os.PathLike[str], precision: Precision, device: Device, prefer_optimized: bool
) -> bool:
    """Whether :class:`TextEncoder` will run ``folder``'s model one text at a time: its
    int8 file on the CPU (see ``TextEncoder.max_batch``)."""
    target = resolve_device(device)
    manifest = ModelManifest.read(Path(folder))
    _, chosen = choose_file(manifest, precision, target, prefer_optimized=prefer_optimized)
    return chosen == "int8" and target == "cpu"


class TextEncoder:
    """Texts -> float32 embeddings ``[B, dim]`` with an exported sentence encoder.

    Texts are sorted by length and run in sub-batches of ``max_batch`` so that a long
    text does not pad a whole batch of short ones. ``intra_op_threads=0`` chooses: one
    thread for an int8 model on the CPU (it runs one text at a time), ONNX Runtime's
    one per core otherwise.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        precision: Precision = "auto",
        device: Device = "auto",
        max_batch: int = 32,
        intra_op_threads: int = 0,
        graph_optimization: GraphOptimization = "all",
        prefer_optimized: bool = False,
    ) -> None:
        if intra_op_threads == 0 and _one_text_per_run(folder, precision, device, prefer_optimized):
            # One short text per run: ONNX Runtime's pool hands each operator to its
            # threads and waits for them, which costs more than the operator. MiniLM int8,
            # one query text, 2-vCPU host: 2.29 ms of CPU (1.90 ms wall) per text with one
            # thread per core, 1.38 ms (1.38 ms) with one
            # (docs/reports/2026-12-05-issue-14-speed-per-core.md, "One ONNX Runtime thread
            # for int8 MiniLM").
            intra_op_threads = 1
        self.model = OnnxModel(
            folder,
            precision=precision,
            device=device,
            intra_op_threads=intra_op_threads,
            graph_optimization=graph_optimization,
            prefer_optimized=prefer_optimized,
        )
        manifest = self.model.manifest
        if manifest.kind != "sentence-encoder" or manifest.tokenizer is None:
            raise ManifestError(f"{folder}: a {manifest.kind!r} model is not a text encoder")
        assert manifest.dims is not None and manifest.max_length is not None
        self.tokenizer = TextTokenizer.from_file(
            self.model.folder / manifest.tokenizer, manifest.max_length
        )
        self.dim = manifest.dims
        # An int8 graph quantises its activations dynamically, one scale per tensor: a
        # text's vector would depend on its batch-mates (and their padding), so answers
        # would change with concurrent traffic. One text per run keeps every vector the
        # text's own, and int8 one at a time still outruns fp32 batched on CPU
        # (docs/reports/2026-12-05-issue-14-speed-per-core.md, "The default install
        # against an echo server").
        self.max_batch = 1 if self.model.precision == "int8" else max(1, int(max_batch))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` in their order, float32 ``[len(texts), dim]``. With
        tracing on, in a ``recall.encoder.encode`` span when called inside one (a channel
        call), naming the encoder (``recall.encoder``) when :meth:`EncoderStats.run`
        runs it; the micro-batcher's own thread has none and makes none."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts; wrap one text in a list")
        if tracing.ENABLED:
            attributes: dict[str, Any] = {
                "recall.encoder.model": str(self.model.path),
                "recall.encoder.texts": len(texts),
            }
            name = _RUNNING_ENCODER.get()
            if name is not None:
                attributes["recall.encoder"] = name
            with tracing.child_span("recall.encoder.encode", attributes):
                return self._encode(texts)
        return self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.max_batch):
            rows = order[start : start + self.max_batch]
            ids, mask = self.tokenizer.encode([texts[i] for i in rows])
            out[rows] = self.model.run({"input_ids": ids, "attention_mask": mask})
        return out

    def warmup(
        self, batch_sizes: Sequence[int] = (1, 8, 32), lengths: Sequence[int] = (16, 64)
    ) -> None:
        """Run each batch size at each token length once, so the first requests do not
        pay for ONNX Runtime's lazy allocations (and, on GPU, kernel selection)."""
        for length in lengths:
            words = max(1, min(length, self.tokenizer.max_length) - 2)
            text = " ".join(["recall"] * words)
            for batch in batch_sizes:
                self.encode([text] * batch)
        log.info(
            "encoder_warmed_up",
            model=str(self.model.path),
            batch_sizes=list(batch_sizes),
            lengths=list(lengths),
        )


# --------------------------------------------------------------------------- batching

T = TypeVar("T")

#: The ``time.perf_counter()`` instant by which the work running on this thread must be
#: done, or None. The engine sets it around each channel call (the channel's own
#: timeout, counted from when the call started, inside the request's deadline), so that
#: code below a channel (e.g. :meth:`MicroBatcher.submit`) stops waiting once nobody
#: wants the answer any more, without every plugin threading a deadline through.
CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "recall_engine_call_deadline", default=None
)

# How often a caller without a deadline checks that the batching thread still lives.
_LIVENESS_POLL_S = 0.5


class BatcherDied(RuntimeError):
    """The batching thread stopped; the items of the batch it held failed with this."""


R = TypeVar("R")

#: The name of the encoder that :meth:`EncoderStats.run` is running on this thread, set
#: only while tracing is on: the ``recall.encoder`` attribute of the encoder's span.
_RUNNING_ENCODER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "recall_engine_running_encoder", default=None
)


class EncoderStats:
    """The ``recall_encoder_*`` batch series of one encoder (label ``encoder=name``, the
    channel's name for a channel's text encoder): what :class:`MicroBatcher` records for
    each batch it runs, and what :meth:`run` records for an encoder run on the caller's
    own thread, so both paths show alike (the dashboard's "Encoders" row)."""

    __slots__ = ("name", "_batch_size", "_queue_seconds", "_seconds")

    def __init__(self, name: str) -> None:
        self.name = name
        self._batch_size = ENCODER_BATCH_SIZE.labels(name)
        self._queue_seconds = ENCODER_QUEUE_SECONDS.labels(name)
        self._seconds = ENCODER_SECONDS.labels(name)

    def batch_started(self, size: int, queued: Sequence[float] | None = None) -> None:
        """A batch of ``size`` items starts; ``queued``: each item's wait for it, in
        seconds (None: none waited, as on the caller's thread)."""
        if queued is None:
            for _ in range(size):
                self._queue_seconds.observe(0.0)
        else:
            for seconds in queued:
                self._queue_seconds.observe(seconds)
        self._batch_size.observe(size)

    def batch_ran(self, seconds: float) -> None:
        """The batch's run took ``seconds`` (also when it raised)."""
        self._seconds.observe(seconds)

    def run(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> R:
        """``fn(items)`` on this thread, recorded as one batch of ``len(items)`` that
        waited 0 s (what a channel without a micro-batcher, or ``recall_batch``, does
        with its texts). With tracing on, the ``recall.encoder.encode`` span of a
        :class:`TextEncoder` run inside names this encoder (``recall.encoder``)."""
        if tracing.ENABLED:
            token = _RUNNING_ENCODER.set(self.name)
            try:
                return self._run(fn, items)
            finally:
                _RUNNING_ENCODER.reset(token)
        return self._run(fn, items)

    def _run(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> R:
        started = time.perf_counter()
        self.batch_started(len(items))
        try:
            return fn(items)
        finally:
            self.batch_ran(time.perf_counter() - started)


@dataclass(slots=True)
class _Pending(Generic[T]):
    item: T
    future: Future[Any]
    deadline: float | None = None  # perf_counter instant; None: no deadline
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0  # when its batch started running
    batch: int = 0  # the size of that batch


class MicroBatcher(Generic[T]):
    """Gathers concurrent :meth:`submit` calls into one ``fn(items)`` call.

    A background thread waits for the first item, then flushes when ``max_batch`` items
    are queued or ``max_delay_ms`` has passed since that first item, whichever comes
    first. ``fn`` returns one result per item (an array's rows, or a list); each caller
    gets its own. When ``fn`` raises, every caller of that batch gets the exception and
    the batcher goes on with the next batch. Metrics are labelled ``encoder=name``
    (:class:`EncoderStats`, :attr:`stats`).

    Deadlines: an item whose caller gave up (timed out, cancelled its future) or whose
    deadline passed while it was queued is dropped before the batch runs, so work nobody
    waits for is never started. A caller never waits past its deadline (``timeout``, or
    :data:`CALL_DEADLINE` when the engine set one), and a caller without one never hangs
    on a dead thread: the thread's liveness is checked on every :meth:`submit` and while
    waiting, and a dead thread is logged, counted and restarted.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Any],
        *,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        name: str = "encoder",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._fn = fn
        self.max_batch = max_batch
        self.max_delay = max(0.0, max_delay_ms) / 1000.0
        self.name = name
        self._queue: list[_Pending[T]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.stats = EncoderStats(name)
        self._expired = ENCODER_EXPIRED.labels(name)
        self._restarts = ENCODER_BATCHER_RESTARTS.labels(name)
        self.restarts = 0
        self._thread = self._start_thread()

    @property
    def alive(self) -> bool:
        """Whether the batching thread is running."""
        return self._thread.is_alive()

    def submit(self, item: T, timeout: float | None = None) -> Any:
        """Block until ``item``'s result is ready and return it (thread-safe).

        ``timeout`` (seconds; default: what :data:`CALL_DEADLINE` leaves, else none)
        bounds the wait: past it the item is withdrawn if it has not started and
        ``TimeoutError`` is raised. Raises :class:`BatcherDied` when the thread died
        holding this item's batch.

        With tracing on, the wait (queue and batch run) is a ``recall.encoder.wait``
        span under the current one, with the batch's size and this item's queue time."""
        if tracing.ENABLED:
            return self._traced_submit(item, timeout)
        return self._wait(self._enqueue(item, _deadline_of(timeout)))

    def _traced_submit(self, item: T, timeout: float | None) -> Any:
        with tracing.child_span("recall.encoder.wait", {"recall.encoder": self.name}) as span:
            pending = self._enqueue(item, _deadline_of(timeout))
            try:
                return self._wait(pending)
            finally:
                if pending.batch:  # it ran (else the span records why not)
                    span.set_attributes(
                        {
                            "recall.encoder.batch_size": pending.batch,
                            "recall.encoder.queue_ms": (pending.started_at - pending.queued_at)
                            * 1000,
                        }
                    )

    def _wait(self, pending: _Pending[T]) -> Any:
        """Block until ``pending`` is done or its deadline passes (see :meth:`submit`)."""
        deadline, future = pending.deadline, pending.future
        while True:
            wait = _LIVENESS_POLL_S
            if deadline is not None:
                wait = min(wait, deadline - time.perf_counter())
                if wait <= 0:
                    break
            try:
                return future.result(wait)
            except FutureTimeout:
                self._ensure_alive()
            except CancelledError:  # dropped by the batcher: the deadline passed
                break
        future.cancel()  # withdrawn unless already running (counted when dropped)
        raise TimeoutError(f"MicroBatcher {self.name!r}: no result within the caller's deadline")

    def submit_future(self, item: T, *, deadline: float | None = None) -> Future[Any]:
        """Queue ``item``; the future resolves with its result (for asyncio callers:
        ``asyncio.wrap_future``). Cancel the future to withdraw an item not yet started;
        ``deadline`` (a ``time.perf_counter()`` instant) drops it unstarted once passed."""
        return self._enqueue(item, deadline).future

    def _enqueue(self, item: T, deadline: float | None) -> _Pending[T]:
        pending: _Pending[T] = _Pending(item, Future(), deadline)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"MicroBatcher {self.name!r} is closed")
            self._queue.append(pending)
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                self._cond.notify()
        self._ensure_alive()
        return pending

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the thread after the batch in flight; fail what is still queued."""
        with self._cond:
            self._closed = True
            left, self._queue = self._queue, []
            self._cond.notify_all()
        for pending in left:
            _fail(pending, RuntimeError(f"MicroBatcher {self.name!r} closed"))
        self._thread.join(timeout)

    def __enter__(self) -> MicroBatcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name=f"microbatch-{self.name}", daemon=True)
        thread.start()
        return thread

    def _ensure_alive(self) -> None:
        """Restart the batching thread if it died (queued items are then served)."""
        if self._thread.is_alive():
            return
        with self._cond:
            if self._closed or self._thread.is_alive():
                return
            self.restarts += 1
            self._restarts.inc()
            log.error("microbatcher_restarted", encoder=self.name, restarts=self.restarts)
            self._thread = self._start_thread()

    def _next_batch(self) -> list[_Pending[T]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._queue[0].queued_at + self.max_delay
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            return batch

    def _loop(self) -> None:
        batch: list[_Pending[T]] | None = []
        try:
            while (batch := self._next_batch()) is not None:
                self._run(batch)
                batch = []
        except BaseException as exc:
            # Only a BaseException that is not an Exception gets here (SystemExit,
            # KeyboardInterrupt...): the thread ends, so nobody may wait on its batch.
            log.error("microbatcher_died", encoder=self.name, error=f"{type(exc).__name__}: {exc}")
            died = BatcherDied(f"MicroBatcher {self.name!r}: batching thread died ({exc!r})")
            for pending in batch or ():
                _fail(pending, died)
            # the thread ends here, as it would have: the next submit restarts it

    def _live(self, batch: list[_Pending[T]]) -> list[_Pending[T]]:
        """The items still wanted, marked running (no longer cancellable): an item whose
        caller cancelled it or whose deadline passed is dropped unstarted."""
        now = time.perf_counter()
        live = []
        for pending in batch:
            if pending.deadline is not None and pending.deadline <= now:
                pending.future.cancel()
            if pending.future.set_running_or_notify_cancel():
                live.append(pending)
            else:
                self._expired.inc()
        return live

    def _run(self, batch: list[_Pending[T]]) -> None:
        batch = self._live(batch)
        if not batch:
            return
        started = time.perf_counter()
        for pending in batch:
            pending.started_at, pending.batch = started, len(batch)
        self.stats.batch_started(len(batch), [started - p.queued_at for p in batch])
        try:
            results = self._fn([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{self.name}: fn returned {len(results)} results for {len(batch)} items"
                )
            rows = [
                row.copy() if isinstance(row, np.ndarray) else row
                for row in (results[i] for i in range(len(batch)))
            ]
        except Exception as exc:  # noqa: BLE001 - delivered to every caller
            for pending in batch:
                _fail(pending, exc)
            return
        finally:
            self.stats.batch_ran(time.perf_counter() - started)
        for pending, row in zip(batch, rows, strict=True):
            pending.future.set_result(row)


def _deadline_of(timeout: float | None) -> float | None:
    """An absolute ``perf_counter`` deadline: ``timeout`` from now, else the engine's."""
    if timeout is not None:
        return time.perf_counter() + timeout
    return CALL_DEADLINE.get()


def _fail(pending: _Pending[Any], exc: BaseException) -> None:
    """Fail ``pending`` unless it is already done (its caller may have cancelled it)."""
    try:
        pending.future.set_exception(exc)
    except InvalidStateError:
        pass
