"""BentoML services, ONNX Runtime, MongoDB store, gRPC, the live job (`nfc predict`) and the backtest of a package.

Needs the `serve` extra; never imports torch, training or export.
"""

__all__: list[str] = []
