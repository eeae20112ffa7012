"""What loaded channels run on: the vector index, ONNX Runtime sessions and micro-batching,
the tokenizer, artifact bundles and the item catalogue. No gRPC and no PyTorch here."""
