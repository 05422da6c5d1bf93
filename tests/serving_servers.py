"""Fixtures and helpers for tests against a real `nfc serve` (a `bentoml serve` subprocess) on loopback.

`start_nfc_serve` runs `nfc serve` on free ports and waits for /readyz; test_serving_live.py uses it with
the embedded MongoDB, and the reliability tests (tests/test_reliability_*.py) share one `reliable` server
for the session: its own nx-27017 (with a data folder, so a test may stop and restart it on the same port),
the tiny package imported into a private BentoML model store and served as `neuralfusion:latest`, with
NFC_RELOAD_INTERVAL_S=1 so a second package imported there is swapped in under traffic. The reliability
tests use disjoint as-of bars of one 7-day synthetic market, so each one's documents are its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from builders import STEP
from pymongo import MongoClient

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from nfc.embedded_mongo import EmbeddedMongo, free_port
from serving.client import predict_payload, wait_until_ready

API_KEY = "live-key-51c9"
KEY = {"X-API-Key": API_KEY}
STARTUP_TIMEOUT_S = 180
DATABASE = "neuralfusion"
SECOND_VERSION = "0.2.0-test"
# as-of bar ranges of the reliability market, one per test, so no test sees another's documents
AS_OF_BARS = {"load": range(100, 2100), "fault": range(2100, 2600), "swap": range(2600, 3000),
              "grpc_fuzz": range(3000, 3200), "formats": range(3200, 3300), "abuse": range(3300, 3360)}
BODY_TIMEOUT_S = 3  # the reliable server's NFC_BODY_TIMEOUT_S: a stalled body is answered 408 after this


class Payloads:
    """/predict bodies for any as-of bar, cut from one `predict_payload` over the whole market: one call per
    bar costs ~27 ms on this machine, too much for thousands of requests. test_reliability_load checks that a
    cut body equals `predict_payload`'s."""

    def __init__(self, bars: pd.DataFrame, news: pd.DataFrame, bars_needed: int) -> None:
        self.times = np.sort(bars["timestamp"].unique())
        self.bars_needed = bars_needed
        whole = predict_payload(bars, news, pd.Timestamp(self.times[-1]), len(self.times), STEP)
        self._bars = whole["bars"]
        self._n_symbols = bars["symbol"].nunique()
        row_times = pd.to_datetime([row["timestamp"] for row in self._bars])
        assert len(self._bars) == len(self.times) * self._n_symbols and row_times.is_monotonic_increasing
        self._news = whole["news"]
        self._news_times = pd.to_datetime([item["published_at"] for item in self._news])

    def __call__(self, bar: int, request_id: str | None = None) -> dict[str, Any]:
        first = bar - self.bars_needed + 1
        assert first >= 0, f"bar {bar} has fewer than {self.bars_needed} bars before it"
        start, end = pd.Timestamp(self.times[first]), pd.Timestamp(self.times[bar])
        in_window = (self._news_times > start - STEP) & (self._news_times <= end)
        return {"bars": [dict(row) for row in self._bars[first * self._n_symbols:(bar + 1) * self._n_symbols]],
                "news": [dict(self._news[i]) for i in np.flatnonzero(in_window)], "request_id": request_id}


@dataclass
class Live:
    """A running `nfc serve` and the market its requests are cut from."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str
    grpc_target: str
    mongo_uri: str
    ports: tuple[int, ...]
    bars: pd.DataFrame
    news: pd.DataFrame
    times: np.ndarray
    bars_needed: int

    @functools.cached_property
    def payloads(self) -> Payloads:
        return Payloads(self.bars, self.news, self.bars_needed)

    def payload(self, bar: int, request_id: str | None = None) -> dict[str, Any]:
        return self.payloads(bar, request_id)

    def documents(self, **query: Any) -> list[dict[str, Any]]:
        with MongoClient(self.mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000) as client:
            return list(client[DATABASE]["predictions"].find(query, {"_id": False}))

    def as_of(self, bar: int) -> datetime:
        return pd.Timestamp(self.times[bar]).to_pydatetime()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def workers(self) -> dict[str, list[int]]:
        return service_workers(self.process.pid)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer of a load run: status (0: no answer, `error` says why), JSON body, seconds taken."""

    index: int
    status: int
    body: Any
    seconds: float
    error: str = ""


class Load:
    """POST bodies in order to one route with `concurrency` clients at a time, all within `bound_s`; `done` counts
    the answers so far (another thread may watch it to act mid-run). With `stop_when`, no new body is sent once
    an answer satisfies it."""

    def __init__(self, url: str, bodies: list[dict[str, Any]], concurrency: int, bound_s: float,
                 headers: dict[str, str] | None = None, request_timeout_s: float = 60,
                 stop_when: Callable[[Answer], bool] | None = None) -> None:
        self.url, self.bodies, self.concurrency, self.bound_s = url, bodies, concurrency, bound_s
        self.headers = headers if headers is not None else KEY
        self.request_timeout_s = request_timeout_s
        self.stop_when = stop_when
        self.done = 0
        self._stopped = False

    def run(self) -> list[Answer]:
        """The answers to the first len(answers) bodies (all of them unless stopped), in body order; fails the
        test when the bound runs out."""
        return asyncio.run(asyncio.wait_for(self._run(), self.bound_s))

    async def _run(self) -> list[Answer]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(self.bodies)):
            queue.put_nowait(i)
        answers: dict[int, Answer] = {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.request_timeout_s, limits=limits) as client:
            async def worker() -> None:
                while not queue.empty() and not self._stopped:
                    i = queue.get_nowait()
                    answers[i] = await self._post(client, i)
                    self.done += 1
                    self._stopped = self._stopped or (self.stop_when is not None and self.stop_when(answers[i]))
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return [answers[i] for i in range(len(answers))]  # the queue hands out bodies in order

    async def _post(self, client: httpx.AsyncClient, i: int) -> Answer:
        started = time.monotonic()
        try:
            response = await client.post(self.url, json=self.bodies[i], headers=self.headers)
        except httpx.HTTPError as err:
            return Answer(i, 0, None, time.monotonic() - started, f"{type(err).__name__}: {err}")
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return Answer(i, response.status_code, body, time.monotonic() - started)


