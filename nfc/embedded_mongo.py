"""The embedded MongoDB-compatible server (nx-27017, SQLite-backed) for tests and `nfc serve`.

Any real MongoDB works by URI; this exists so a fresh machine runs the whole path with no database
installed. It speaks the wire protocol over real TCP, so pymongo code paths are the production ones.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from nfc.processes import stop_process

__all__ = ["EmbeddedMongo", "free_port"]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedMongo:
    """Start nx-27017 on loopback with one SQLite file per database in `data_dir`; stop it by pid.

    >>> with EmbeddedMongo(tmp_path) as server:
    ...     client = pymongo.MongoClient(server.uri)
    """

    def __init__(self, data_dir: Path | str, port: int | None = None, startup_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> EmbeddedMongo:
        executable = shutil.which("nx-27017") or str(Path(sys.executable).with_name("nx-27017"))
        if not Path(executable).exists():
            raise RuntimeError("the embedded MongoDB server is missing: pip install 'neuralfusioncore[dev]' "
                               "(nx-27017), or set NFC_MONGO_URI to a MongoDB server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(  # noqa: S603 - fixed executable, arguments built here
            [executable, "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "-p", str(self.port),
             "--log-file", str(self.data_dir / "server.log"), "--pid-file", str(self.data_dir / "server.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nx-27017 exited with code {self.process.returncode}; "
                                   f"see {self.data_dir / 'server.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nx-27017 did not listen on port {self.port} within {self.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
        self.process = None

    def __enter__(self) -> EmbeddedMongo:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
