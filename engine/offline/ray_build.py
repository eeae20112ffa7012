"""``recall-engine build --ray ADDRESS``: the build's batch work on a Ray cluster.

:class:`RayExecutor` is a :class:`~recall_engine.sdk.channel.BuildExecutor`.
``map(fn, chunks)`` runs as a Ray Data pipeline: one row per chunk, ``map_batches``
with a callable class (:class:`ChunkWorker`) on a pool of actors, the results gathered
back into chunk order. The vector channels' ``encode_all`` (content, llm) hands it the
same chunks as a local build, so every chunk is encoded by the same graph over the same
items and the vectors match the local build's (tests/test_build_ray.py). Channels need
no Ray code: ``build_all`` makes the executor current around ``Channel.build``.

Shipping the encoder. ``fn`` is pickled (cloudpickle, with what it references: the
channel's ``OnnxModel`` or ``TextEncoder``, its vocabulary) into the object store
*once*; every actor fetches it when it starts. An :class:`OnnxModel` travels as its
files' bytes (the graph it serves, ``manifest.json``, the tokenizer if any), never as a
path: the actor writes them into a temporary folder of its own, opens the model from
there (the manifest's sha256 check included) and deletes the folder. So the workers
need no filesystem shared with the machine that runs the build (KubeRay pods have
none); they need recall-engine and the channels' plugins at the same version, which
one image for the driver and the Ray pods gives. The items travel the same way: each
chunk is one pickled row in the object store.

Failures. Actors are restarted (``max_restarts``) and their calls retried
(``max_task_retries``) when a worker process or a whole node dies: a chunk's result is a
pure function of its items, so a retried chunk gives the same vectors.
"""

from __future__ import annotations

import logging
import math
import pickle
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from recall_engine.config import ConfigError
from recall_engine.observability.logs import get_logger
from recall_engine.runtime.encoders import OnnxModel
from recall_engine.runtime.model_manifest import MANIFEST_FILE

log = get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: What to install for ``--ray``.
EXTRA = "recall-engine[ray]"


class RayBuildError(ConfigError):
    """``--ray`` cannot be used: Ray missing, no cluster at the address, a chunk
    function that cannot be sent to the workers."""


@dataclass(slots=True, frozen=True)
class RaySettings:
    """``address``: ``auto`` (the cluster this machine belongs to, or ``RAY_ADDRESS``),
    ``HOST:PORT`` of a head node, or ``ray://HOST:10001`` (Ray Client). ``actors``: the
    pool size (default: every CPU of the cluster but one, ``actor_cpus`` each);
    ``actor_cpus`` / ``actor_gpus``: what each actor reserves (a GPU actor runs its
    encoder on CUDA)."""

    address: str
    actors: int | None = None
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    max_restarts: int = 4
    max_task_retries: int = -1

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise RayBuildError(f"--ray-actors: must be at least 1, got {self.actors}")
        if self.actor_cpus <= 0 or self.actor_gpus < 0:
            raise RayBuildError(
                f"--ray-actor-cpus: must be above 0, got {self.actor_cpus} "
                f"(GPUs per actor: {self.actor_gpus})"
            )

    def pool_size(self, cluster_cpus: float) -> int:
        if self.actors is not None:
            return self.actors
        return max(1, math.floor(max(0.0, cluster_cpus - 1) / self.actor_cpus))


