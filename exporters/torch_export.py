"""Export a PyTorch module to ONNX and prove it computes the same thing.

``export_torch`` puts the module in eval mode, exports it with named inputs and
outputs and dynamic batch (and sequence) axes, then runs PyTorch and ONNX Runtime on
*fresh* random inputs whose batch sizes and sequence lengths differ from the example's,
and raises :class:`ParityError` with the figures when they disagree. Only then is
``manifest.json`` written, so serving never loads an export that failed its check.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``)
is the default although torch 2.9+ defaults to the dynamo exporter, because on this
project's models it is the one that works best with what comes after it: on
all-MiniLM-L6-v2 ONNX Runtime's transformer optimizer fuses 6 Attention, 12
SkipLayerNormalization and the EmbedLayerNormalization nodes in its graph and none of
them in the dynamo graph; it exports in ~2 s instead of ~7 s; and ``dynamic_axes``
apply as given, without torch.export's 0/1 specialisation of example dims. Tracing
bakes Python control flow into the graph silently, which is exactly what the parity
check on other shapes catches. ``exporter="dynamo"`` switches to the new exporter.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch

from recall_engine.exporters.external_data import externalize_weights
from recall_engine.exporters.manifest import (
    MANIFEST_FILE,
    ModelManifest,
    Parity,
    TensorSpec,
    sha256_file,
)
from recall_engine.observability.logs import get_logger

log = get_logger(__name__)

MODEL_FILE = "model.onnx"
DEFAULT_PARITY_CASES: tuple[tuple[int, int], ...] = ((1, 5), (3, 17), (7, 2))
Exporter = Literal["torchscript", "dynamo"]
DynamicAxes = Mapping[str, Mapping[int, str]]


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's beyond tolerance (or it failed to
    run an input shape PyTorch handles). Carries the figures."""

    def __init__(
        self,
        message: str,
        *,
        max_abs: float = float("nan"),
        max_rel: float = float("nan"),
        cases: Sequence[Sequence[int]] = (),
    ) -> None:
        super().__init__(message)
        self.max_abs = max_abs
        self.max_rel = max_rel
        self.cases = tuple(tuple(c) for c in cases)


@dataclass(slots=True)
class _Errors:
    """Running worst-case figures over every compared output of every case."""

    atol: float
    rtol: float
    max_abs: float = 0.0
    max_rel: float = 0.0
    violations: int = 0
    compared: int = 0

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        got = got.astype(np.float64)
        want = want.astype(np.float64)
        both_nan = np.isnan(got) & np.isnan(want)
        diff = np.where(both_nan, 0.0, np.abs(got - want))
        diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
        scale = np.abs(want)
        significant = scale > self.atol
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
        if significant.any():
            self.max_rel = max(self.max_rel, float((diff[significant] / scale[significant]).max()))
        self.violations += int((diff > self.atol + self.rtol * np.nan_to_num(scale)).sum())
        self.compared += diff.size


