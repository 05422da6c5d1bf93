"""Serving throughput against the ONNX Runtime limit: every compared server at once, interleaved, CPU read from /proc.

    python bench/bench_serving.py --quick --out runs/bench/serving-quick    # concurrency 8 and 64, < 5 min
    python bench/bench_serving.py --out runs/bench/serving                  # concurrency 1 8 64, more rounds
    python bench/bench_serving.py --package runs/demo/package --data runs/demo/data --out DIR
    python bench/bench_serving.py --device cuda --modes rows rows-b1 raw --concurrency 1 8 64 --out DIR   # a GPU

Without --package it builds (once, then reuses) a demo-shaped package under runs/bench/demo-shaped
(bench/bench_package.py: 12 assets, 160 bars a request, the default encoder and fusion model; ~2 minutes).

It starts one nx-27017 and two `bentoml serve serving.service:PortfolioService` subprocesses at the same time,
each with its own MongoDB database and --workers entry workers (NFC_WORKERS; default one per core, as a CPU host
would run it: an entry worker's work is Python, so one worker uses one core at most), on free loopback ports:
"batching" (NFC_PREDICT_MAX_BATCH=--max-batch, the encoder's default queue, gRPC on) and "b1"
(NFC_PREDICT_MAX_BATCH=1 and NFC_ENCODER_MAX_BATCH=1: every call runs alone). The modes it compares:

  rows          HTTP POST /predict, JSON rows (batching server)
  rows-b1       the same requests to the b1 server
  grpc          gRPC Predict, the rows as messages (batching server)
  columns       HTTP POST /predict/columns, one JSON array per field (batching server)
  byref         HTTP POST /predict/at, an as-of time only: the server reads the bars from the data folder
                (NFC_BARS_DIR) and the news from MongoDB (the folder's news, stored in the seed's shape)
  raw           no server: the package's encoder and fusion ONNX Runtime sessions in this process, on the rows
                requests (prepared beforehand), in runs of min(concurrency, --max-batch) requests: the ORT limit
  raw-cached    the same, encoding each distinct text once in the run (as the servers' vector caches do): what
                ONNX Runtime must do at least; the served modes' ratio to it is printed beside served/raw
  arrow         HTTP POST /predict/arrow, an Arrow IPC stream (only with --modes)
  grpc-columns  gRPC PredictColumns (only with --modes)
A mode whose HTTP route the server does not publish is skipped with a line saying so.

At each concurrency every mode first runs a warm-up burst (not counted; it also lets BentoML calibrate its
batching; --warmup requests, default one burst), then --rounds rounds in which the modes take turns, one short
burst each (max(16, --burst-factor x concurrency) requests with `concurrency` in flight; the order reverses every
round): the host's load drifts, so no mode is measured after another. Every request is a distinct real prediction
(the window ending at a distinct bar of the data folder, its own request id; rows-b1 and raw get the rows
requests); it counts as OK only when it answered 200, `stored: true` and its own request id. After each burst the
server's database must hold exactly the request ids of that burst's OK answers, which are then moved out of the
database (kept in the run's count), so every burst starts from an empty predictions collection: the embedded
nx-27017 server's upsert costs more the more documents it holds (0.7 -> 2.7 ms of its CPU a write from 64 to 4,672
documents, with a pool of 8 or 100 connections alike), which would tax each burst for the ones before it; a
production MongoDB answers an indexed upsert in about the same time at any size. At the end every OK request id
must have been stored.

Around each burst it reads the CPU time (utime + stime, /proc/PID/stat) of every process of that server (the entry,
encoder and fusion workers and BentoML's supervisor), and reports CPU ms per request per process (and, beside the
server's total, what its own client and the MongoDB server spent: on a small host they share its cores), with req/s,
p50/p99 latency (checked against NFC_PREDICT_MAX_LATENCY_MS) and errors. It prints served/raw and
served/raw-cached for every mode and concurrency, batching/b1, byref/rows, columns/rows and grpc/rows, and the
issue's must-hold checks; it writes results.json (`served_over_raw`: {mode: {concurrency: req/s ratio}};
`served_over_raw_cpu`: the same from CPU ms per request, which a busy host distorts less;
`served_over_raw_cached`, `served_over_raw_cached_cpu`: against raw-cached), throughput.png and the server logs
to --out. Servers are stopped by pid at the end, on error, Ctrl-C and SIGTERM.
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
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import grpc
import httpx
import numpy as np
import pandas as pd
from bench_package import DEFAULT_DIR, bench_package
from machine import load_average, machine, machine_line, markdown_table, process_tree_cpu, t_interval
from pymongo import MongoClient

from neuralfusion.client import KEEPALIVE_EXPIRY_S
from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from neuralfusion.manifest import load_manifest
from nfc.embedded_mongo import EmbeddedMongo, free_port
from nfc.processes import stop_process
from serving.client import (
    arrow_payload,
    columns_payload,
    columns_to_proto,
    predict_payload,
    request_to_proto,
    wait_until_ready,
)
from serving.columns import ARROW_MEDIA_TYPE
from serving.proto import neuralfusion_pb2_grpc as pb_grpc
from serving.runtime import PortfolioRuntime, PreparedRequest
from serving.schemas import PredictRequest
from serving.settings import ServeSettings

log = logging.getLogger("bench_serving")

ROOT = Path(__file__).resolve().parents[1]  # bentoml serve's working dir: serving/ imports from it


@dataclass(frozen=True)
class ModeSpec:
    server: str | None  # "batching", "b1", or None (raw: no server)
    route: str | None  # the HTTP route of the mode, which the server must publish (gRPC modes: None)
    label: str
    inline: bool  # the client sends the bars and news (the issue's "inline requests")
    content_type: str = "application/json"


MODES: dict[str, ModeSpec] = {
    "rows": ModeSpec("batching", "/predict", "HTTP /predict, JSON rows", True),
    "rows-b1": ModeSpec("b1", "/predict", "HTTP /predict, JSON rows, batch size 1", True),
    "grpc": ModeSpec("batching", None, "gRPC Predict (rows)", True),
    "columns": ModeSpec("batching", "/predict/columns", "HTTP /predict/columns, JSON arrays", True),
    "arrow": ModeSpec("batching", "/predict/arrow", "HTTP /predict/arrow, Arrow IPC", True, ARROW_MEDIA_TYPE),
    "grpc-columns": ModeSpec("batching", None, "gRPC PredictColumns", True),
    "byref": ModeSpec("batching", "/predict/at", "HTTP /predict/at, by reference", False),
    "raw": ModeSpec(None, None, "ONNX Runtime alone, one process", False),
    "raw-cached": ModeSpec(None, None, "ONNX Runtime alone, each distinct text encoded once", False),
}
DEFAULT_MODES = ("rows", "rows-b1", "grpc", "columns", "byref", "raw", "raw-cached")  # arrow, grpc-columns: --modes
LIMITS = ("raw", "raw-cached")  # the modes without a server: what ONNX Runtime alone does
BESIDE = ("client", "mongodb")  # what shares the host with a server's burst without being the server
SERVERS = ("batching", "b1")
# settings each server gets from the benchmark itself
BENCH_OWNED = ("NFC_MONGO_URI", "NFC_MONGO_DB", "NFC_MODEL", "NFC_MODEL_PATH", "NFC_GRPC_PORT", "NFC_GRPC_HOST",
               "NFC_PREDICT_MAX_BATCH", "NFC_PREDICT_MAX_LATENCY_MS", "NFC_ENCODER_MAX_BATCH", "NFC_DEVICE",
               "NFC_BARS_DIR", "NFC_NEWS_MONGO_URI", "NFC_NEWS_DB", "NFC_NEWS_COLLECTION", "NFC_WORKERS")
NEWS_DB, NEWS_COLLECTION = "bench_news", "news"  # where the by-reference server reads the news
STARTUP_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60
SERVED_OVER_RAW_TARGET = 0.7  # the issue's must-hold numbers (on the CPU)
BYREF_OVER_ROWS_TARGET = 3.0
# the issue's "today": inline requests/s at concurrency 8 on this 2-core host when it was filed were 10-16; byref is
# also checked against the top of that range (the same-run rows are faster now, so both are printed)
ISSUE_INLINE_RPS = 16.0
BATCHING_NOISE_FLOOR = 0.9  # batching/b1 at or above this is "not below batch size 1" whatever the rounds say
GPU_BATCHING_TARGET = 4.0


# -- the requests -------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """One mode's distinct requests, in the order they are sent: request ids, as-of bars, and bodies."""

    ids: list[str]
    as_of: list[pd.Timestamp]
    bodies: list[Any] = field(default_factory=list)  # JSON bytes (HTTP) or a protobuf message (gRPC)


