"""PyTorch -> ONNX exporters with parity checks (needs the [train] extra)."""
