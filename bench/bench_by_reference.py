"""Predictions by reference against inline requests, on one `nfc serve` reading its bars from a data folder.

    python bench/bench_by_reference.py --package PKG --data DATA                  # 40 bars each, ~1-2 min
    python bench/bench_by_reference.py --package PKG --data DATA --bars 80 --concurrency 1 8 64

One server (`nfc serve --model-path PKG` with NFC_BARS_DIR=DATA, its own nx-27017), driven from this process with
httpx. At each concurrency: new bars by reference (POST /predict/at {"as_of"}) and inline (POST /predict with the
same window's body, prebuilt, so the client's cost of reading the data is not counted) on disjoint bars, in two
interleaved rounds; then the by-reference bars asked again (stored: answered from MongoDB without a model run once
the worker knows their inputs hash). Prints req/s and median latency per round and /model_info's vector cache
counters (hits, misses) before and after the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from nfc.embedded_mongo import EmbeddedMongo, free_port
from nfc.processes import stop_process
from serving.client import predict_payload, wait_until_ready

log = logging.getLogger("bench_by_reference")


async def drive(url: str, bodies: list[tuple[str, dict]], concurrency: int) -> tuple[float, float]:
    """(req/s, median ms) of `bodies` ((route, JSON body)) sent `concurrency` at a time; every answer must be 200."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def one(route: str, body: dict) -> None:
            async with gate:
                start = time.perf_counter()
                response = await client.post(route, json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"{route} answered {response.status_code}: {response.text[:300]}")
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(route, body) for route, body in bodies))
        wall = time.perf_counter() - start
    return len(bodies) / wall, 1000 * float(np.median(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bars", type=int, default=40, help="new bars per concurrency level and path")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    bars = BarFileSource(args.data / "bars.parquet").read()
    news = read_news(args.data / "news.jsonl")
    times = [pd.Timestamp(t) for t in np.sort(bars["timestamp"].unique())]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp) / "mongo") as mongo:
        port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("NFC_")}
        env.update(BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=f"{tmp}/bentoml", NFC_MONGO_URI=mongo.uri,
                   NFC_BARS_DIR=str(args.data.resolve()))
        with (Path(tmp) / "serve.log").open("wb") as out:
            server = subprocess.Popen([sys.executable, "-m", "nfc.cli", "serve", "--model-path",
                                       str(args.package.resolve()), "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            if not wait_until_ready(url, server, 300):
                raise SystemExit(f"nfc serve did not become ready:\n{(Path(tmp) / 'serve.log').read_text()[-3000:]}")
            info = httpx.get(f"{url}/model_info", timeout=60).json()
            needed, lookback, step = info["bars_needed"], info["lookback"], pd.Timedelta(info["interval"])
            levels = len(args.concurrency)
            if needed + 2 * levels * args.bars > len(times):
                raise SystemExit(f"{len(times)} bars in the data folder; lower --bars")
            by_reference = times[needed:needed + levels * args.bars]
            inline = times[needed + levels * args.bars:needed + 2 * levels * args.bars]
            for k, concurrency in enumerate(args.concurrency):
                for half in (0, 1):
                    chunk = slice(k * args.bars + half * args.bars // 2, k * args.bars + (half + 1) * args.bars // 2)
                    refs = [("/predict/at", {"as_of": t.isoformat()}) for t in by_reference[chunk]]
                    bodies = [("/predict", predict_payload(bars, news, t, needed, step, news_bars=lookback))
                              for t in inline[chunk]]
                    ref_rate, ref_ms = asyncio.run(drive(url, refs, concurrency))
                    inline_rate, inline_ms = asyncio.run(drive(url, bodies, concurrency))
                    print(f"concurrency {concurrency}, round {half}: by reference {ref_rate:.1f} req/s "
                          f"(median {ref_ms:.0f} ms), inline {inline_rate:.1f} req/s (median {inline_ms:.0f} ms)",
                          flush=True)
            before = httpx.get(f"{url}/model_info", timeout=60).json()["vector_cache"]
            for concurrency in args.concurrency:
                again = [("/predict/at", {"as_of": t.isoformat()}) for t in by_reference[:args.bars]]
                rate, ms = asyncio.run(drive(url, again, concurrency))
                print(f"concurrency {concurrency}, stored bars asked again: {rate:.1f} req/s (median {ms:.0f} ms)")
            after = httpx.get(f"{url}/model_info", timeout=60).json()["vector_cache"]
            print(f"vector cache: {json.dumps(before)} -> {json.dumps(after)}; load average {os.getloadavg()}")
        finally:
            stop_process(server, 60, group=True)


if __name__ == "__main__":
    main()
