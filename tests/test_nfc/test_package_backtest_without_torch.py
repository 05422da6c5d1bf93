"""`nfc backtest --package` runs where torch cannot be imported: a serving install has ONNX Runtime, not torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from neuralfusion.report import REPORT_FILES

# a fresh interpreter in which importing torch or transformers fails as if they were not installed
WITHOUT_TORCH = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from nfc.cli import main
main(args=sys.argv[1:], prog_name="nfc")
"""


def nfc_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True, timeout=240)


def test_package_backtest_needs_no_torch(tiny, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = nfc_without_torch("backtest", "--package", str(tiny.package), "--data", str(tiny.data), "--out", str(out),
                             "--json", "--log-level", "WARNING")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout holds the one JSON object and nothing else
    assert result["out"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    written = json.loads((out / "metrics.json").read_text())
    assert written["settings"]["variant"] == "package"
    assert written["strategies"] == result["metrics"]["strategies"]
    assert {"model", "equal_weight", "momentum"} <= set(written["strategies"])


def test_run_backtest_without_torch_names_the_extra(tiny, tmp_path: Path) -> None:
    """The same interpreter refuses `--model` (a PyTorch run) with the install command, so the block works."""
    done = nfc_without_torch("backtest", "--model", str(tiny.run), "--data", str(tiny.data), "--embeddings",
                             str(tiny.embeddings), "--out", str(tmp_path / "report"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "'nfc backtest --model' needs the 'train' extra (missing module 'torch')" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "report").exists()
