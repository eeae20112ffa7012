"""Typed parameters: a table (a channel's ``[channels.<name>.params]``, a config section)
checked against a declared class, with errors that name the key path and the bad value.

A plugin declares its parameters as a class attribute ``Params`` on its channel class:
a frozen dataclass (or a pydantic model) whose fields have defaults, constrained with
``typing.Annotated`` metadata (``annotated_types.Ge``, ``pydantic.Field(ge=...)``, the
aliases below, ``Literal`` for choices)::

    @dataclass(slots=True, frozen=True)
    class Params:
        neighbours: PositiveInt = 200
        method: Literal["cosine", "ease"] = "cosine"
        decay: Annotated[float, Interval(gt=0, le=1)] = 0.9

    class MyChannel(Channel):
        Params = Params

        def __init__(self, ctx):
            super().__init__(ctx)
            self.params = ctx.params_as(Params)

The engine validates the config's table against ``Params`` at start-up, before any
artifact is read, and a typo stops start-up with ``channels.<name>.params.<key>:
unknown key (known: ...)``.

Rules :func:`parse` applies to every declared class, whatever the class says, because a
config typed by hand must not be read loosely: unknown keys are errors; numbers, strings
and booleans are taken as written (``"8"`` is not an integer, ``true`` is not 1; an
integer is accepted where a float is declared); floats must be finite. Cross-field
checks go in ``__post_init__`` and raise :class:`KeyError_` naming the key.

The validation library is pydantic v2 (chosen over msgspec for its error locations:
they keep table keys, ``channels.cf.params.epochs``, and carry the bad input).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Hashable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, cast

import annotated_types as at
import pydantic
from pydantic.fields import FieldInfo
from pydantic_core import SchemaValidator, ValidationError

__all__ = [
    "DERIVED",
    "Describe",
    "KeyError_",
    "NonEmptyStr",
    "NonNegativeFloat",
    "NonNegativeInt",
    "ParamsError",
    "PositiveFloat",
    "PositiveInt",
    "UnitFloat",
    "check_declaration",
    "known_keys",
    "parse",
    "show",
    "thaw",
]

T = TypeVar("T")


class ParamsError(ValueError):
    """A table does not fit its declared class; the message starts with the key path."""


class KeyError_(ValueError):  # noqa: N801 - ValueError, not the builtin KeyError
    """Raised from a validator or ``__post_init__``: ``message`` is about ``key`` (a
    field of the class being checked), so the error path ends with that key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclasses.dataclass(slots=True, frozen=True)
class Describe:
    """``Annotated`` marker: what a valid value is, for the error message
    (``must be <text>, got <value>``) when the type alone says too little."""

    text: str


PositiveInt = Annotated[int, at.Ge(1)]
NonNegativeInt = Annotated[int, at.Ge(0)]
PositiveFloat = Annotated[float, at.Gt(0)]
NonNegativeFloat = Annotated[float, at.Ge(0)]
UnitFloat = Annotated[float, at.Interval(ge=0, le=1)]
NonEmptyStr = Annotated[str, at.MinLen(1)]


def parse(
    cls: type[T],
    data: Any,
    path: str = "",
    *,
    context: Mapping[str, Any] | None = None,
    error: type[ValueError] = ParamsError,
) -> T:
    """``data`` (a table) checked against ``cls`` and completed with its defaults.

    ``path`` is where the table sits (``channels.cf.params``), so that errors read
    ``channels.cf.params.epochs: must be an integer >= 1, got 0``; every problem found is
    reported, one per ``; ``. ``context`` reaches validators that take ``info``
    (``info.context``). Raises ``error`` (a ``ValueError``).
    """
    validator = _validator(cast(Hashable, cls))
    try:
        return cast(T, validator.validate_python(thaw(data), context=context))
    except ValidationError as e:
        messages = [_message(cls, err, path) for err in e.errors(include_url=False)]
        raise error("; ".join(dict.fromkeys(messages))) from None


#: Dataclass field metadata of a field the code fills in, not the table (a config
#: channel's ``name`` is its table's name): left out of "known" key lists.
DERIVED: Mapping[str, bool] = types.MappingProxyType({"derived": True})


