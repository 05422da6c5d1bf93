"""The gRPC contract (`neuralfusion.proto`) and its committed Python stubs.

protoc runs from the repository root, so the stubs import each other as `serving.proto.*` and
`from serving.proto import neuralfusion_pb2_grpc` works without touching `sys.path`. After editing
the .proto, run `make proto` and commit the three generated files; tests/test_serving/test_proto.py fails on
stale stubs.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["PROTO_FILE", "REPO_ROOT", "generate_stubs"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_FILE = Path(__file__).with_name("neuralfusion.proto")


def generate_stubs(out_dir: Path | str = REPO_ROOT) -> None:
    """Write neuralfusion_pb2.py, .pyi and _pb2_grpc.py to `out_dir`/serving/proto (needs grpcio-tools)."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise RuntimeError("generating the gRPC stubs needs grpcio-tools: pip install -e '.[dev]'") from None
    out = Path(out_dir)
    (out / "serving" / "proto").mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/timestamp.proto
    code = protoc.main(["protoc", f"-I{REPO_ROOT}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}",
                        f"--grpc_python_out={out}", str(PROTO_FILE)])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} on {PROTO_FILE}")