@dataclass(frozen=True)
class Market:
    """The data folder the requests are cut from, cut to the bars they need."""

    bars: pd.DataFrame
    news: pd.DataFrame
    times: np.ndarray  # every bar close time, ascending
    step: pd.Timedelta
    needed: int  # bars per symbol a request carries: feature warm-up + lookback
    lookback: int


def read_market(package: Path, data: Path) -> Market:
    manifest = load_manifest(package)
    bars = BarFileSource(data / "bars.parquet").read()
    needed = int(manifest.data["features"]["warmup_bars"]) + manifest.window.lookback
    return Market(bars, read_news(data / "news.jsonl"), np.sort(bars["timestamp"].unique()),
                  manifest.bar_spec.timedelta, needed, manifest.window.lookback)


def as_of_bars(market: Market, first_bar: int, n: int) -> list[pd.Timestamp]:
    """The close times of bars first_bar .. first_bar + n - 1, refused when the data folder is too short."""
    if first_bar < market.needed or first_bar + n > len(market.times):
        raise SystemExit(f"the data folder has {len(market.times)} bars: {n} requests from bar {first_bar} need "
                         f"bars {first_bar - market.needed + 1}..{first_bar + n - 1}; use fewer requests "
                         "(--quick, --rounds, --burst-factor) or more data")
    return [pd.Timestamp(t) for t in market.times[first_bar:first_bar + n]]


def inline_bodies(market: Market, as_of: list[pd.Timestamp], ids: list[str],
                  payload: Callable[..., Any] = predict_payload) -> list[Any]:
    """Inline bodies as a client sends them (`payload`: serving.client's builder of the format): the bars of the
    window and the news of its lookback."""
    lo, hi = as_of[0] - market.step * market.needed, as_of[-1]
    bars = market.bars[(market.bars["timestamp"] > lo) & (market.bars["timestamp"] <= hi)]
    news = market.news[(market.news["published_at"] > lo) & (market.news["published_at"] <= hi)]
    return [payload(bars, news, end, market.needed, market.step, rid, news_bars=market.lookback)
            for end, rid in zip(as_of, ids, strict=True)]


def build_bodies(mode: str, market: Market, work: Workload) -> None:
    """Fill `work.bodies` with what `mode` sends for each of its requests."""
    if mode == "rows":
        work.bodies = [json.dumps(p).encode() for p in inline_bodies(market, work.as_of, work.ids)]
    elif mode == "grpc":
        work.bodies = [request_to_proto(p) for p in inline_bodies(market, work.as_of, work.ids)]
    elif mode == "columns":
        work.bodies = [json.dumps(p).encode() for p in inline_bodies(market, work.as_of, work.ids, columns_payload)]
    elif mode == "grpc-columns":
        work.bodies = [columns_to_proto(p) for p in inline_bodies(market, work.as_of, work.ids, columns_payload)]
    elif mode == "arrow":
        work.bodies = inline_bodies(market, work.as_of, work.ids, arrow_payload)
    elif mode == "byref":  # the as-of bar only: the server reads its bars and news itself
        work.bodies = [json.dumps({"as_of": end.isoformat(), "request_id": rid}).encode()
                       for end, rid in zip(work.as_of, work.ids, strict=True)]
    else:
        raise ValueError(f"no request builder for mode {mode!r}")