def known_keys(cls: type) -> list[str]:
    """The keys a table for ``cls`` may have."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get("derived")]
    if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        return list(cls.model_fields)
    return []


def thaw(value: Any) -> Any:
    """Plain dicts and lists from read-only mappings and tuples (a frozen config table),
    so that validation sees what the TOML file said."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def show(value: Any) -> str:
    """A value as the config file would spell it, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


# --------------------------------------------------------------------------- validator


@functools.cache
def _validator(cls: Hashable) -> SchemaValidator:
    """pydantic's validator for ``cls`` with the house rules written into its schema:
    scalars strict, floats finite, unknown keys forbidden (containers stay lax so that
    tables and arrays may be given as any mapping and sequence)."""
    schema = copy.deepcopy(pydantic.TypeAdapter(cast(Any, cls)).core_schema)
    _tighten(schema)
    return SchemaValidator(schema)


def _tighten(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _tighten(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("int", "float", "bool", "str"):
        node["strict"] = True
    if kind == "float":
        node.setdefault("allow_inf_nan", False)
    if kind in ("dataclass-args", "model-fields", "typed-dict"):
        node["extra_behavior"] = "forbid"
    for key, value in node.items():
        if key not in ("serialization", "metadata", "default", "cls"):
            _tighten(value)


# --------------------------------------------------------------------------- messages


def _message(cls: type, err: Any, path: str) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind in ("value_error", "assertion_error"):
        exc = err.get("ctx", {}).get("error")
        if isinstance(exc, KeyError_):
            loc = (*loc, exc.key)
        return f"{_path(path, loc)}: {exc if exc is not None else err['msg']}"
    if kind in ("missing", "missing_argument", "missing_keyword_only_argument"):
        return f"{_path(path, loc)}: required"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = _resolve(cls, loc[:-1])
        known = ", ".join(known_keys(parent[0])) if parent else ""
        return f"{_path(path, loc)}: unknown key (known: {known or 'none'})"
    found = _resolve(cls, loc)
    what = _describe(*found) if found else None
    if what is None:
        return f"{_path(path, loc)}: {err['msg']}, got {show(err['input'])}"
    return f"{_path(path, loc)}: must be {what}, got {show(err['input'])}"


def _path(prefix: str, loc: Sequence[Any]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _resolve(tp: Any, loc: Sequence[Any]) -> tuple[Any, list[Any]] | None:
    """The declared type and ``Annotated`` metadata of the value at ``loc`` in ``tp``."""
    tp, meta = _unwrap(tp, [])
    for part in loc:
        child = _child(tp, part)
        if child is None:
            return None
        tp, meta = _unwrap(child, [])
    return tp, meta


def _unwrap(tp: Any, meta: list[Any]) -> tuple[Any, list[Any]]:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            meta = [*meta, *_flatten(tp.__metadata__)]
            tp = tp.__origin__
        elif origin in (typing.Union, types.UnionType):
            arms = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(arms) != 1:
                return tp, meta
            tp = arms[0]
        else:
            return tp, meta


def _flatten(metadata: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out.extend(_flatten(m.metadata))
        elif isinstance(m, at.Interval):
            out.extend(c for c in m)  # Interval iterates over its bounds
        else:
            out.append(m)
    return out


def _child(tp: Any, part: Any) -> Any:
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(part, str):
        hints = typing.get_type_hints(tp, include_extras=True)
        return hints.get(part)
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        info = tp.model_fields.get(part)
        return None if info is None else Annotated[info.annotation, info]
    if isinstance(origin, type) and issubclass(origin, Mapping) and len(args) == 2:
        return args[1]
    if origin in (list, tuple) or (isinstance(origin, type) and issubclass(origin, Sequence)):
        return args[0] if args else None
    return None


def _describe(tp: Any, meta: list[Any]) -> str | None:
    for m in meta:
        if isinstance(m, Describe):
            return m.text
    origin = typing.get_origin(tp) or tp
    if tp is bool:
        return "true or false"
    if tp is int:
        low = _lower(meta)
        if low == (">=", 1) and _upper(meta) is None:
            return "a positive integer"
        return "an integer" + _bounds(meta, integer=True)
    if tp is float:
        bounds = _bounds(meta, integer=False)
        return f"finite and{bounds}" if bounds.startswith(" >") else "a finite number" + bounds
    if tp is str:
        if any(isinstance(m, at.MinLen) and m.min_length >= 1 for m in meta):
            return "a non-empty string"
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp) or (
        isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)
    ):
        return "a table"
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return "a table"
    if origin in (list, tuple) or (isinstance(origin, type) and issubclass(origin, Sequence)):
        item = _unwrap(typing.get_args(tp)[0], [])[0] if typing.get_args(tp) else None
        is_table = item is not None and _describe(item, []) == "a table"
        return "an array of tables" if is_table else "an array"
    if tp is typing.Any:
        return None
    return getattr(tp, "__name__", None)


def _lower(meta: list[Any]) -> tuple[str, float] | None:
    for m in meta:
        if isinstance(m, at.Ge):
            return (">=", m.ge)  # type: ignore[return-value]
        if isinstance(m, at.Gt):
            return (">", m.gt)  # type: ignore[return-value]
    return None


def _upper(meta: list[Any]) -> tuple[str, float] | None:
    for m in meta:
        if isinstance(m, at.Le):
            return ("<=", m.le)  # type: ignore[return-value]
        if isinstance(m, at.Lt):
            return ("<", m.lt)  # type: ignore[return-value]
    return None


def _bounds(meta: list[Any], *, integer: bool) -> str:
    low, high = _lower(meta), _upper(meta)
    if low and high:
        if integer and low[0] == ">=" and high[0] == "<=":
            return f" {_num(low[1])}-{_num(high[1])}"
        left = "[" if low[0] == ">=" else "("
        right = "]" if high[0] == "<=" else ")"
        return f" in {left}{_num(low[1])}, {_num(high[1])}{right}"
    bound = low or high
    return f" {bound[0]} {_num(bound[1])}" if bound else ""


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def check_declaration(cls: Any) -> None:
    """Raise ``TypeError`` when ``cls`` cannot serve as a params class (not a type the
    schema library can check a table against); called once when a plugin registers."""
    if not isinstance(cls, type):
        raise TypeError(f"Params must be a class, got {cls!r}")
    try:
        _validator(cast(Hashable, cls))
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as e:
        raise TypeError(f"Params {cls.__name__} cannot be checked: {e}") from None
