"""Serving throughput and latency: adaptive batching vs batch size 1 over HTTP, and the gRPC path, in one run.

    python bench/bench_serving.py --out runs/bench/serving            # demo package, concurrency 1 8 64, ~4-7 min
    python bench/bench_serving.py --requests 32 --warmup 8 --out /tmp/quick                       # 2-3 min
    python bench/bench_serving.py --requests 16 --warmup 8 --concurrency 1 8 --out /tmp/smoke     # < 1 min
    python bench/bench_serving.py --package PKG --data DATA --max-batch 64 --max-latency-ms 10000 --out DIR
    python bench/bench_serving.py --modes batching b1 --set NFC_ORT_THREADS=1 --out DIR

For each mode it starts the real stack on free loopback ports: nx-27017 (one server, one database per
mode) and `bentoml serve serving.service:PortfolioService` (what `nfc serve` runs, with its gRPC front)
with NFC_PREDICT_MAX_BATCH=--max-batch ("batching") or NFC_PREDICT_MAX_BATCH=1 ("b1": the predict API
is then declared not batchable, each call runs alone), then drives it with
an async load generator (httpx for HTTP, grpc.aio for gRPC) at each concurrency: a warm-up (excluded; it also lets
BentoML calibrate its batching), then --requests requests (at most --time-limit-s). The "grpc" mode
runs against the batching server. Every request is a distinct real prediction: the bars and news of the
model's window ending at a distinct bar of the data folder, with its own request id; a request counts
as OK only if it answered 200 with `stored: true` and its own request id, and at the end the MongoDB
database must hold exactly the OK requests. The encoder service batches its texts in both modes (its
own queue, NFC_ENCODER_MAX_BATCH); the modes differ in the portfolio service's predict queue.

At each concurrency the batching server serves HTTP, then gRPC. Prints a markdown table per server (req/s,
p50, p99, errors, mean fusion batch size the server ran) and the batching/b1 ratio per concurrency; writes
results.json, throughput.png and each server's log (serve-bench_*.log) to --out. The load
generator runs on the same CPU as the servers, and `load` is the 1-minute load average before each level
(other users of a shared machine show there). Servers are stopped by pid at the end, on error and on
Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
from machine import load_average, machine, machine_line, markdown_table
from pymongo import MongoClient

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from neuralfusion.manifest import load_manifest
from nfc.embedded_mongo import EmbeddedMongo, free_port
from nfc.processes import stop_process
from serving.client import predict_payload, request_to_proto, wait_until_ready
from serving.proto import neuralfusion_pb2_grpc as pb_grpc
from serving.settings import ServeSettings

log = logging.getLogger("bench_serving")

MODES = ("batching", "b1", "grpc")
LABELS = {"batching": "HTTP, adaptive batching", "b1": "HTTP, batch size 1", "grpc": "gRPC, adaptive batching"}
ROOT = Path(__file__).resolve().parents[1]  # bentoml serve's working dir: serving/ and bench/ import from it
DEMO = Path("runs/demo")
# settings each server gets from the benchmark itself
BENCH_OWNED = ("NFC_MONGO_URI", "NFC_MONGO_DB", "NFC_MODEL", "NFC_MODEL_PATH", "NFC_GRPC_PORT", "NFC_GRPC_HOST",
               "NFC_PREDICT_MAX_BATCH", "NFC_PREDICT_MAX_LATENCY_MS")
STARTUP_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60


@dataclass
class Level:
    """One mode at one concurrency: what the clients saw, and the batch sizes the server ran."""

    mode: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_latency_ms: int
    p99_inside_max_latency: bool
    mean_fusion_batch: float
    load_before: list[float]
    error_samples: list[str] = field(default_factory=list)


@dataclass
class Workload:
    """Prebuilt request bodies (JSON bytes for HTTP, protobuf for gRPC), each for a distinct as-of bar."""

    ids: list[str]
    http: list[bytes]
    grpc: list[Any]


def build_workload(package: Path, data: Path, n: int, first_bar: int, prefix: str) -> Workload:
    """`n` /predict bodies for the windows ending at bars first_bar, first_bar+1, ... of the data folder."""
    manifest = load_manifest(package)
    step = manifest.bar_spec.timedelta
    needed = int(manifest.data["features"]["warmup_bars"]) + manifest.window.lookback
    bars = BarFileSource(data / "bars.parquet").read()
    times = np.sort(bars["timestamp"].unique())
    if first_bar < needed or first_bar + n > len(times):
        raise SystemExit(f"the data folder has {len(times)} bars: {n} requests from bar {first_bar} need bars "
                         f"{first_bar - needed + 1}..{first_bar + n - 1}; lower --requests or use more data")
    lo, hi = pd.Timestamp(times[first_bar - needed]), pd.Timestamp(times[first_bar + n - 1])
    bars = bars[(bars["timestamp"] > lo) & (bars["timestamp"] <= hi)]  # smaller frames: faster slicing below
    news = read_news(data / "news.jsonl")
    news = news[(news["published_at"] > lo - step) & (news["published_at"] <= hi)]
    ids = [f"{prefix}-{i}" for i in range(n)]
    payloads = [predict_payload(bars, news, pd.Timestamp(times[first_bar + i]), needed, step, ids[i],
                                news_bars=manifest.window.lookback) for i in range(n)]
    return Workload(ids, [json.dumps(p).encode() for p in payloads], [request_to_proto(p) for p in payloads])


# -- the servers ------------------------------------------------------------------------------------------------


@contextmanager
def bentoml_serve(package: Path, mongo_uri: str, database: str, max_batch: int, max_latency_ms: int,
                  extra_env: dict[str, str], workdir: Path, log_dir: Path) -> Iterator[tuple[str, str]]:
    """(HTTP url, gRPC target) of a `bentoml serve` subprocess on free loopback ports, stopped by pid on exit."""
    http_port = free_port()
    grpc_port = free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("NFC_")}
    env.update(BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(workdir / "bentoml"), NFC_MONGO_URI=mongo_uri,
               NFC_MONGO_DB=database, NFC_PREDICT_MAX_BATCH=str(max_batch),
               NFC_PREDICT_MAX_LATENCY_MS=str(max_latency_ms), **extra_env)
    env.update(NFC_MODEL_PATH=str(package.resolve()), NFC_GRPC_PORT=str(grpc_port), NFC_GRPC_HOST="127.0.0.1")
    log_path = log_dir / f"serve-{database}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(  # own session: Ctrl-C reaches us, and we stop it in order
            [sys.executable, "-m", "bentoml", "serve", "serving.service:PortfolioService", "--host", "127.0.0.1",
             "--port", str(http_port),
             "--working-dir", str(ROOT)],
            env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        if not wait_until_ready(url, process, STARTUP_TIMEOUT_S):
            raise RuntimeError(f"bentoml serve did not become ready; its log ({log_path}):\n"
                               f"{log_path.read_text()[-3000:]}")
        yield url, f"127.0.0.1:{grpc_port}"
    finally:
        stop_process(process, STOP_TIMEOUT_S, group=True)


def fusion_batch_sizes(url: str) -> dict[int, int]:
    """{batch size: count} of the fusion runs of the (single) portfolio worker so far."""
    sizes = httpx.post(f"{url}/model_info", timeout=30).json()["batches"]["fusion"]["sizes"]
    return {int(n): count for n, count in sizes.items()}


def mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    new = {n: after[n] - before.get(n, 0) for n in after}
    runs = sum(new.values())
    return sum(n * c for n, c in new.items()) / runs if runs else 0.0


def stored_ids(mongo_uri: str, database: str) -> set[str]:
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        return {doc["request_id"] for doc in client[database]["predictions"].find({}, {"request_id": 1})}


# -- the load generator -----------------------------------------------------------------------------------------

Send = Callable[[int], Awaitable[str | None]]  # request index -> None when OK, else what went wrong


def http_sender(client: httpx.AsyncClient, url: str, work: Workload) -> Send:
    async def send(i: int) -> str | None:
        response = await client.post(f"{url}/predict", content=work.http[i],
                                     headers={"content-type": "application/json"})
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        body = response.json()
        if not body["stored"] or body["request_id"] != work.ids[i]:
            return f"answer for {body['request_id']} (stored={body['stored']}) to {work.ids[i]}"
        return None
    return send


def grpc_sender(stub: pb_grpc.PortfolioServiceStub, work: Workload, timeout_s: float) -> Send:
    async def send(i: int) -> str | None:
        try:
            reply = await stub.Predict(work.grpc[i], timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return f"gRPC {err.code().name}: {(err.details() or '')[:200]}"
        if not reply.prediction.stored or reply.prediction.request_id != work.ids[i]:
            return f"answer for {reply.prediction.request_id} to {work.ids[i]}"
        return None
    return send


async def drive(send: Send, indices: range, concurrency: int, time_limit_s: float,
                ok: set[int]) -> tuple[list[float], list[str], float]:
    """Send `indices` with `concurrency` requests in flight; no new request after time_limit_s. Adds the OK
    indices to `ok`; returns (latencies of OK requests in ms, error messages, wall seconds)."""
    pending = iter(indices)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()

    async def client() -> None:
        for i in pending:  # one shared iterator: each index is sent once
            if time.perf_counter() - start > time_limit_s:
                return
            sent = time.perf_counter()
            try:
                error = await send(i)
            except (TimeoutError, httpx.HTTPError) as err:
                error = f"{type(err).__name__}: {err}"
            if error is None:
                latencies.append(1000 * (time.perf_counter() - sent))
                ok.add(i)
            else:
                errors.append(error)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


async def run_server(modes: list[str], url: str, grpc_target: str, works: dict[str, Workload],
                     args: argparse.Namespace, max_latency_ms: int, ok: dict[str, set[int]]) -> list[Level]:
    """Every concurrency for `modes` against one running server, the modes taking turns at each concurrency
    (so each meets the batching queue in the same state); request indices never repeat, OK ones go to `ok`."""
    timeout_s = max_latency_ms / 1000 + 60
    levels = []
    async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=max(args.concurrency))) as hc, \
            grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.PortfolioServiceStub(channel)
        senders = {mode: grpc_sender(stub, works[mode], timeout_s) if mode == "grpc"
                   else http_sender(hc, url, works[mode]) for mode in modes}
        offsets = dict.fromkeys(modes, 0)
        for concurrency in args.concurrency:
            for mode in modes:
                send, offset, warmup = senders[mode], offsets[mode], max(args.warmup, concurrency)
                await drive(send, range(offset, offset + warmup), concurrency, args.time_limit_s, ok[mode])
                offset += warmup
                load = load_average()
                before = fusion_batch_sizes(url)
                latencies, errors, wall = await drive(send, range(offset, offset + args.requests), concurrency,
                                                      args.time_limit_s, ok[mode])
                offsets[mode] = offset + args.requests
                lat = np.array(latencies) if latencies else np.array([np.nan])
                p99 = float(np.percentile(lat, 99))
                levels.append(Level(
                    mode=mode, concurrency=concurrency, requests=len(latencies) + len(errors), ok=len(latencies),
                    errors=len(errors), wall_s=round(wall, 2), rps=round(len(latencies) / wall, 2),
                    p50_ms=round(float(np.percentile(lat, 50)), 1), p99_ms=round(p99, 1),
                    mean_ms=round(float(lat.mean()), 1), max_latency_ms=max_latency_ms,
                    p99_inside_max_latency=bool(p99 <= max_latency_ms),
                    mean_fusion_batch=round(mean_batch(before, fusion_batch_sizes(url)), 2), load_before=load,
                    error_samples=sorted(set(errors))[:5]))
                log.info("%s c=%d: %.2f req/s, p50 %.0f ms, p99 %.0f ms, %d errors, load %s", mode, concurrency,
                         levels[-1].rps, levels[-1].p50_ms, p99, len(errors), load)
    return levels


# -- reporting ----------------------------------------------------------------------------------------------------


def levels_table(levels: list[Level]) -> str:
    rows = [[lv.mode, lv.concurrency, lv.ok, lv.errors, f"{lv.rps:.2f}", f"{lv.p50_ms:.0f}", f"{lv.p99_ms:.0f}",
             "yes" if lv.p99_inside_max_latency else "NO", f"{lv.mean_fusion_batch:.1f}", lv.load_before[0]]
            for lv in levels]
    return markdown_table(["mode", "concurrency", "ok", "errors", "req/s", "p50 ms", "p99 ms",
                           "p99 <= max latency", "mean fusion batch", "load"], rows)


def ratios(levels: list[Level]) -> dict[str, dict[int, float]]:
    """batching/b1 and grpc/batching throughput per concurrency, where both were measured."""
    rps = {(lv.mode, lv.concurrency): lv.rps for lv in levels}
    out: dict[str, dict[int, float]] = {}
    for name, (a, b) in {"batching/b1": ("batching", "b1"), "grpc/batching": ("grpc", "batching")}.items():
        common = sorted(c for m, c in rps if m == a and (b, c) in rps and rps[(b, c)] > 0)
        if common:
            out[name] = {c: round(rps[(a, c)] / rps[(b, c)], 2) for c in common}
    return out


def batching_goal(levels: list[Level], target: float = 4.0) -> dict[str, Any] | None:
    """The issue's goal: batching >= 4x the b1 throughput at the highest concurrency, p99 within the deadline."""
    top = max((lv.concurrency for lv in levels), default=0)
    by_mode = {lv.mode: lv for lv in levels if lv.concurrency == top}
    if "batching" not in by_mode or "b1" not in by_mode or not by_mode["b1"].rps:
        return None
    ratio = by_mode["batching"].rps / by_mode["b1"].rps
    reached = ratio >= target and by_mode["batching"].p99_inside_max_latency
    return {"concurrency": top, "ratio": round(ratio, 2), "target": target, "reached": reached,
            "text": f"goal: batching >= {target:g}x b1 at concurrency {top} with p99 <= "
                    f"{by_mode['batching'].max_latency_ms} ms: {'reached' if reached else 'NOT reached'} "
                    f"({ratio:.2f}x, p99 {by_mode['batching'].p99_ms:.0f} ms)"}


