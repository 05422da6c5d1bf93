"""Per-request cost of two versions of the serving code, side by side: this checkout's `serving/` and another's.

    python bench/bench_serving_ab.py --other /path/to/checkout --package PKG --data DATA [--requests 150]
    python bench/bench_serving_ab.py --other /path/to/checkout --package PKG --data DATA --route at \
        --concurrency 8 --rounds 6

Starts `bentoml serve serving.service:PortfolioService` twice on free loopback ports (one from each checkout,
without an API key, both reading DATA as their bar source for predictions by reference), with one nx-27017 and a
database each, and sends the same distinct requests to both: /predict bodies (the window of the model ending at a
different bar of DATA's bars.parquet and news.jsonl), or with `--route at` /predict/at as-of bars. The host's load
drifts, so the servers are interleaved, never measured one after the other: one request to each in turn at
concurrency 1, or at higher concurrency bursts of --requests/--rounds requests to each in turn, the order swapped
every round. Prints the median and p90 latency, the requests per second and the CPU time per request of each
server's process tree (from /proc/PID/stat), and this/other per round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import pandas as pd
from bench_serving import drive, load_session
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


def start(checkout: Path, package: Path, data: Path, mongo_uri: str, database: str, home: Path,
          log: Path) -> tuple[Any, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NFC_")}
    env.update(BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(home), PYTHONPATH=str(checkout),
               NFC_MODEL_PATH=str(package), NFC_MONGO_URI=mongo_uri, NFC_MONGO_DB=database, NFC_BARS_DIR=str(data))
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:PortfolioService",
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=checkout, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def request_bodies(route: str, data: Path, info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """`n` distinct bodies: the model's window ending at consecutive bars of DATA (/predict), or those bars alone
    (/predict/at)."""
    bars = BarFileSource(data / "bars.parquet").read()
    times = np.sort(bars["timestamp"].unique())
    needed = info["bars_needed"]
    ends = [pd.Timestamp(times[bar]) for bar in range(needed + 2, needed + 2 + n)]
    if route == "at":
        return [{"as_of": end.isoformat(), "request_id": f"ab-{i}"} for i, end in enumerate(ends)]
    news = read_news(data / "news.jsonl")
    step = pd.Timedelta(times[1] - times[0])
    return [predict_payload(bars, news, end, needed, step, f"ab-{i}", news_bars=info["lookback"])
            for i, end in enumerate(ends)]


async def burst(session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]], concurrency: int
                ) -> list[float]:
    """Send `bodies` to `url` at `concurrency` with bench_serving's driver; each request's latency in seconds. A
    request that does not answer 200 ends the run: a comparison of failures would measure nothing."""
    async def send(i: int) -> str | None:
        async with session.post(url, json=bodies[i]) as response:
            return None if response.status == 200 else f"HTTP {response.status}: {(await response.text())[:300]}"

    latencies_ms, errors, _, _ = await drive(send, range(len(bodies)), concurrency)
    if errors:
        sys.exit(f"{url} failed: {errors[0]}")
    return [ms / 1000 for ms in latencies_ms]


async def compare(servers: dict[str, tuple[Any, str]], path: str, bodies: list[dict[str, Any]], concurrency: int,
                  rounds: int) -> tuple[dict[str, list[float]], dict[str, float], dict[str, list[dict[str, float]]]]:
    """Warm both servers up with WARMUP bodies, then send the rest to each in turn (module docstring), each server
    over one session kept for the whole comparison: (latencies in s, CPU s, per-round req/s and CPU ms) per server."""
    seconds: dict[str, list[float]] = {name: [] for name in servers}
    cpu = dict.fromkeys(servers, 0.0)
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    async with AsyncExitStack() as stack:
        sessions = {name: await stack.enter_async_context(load_session(concurrency, timeout_s=120))
                    for name in servers}
        urls = {name: f"{url}{path}" for name, (_, url) in servers.items()}
        for name in servers:
            await burst(sessions[name], urls[name], bodies[:WARMUP], 1)
        measured = bodies[WARMUP:]
        parts = [np.arange(len(measured))] if concurrency == 1 else np.array_split(np.arange(len(measured)), rounds)
        for k, part in enumerate(parts):
            chunk = [measured[i] for i in part]
            order = list(servers) if k % 2 == 0 else list(reversed(servers))
            if concurrency == 1:  # one request to each in turn
                before = {name: tree_cpu_s(servers[name][0].pid) for name in servers}
                for body in chunk:
                    for name in order:
                        seconds[name] += await burst(sessions[name], urls[name], [body], 1)
                for name in servers:
                    cpu[name] += tree_cpu_s(servers[name][0].pid) - before[name]
                continue
            for name in order:
                before, started = tree_cpu_s(servers[name][0].pid), time.perf_counter()
                seconds[name] += await burst(sessions[name], urls[name], chunk, concurrency)
                wall, used = time.perf_counter() - started, tree_cpu_s(servers[name][0].pid) - before
                cpu[name] += used
                per_round[name].append({"rps": len(chunk) / wall, "cpu_ms": 1000 * used / len(chunk)})
    return seconds, cpu, per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (its serving/ is compared)")
    parser.add_argument("--package", type=Path, required=True, help="model package folder both servers load")
    parser.add_argument("--data", type=Path, required=True, help="folder with bars.parquet and news.jsonl")
    parser.add_argument("--route", choices=("predict", "at"), default="predict",
                        help="/predict with the window's bars and news, or /predict/at with the as-of bar alone")
    parser.add_argument("--requests", type=int, default=150, help="measured requests per server")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="bursts per server at concurrency > 1")
    args = parser.parse_args()
    if args.concurrency > 1 and args.requests < args.rounds:
        parser.error("--requests must be at least --rounds")
    host = machine()
    path = "/predict/at" if args.route == "at" else "/predict"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mongo = EmbeddedMongo(root / "mongo").start()
        servers = {name: start(checkout.resolve(), args.package.resolve(), args.data.resolve(), mongo.uri,
                               f"ab_{name}", root / f"bentoml-{name}", root / f"{name}.log")
                   for name, checkout in (("other", args.other), ("this", HERE))}
        try:
            for name, (process, url) in servers.items():
                if not wait_until_ready(url, process, 300):
                    sys.exit(f"{name} server did not become ready:\n{(root / f'{name}.log').read_text()[-3000:]}")
            info = httpx.get(f"{servers['this'][1]}/model_info", timeout=60).json()
            bodies = request_bodies(args.route, args.data, info, WARMUP + args.requests)
            seconds, cpu, rounds = asyncio.run(compare(servers, path, bodies, args.concurrency, args.rounds))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(60)
            mongo.stop()
    print(machine_line(host))
    for name in servers:
        line = {"serving": name, "route": path, "concurrency": args.concurrency, "requests": args.requests,
                "median_ms": round(1000 * statistics.median(seconds[name]), 1),
                "p90_ms": round(1000 * float(np.percentile(seconds[name], 90)), 1),
                "cpu_ms_per_request": round(1000 * cpu[name] / args.requests, 1)}
        if rounds[name]:
            line["rps_median"] = round(statistics.median(r["rps"] for r in rounds[name]), 1)
        print(json.dumps(line))
    if rounds["this"]:
        for key, label in (("rps", "req/s"), ("cpu_ms", "CPU ms a request")):
            ratios = [a[key] / b[key] for a, b in zip(rounds["this"], rounds["other"], strict=True)]
            print(f"this/other {label}, per round: {' '.join(f'{r:.2f}' for r in ratios)}; "
                  f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
