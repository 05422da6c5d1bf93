"""Per-request cost of two versions of the serving code, side by side: this checkout's `serving/` and another's.

    python bench/bench_serving_ab.py --other /path/to/checkout --package PKG --data DATA [--requests 150]

Starts `bentoml serve serving.service:PortfolioService` twice on free loopback ports (one from each checkout,
without an API key), with one nx-27017 and a database each, and sends the same distinct requests (the window of
the model ending at a different bar of DATA's bars.parquet and news.jsonl) to both in turn, one at a time: the
host's load drifts, so the servers are interleaved, never measured one after the other. Prints the median and
p90 latency and the CPU time per request of each server's process tree (from /proc/PID/stat).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from machine import machine, machine_line, process_tree_cpu

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from nfc.embedded_mongo import EmbeddedMongo, free_port
from serving.client import predict_payload, wait_until_ready

HERE = Path(__file__).resolve().parents[1]
WARMUP = 10


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of `root` and its descendants (the BentoML supervisor and its workers)."""
    return sum(seconds for _, seconds in process_tree_cpu(root).values())


def start(checkout: Path, package: Path, mongo_uri: str, database: str, home: Path, log: Path) -> tuple[Any, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NFC_")}
    env.update(BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(home), PYTHONPATH=str(checkout),
               NFC_MODEL_PATH=str(package), NFC_MONGO_URI=mongo_uri, NFC_MONGO_DB=database)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:PortfolioService",
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=checkout, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (its serving/ is compared)")
    parser.add_argument("--package", type=Path, required=True, help="model package folder both servers load")
    parser.add_argument("--data", type=Path, required=True, help="folder with bars.parquet and news.jsonl")
    parser.add_argument("--requests", type=int, default=150)
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mongo = EmbeddedMongo(root / "mongo").start()
        servers = {name: start(checkout.resolve(), args.package.resolve(), mongo.uri, f"ab_{name}",
                               root / f"bentoml-{name}", root / f"{name}.log")
                   for name, checkout in (("other", args.other), ("this", HERE))}
        try:
            for name, (process, url) in servers.items():
                if not wait_until_ready(url, process, 300):
                    sys.exit(f"{name} server did not become ready:\n{(root / f'{name}.log').read_text()[-3000:]}")
            bars = BarFileSource(args.data / "bars.parquet").read()
            news = read_news(args.data / "news.jsonl")
            times = np.sort(bars["timestamp"].unique())
            step = pd.Timedelta(times[1] - times[0])
            info = httpx.get(f"{servers['this'][1]}/model_info", timeout=60).json()
            needed = info["bars_needed"]
            bodies = [predict_payload(bars, news, pd.Timestamp(times[bar]), needed, step, f"ab-{bar}",
                                      news_bars=info["lookback"])
                      for bar in range(needed, needed + WARMUP + args.requests)]
            for _, url in servers.values():
                for body in bodies[:WARMUP]:
                    httpx.post(f"{url}/predict", json=body, timeout=60).raise_for_status()
            seconds: dict[str, list[float]] = {name: [] for name in servers}
            cpu_before = {name: tree_cpu_s(process.pid) for name, (process, _) in servers.items()}
            for body in bodies[WARMUP:]:
                for name, (_, url) in servers.items():
                    started = time.perf_counter()
                    httpx.post(f"{url}/predict", json=body, timeout=60).raise_for_status()
                    seconds[name].append(time.perf_counter() - started)
            cpu = {name: tree_cpu_s(process.pid) - cpu_before[name] for name, (process, _) in servers.items()}
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(60)
            mongo.stop()
    print(machine_line(info))
    for name in servers:
        print(json.dumps({"serving": name, "requests": args.requests,
                          "median_ms": round(1000 * statistics.median(seconds[name]), 1),
                          "p90_ms": round(1000 * float(np.percentile(seconds[name], 90)), 1),
                          "cpu_ms_per_request": round(1000 * cpu[name] / args.requests, 1)}))


if __name__ == "__main__":
    main()
