"""torch -> ONNX export, model packages and their offline validation (needs `train` + `export`).

Modules: `onnx_export` (graphs and ORT variants), `parity` (ORT vs PyTorch), `package` (run -> package),
`validate` (`nfc validate`), `bento` (BentoML model store), `cli`. `neuralfusion.manifest` alone is torch-free:
serving imports it to read and verify packages, so this `__init__` imports nothing.
"""

__all__: list[str] = []