# -- the servers ------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A running `bentoml serve` of one configuration, and what its database should hold."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    grpc_target: str
    database: str
    routes: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)  # request ids answered OK, over all its modes
    moved: set[str] = field(default_factory=set)  # of those, the ids checked in and moved out of its database


def start_server(name: str, args: argparse.Namespace, mongo_uri: str, workdir: Path) -> Server:
    """Start `bentoml serve` for the named configuration on free loopback ports (not yet waited for)."""
    http_port, grpc_port = free_port(), free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    batch = args.max_batch if name == "batching" else 1
    env = {key: value for key, value in os.environ.items() if not key.startswith("NFC_")}
    env.update({item.split("=", 1)[0]: item.split("=", 1)[1] for item in args.set})
    env.update(BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(workdir / f"bentoml-{name}"), NFC_MONGO_URI=mongo_uri,
               NFC_MONGO_DB=f"bench_{name}", NFC_MODEL_PATH=str(args.package.resolve()),
               NFC_PREDICT_MAX_BATCH=str(batch), NFC_PREDICT_MAX_LATENCY_MS=str(args.max_latency_ms),
               NFC_WORKERS=str(args.workers),
               NFC_DEVICE=args.device, NFC_GRPC_PORT=str(grpc_port), NFC_GRPC_HOST="127.0.0.1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if name == "b1":
        env["NFC_ENCODER_MAX_BATCH"] = "1"
    else:  # the sources of /predict/at: the bars of the data folder, the news from MongoDB (seed_news)
        env.update(NFC_BARS_DIR=str(args.data.resolve()), NFC_NEWS_MONGO_URI=mongo_uri, NFC_NEWS_DB=NEWS_DB,
                   NFC_NEWS_COLLECTION=NEWS_COLLECTION)
    log_path = args.out / f"serve-{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(  # own session: stopped as a group, after us on Ctrl-C
            [sys.executable, "-m", "bentoml", "serve", "serving.service:PortfolioService", "--host", "127.0.0.1",
             "--port", str(http_port), "--working-dir", str(ROOT)],
            env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", f"bench_{name}")


@contextmanager
def running_servers(names: list[str], args: argparse.Namespace, mongo_uri: str,
                    workdir: Path) -> Iterator[dict[str, Server]]:
    """The named servers, started at the same time and ready; stopped by pid on exit. A server that lost its port
    to another process between `free_port` and its bind (the other server's inner services take free ports too)
    starts again once on new ports."""
    with ExitStack() as stack:
        servers: dict[str, Server] = {}
        for name in names:
            server = start_server(name, args, mongo_uri, workdir)
            stack.callback(stop_process, server.process, STOP_TIMEOUT_S, group=True)
            servers[name] = server
        for name in list(servers):
            for attempt in range(2):
                server = servers[name]
                if wait_until_ready(server.url, server.process, STARTUP_TIMEOUT_S):
                    break
                log_text = (args.out / f"serve-{name}.log").read_text()[-3000:]
                if attempt or "Address already in use" not in log_text:
                    raise RuntimeError(f"bentoml serve ({name}) did not become ready; its log:\n{log_text}")
                log.warning("%s server lost its port to another process; starting it again on new ports", name)
                stop_process(server.process, STOP_TIMEOUT_S, group=True)
                servers[name] = start_server(name, args, mongo_uri, workdir)
                stack.callback(stop_process, servers[name].process, STOP_TIMEOUT_S, group=True)
            server = servers[name]
            server.routes = set(httpx.get(f"{server.url}/docs.json", timeout=30).json()["paths"])
            log.info("%s server ready at %s (gRPC %s)", name, server.url, server.grpc_target)
        yield servers


def batch_sizes(url: str) -> dict[str, dict[int, int]]:
    """{graph: {batch size: runs}} of the server's inner services so far."""
    batches = httpx.get(f"{url}/model_info", timeout=60).json()["batches"]
    return {graph: {int(n): count for n, count in batches[graph]["sizes"].items()} for graph in ("fusion", "encoder")}


def seed_news(mongo_uri: str, news: pd.DataFrame) -> None:
    """The data folder's news as a news collection in the seed's shape (neuralfusion.data.news.NewsFieldMap's
    defaults: _id, releasedAt, title, content, assets[].symbol), for the by-reference server to read."""
    documents = []
    for item in news.itertuples():
        doc = {"_id": item.id, "releasedAt": item.published_at.to_pydatetime(), "title": item.title,
               "content": item.body or ""}
        if item.symbols is not None:
            doc["assets"] = [{"symbol": symbol} for symbol in item.symbols]
        documents.append(doc)
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        client[NEWS_DB][NEWS_COLLECTION].insert_many(documents)


def stored_ids(mongo_uri: str, database: str) -> set[str]:
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        return {doc["request_id"] for doc in client[database]["predictions"].find({}, {"request_id": 1})}


def move_out(mongo_uri: str, server: Server) -> bool:
    """Check that the server's database holds exactly the OK answers not yet moved out, then empty it (module
    docstring); whether it held them."""
    held = stored_ids(mongo_uri, server.database)
    expected = server.answered - server.moved
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        client[server.database]["predictions"].delete_many({})
    server.moved |= held
    return held == expected


# -- one burst --------------------------------------------------------------------------------------------------

Send = Callable[[int], Awaitable[str | None]]  # request index -> None when OK, else what went wrong


@dataclass
class Burst:
    """What one burst of one mode measured."""

    latencies_ms: list[float]
    errors: list[str]
    wall_s: float
    ok_ids: list[str]
    cpu_s: dict[str, float]  # per process label (raw: "bench"), CPU seconds spent during the burst
    batches: dict[str, dict[int, int]]  # per graph, runs by batch size during the burst
    stored_as_answered: bool | None  # the database held exactly the burst's OK request ids (None: raw)
    # CPU seconds of what shares the host with a server during its burst but is not the server: this benchmark's
    # client (its own process) and the MongoDB server (nx-27017); not in the server's total
    beside_s: dict[str, float] = field(default_factory=dict)


def load_session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    """The HTTP client that sends the load. aiohttp, not httpx: on this benchmark's two cores the client shares the
    server's CPU, and aiohttp spends ~0.3 ms of it a request at 64 in flight where httpx spends ~2.5-2.9 (a 364 kB
    body to a bare uvicorn app, one process each); the client's share is still measured and printed."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE_EXPIRY_S)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))


def http_sender(session: aiohttp.ClientSession, url: str, spec: ModeSpec, work: Workload) -> Send:
    async def send(i: int) -> str | None:
        async with session.post(f"{url}{spec.route}", data=work.bodies[i],
                                headers={"content-type": spec.content_type}) as response:
            if response.status != 200:
                return f"HTTP {response.status}: {(await response.text())[:200]}"
            body = await response.json()
        if not body["stored"] or body["request_id"] != work.ids[i]:
            return f"answer for {body['request_id']} (stored={body['stored']}) to {work.ids[i]}"
        return None
    return send


def grpc_sender(calls: list[Callable[..., Any]], work: Workload, timeout_s: float) -> Send:
    """Sends each request with a free one of `calls`, unary methods (Predict, PredictColumns) of stubs on their own
    connections, one per request in flight: each connection carries one call at a time, as each of the HTTP client's
    pooled connections does, so a worker whose connections answer sooner gets the next calls (calls sent round-robin
    over a few connections follow the kernel's split of those connections between workers, not the workers' pace)."""
    free: asyncio.Queue[Callable[..., Any]] = asyncio.Queue()
    for call in calls:
        free.put_nowait(call)

    async def send(i: int) -> str | None:
        call = await free.get()
        try:
            reply = await call(work.bodies[i], timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return f"gRPC {err.code().name}: {(err.details() or '')[:200]}"
        finally:
            free.put_nowait(call)
        if not reply.stored or reply.request_id != work.ids[i]:
            return f"answer for {reply.request_id} to {work.ids[i]}"
        return None
    return send


async def drive(send: Send, indices: range, concurrency: int) -> tuple[list[float], list[str], list[int], float]:
    """Send `indices` with `concurrency` requests in flight: (OK latencies in ms, errors, OK indices, wall s)."""
    pending = iter(indices)
    latencies: list[float] = []
    errors: list[str] = []
    ok: list[int] = []
    start = time.perf_counter()

    async def client() -> None:
        for i in pending:  # one shared iterator: each index is sent once
            sent = time.perf_counter()
            try:
                error = await send(i)
            except (TimeoutError, aiohttp.ClientError) as err:
                error = f"{type(err).__name__}: {err}"
            if error is None:
                latencies.append(1000 * (time.perf_counter() - sent))
                ok.append(i)
            else:
                errors.append(error)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors, ok, time.perf_counter() - start


PROCESS_NAMES = {"neuralfusion": "entry", "nfc-encoder": "encoder", "nfc-fusion": "fusion"}  # by service name


def cpu_by_label(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two process_tree_cpu readings, summed per process kind (entry, encoder, fusion,
    supervisor); a worker that restarted in between counts from zero."""
    out: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        name = PROCESS_NAMES.get(label, label)
        out[name] = out.get(name, 0.0) + seconds - before.get(pid, (label, 0.0))[1]
    return out


async def server_burst(send: Send, server: Server, work: Workload, indices: range, concurrency: int,
                       mongo_uri: str, mongo_pid: int | None) -> Burst:
    """One burst to a server, with its CPU per process, batch sizes and the database check around it."""
    batches_before = await asyncio.to_thread(batch_sizes, server.url)
    cpu_before = process_tree_cpu(server.process.pid)
    beside_before = _beside_cpu(mongo_pid)
    latencies, errors, ok, wall = await drive(send, indices, concurrency)
    beside = {label: seconds - beside_before[label] for label, seconds in _beside_cpu(mongo_pid).items()}
    cpu_after = process_tree_cpu(server.process.pid)
    batches_after = await asyncio.to_thread(batch_sizes, server.url)
    ok_ids = [work.ids[i] for i in ok]
    server.answered.update(ok_ids)
    held = await asyncio.to_thread(move_out, mongo_uri, server)
    return Burst(latencies, errors, wall, ok_ids, cpu_by_label(cpu_before, cpu_after),
                 {graph: {n: c - batches_before[graph].get(n, 0) for n, c in sizes.items()
                          if c > batches_before[graph].get(n, 0)} for graph, sizes in batches_after.items()},
                 held, beside)


def _beside_cpu(mongo_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of this process (the client) and of the MongoDB server."""
    out = {"client": time.process_time()}
    if mongo_pid is not None:
        out["mongodb"] = sum(seconds for _, seconds in process_tree_cpu(mongo_pid).values())
    return out


class RawRunner:
    """The ORT limit: the package's encoder and fusion sessions in this process on prepared requests."""

    def __init__(self, package: Path, device: str, threads: int | None, max_batch: int) -> None:
        self.runtime = PortfolioRuntime.load(package, device, threads=threads)
        self.max_batch = max_batch
        self.prepared: list[PreparedRequest] = []
        self.known: dict[str, np.ndarray] = {}  # raw-cached: the vector of each text encoded so far

    def prepare(self, bodies: list[bytes]) -> None:
        """Parse and prepare the rows requests beforehand: the limit counts ONNX Runtime's work only."""
        self.prepared = [self.runtime.prepare(PredictRequest.model_validate_json(b)) for b in bodies]

    def burst(self, work: Workload, indices: range, concurrency: int, cached: bool = False) -> Burst:
        """Runs of min(concurrency, max_batch) requests: their texts (`cached`: those not encoded before) in one
        encode call, then one fusion run."""
        size = min(concurrency, self.max_batch)
        latencies: list[float] = []
        cpu_before, start = time.process_time(), time.perf_counter()
        for first in range(indices.start, indices.stop, size):
            chunk = self.prepared[first:min(first + size, indices.stop)]
            began = time.perf_counter()
            texts = [text for item in chunk for text in item.texts]
            self.runtime.predict(chunk, self._vectors(texts, cached))
            latencies += [1000 * (time.perf_counter() - began)] * len(chunk)
        wall = time.perf_counter() - start
        return Burst(latencies, [], wall, [work.ids[i] for i in indices], {"bench": time.process_time() - cpu_before},
                     {}, None)

    def _vectors(self, texts: list[str], cached: bool) -> np.ndarray:
        assert self.runtime.encoder is not None  # loaded with its encoder
        if not cached:
            return self.runtime.encoder.encode(texts).vectors
        new = [text for text in dict.fromkeys(texts) if text not in self.known]
        if new:
            self.known.update(zip(new, self.runtime.encoder.encode(new).vectors, strict=True))
        return np.stack([self.known[text] for text in texts]) if texts else np.zeros((0, self.runtime.embed_dim),
                                                                                       np.float32)


# -- the run --------------------------------------------------------------------------------------------------


@dataclass
class Level:
    """One mode at one concurrency, summed over its measured bursts."""

    mode: str
    concurrency: int
    bursts: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_latency_ms: int
    p99_inside_max_latency: bool
    cpu_ms_per_request: dict[str, float]
    mean_batch: dict[str, float]
    stored_as_answered: bool | None
    burst_rps: list[float]
    load_before: list[float]
    error_samples: list[str] = field(default_factory=list)
    beside_cpu_ms_per_request: dict[str, float] = field(default_factory=dict)  # the client's and MongoDB's


def summarise(mode: str, concurrency: int, bursts: list[Burst], max_latency_ms: int, load: list[float]) -> Level:
    latencies = np.array([x for b in bursts for x in b.latencies_ms]) if any(b.latencies_ms for b in bursts) \
        else np.array([np.nan])
    ok = sum(len(b.ok_ids) for b in bursts)
    errors = [e for b in bursts for e in b.errors]
    wall = sum(b.wall_s for b in bursts)
    cpu_ms = _ms_per_request([b.cpu_s for b in bursts], ok)
    cpu_ms["total"] = round(sum(cpu_ms.values()), 1)
    runs: dict[str, dict[int, int]] = {}
    for b in bursts:
        for graph, sizes in b.batches.items():
            for n, count in sizes.items():
                runs.setdefault(graph, {})[n] = runs.setdefault(graph, {}).get(n, 0) + count
    mean_batch = {graph: round(sum(n * c for n, c in sizes.items()) / max(sum(sizes.values()), 1), 2)
                  for graph, sizes in runs.items()}
    checks = [b.stored_as_answered for b in bursts if b.stored_as_answered is not None]
    p99 = float(np.percentile(latencies, 99))
    return Level(mode=mode, concurrency=concurrency, bursts=len(bursts), requests=ok + len(errors), ok=ok,
                 errors=len(errors), wall_s=round(wall, 2), rps=round(ok / wall, 2) if wall else 0.0,
                 p50_ms=round(float(np.percentile(latencies, 50)), 1), p99_ms=round(p99, 1),
                 max_latency_ms=max_latency_ms, p99_inside_max_latency=bool(p99 <= max_latency_ms),
                 cpu_ms_per_request=cpu_ms, mean_batch=mean_batch, stored_as_answered=all(checks) if checks else None,
                 burst_rps=[round(len(b.ok_ids) / b.wall_s, 2) for b in bursts], load_before=load,
                 error_samples=sorted(set(errors))[:5],
                 beside_cpu_ms_per_request=_ms_per_request([b.beside_s for b in bursts], ok))


def _ms_per_request(per_burst: list[dict[str, float]], ok: int) -> dict[str, float]:
    """CPU seconds by label, summed over the bursts, as ms per OK request."""
    total: dict[str, float] = {}
    for seconds_by_label in per_burst:
        for label, seconds in seconds_by_label.items():
            total[label] = total.get(label, 0.0) + seconds
    return {label: round(1000 * seconds / max(ok, 1), 1) for label, seconds in sorted(total.items())}


def burst_size(args: argparse.Namespace, concurrency: int) -> int:
    return max(16, args.burst_factor * concurrency)


def warmup_size(args: argparse.Namespace, concurrency: int) -> int:
    return args.warmup if args.warmup is not None else burst_size(args, concurrency)


def requests_per_mode(args: argparse.Namespace) -> int:
    return sum(warmup_size(args, c) + args.rounds * burst_size(args, c) for c in args.concurrency)


async def measure(modes: list[str], servers: dict[str, Server], works: dict[str, Workload], raw: RawRunner | None,
                  args: argparse.Namespace, mongo_uri: str, mongo_pid: int | None) -> list[Level]:
    """Every concurrency: one warm-up burst per mode, then --rounds rounds of one burst per mode in turn."""
    timeout_s = args.max_latency_ms / 1000 + 60
    levels: list[Level] = []
    async with load_session(max(args.concurrency), timeout_s) as client:
        senders: dict[str, Send] = {}

        async def connect(stack: AsyncExitStack, concurrency: int) -> None:
            """Each mode's sender for one concurrency; gRPC modes get `concurrency` connections, closed with
            `stack`: the workers' gRPC servers share one port (SO_REUSEPORT) and the kernel spreads connections, not
            calls, between them."""
            for mode in modes:
                spec = MODES[mode]
                if mode in ("grpc", "grpc-columns"):
                    calls = []
                    for _ in range(concurrency):
                        channel = await stack.enter_async_context(grpc.aio.insecure_channel(
                            servers["batching"].grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]))
                        stub = pb_grpc.PortfolioServiceStub(channel)
                        calls.append(stub.Predict if mode == "grpc" else stub.PredictColumns)
                    senders[mode] = grpc_sender(calls, works[mode], timeout_s)
                elif spec.server is not None:
                    senders[mode] = http_sender(client, servers[spec.server].url, spec, works[mode])

        async def burst(mode: str, indices: range, concurrency: int) -> Burst:
            spec = MODES[mode]
            if spec.server is None:
                assert raw is not None
                return await asyncio.to_thread(raw.burst, works[mode], indices, concurrency, mode == "raw-cached")
            return await server_burst(senders[mode], servers[spec.server], works[mode], indices, concurrency,
                                      mongo_uri, mongo_pid)

        cursor = 0  # every mode sends its own requests in the same order, so rows, rows-b1 and raw share theirs
        for concurrency in args.concurrency:
            size, warmup = burst_size(args, concurrency), warmup_size(args, concurrency)
            measured: dict[str, list[Burst]] = {mode: [] for mode in modes}
            async with AsyncExitStack() as connections:
                await connect(connections, concurrency)
                for mode in modes:  # not counted
                    await burst(mode, range(cursor, cursor + warmup), concurrency)
                cursor += warmup
                load = load_average()
                for round_ in range(args.rounds):
                    order = modes if round_ % 2 == 0 else modes[::-1]  # nobody always goes first
                    for mode in order:
                        measured[mode].append(await burst(mode, range(cursor, cursor + size), concurrency))
                    cursor += size
            for mode in modes:
                level = summarise(mode, concurrency, measured[mode], args.max_latency_ms, load)
                levels.append(level)
                log.info("%-8s c=%-3d %7.2f req/s  p50 %6.0f ms  p99 %6.0f ms  %d errors  CPU %s ms/request",
                         mode, concurrency, level.rps, level.p50_ms, level.p99_ms, level.errors,
                         level.cpu_ms_per_request.get("total"))
    return levels


# -- ratios, checks and the report ----------------------------------------------------------------------------------


def rps_of(levels: list[Level]) -> dict[tuple[str, int], float]:
    return {(lv.mode, lv.concurrency): lv.rps for lv in levels}


def ratio_table(levels: list[Level], a: str, b: str) -> dict[int, float]:
    """rps(a) / rps(b) at every concurrency both were measured."""
    rps = rps_of(levels)
    return {c: round(rps[(a, c)] / rps[(b, c)], 2) for m, c in rps if m == a and rps.get((b, c))}


def served_over_raw(levels: list[Level], limit: str = "raw") -> dict[str, dict[int, float]]:
    """req/s of each served mode / req/s of the `limit` mode, per concurrency (raw: the issue's served/raw)."""
    return {mode: table for mode in MODES if mode not in LIMITS and (table := ratio_table(levels, mode, limit))}


def served_over_raw_cpu(levels: list[Level], limit: str = "raw") -> dict[str, dict[int, float]]:
    """The `limit` mode's CPU ms per request / the served mode's (all its server processes): served/raw as it would
    be on an otherwise idle machine where both are CPU-bound. On a busy host the kernel shares the CPU per process,
    so a server of three processes gets more of it than raw's one, and the req/s ratio flatters the server."""
    cpu = {(lv.mode, lv.concurrency): lv.cpu_ms_per_request["total"] for lv in levels}
    out: dict[str, dict[int, float]] = {}
    for (mode, c), total in cpu.items():
        if mode not in LIMITS and total > 0 and (raw := cpu.get((limit, c))):
            out.setdefault(mode, {})[c] = round(raw / total, 2)
    return out


RATIOS = {"batching/b1": ("rows", "rows-b1"), "byref/rows": ("byref", "rows"), "byref/columns": ("byref", "columns"),
          "columns/rows": ("columns", "rows"), "arrow/rows": ("arrow", "rows"), "grpc/rows": ("grpc", "rows"),
          "grpc-columns/columns": ("grpc-columns", "columns")}


def ratios(levels: list[Level]) -> dict[str, dict[int, float]]:
    return {name: table for name, (a, b) in RATIOS.items() if (table := ratio_table(levels, a, b))}


def must_hold(levels: list[Level], device: str) -> list[dict[str, Any]]:
    """The issue's must-hold numbers that this run measured, each with the value and whether it held."""
    checks: list[dict[str, Any]] = []
    by_key = {(lv.mode, lv.concurrency): lv for lv in levels}
    over_raw, over_raw_cpu = served_over_raw(levels), served_over_raw_cpu(levels)
    for (mode, c), lv in sorted(by_key.items()):
        if mode in LIMITS:
            continue
        if MODES[mode].inline and mode != "rows-b1" and device != "cuda" and c in (8, 64):
            ratio = over_raw.get(mode, {}).get(c)
            if ratio is not None:
                checks.append({"check": f"{mode} served/raw >= {SERVED_OVER_RAW_TARGET} at concurrency {c}",
                               "value": ratio, "held": ratio >= SERVED_OVER_RAW_TARGET,
                               "by_cpu": over_raw_cpu.get(mode, {}).get(c)})
        checks.append({"check": f"{mode} at concurrency {c}: 0 errors, the database holds exactly the OK requests, "
                                f"p99 <= {lv.max_latency_ms} ms",
                       "value": f"{lv.errors} errors, p99 {lv.p99_ms:.0f} ms, stored as answered: "
                                f"{lv.stored_as_answered}",
                       "held": lv.errors == 0 and lv.stored_as_answered is not False and lv.p99_inside_max_latency})
    byref = ratio_table(levels, "byref", "rows").get(8)
    if byref is not None:
        checks.append({"check": f"byref >= {BYREF_OVER_ROWS_TARGET:g}x this run's inline rows req/s at concurrency 8 "
                                "(stricter than the issue, whose rows were the slower ones of its day)",
                       "value": byref, "held": byref >= BYREF_OVER_ROWS_TARGET})
    if device != "cuda" and (lv := by_key.get(("byref", 8))) is not None:
        times = round(lv.rps / ISSUE_INLINE_RPS, 2)
        checks.append({"check": f"byref >= {BYREF_OVER_ROWS_TARGET:g}x the issue's inline {ISSUE_INLINE_RPS:g} req/s "
                                "at concurrency 8 (2-core host)", "value": times,
                       "held": times >= BYREF_OVER_ROWS_TARGET})
    for c, ratio in ratio_table(levels, "rows", "rows-b1").items():
        if device == "cuda":
            if c == 64:
                checks.append({"check": f"on a GPU, batching >= {GPU_BATCHING_TARGET:g}x batch size 1 at "
                                        "concurrency 64", "value": ratio, "held": ratio >= GPU_BATCHING_TARGET})
        else:
            low, high = paired_interval(by_key[("rows", c)].burst_rps, by_key[("rows-b1", c)].burst_rps)
            checks.append({"check": f"batching not below batch size 1 beyond noise at concurrency {c} (ratio >= "
                                    f"{BATCHING_NOISE_FLOOR}, or the rounds' 95% interval reaching 1)",
                           "value": f"{ratio} [{low:.2f}, {high:.2f}]",
                           "held": ratio >= BATCHING_NOISE_FLOOR or high >= 1.0})
    return checks


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """95% Student-t interval of the per-round ratios a[k] / b[k]: the two modes ran in the same round, one burst
    after the other, so each round's ratio sees the same host load; the spread of the rounds is the noise."""
    _, low, high = t_interval((np.array(a) / np.array(b)).tolist())
    return low, high


def levels_table(levels: list[Level]) -> str:
    over_raw = served_over_raw(levels)
    labels = sorted({label for lv in levels for label in lv.cpu_ms_per_request if label != "total"})
    rows = []
    for lv in levels:
        ratio = over_raw.get(lv.mode, {}).get(lv.concurrency)
        rows.append([lv.mode, lv.concurrency, lv.ok, lv.errors, f"{lv.rps:.2f}",
                     "" if ratio is None else f"{ratio:.2f}", f"{lv.p50_ms:.0f}", f"{lv.p99_ms:.0f}",
                     *(lv.cpu_ms_per_request.get(label, "") for label in labels), lv.cpu_ms_per_request["total"],
                     *(lv.beside_cpu_ms_per_request.get(label, "") for label in BESIDE),
                     lv.mean_batch.get("fusion", ""), {None: "", True: "yes", False: "NO"}[lv.stored_as_answered]])
    return markdown_table(["mode", "concurrency", "ok", "errors", "req/s", "served/raw", "p50 ms", "p99 ms",
                           *(f"CPU ms/req {label}" for label in labels), "CPU ms/req total",
                           *(f"beside: {label} ms/req" for label in BESIDE), "mean fusion batch", "stored = OK"], rows)


def plot(levels: list[Level], path: Path, title: str) -> None:
    """Throughput vs concurrency, one line per mode (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for mode, spec in MODES.items():
        points = [(lv.concurrency, lv.rps) for lv in levels if lv.mode == mode]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=f"{mode}: {spec.label}",
                    linestyle="--" if mode in LIMITS else "-")
    ax.set_xscale("log", base=2)
    concurrencies = sorted({lv.concurrency for lv in levels})
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("predictions / s")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------------------------


def available_modes(wanted: list[str], servers: dict[str, Server]) -> list[str]:
    """The wanted modes whose server publishes their route; a missing route is said, never faked."""
    modes = []
    for mode in wanted:
        spec = MODES[mode]
        if spec.route is not None and spec.route not in servers[spec.server or "batching"].routes:
            print(f"skipping mode {mode}: the server has no {spec.route} route (not in this checkout's serving/)",
                  flush=True)
            continue
        modes.append(mode)
    return modes


# modes sent the rows requests (another server, or none)
SHARED_REQUESTS = {"rows-b1": "rows", "raw": "rows", "raw-cached": "rows"}


def workloads(modes: list[str], market: Market, args: argparse.Namespace) -> dict[str, Workload]:
    """Each mode's requests: distinct as-of bars per mode of the batching server (a repeated (model version,
    as_of) is a duplicate there); rows-b1 and raw share the rows requests."""
    n = requests_per_mode(args)
    by_source: dict[str, Workload] = {}
    first = args.first_bar
    for source in dict.fromkeys(SHARED_REQUESTS.get(mode, mode) for mode in modes):
        by_source[source] = Workload([f"bench-{source}-{i}" for i in range(n)], as_of_bars(market, first, n))
        first += n
    log.info("building %d distinct requests for each of %s", n, ", ".join(by_source))
    for source, work in by_source.items():
        build_bodies(source, market, work)
    return {mode: by_source[SHARED_REQUESTS.get(mode, mode)] for mode in modes}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The servers the modes need, started together against one nx-27017; every mode measured, interleaved."""
    market = read_market(args.package, args.data)
    names = [name for name in SERVERS if any(MODES[mode].server == name for mode in args.modes)]
    with EmbeddedMongo(workdir / "mongo") as mongo:
        if "byref" in args.modes:
            seed_news(mongo.uri, market.news)
        return measure_servers(names, args, mongo.uri, market, workdir,
                               mongo.process.pid if mongo.process is not None else None)


