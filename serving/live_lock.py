"""One `nfc predict` at a time on a host: an exclusive, non-blocking OS file lock (fcntl.flock).

The kernel drops the lock when the process ends, however it ends, so a crashed run never leaves a stale
lock behind. It guards one host (the lock file's file system); for runs scheduled on several hosts, point
them at one host's scheduler or put the lock file on storage with working flock semantics.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["LockHeld", "RunLock"]


class LockHeld(RuntimeError):
    """Another run holds the lock; the message names the file and the holder's pid."""


class RunLock:
    """`with RunLock(path):` holds the lock for the block, or raises LockHeld at once."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeld(f"another nfc predict run holds the lock {self.path} (pid {holder}); it is still "
                           "running, so this run stops without doing anything") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
