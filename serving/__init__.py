"""BentoML services, ONNX Runtime, MongoDB store and gRPC (needs `serve`; never imports torch)."""

__all__: list[str] = []