def export_torch(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    out_dir: str | os.PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    opset: int = 17,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    parity_cases: Sequence[tuple[int, int]] = DEFAULT_PARITY_CASES,
    exporter: Exporter = "torchscript",
    seed: int = 0,
) -> ModelManifest:
    """Export ``module`` to ``out_dir/model.onnx``, check parity, write ``manifest.json``.

    ``dynamic_axes`` defaults to dim 0 ``"batch"`` on every input and output and dim 1
    ``"sequence"`` on integer and bool inputs of rank >= 2 (ids and their masks).
    Each ``(batch, sequence)`` in ``parity_cases`` draws fresh inputs: integers uniformly
    in ``[0, max of the example tensor]``, floats from N(0, 1), bool masks all true; an
    axis named ``"batch"`` takes the case's batch size and any other named axis its
    sequence length. Raises :class:`ParityError` when any element differs by more than
    ``atol + rtol * |torch|`` (``numpy.isclose``'s rule) or ONNX Runtime fails on a case.
    """
    module = module.eval()
    example_inputs = tuple(example_inputs)
    names_in = list(input_names or _forward_arg_names(module, len(example_inputs)))
    with torch.inference_mode():
        example_out = _flatten(module(*example_inputs))
    names_out = list(
        output_names
        or (
            ["output"]
            if len(example_out) == 1
            else [f"output_{i}" for i in range(len(example_out))]
        )
    )
    axes = (
        _as_axes(dynamic_axes)
        if dynamic_axes is not None
        else default_dynamic_axes(dict(zip(names_in, example_inputs, strict=True)), names_out)
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # a stale manifest must not bless a new graph
    model_path = out / MODEL_FILE
    trace_warnings = export_graph(
        module,
        example_inputs,
        model_path,
        input_names=names_in,
        output_names=names_out,
        dynamic_axes=axes,
        opset=opset,
        exporter=exporter,
    )
    try:
        errors, cases, seen = check_parity(
            module,
            model_path,
            example_inputs,
            names_in,
            axes,
            parity_cases=parity_cases,
            atol=atol,
            rtol=rtol,
            seed=seed,
        )
    except ParityError as exc:
        for message in trace_warnings:
            exc.add_note(f"exporter warning: {message}")
        raise
    data_files = externalize_weights(model_path)
    inputs, outputs = graph_specs(model_path)
    seen.append([tuple(t.shape) for t in example_out])
    outputs = tuple(
        settle_dims(spec, axes.get(spec.name, {}), [s[i] for s in seen])
        for i, spec in enumerate(outputs)
    )
    last = outputs[0].shape[-1] if outputs[0].shape else None
    manifest = ModelManifest(
        kind="torch",
        file=MODEL_FILE,
        inputs=inputs,
        outputs=outputs,
        dims=last if isinstance(last, int) else None,
        opset=opset,
        source_hash=state_dict_sha256(module),
        model_sha256=sha256_file(model_path),
        parity=Parity(
            max_abs=errors.max_abs, max_rel=errors.max_rel, cases=cases, atol=atol, rtol=rtol
        ),
        producer=producer_versions(exporter),
        data_files=data_files,
    )
    manifest.write(out)
    log.info(
        "onnx_exported",
        path=str(model_path),
        max_abs=errors.max_abs,
        max_rel=errors.max_rel,
        cases=[list(c) for c in cases],
    )
    return manifest


def default_dynamic_axes(
    inputs: Mapping[str, torch.Tensor], output_names: Sequence[str]
) -> dict[str, dict[int, str]]:
    """Dim 0 ``batch`` everywhere; dim 1 ``sequence`` on int/bool inputs of rank >= 2."""
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in inputs.items():
        axes[name] = {0: "batch"} if tensor.ndim >= 1 else {}
        if tensor.ndim >= 2 and not tensor.dtype.is_floating_point and not tensor.is_complex():
            axes[name][1] = "sequence"
    for name in output_names:
        axes[name] = {0: "batch"}
    return axes


def export_graph(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: DynamicAxes,
    opset: int,
    exporter: Exporter,
) -> list[str]:
    """Write the ONNX graph (weights inside the file, not as external data); return the
    exporter's warnings (tracer warnings explain most parity failures), also logged."""
    axes = {k: dict(v) for k, v in dynamic_axes.items() if v}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The legacy exporter announces its own deprecation on every call; the module
        # docstring says why it is still the default.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        with torch.inference_mode(False), torch.no_grad():
            if exporter == "dynamo":
                torch.onnx.export(
                    module,
                    example_inputs,
                    str(path),
                    dynamo=True,
                    external_data=False,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=axes,
                    opset_version=opset,
                )
            elif exporter == "torchscript":
                torch.onnx.export(
                    module,
                    example_inputs,
                    str(path),
                    dynamo=False,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=axes,
                    opset_version=opset,
                    do_constant_folding=True,
                )
            else:
                raise ValueError(f"exporter must be 'torchscript' or 'dynamo', not {exporter!r}")
    messages = list(
        dict.fromkeys(f"{Path(w.filename).name}:{w.lineno}: {w.message}" for w in caught)
    )
    for message in messages:
        log.info("onnx_export_warning", message=message)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        if exporter != "dynamo":
            raise
        # Seen with torch 2.13: Split(num_outputs), an opset-18 attribute, left in a
        # graph converted down to opset 17.
        raise ValueError(
            f"the dynamo exporter wrote an invalid opset-{opset} graph ({exc}); "
            "it targets opset 18+: pass opset=18 or use the torchscript "
            "exporter"
        ) from exc
    return messages


def check_parity(
    module: torch.nn.Module,
    model_path: Path,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    dynamic_axes: DynamicAxes,
    *,
    parity_cases: Sequence[tuple[int, int]],
    atol: float,
    rtol: float,
    seed: int = 0,
) -> tuple[_Errors, tuple[tuple[int, int], ...], list[list[tuple[int, ...]]]]:
    """Compare PyTorch with ONNX Runtime (CPU) on fresh inputs for each case; return
    the worst errors, the cases and the output shapes seen in each case."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing case is raised as ParityError, not logged
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    generator = torch.Generator().manual_seed(seed)
    errors = _Errors(atol=atol, rtol=rtol)
    cases = tuple((int(b), int(s)) for b, s in parity_cases)
    seen: list[list[tuple[int, ...]]] = []
    for batch, seq in cases:
        feeds = {
            name: fresh_like(x, dynamic_axes.get(name, {}), batch, seq, generator)
            for name, x in zip(input_names, example_inputs, strict=True)
        }
        with torch.inference_mode():
            want = [t.detach().cpu().numpy() for t in _flatten(module(*feeds.values()))]
        try:
            got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ParityError(
                f"ONNX Runtime failed on batch={batch} sequence={seq} where PyTorch ran: "
                f"{exc}. The export baked in a shape (Python control flow on sizes?).",
                cases=cases,
            ) from exc
        if len(got) != len(want):
            raise ParityError(
                f"ONNX graph has {len(got)} outputs, PyTorch returned {len(want)}", cases=cases
            )
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if g.shape != w.shape:
                raise ParityError(
                    f"output {i} shape {g.shape} != PyTorch {w.shape} on batch={batch} "
                    f"sequence={seq}",
                    cases=cases,
                )
            errors.add(g, w)
        seen.append([tuple(w.shape) for w in want])
    if errors.violations:
        raise ParityError(
            f"ONNX Runtime disagrees with PyTorch on {errors.violations} of "
            f"{errors.compared} values: max_abs={errors.max_abs:.3g} "
            f"max_rel={errors.max_rel:.3g} (atol={atol}, rtol={rtol}) over cases "
            f"(batch, sequence) {list(cases)}",
            max_abs=errors.max_abs,
            max_rel=errors.max_rel,
            cases=cases,
        )
    return errors, cases, seen


def fresh_like(
    example: torch.Tensor, axes: Mapping[int, str], batch: int, seq: int, generator: torch.Generator
) -> torch.Tensor:
    """A new tensor shaped like ``example`` with its dynamic axes resized."""
    shape = [
        batch if axes.get(i) == "batch" else seq if i in axes else n
        for i, n in enumerate(example.shape)
    ]
    if example.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    if example.dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(example.dtype)
    high = int(example.max()) if example.numel() else 0
    return torch.randint(0, max(high, 0) + 1, shape, generator=generator, dtype=example.dtype)


def graph_specs(model_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Names, dtypes and (symbolic) shapes of the graph's inputs and outputs."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape = tuple(
            d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
            for d in tensor.shape.dim
        )
        return TensorSpec(name=value.name, dtype=dtype, shape=shape)

    inputs = tuple(spec(v) for v in graph.input if v.name not in initializers)
    return inputs, tuple(spec(v) for v in graph.output)


def settle_dims(
    spec: TensorSpec, axes: Mapping[int, str], shapes: Sequence[tuple[int, ...]]
) -> TensorSpec:
    """The TorchScript exporter loses some static output dims (``Divoutput_dim_1``);
    a dim that is not declared dynamic and had one size in every parity case is static."""
    dims = list(spec.shape)
    for i, dim in enumerate(dims):
        sizes = {shape[i] for shape in shapes if len(shape) == len(dims)}
        if isinstance(dim, str) and i not in axes and len(sizes) == 1:
            dims[i] = sizes.pop()
    return TensorSpec(name=spec.name, dtype=spec.dtype, shape=tuple(dims))


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over the state dict: names, dtypes, shapes and raw bytes, in key order."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def producer_versions(exporter: str) -> dict[str, str]:
    return {
        "exporter": exporter,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def load_factory(spec: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Import ``"pkg.module:factory"`` and call it; it returns ``(module, example_inputs)``.

    The working directory is importable, as with ``python -m``, so project-local
    modules (``tests.fixtures_models:mlp_factory``) resolve from the repository root.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:FACTORY (e.g. 'my_pkg.models:make_model'), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    factory: Callable[[], Any] = getattr(importlib.import_module(module_name), attr)
    result = factory()
    if (
        not isinstance(result, tuple)
        or len(result) != 2
        or not isinstance(result[0], torch.nn.Module)
    ):
        raise TypeError(f"{spec} must return (torch.nn.Module, tuple_of_example_inputs)")
    module, example = result
    return module, tuple(example) if isinstance(example, list | tuple) else (example,)


def _forward_arg_names(module: torch.nn.Module, count: int) -> list[str]:
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


def _flatten(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, list | tuple):
        return [t for item in output for t in _flatten(item)]
    if isinstance(output, Mapping):
        return [t for item in output.values() for t in _flatten(item)]
    raise TypeError(f"cannot export an output of type {type(output).__name__}")


def _as_axes(axes: Mapping[str, Any]) -> dict[str, dict[int, str]]:
    """Accept torch's two spellings: ``{name: {dim: label}}`` or ``{name: [dims]}``."""
    out: dict[str, dict[int, str]] = {}
    for name, dims in axes.items():
        if isinstance(dims, Mapping):
            out[name] = {int(d): str(label) for d, label in dims.items()}
        else:
            out[name] = {int(d): ("batch" if int(d) == 0 else f"{name}_dim{d}") for d in dims}
    return out
