"""The README's bring-your-own-data example, run as written on a generated vendor-like data set: a vendor CSV
(capitalised names, naive New York dates, highs/lows one ULP inside the body), a news CSV with cashtags,
XNYS daily bars of 8 tickers (ON among them) over two years -> nfc data import -> train -> backtest report.
Only the model is made tiny (the options appended to the README's commands), so it runs in a test. Each
command runs as its own process, as a user runs it (training also sets process-wide float flags)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
from builders import TINY_ENCODER, write_vendor_files

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# appended to the README's commands: a tiny encoder and model, one epoch
TINY = {
    "encoder init": [arg for key, value in TINY_ENCODER.items() for arg in ("--set", f"{key}={value}")],
    "embed": ["--max-length", "256"],
    "train": ["--model-set", "d_model=16", "--model-set", "n_heads=2", "--set", "epochs=1", "--set", "batch_size=32",
              "--set", "threads=1"],
}


def readme_example() -> list[list[str]]:
    """The `nfc ...` commands of the README's worked example, in order, as argument lists."""
    text = README.read_text()
    block = re.search(r"<!-- byod-example -->\n```\n(.*?)```", text, flags=re.DOTALL)
    assert block, "the README lost its bring-your-own-data example"
    commands = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in commands if line.startswith("nfc ")]


def test_the_readme_example_goes_from_vendor_files_to_a_report(tmp_path):
    vendor = write_vendor_files(tmp_path / "raw")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    for args in readme_example():
        name = " ".join(args[:2]) if args[0] in ("encoder", "data") else args[0]
        result = subprocess.run([sys.executable, "-m", "nfc.cli", "--log-level", "WARNING", *args,
                                 *TINY.get(name, [])], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=240)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"nfc {' '.join(args)}\n{output[-3000:]}"
        if name == "data import":
            assert f"repaired: {vendor.ulp_misses} bars" in output
            assert "502 bars of 1D (XNYS) x 8 symbols, 0 missing bars" in output
    run = json.loads((tmp_path / "runs/us/model/run.json").read_text())
    assert (run["window"]["val_start"], run["window"]["test_start"]) == ("2025-01-02", "2025-07-01")
    assert run["split_times"]["test"][0] >= "2025-07-01"
    metrics = json.loads((tmp_path / "runs/us/report/metrics.json").read_text())
    assert metrics["settings"]["calendar"] == "XNYS" and metrics["settings"]["bars_per_year"] == 251.0
    assert pd.Timestamp(metrics["evaluation"]["start"]) >= pd.Timestamp("2025-07-01", tz="UTC")
    assert {"sharpe_se", "sharpe_ci95", "psr_vs_zero"} <= set(metrics["statistics"]["model"])
    returns = pd.read_csv(tmp_path / "runs/us/report/returns.csv")
    assert len(returns) == metrics["evaluation"]["bars"]
    new_york = pd.to_datetime(returns["close_time"]).dt.tz_convert("America/New_York")
    assert (new_york.dt.day_of_week < 5).all()  # no weekend bar is ever scored
