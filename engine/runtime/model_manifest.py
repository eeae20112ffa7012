"""``manifest.json`` of an exported model: written by the exporters, read by serving.

Serving learns everything it needs from this file (input names, dtypes and symbolic
shapes, output dim, pooling, which variant files exist and how far each one strays
from fp32); nothing is inferred from file names. It lives in the runtime, and imports
only the standard library, so that the server reads manifests without PyTorch,
``onnx`` or the exporters (``recall_engine.exporters.manifest`` re-exports it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from recall_engine.runtime.files import atomic_write, read_json_object

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
KINDS = ("torch", "sentence-encoder")
POOLINGS = ("mean",)
#: Variant names serving knows how to pick (``engine/runtime/encoders.py``).
VARIANTS = ("optimized", "int8", "fp16")

Kind = Literal["torch", "sentence-encoder"]


class ManifestError(ValueError):
    """``manifest.json`` is missing, unreadable, or lacks / mistypes a field."""


@dataclass(slots=True, frozen=True)
class TensorSpec:
    """One graph input or output: ``shape`` holds ints for fixed dims and names
    (``"batch"``, ``"sequence"``) for dynamic ones. ``dtype`` is a numpy dtype name."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(slots=True, frozen=True)
class Parity:
    """How far ONNX Runtime strayed from PyTorch on fresh inputs.

    ``max_rel`` is taken over elements whose reference magnitude exceeds ``atol`` (a
    relative error against ~0 says nothing). ``cases`` lists ``[batch, sequence]`` per
    checked input set. ``cosine_min`` is set for embedding models checked on text.
    """

    max_abs: float
    max_rel: float
    cases: tuple[tuple[int, int], ...]
    atol: float | None = None
    rtol: float | None = None
    cosine_min: float | None = None