def import_ray() -> ModuleType:
    """``ray`` with Ray Data, or :class:`RayBuildError` naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError as e:
        raise RayBuildError(
            f"--ray needs Ray with Ray Data, which is not installed ({e}); "
            f"install the extra: pip install '{EXTRA}'"
        ) from None
    return ray


class RayExecutor:
    """Chunks on a Ray cluster; a context manager that connects (and disconnects) the
    driver, unless this process is already connected (then it leaves it connected)."""

    def __init__(self, settings: RaySettings) -> None:
        self.settings = settings
        self._ray: ModuleType | None = None
        self._owns_connection = False

    def __enter__(self) -> RayExecutor:
        ray = import_ray()
        if not ray.is_initialized():
            address = self.settings.address
            _check_reachable(address)
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RayBuildError(f"--ray {address}: no Ray cluster there ({e})") from None
            self._owns_connection = True
        ray.util.register_serializer(OnnxModel, serializer=pack_model, deserializer=unpack_model)
        ray.data.DataContext.get_current().enable_progress_bars = False
        self._ray = ray
        log.info("ray_connected", address=self.settings.address, resources=_cpu_gpu(ray))
        return self

    def __exit__(self, *exc: object) -> None:
        ray, self._ray = self._ray, None
        if ray is None:
            return
        ray.util.deregister_serializer(OnnxModel)
        if self._owns_connection:
            ray.shutdown()
            self._owns_connection = False

    def map(self, fn: Callable[[list[T]], R], chunks: Iterable[list[T]]) -> Iterator[R]:
        if self._ray is None:
            raise RuntimeError("RayExecutor.map outside `with RayExecutor(...)`")
        return self._run(self._ray, fn, list(chunks))

    def _run(
        self, ray: ModuleType, fn: Callable[[list[T]], R], chunks: list[list[T]]
    ) -> Iterator[R]:
        if not chunks:
            return
        s = self.settings
        try:
            fn_ref = ray.put(fn)  # kept alive here until the last chunk is back
        except (TypeError, AttributeError, ValueError, pickle.PicklingError) as e:
            raise RayBuildError(
                f"--ray: {fn!r} cannot be sent to Ray workers ({e}); build without --ray"
            ) from e
        size = min(len(chunks), s.pool_size(float(ray.cluster_resources().get("CPU", 1.0))))
        rows = [{"chunk": i, "items": pickle.dumps(c, protocol=5)} for i, c in enumerate(chunks)]
        with warnings.catch_warnings():
            # max_restarts / max_task_retries are "ray_remote_args", which Ray Data
            # deprecates for 2.64. Its default restarts actors forever; a chunk that
            # kills its worker every time should fail the build instead. Calls are
            # retried without a count: until Ray declares a lost node dead they fail
            # at once ("actor temporarily unavailable"), and a count would run out
            # in that window; max_restarts bounds them.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                ChunkWorker,
                batch_size=1,
                fn_constructor_args=([fn_ref], s.actor_cpus),
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size),
                num_cpus=s.actor_cpus,
                num_gpus=s.actor_gpus,
                max_restarts=s.max_restarts,
                max_task_retries=s.max_task_retries,
            )
        log.info("ray_map_started", chunks=len(chunks), actors=size)
        waiting: dict[int, R] = {}
        done = 0
        for row in dataset.iter_rows():
            waiting[int(row["chunk"])] = pickle.loads(row["result"])
            while done in waiting:
                yield waiting.pop(done)
                done += 1
        if done != len(chunks):
            raise RayBuildError(
                f"--ray: {len(chunks) - done} of {len(chunks)} chunks never came back"
            )
        del fn_ref


class ChunkWorker:
    """The callable class of the actor pool: fetches the chunk function from the object
    store once, then maps rows ``{chunk, items}`` to ``{chunk, result}``."""

    def __init__(self, fn_box: list[Any], cpus: float) -> None:
        import ray

        # read by unpack_model while ray.get below deserialises the function
        _worker["threads"] = max(1, round(cpus))
        _worker["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
        self._fn = ray.get(fn_box[0], timeout=600)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [
            pickle.dumps(self._fn(pickle.loads(blob)), protocol=5) for blob in batch["items"]
        ]
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"chunk": np.asarray(batch["chunk"]), "result": out}


_worker: dict[str, Any] = {"threads": 0, "device": "cpu"}


def pack_model(model: OnnxModel) -> dict[str, Any]:
    """An open model as the bytes of the files it was opened from (ray serializer)."""
    names = [MANIFEST_FILE, model.path.name]
    if model.manifest.tokenizer:
        names.append(model.manifest.tokenizer)
    optimized = model.manifest.variants.get("optimized")
    return {
        "files": {name: (model.folder / name).read_bytes() for name in names},
        "precision": model.precision,
        "prefer_optimized": optimized is not None and optimized.file == model.path.name,
    }


def unpack_model(packed: dict[str, Any]) -> OnnxModel:
    """:func:`pack_model`'s bytes opened as a model on this worker: written to a private
    temporary folder, opened (sha256-checked against the manifest), folder removed."""
    folder = Path(tempfile.mkdtemp(prefix="recall-engine-encoder-"))
    try:
        for name, data in packed["files"].items():
            (folder / name).write_bytes(data)
        return OnnxModel(
            folder,
            precision=packed["precision"],
            prefer_optimized=packed["prefer_optimized"],
            device=_worker["device"],
            intra_op_threads=_worker["threads"],
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_reachable(address: str) -> None:
    """Fail fast on a ``HOST:PORT`` (or ``ray://HOST:PORT``) nobody listens on:
    ``ray.init`` would wait for that head node for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or a form Ray itself resolves
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise RayBuildError(f"--ray {address}: no Ray head node there ({e})") from None


def _cpu_gpu(ray: ModuleType) -> dict[str, float]:
    resources = ray.cluster_resources()
    return {k: float(resources.get(k, 0.0)) for k in ("CPU", "GPU")}
