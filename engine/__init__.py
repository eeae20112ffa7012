"""recall-engine: multi-channel recall over gRPC."""

__version__ = "0.1.0"
