"""bench/gpu_check.sh on a machine without an NVIDIA GPU: it says what it would run, measures and installs nothing,
and exits 0 (on a machine with a GPU it would measure for minutes, so the test runs only where there is none)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi: the script would "
                                                                   "measure the GPU for minutes")
def test_gpu_check_without_a_gpu_says_what_it_would_run_and_exits_0(tmp_path):
    out = tmp_path / "gpu"
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "GPU_CHECK_OUT": str(out)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no NVIDIA GPU here (nvidia-smi finds none): nothing measured, nothing installed.")
    assert "bench/gpu_check.py --out " + str(out) in result.stdout
    assert "--device cuda --modes rows rows-b1 raw" in result.stdout
    assert not out.exists()  # nothing measured, nothing written
