"""``manifest.json`` of an exported model. The reader and writer live in the runtime
(:mod:`recall_engine.runtime.model_manifest`), which serving uses without the
exporters; this name stays for the exporters and their users."""

from recall_engine.runtime.files import sha256_file
from recall_engine.runtime.model_manifest import (
    KINDS,
    MANIFEST_FILE,
    POOLINGS,
    SCHEMA_VERSION,
    VARIANTS,
    Kind,
    ManifestError,
    ModelManifest,
    Parity,
    TensorSpec,
    Variant,
)

__all__ = [
    "KINDS",
    "MANIFEST_FILE",
    "POOLINGS",
    "SCHEMA_VERSION",
    "VARIANTS",
    "Kind",
    "ManifestError",
    "ModelManifest",
    "Parity",
    "TensorSpec",
    "Variant",
    "sha256_file",
]
