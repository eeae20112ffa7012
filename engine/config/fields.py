"""Field types only the config needs: addresses, log levels, and paths resolved against
the config file's folder. Numbers and strings come from :mod:`recall_engine.sdk.params`
(``PositiveInt``, ``NonNegativeFloat``...).

Each type carries its own check and the phrase its error uses, so a new config field is
one annotated line: ``drain_s: NonNegativeFloat = 5.0``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import AfterValidator, BeforeValidator, ValidationInfo

from recall_engine.sdk.params import Describe

__all__ = [
    "LOG_LEVELS",
    "Address",
    "ConfigPath",
    "ExistingFile",
    "FrozenTable",
    "LogLevel",
    "OptionalAddress",
    "OptionalExistingFile",
    "OptionalStr",
    "Port",
    "Share",
    "Version",
    "empty_table",
    "freeze",
    "resolve_path",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ADDR_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


def freeze(value: Any) -> Any:
    """Read-only deep copy: tables become MappingProxyType, arrays tuples (a config is
    shared by every request thread and replaced whole on reload, never edited)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def empty_table() -> Mapping[str, Any]:
    return MappingProxyType({})


def resolve_path(value: str | Path, base_dir: Path) -> Path:
    """``value`` as written in the config: ``~`` expanded, relative to ``base_dir``."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p


def _empty_is_none(value: Any) -> Any:
    # TOML has no null: "" stands for "not set".
    return None if value == "" else value


def _address(value: str) -> str:
    m = _ADDR_RE.match(value)
    if m is None or int(m["port"]) > 65535:
        raise ValueError(f"must be HOST:PORT (port 0-65535), got {value!r}")
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _config_relative(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str):
        return value  # the Path type reports it
    base = (info.context or {}).get("base_dir", Path("."))
    return resolve_path(value, Path(base))


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _plain_folder(value: str | None) -> str | None:
    if value is not None and (value in (".", "..") or "/" in value or "\\" in value):
        raise ValueError(f"must be a plain folder name, got {value!r}")
    return value


#: A string, or "" for none.
OptionalStr = Annotated[str | None, BeforeValidator(_empty_is_none)]
Address = Annotated[str, AfterValidator(_address), Describe("HOST:PORT (port 0-65535)")]
#: An address, or "" for none.
OptionalAddress = Annotated[Address | None, BeforeValidator(_empty_is_none)]
Port = Annotated[int, at.Interval(ge=0, le=65535), Describe("a port number 0-65535")]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
]
#: A path as written in the config, resolved against the config file's folder.
ConfigPath = Annotated[Path, BeforeValidator(_config_relative), Describe("a path (a string)")]
ExistingFile = Annotated[ConfigPath, AfterValidator(_existing)]
OptionalExistingFile = Annotated[ExistingFile | None, BeforeValidator(_empty_is_none)]
#: An artifact version folder name, or "" for the one ``current`` points to.
Version = Annotated[str | None, BeforeValidator(_empty_is_none), AfterValidator(_plain_folder)]
#: A share of all users.
Share = Annotated[float, at.Interval(ge=0, le=1), Describe("between 0 and 1")]
#: A free-form table, read-only once parsed.
FrozenTable = Annotated[Mapping[str, Any], AfterValidator(freeze)]
