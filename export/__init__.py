"""torch -> ONNX export, model packages and their offline validation (needs `train` + `export`)."""

__all__: list[str] = []
