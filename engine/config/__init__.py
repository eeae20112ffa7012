"""The configuration: one TOML file checked against a schema at start-up.

``load_config(path)`` reads and checks a file, ``parse_config(data, base_dir)`` an
already-parsed document, ``default_config(artifacts_root)`` is what ``serve`` runs
without a file. Errors are :class:`ConfigError` (a ``ValueError``) naming the key path
and the bad value. See :mod:`.schema` for the tables and ``deploy/config.example.toml``
for every key.
"""

from recall_engine.config.errors import ConfigError
from recall_engine.config.plans import Experiment, Plan, Variant
from recall_engine.config.schema import (
    DEFAULT_TOKEN_ENV,
    DEFAULT_WEIGHTS,
    AdminConfig,
    ChannelConfig,
    ClusterConfig,
    Config,
    OverloadConfig,
    PluginsConfig,
    RemoteArtifactsConfig,
    ServerConfig,
    TLSConfig,
    TracingConfig,
    default_config,
    load_config,
    parse_config,
)

__all__ = [
    "DEFAULT_TOKEN_ENV",
    "DEFAULT_WEIGHTS",
    "AdminConfig",
    "ChannelConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "Experiment",
    "Plan",
    "OverloadConfig",
    "PluginsConfig",
    "RemoteArtifactsConfig",
    "ServerConfig",
    "TLSConfig",
    "TracingConfig",
    "Variant",
    "default_config",
    "load_config",
    "parse_config",
]