def measure_servers(names: list[str], args: argparse.Namespace, mongo_uri: str, market: Market,
                    workdir: Path, mongo_pid: int | None) -> dict[str, Any]:
    """Start the servers, build each available mode's requests, measure, and check the databases at the end."""
    with running_servers(names, args, mongo_uri, workdir) as servers:
        modes = available_modes(args.modes, servers)
        works = workloads(modes, market, args)
        raw = None
        if limits := [mode for mode in modes if mode in LIMITS]:
            threads = ServeSettings.from_env(dict(item.split("=", 1) for item in args.set)).ort_threads
            raw = RawRunner(args.package, args.device, threads, args.max_batch)
            raw.prepare(works[limits[0]].bodies)
        levels = asyncio.run(measure(modes, servers, works, raw, args, mongo_uri, mongo_pid))
        stored = {}
        for name, server in servers.items():
            in_db = stored_ids(mongo_uri, server.database) | server.moved
            stored[name] = {"ok_answers": len(server.answered), "documents": len(in_db),
                            "matches": in_db == server.answered}
    return {"modes": modes, "levels": levels, "stored": stored}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="model package folder (default: the demo-shaped bench package, "
                                                      f"built under {DEFAULT_DIR} when missing)")
    parser.add_argument("--data", type=Path, help="data folder the requests are cut from (with --package)")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, throughput.png, logs")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(DEFAULT_MODES))
    parser.add_argument("--quick", action="store_true",
                        help="concurrency 8 and 64, a warm-up of 16 requests, then 3 rounds of bursts of max(16, "
                             "concurrency): < 5 minutes on 2 cores")
    parser.add_argument("--concurrency", type=int, nargs="+", help="default 1 8 64")
    parser.add_argument("--rounds", type=int, help="measured rounds per concurrency (default 3)")
    parser.add_argument("--burst-factor", type=int, help="burst = max(16, factor x concurrency) requests "
                                                         "(default 2; --quick 1)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per mode and concurrency (default: one burst; "
                                                   "--quick 16)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="NFC_DEVICE of the servers and the device of the raw runs")
    parser.add_argument("--max-batch", type=int, default=ServeSettings().predict_max_batch,
                        help="NFC_PREDICT_MAX_BATCH of the batching server (and the raw runs' largest batch)")
    parser.add_argument("--max-latency-ms", type=int, default=ServeSettings().predict_max_latency_ms,
                        help="NFC_PREDICT_MAX_LATENCY_MS of both servers; p99 is checked against it")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="NFC_WORKERS (entry workers) of both servers; default one per core: an entry worker's "
                             "work is Python and uses one core at most")
    parser.add_argument("--first-bar", type=int, default=200, help="as-of bar of the first request")
    parser.add_argument("--set", action="append", default=[], metavar="NFC_X=VALUE",
                        help="extra setting for both servers, e.g. NFC_ORT_THREADS=1 (repeatable)")
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or ([8, 64] if args.quick else [1, 8, 64])
    args.rounds = args.rounds or 3
    args.burst_factor = args.burst_factor or (1 if args.quick else 2)
    if args.warmup is None and args.quick:
        args.warmup = 16
    if min(args.concurrency) < 1 or args.workers < 1 or args.rounds < 1 or args.burst_factor < 1 or args.max_batch < 2 \
            or args.max_latency_ms < 1 or (args.warmup is not None and args.warmup < 1):
        parser.error("--concurrency, --rounds, --burst-factor, --warmup and --max-latency-ms must be positive, "
                     "--max-batch >= 2")
    if (args.package is None) != (args.data is None):
        parser.error("--package and --data go together (or neither: the demo-shaped bench package)")
    if args.package is not None and not (args.package / "manifest.json").exists():
        parser.error(f"{args.package} is not a model package (no manifest.json): `nfc export` one, or leave out "
                     "--package for the demo-shaped bench package")
    bad = [item for item in args.set if not item.startswith("NFC_") or "=" not in item]
    if bad:
        parser.error(f"--set takes NFC_NAME=VALUE, got {bad}")
    extra = dict(item.split("=", 1) for item in args.set)
    owned = sorted(set(extra) & set(BENCH_OWNED))
    if owned:
        parser.error(f"--set {owned}: the benchmark sets these itself (--max-batch, --max-latency-ms, --device, "
                     "--workers, --package)")
    try:
        ServeSettings.from_env(extra)  # a bad value fails here, not in the servers
    except ValueError as err:
        parser.error(f"--set: {err}")
    return args


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the servers' cleanup, like Ctrl-C


