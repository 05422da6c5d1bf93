"""A demo-shaped model package for the serving benchmarks, built in about two minutes and reused afterwards.

    python bench/bench_package.py --out runs/bench/demo-shaped     # what bench_serving.py builds by default

The shape is what costs CPU in serving, so it is the demo's: 12 assets, 3-minute bars, lookback 80 with the
feature warm-up (160 bars a request), the default encoder (4 x 256 BigBird, its tokenizer trained on the news)
and the default fusion model. What differs from `nfc demo` is only what does not change the cost of a request:
10 synthetic days instead of 60, a random-init encoder (no sentiment tuning), one epoch of training on every
16th window and no ablations or backtest. Every step is the `nfc` command a user types.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from neuralfusion.manifest import PackageError, load_manifest
from nfc.cli import main as nfc_main

__all__ = ["DEFAULT_DIR", "bench_package"]

log = logging.getLogger("bench_package")

DEFAULT_DIR = Path("runs/bench/demo-shaped")
DAYS = 10  # 4,800 bars: room for a few thousand distinct as-of bars after the 160-bar window
VERSION = "0.1.0-bench"


def _nfc(*args: str) -> None:
    log.info("$ nfc %s", " ".join(args))
    nfc_main.main(args=["--log-level", "WARNING", *args], standalone_mode=False)


def bench_package(root: Path = DEFAULT_DIR) -> tuple[Path, Path]:
    """(package folder, data folder) under `root`, built when `root` holds no verified package yet."""
    package, data = root / "package", root / "data"
    try:
        load_manifest(package, verify=True)
        return package, data
    except (PackageError, OSError):
        log.info("building a demo-shaped package under %s (about two minutes)", root)
    shutil.rmtree(root, ignore_errors=True)
    _nfc("synth", "--out", str(data), "--days", str(DAYS))
    _nfc("encoder", "init", "--news", str(data / "news.jsonl"), "--data", str(data), "--out", str(root / "encoder"))
    _nfc("embed", "--news", str(data / "news.jsonl"), "--encoder", str(root / "encoder"),
         "--out", str(root / "embeddings.parquet"))
    _nfc("train", "--data", str(data), "--embeddings", str(root / "embeddings.parquet"), "--out", str(root / "run"),
         "--set", "epochs=1", "--set", "train_stride=16")
    _nfc("export", "--model", str(root / "run"), "--out", str(package), "--version", VERSION, "--no-bentoml")
    load_manifest(package, verify=True)
    return package, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder for the data, runs and package")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    package, data = bench_package(args.out)
    log.info("package %s, data %s", package, data)


if __name__ == "__main__":
    main()
