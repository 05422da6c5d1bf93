"""What a predict request costs before the model runs, per body format: JSON rows, JSON columns, Arrow.

    python bench/bench_request_formats.py                     # bench package, 40 requests per format
    python bench/bench_request_formats.py --requests 100 --json formats.json

Builds the demo-shaped request (the model's window of every symbol: 160 bars x 12 symbols on the demo package,
and the news of its lookback) for distinct as-of bars of the data folder, in each format, then runs the server's
own per-request work on each, interleaved request by request (rows, columns, arrow, then the next request), so
load from other processes falls on all three alike:
  parse:    body -> checked RequestFrames: pydantic rows (TypedDicts) + the array checks (rows), pydantic arrays +
            the array checks (columns), the Arrow reader + the array checks (arrow);
  prepare:  PortfolioRuntime.prepare (model checks, grid, features, the window) and the inputs hash.
Prints CPU ms per request (of this process: steadier than wall time on a busy host) and each format's total
relative to rows, and checks on the way that every format gives the same inputs hash.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bench_package import DEFAULT_DIR, bench_package
from machine import machine, machine_line, markdown_table

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from neuralfusion.manifest import load_manifest
from serving.client import predict_payload, window_frames
from serving.column_checks import RequestFrames, check_columns
from serving.columns import (
    PredictColumnsRequest,
    arrow_body,
    columns_body,
    columns_from_arrow,
    columns_from_json,
    columns_from_rows,
)
from serving.request_checks import inputs_sha256
from serving.runtime import PortfolioRuntime
from serving.schemas import PredictRequest, RequestLimits

log = logging.getLogger("bench_request_formats")

FORMATS = ("rows", "columns", "arrow")
LIMITS = RequestLimits()
READERS: dict[str, Callable[[bytes], RequestFrames]] = {
    "rows": lambda body: check_columns(columns_from_rows(PredictRequest.model_validate_json(body)), LIMITS),
    "columns": lambda body: check_columns(columns_from_json(PredictColumnsRequest.model_validate_json(body)), LIMITS),
    "arrow": lambda body: check_columns(columns_from_arrow(body), LIMITS),
}


def bodies(package: Path, data: Path, n: int, first_bar: int) -> dict[str, list[bytes]]:
    """`n` requests (as-of bars first_bar, first_bar+1, ...) in each format, news of the lookback only."""
    manifest = load_manifest(package)
    step = manifest.bar_spec.timedelta
    needed = int(manifest.data["features"]["warmup_bars"]) + manifest.window.lookback
    bars = BarFileSource(data / "bars.parquet").read()
    news = read_news(data / "news.jsonl")
    times = np.sort(bars["timestamp"].unique())
    if first_bar < needed or first_bar + n > len(times):
        raise SystemExit(f"the data folder has {len(times)} bars; {n} requests from bar {first_bar} do not fit")
    out: dict[str, list[bytes]] = {name: [] for name in FORMATS}
    for i in range(n):
        end, request_id = pd.Timestamp(times[first_bar + i]), f"formats-{i}"
        window, items = window_frames(bars, news, end, needed, step, manifest.window.lookback)
        rows = predict_payload(bars, news, end, needed, step, request_id, manifest.window.lookback)
        out["rows"].append(json.dumps(rows).encode())
        out["columns"].append(json.dumps(columns_body(window, items, request_id)).encode())
        out["arrow"].append(arrow_body(window, items, request_id))
    return out


def measure(runtime: PortfolioRuntime, work: dict[str, list[bytes]], rounds: int) -> dict[str, dict[str, float]]:
    """ms per request of parse and prepare per format; round 0 warms up and is not counted."""
    seconds = {name: {"parse": 0.0, "prepare": 0.0} for name in FORMATS}
    n = len(work["rows"])
    for r in range(rounds + 1):
        for i in range(n):
            hashes = set()
            for k in range(len(FORMATS)):  # the format that goes first rotates
                name = FORMATS[(i + k) % len(FORMATS)]
                start = time.process_time()
                frames = READERS[name](work[name][i])
                parsed = time.process_time()
                runtime.prepare(frames)
                hashes.add(inputs_sha256(frames))
                done = time.process_time()
                if r:
                    seconds[name]["parse"] += parsed - start
                    seconds[name]["prepare"] += done - parsed
            if len(hashes) != 1:
                raise SystemExit(f"request {i}: the formats gave {len(hashes)} different inputs hashes")
    return {name: {stage: 1000 * value / (rounds * n) for stage, value in stages.items()}
            for name, stages in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help=f"model package (default: the bench package, {DEFAULT_DIR})")
    parser.add_argument("--data", type=Path, help="data folder the requests are cut from (with --package)")
    parser.add_argument("--requests", type=int, default=40, help="distinct requests per format")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the requests")
    parser.add_argument("--first-bar", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if (args.package is None) != (args.data is None):
        parser.error("--package and --data go together (or neither: the demo-shaped bench package)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.package is None:
        args.package, args.data = bench_package(DEFAULT_DIR)
    info = machine()
    runtime = PortfolioRuntime.load(args.package, device="cpu", with_encoder=False)
    work = bodies(args.package, args.data, args.requests, args.first_bar)
    results = measure(runtime, work, args.rounds)
    rows_total = sum(results["rows"].values())
    table = [[name, f"{len(work[name][0]):,}", f"{stages['parse']:.2f}", f"{stages['prepare']:.2f}",
              f"{sum(stages.values()):.2f}", f"{sum(stages.values()) / rows_total:.2f}"]
             for name, stages in results.items()]
    log.info("CPU ms per request (one thread, interleaved), %d requests x %d rounds; %s\n", args.requests,
             args.rounds, machine_line(info))
    log.info("%s", markdown_table(["format", "body bytes", "parse + checks", "prepare + hash", "total",
                                   "total / rows"], table))
    if args.json:
        payload: dict[str, Any] = {"machine": info, "requests": args.requests, "rounds": args.rounds,
                                   "ms_per_request": results,
                                   "body_bytes": {name: len(work[name][0]) for name in FORMATS}}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