@dataclass(slots=True, frozen=True)
class Variant:
    """An alternative graph beside ``model.onnx`` and its agreement with fp32 (cosine
    per real sentence, or per output row for non-text models); ``None`` when it could
    not be measured on the exporting machine (fp16 without a GPU, say)."""

    file: str
    sha256: str
    cosine_vs_fp32_min: float | None
    cosine_vs_fp32_mean: float | None
    note: str = ""
    # its weights kept beside it (ONNX external data): file -> sha256
    data_files: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ModelManifest:
    """Everything serving needs to know about one exported model folder."""

    kind: Kind
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: int | None
    opset: int
    source_hash: str
    model_sha256: str
    parity: Parity
    pooling: str | None = None
    normalize: bool = False
    max_length: int | None = None
    tokenizer: str | None = None
    variants: Mapping[str, Variant] = field(default_factory=dict)
    producer: Mapping[str, str] = field(default_factory=dict)
    # the model file's weights kept beside it (ONNX external data): file -> sha256
    data_files: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ManifestError(f"manifest field 'kind' must be one of {KINDS}, got {self.kind!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ManifestError(
                f"manifest field 'pooling' must be one of {POOLINGS} or null, got {self.pooling!r}"
            )
        if self.kind == "sentence-encoder":
            for name in ("max_length", "tokenizer", "dims"):
                if getattr(self, name) is None:
                    raise ManifestError(f"manifest of a sentence-encoder needs field {name!r}")
        for name in self.variants:
            if name not in VARIANTS:
                raise ManifestError(f"manifest variant {name!r} is not one of {VARIANTS}")

    def with_variant(self, name: str, variant: Variant) -> ModelManifest:
        """A copy with ``variant`` recorded under ``name`` (the manifest is immutable)."""
        from dataclasses import replace

        return replace(self, variants={**self.variants, name: variant})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["variants"] = {
            k: {**asdict(v), "data_files": dict(v.data_files)} for k, v in self.variants.items()
        }
        out["producer"] = dict(self.producer)
        out["data_files"] = dict(self.data_files)
        return out

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``path`` (a folder gets ``manifest.json`` inside); atomic replace."""
        target = Path(path)
        if target.is_dir():
            target = target / MANIFEST_FILE
        return atomic_write(target, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelManifest:
        """Read and validate ``path`` (a folder means its ``manifest.json``); raise
        :class:`ManifestError` naming the file and the missing or mistyped field."""
        source = Path(path)
        if source.is_dir():
            source = source / MANIFEST_FILE
        try:
            raw = read_json_object(source, error=ManifestError)
        except FileNotFoundError:
            raise ManifestError(f"{source}: no manifest (export the model first)") from None
        try:
            return cls.from_dict(raw)
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelManifest:
        if not isinstance(raw, Mapping):
            raise ManifestError("manifest must be a JSON object")
        version = _field(raw, "schema_version", int)
        if version > SCHEMA_VERSION:
            raise ManifestError(
                f"schema_version {version} is newer than this reader "
                f"({SCHEMA_VERSION}); upgrade recall-engine"
            )
        parity = _field(raw, "parity", Mapping)
        variants = raw.get("variants") or {}
        if not isinstance(variants, Mapping):
            raise ManifestError("field 'variants' must be an object")
        data_files = _data_files(raw, "")
        return cls(
            schema_version=version,
            kind=_field(raw, "kind", str),
            file=_field(raw, "file", str),
            inputs=_specs(raw, "inputs"),
            outputs=_specs(raw, "outputs"),
            dims=_field(raw, "dims", int, nullable=True),
            opset=_field(raw, "opset", int),
            source_hash=_field(raw, "source_hash", str),
            model_sha256=_field(raw, "model_sha256", str),
            parity=Parity(
                max_abs=float(_field(parity, "max_abs", (int, float), where="parity.")),
                max_rel=float(_field(parity, "max_rel", (int, float), where="parity.")),
                cases=tuple(tuple(c) for c in _field(parity, "cases", list, where="parity.")),
                atol=parity.get("atol"),
                rtol=parity.get("rtol"),
                cosine_min=parity.get("cosine_min"),
            ),
            pooling=raw.get("pooling"),
            normalize=bool(raw.get("normalize", False)),
            max_length=raw.get("max_length"),
            tokenizer=raw.get("tokenizer"),
            variants={name: _variant(name, v) for name, v in variants.items()},
            producer=dict(raw.get("producer") or {}),
            data_files=dict(data_files),
        )


def _field(
    raw: Mapping[str, Any], name: str, types: Any, *, nullable: bool = False, where: str = ""
) -> Any:
    if name not in raw:
        raise ManifestError(f"missing field '{where}{name}'")
    value = raw[name]
    if value is None and nullable:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and types is int):
        raise ManifestError(f"field '{where}{name}' has the wrong type: {value!r}")
    return value


def _specs(raw: Mapping[str, Any], name: str) -> tuple[TensorSpec, ...]:
    specs = []
    for i, item in enumerate(_field(raw, name, list)):
        where = f"{name}[{i}]."
        if not isinstance(item, Mapping):
            raise ManifestError(f"field '{name}[{i}]' must be an object")
        specs.append(
            TensorSpec(
                name=_field(item, "name", str, where=where),
                dtype=_field(item, "dtype", str, where=where),
                shape=tuple(_field(item, "shape", list, where=where)),
            )
        )
    if not specs:
        raise ManifestError(f"field '{name}' is empty")
    return tuple(specs)


def _variant(name: str, raw: Any) -> Variant:
    where = f"variants.{name}."
    if not isinstance(raw, Mapping):
        raise ManifestError(f"field 'variants.{name}' must be an object")
    return Variant(
        file=_field(raw, "file", str, where=where),
        sha256=_field(raw, "sha256", str, where=where),
        cosine_vs_fp32_min=_field(
            raw, "cosine_vs_fp32_min", (int, float), nullable=True, where=where
        ),
        cosine_vs_fp32_mean=_field(
            raw, "cosine_vs_fp32_mean", (int, float), nullable=True, where=where
        ),
        note=str(raw.get("note", "")),
        data_files=_data_files(raw, where),
    )


def _data_files(raw: Mapping[str, Any], where: str) -> dict[str, str]:
    files = raw.get("data_files") or {}
    if not isinstance(files, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise ManifestError(f"field '{where}data_files' must map file names to sha256 strings")
    return dict(files)
