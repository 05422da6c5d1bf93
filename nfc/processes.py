"""Stopping the servers the project starts as subprocesses (nx-27017, bentoml serve, test servers), one way."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["stop_process"]


def stop_process(process: subprocess.Popen[bytes], timeout_s: float, *, group: bool = False) -> None:
    """SIGTERM (a server drains in-flight work and stops its own workers), then SIGKILL if it has not exited
    within `timeout_s`: to its whole process group when `group` (it was started with start_new_session, so
    the group holds its workers and nothing of ours)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=timeout_s)