def service_workers(root_pid: int) -> dict[str, list[int]]:
    """Pids of the BentoML workers under `root_pid` by service name (neuralfusion, nfc-encoder, nfc-fusion)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        children.setdefault(int(rest.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
    out: dict[str, list[int]] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--service-name" in args:
            out.setdefault(args[args.index(b"--service-name") + 1].decode(), []).append(pid)
    return out


def distinct_free_ports(n: int) -> tuple[int, ...]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return tuple(ports)


def serve_env(root: Path, **settings: str) -> dict[str, str]:
    """This process's environment without NFC_* settings, plus `settings`, telemetry off, a private store."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("NFC_")}
    env.update(BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(root / "bentoml"), **settings)
    return env


@contextmanager
def start_nfc_serve(root: Path, model_args: list[str], env: dict[str, str], http_port: int, grpc_port: int,
                    extra_args: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`nfc serve` on 127.0.0.1 until it is ready: (process, url, log); SIGTERM on exit (it stops its workers,
    and its embedded MongoDB if it started one)."""
    log = root / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nfc.cli", "serve", *model_args, "--host", "127.0.0.1", "--port",
             str(http_port), "--grpc-port", str(grpc_port), *extra_args], env=env, cwd=root, stdout=out,
            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        if not wait_until_ready(url, process, STARTUP_TIMEOUT_S):
            pytest.fail(f"nfc serve did not become ready:\n{log.read_text(errors='replace')[-4000:]}")
        yield process, url, log
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


def import_into_store(package: Path, bentoml_home: Path) -> str:
    """`export.bento.import_package` in a subprocess, so the store is `bentoml_home` (read at bentoml import)."""
    code = "import sys; from pathlib import Path; from export.bento import import_package; " \
           "print(import_package(Path(sys.argv[1])))"
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@dataclass
class Reliable(Live):
    """The reliability tests' server: `mongo` is its own nx-27017, `bentoml_home` its model store."""

    mongo: EmbeddedMongo | None = None
    bentoml_home: Path | None = None


@pytest.fixture(scope="session")
def reliability_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 7-day synthetic market (3360 bars) with the tiny package's universe: enough distinct as-of bars."""
    from neuralfusion.synth import SynthConfig, generate_market, write_market

    return write_market(generate_market(SynthConfig(n_assets=6, days=7, seed=5)),
                        tmp_path_factory.mktemp("reliability-market"))


@pytest.fixture(scope="session")
def reliable(tiny, reliability_market, tmp_path_factory) -> Iterator[Reliable]:
    root = tmp_path_factory.mktemp("reliable")
    http_port, grpc_port, mongo_port = distinct_free_ports(3)
    mongo = EmbeddedMongo(root / "mongo", port=mongo_port).start()
    tag = import_into_store(tiny.package, root / "bentoml")
    env = serve_env(root, NFC_API_KEY=API_KEY, NFC_MONGO_URI=mongo.uri, NFC_RELOAD_INTERVAL_S="1",
                    NFC_MONGO_TIMEOUT_MS="1000", NFC_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))
    bars = BarFileSource(reliability_market / "bars.parquet").read()
    try:
        with start_nfc_serve(root, ["--model", "neuralfusion:latest"], env, http_port, grpc_port) as (process, url,
                                                                                                     log):
            info = httpx.get(f"{url}/model_info", headers=KEY, timeout=30).json()
            assert f"neuralfusion:{info['version']}" == tag, info
            yield Reliable(process, log, url, f"127.0.0.1:{grpc_port}", mongo.uri, (http_port, grpc_port, mongo_port),
                           bars, read_news(reliability_market / "news.jsonl"), np.sort(bars["timestamp"].unique()),
                           info["bars_needed"], mongo=mongo, bentoml_home=root / "bentoml")
    finally:
        mongo.stop()


@pytest.fixture(scope="session")
def second_package(tiny, tmp_path_factory) -> Path:
    """Another version of the tiny model: the same encoder and embeddings, fusion weights trained from
    another seed, exported as SECOND_VERSION."""
    from builders import TINY_RUN, nfc

    root = tmp_path_factory.mktemp("second")
    steps = [("train", "--data", str(tiny.data), "--embeddings", str(tiny.embeddings),
              "--out", str(root / "run"), *TINY_RUN, "--set", "seed=1"),
             ("export", "--model", str(root / "run"), "--out", str(root / "pkg"), "--version", SECOND_VERSION,
              "--no-bentoml")]
    for args in steps:
        code, output = nfc(*args)
        assert code == 0, output
    return root / "pkg"