def plot(levels: list[Level], path: Path, title: str) -> None:
    """Throughput vs concurrency, one line per mode (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for mode in MODES:
        points = [(lv.concurrency, lv.rps) for lv in levels if lv.mode == mode]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=LABELS[mode])
    ax.set_xscale("log", base=2)
    concurrencies = sorted({lv.concurrency for lv in levels})
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("predictions / s")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both servers in turn (the modes that need them), against one nx-27017; server logs go to args.out."""
    max_latency_ms = args.max_latency_ms
    extra_env = dict(item.split("=", 1) for item in args.set)
    per_mode = sum(max(args.warmup, c) + args.requests for c in args.concurrency)
    log.info("building %d distinct requests per mode", per_mode)
    http_work = build_workload(args.package, args.data, per_mode, args.first_bar, "bench-http")
    grpc_work = build_workload(args.package, args.data, per_mode, args.first_bar + per_mode, "bench-grpc") \
        if "grpc" in args.modes else http_work
    works = {"batching": http_work, "b1": http_work, "grpc": grpc_work}
    levels: list[Level] = []
    stored: dict[str, dict[str, Any]] = {}
    with EmbeddedMongo(workdir / "mongo") as mongo:
        servers = [("batching", args.max_batch, [m for m in ("batching", "grpc") if m in args.modes]),
                   ("b1", 1, ["b1"] if "b1" in args.modes else [])]
        for database, max_batch, modes in servers:
            if not modes:
                continue
            log.info("starting bentoml serve with NFC_PREDICT_MAX_BATCH=%d", max_batch)
            with bentoml_serve(args.package, mongo.uri, f"bench_{database}", max_batch, max_latency_ms, extra_env,
                               workdir, args.out) as (url, grpc_target):
                ok: dict[str, set[int]] = {mode: set() for mode in modes}
                server_levels = asyncio.run(run_server(modes, url, grpc_target, works, args, max_latency_ms, ok))
                levels += server_levels
                print(f"\n{levels_table(server_levels)}", flush=True)
                answered = {works[mode].ids[i] for mode in modes for i in ok[mode]}
                in_db = stored_ids(mongo.uri, f"bench_{database}")
                stored[database] = {"ok_answers": len(answered), "documents": len(in_db),
                                    "matches": in_db == answered}
    return {"levels": levels, "ratios": ratios(levels), "stored": stored}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=DEMO / "package", help="model package folder")
    parser.add_argument("--data", type=Path, default=DEMO / "data", help="data folder the requests are cut from")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and throughput.png")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests", type=int, default=128, help="measured requests per mode and concurrency")
    parser.add_argument("--warmup", type=int, default=16, help="warm-up requests per level (at least concurrency)")
    parser.add_argument("--time-limit-s", type=float, default=120, help="no new request after this, per level")
    parser.add_argument("--max-batch", type=int, default=ServeSettings().predict_max_batch,
                        help="NFC_PREDICT_MAX_BATCH of the batching server")
    parser.add_argument("--max-latency-ms", type=int, default=ServeSettings().predict_max_latency_ms,
                        help="NFC_PREDICT_MAX_LATENCY_MS of both servers; p99 is checked against it")
    parser.add_argument("--first-bar", type=int, default=1000, help="as-of bar of the first request")
    parser.add_argument("--set", action="append", default=[], metavar="NFC_X=VALUE",
                        help="extra setting for both servers, e.g. NFC_ORT_THREADS=1 (repeatable)")
    args = parser.parse_args()
    if not (args.package / "manifest.json").exists():
        parser.error(f"{args.package} is not a model package: run `nfc demo --out runs/demo` (or `nfc export`) "
                     "first, or pass --package and --data")
    if min(args.concurrency) < 1 or args.requests < 1 or args.max_batch < 1 or args.max_latency_ms < 1:
        parser.error("--concurrency, --requests, --max-batch and --max-latency-ms must be positive")
    bad = [item for item in args.set if not item.startswith("NFC_") or "=" not in item]
    if bad:
        parser.error(f"--set takes NFC_NAME=VALUE, got {bad}")
    extra = dict(item.split("=", 1) for item in args.set)
    owned = sorted(set(extra) & set(BENCH_OWNED))
    if owned:
        parser.error(f"--set {owned}: the benchmark sets these itself (use --max-batch, --max-latency-ms, --package)")
    try:
        ServeSettings.from_env(extra)  # a bad value fails here, not in the servers
    except ValueError as err:
        parser.error(f"--set: {err}")
    return args


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the servers' cleanup, like Ctrl-C


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    info = machine()
    print(f"machine: {machine_line(info)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nfc-bench-") as tmp:
        result = run(args, Path(tmp))
    info["load_after"] = load_average()
    levels: list[Level] = result["levels"]
    print(f"\n{levels_table(levels)}\n")
    for name, by_concurrency in result["ratios"].items():
        print(f"{name} throughput: " + ", ".join(f"{r:.2f}x at {c}" for c, r in by_concurrency.items()))
    goal = batching_goal(levels)
    if goal:
        print(goal["text"])
    print(f"stored in MongoDB: {result['stored']}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps(
        {"machine": info, "args": settings, "levels": [asdict(lv) for lv in levels], "ratios": result["ratios"],
         "stored": result["stored"], "goal": goal}, indent=2))
    plot(levels, args.out / "throughput.png",
         f"/predict, max batch {args.max_batch} vs 1; {info['nproc']} CPU cores, load {info['load'][0]}")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'throughput.png'}")


if __name__ == "__main__":
    main()