def report(result: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    """Print the tables, ratios and checks; the results.json content."""
    levels: list[Level] = result["levels"]
    print(f"\n{levels_table(levels)}\n")
    over = {limit: (served_over_raw(levels, limit), served_over_raw_cpu(levels, limit)) for limit in LIMITS}
    for limit, (by_rate, by_cpu) in over.items():
        for mode, table in by_rate.items():
            print(f"served/{limit} {mode}: " + ", ".join(f"{r:.2f} at {c}" for c, r in table.items())
                  + "; by CPU ms per request: " + ", ".join(f"{r:.2f} at {c}" for c, r in by_cpu[mode].items()))
    found = ratios(levels)
    for name, table in found.items():
        print(f"{name} req/s: " + ", ".join(f"{r:.2f}x at {c}" for c, r in table.items()))
    checks = must_hold(levels, args.device)
    for check in checks:
        cpu = f"; {check['by_cpu']} by CPU ms per request" if check.get("by_cpu") is not None else ""
        print(f"{'held' if check['held'] else 'NOT HELD'}: {check['check']} ({check['value']}{cpu})")
    print(f"stored in MongoDB at the end: {result['stored']}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"machine": info, "args": settings, "modes": result["modes"], "levels": [asdict(lv) for lv in levels],
            "served_over_raw": over["raw"][0], "served_over_raw_cpu": over["raw"][1],
            "served_over_raw_cached": over["raw-cached"][0], "served_over_raw_cached_cpu": over["raw-cached"][1],
            "ratios": found, "must_hold": checks,
            "stored": result["stored"]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.package is None:
        args.package, args.data = bench_package(DEFAULT_DIR)
    info = machine()
    started = time.perf_counter()
    print(f"machine: {machine_line(info)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nfc-bench-") as tmp:
        result = run(args, Path(tmp))
    info["load_after"] = load_average()
    info["seconds"] = round(time.perf_counter() - started, 1)
    out = report(result, args, info)
    (args.out / "results.json").write_text(json.dumps(out, indent=2))
    plot(result["levels"], args.out / "throughput.png",
         f"/predict modes vs ONNX Runtime alone; {info['nproc']} CPU cores, load {info['load'][0]}")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'throughput.png'} ({info['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
