"""Where a /predict request's CPU time goes, stage by stage, alone (batch 1) and in a batch: what batching can save.

    python bench/bench_request_path.py                    # bench package, batch 1 vs 32, 64 requests
    python bench/bench_request_path.py --batch 64 --requests 128

Runs the serving path in this process on the same distinct requests bench_serving.py sends (the bars and
news of the model's window ending at distinct bars of the data folder), stage by stage, with the
functions the service calls:
  parse:    JSON body -> PredictRequest (pydantic, serving.schemas), as BentoML does at /predict;
  prepare:  PortfolioRuntime.prepare (model checks, frames, grid, features, the window), which the service runs
            in the request's own thread before it hands the window's inputs to its inner services;
  encode:   the encoder graph on the window's article texts (one call per batch);
  fusion:   PortfolioRuntime.predict (one fusion run per batch);
  store:    PredictionStore.save into nx-27017 on loopback (one bulk write per batch);
  answer:   PredictionOut JSON.
Prints ms per request for each stage at batch 1 and at --batch, and the ceiling on the batching speed-up
that follows when a server spends its CPU only on these stages: total(batch 1) / total(batch). HTTP,
BentoML's dispatcher and the encoder service's own hop come on top, in both modes alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_package import DEFAULT_DIR, bench_package
from bench_serving import as_of_bars, inline_bodies, read_market
from machine import machine, machine_line, markdown_table

from nfc.embedded_mongo import EmbeddedMongo
from serving.runtime import PortfolioRuntime
from serving.schemas import PredictionOut, PredictRequest
from serving.store import PredictionStore

STAGES = ("parse", "prepare", "encode", "fusion", "store", "answer")


def timed(totals: dict[str, float], stage: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    totals[stage] += time.perf_counter() - start
    return out


async def run_batch(runtime: PortfolioRuntime, store: PredictionStore, bodies: Sequence[bytes],
                    totals: dict[str, float]) -> None:
    """One batch through every stage, adding each stage's seconds to `totals`."""
    requests = [timed(totals, "parse", lambda b=b: PredictRequest.model_validate_json(b)) for b in bodies]
    prepared = [timed(totals, "prepare", lambda r=r: runtime.prepare(r)) for r in requests]
    texts = [text for item in prepared for text in item.texts]
    vectors = timed(totals, "encode", lambda: runtime.encoder.encode(texts).vectors)
    records = timed(totals, "fusion", lambda: runtime.predict(prepared, vectors))
    begin = time.perf_counter()
    await store.save(records)
    totals["store"] += time.perf_counter() - begin
    for record in records:
        timed(totals, "answer", lambda r=record: PredictionOut.from_record(r).model_dump_json())


async def measure(args: argparse.Namespace, workdir: Path) -> dict[int, dict[str, float]]:
    """ms per request of each stage at batch 1 and at args.batch. Rounds alternate between the two (each on
    its own distinct requests), so load from other processes falls on both alike."""
    runtime = PortfolioRuntime.load(args.package, device="cpu")
    size = args.batch
    rounds = args.requests // size
    market = read_market(args.package, args.data)
    n = 2 * size * (rounds + 1)
    bodies = [json.dumps(p).encode() for p in inline_bodies(market, as_of_bars(market, args.first_bar, n),
                                                            [f"path-{i}" for i in range(n)])]
    chunks = [bodies[i:i + size] for i in range(0, len(bodies), size)]
    totals = {1: dict.fromkeys(STAGES, 0.0), size: dict.fromkeys(STAGES, 0.0)}
    with EmbeddedMongo(workdir / "mongo") as mongo:
        async with PredictionStore(mongo.uri, database="path") as store:
            await store.ensure_indexes()
            for r in range(rounds + 1):  # round 0 warms up
                stage_seconds = {1: dict.fromkeys(STAGES, 0.0), size: dict.fromkeys(STAGES, 0.0)}
                for body in chunks[2 * r]:
                    await run_batch(runtime, store, [body], stage_seconds[1])
                await run_batch(runtime, store, chunks[2 * r + 1], stage_seconds[size])
                if r:
                    for batch, seconds in stage_seconds.items():
                        for stage, value in seconds.items():
                            totals[batch][stage] += value
    return {batch: {stage: 1000 * value / (rounds * size) for stage, value in stages.items()}
            for batch, stages in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help=f"model package (default: the bench package, {DEFAULT_DIR})")
    parser.add_argument("--data", type=Path, help="data folder the requests are cut from (with --package)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64, help="timed requests per batch size (whole batches)")
    parser.add_argument("--first-bar", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.batch < 2 or args.requests < args.batch:
        parser.error("--batch must be >= 2 and --requests >= --batch")
    if (args.package is None) != (args.data is None):
        parser.error("--package and --data go together (or neither: the demo-shaped bench package)")
    if args.package is None:
        args.package, args.data = bench_package(DEFAULT_DIR)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="nfc-bench-") as tmp:
        results = asyncio.run(measure(args, Path(tmp)))
    one, many = results[1], results[args.batch]
    rows = [[stage, f"{one[stage]:.2f}", f"{many[stage]:.2f}", f"{one[stage] - many[stage]:.2f}"] for stage in STAGES]
    total_one, total_many = sum(one.values()), sum(many.values())
    rows.append(["**total**", f"{total_one:.1f}", f"{total_many:.1f}", f"{total_one - total_many:.1f}"])
    print(f"ms per request (one thread, wall time), {args.requests // args.batch * args.batch} requests per batch "
          f"size; {machine_line(info)}\n")
    print(markdown_table(["stage", "batch 1", f"batch {args.batch}", "saved by batching"], rows))
    print(f"\nceiling on the batching speed-up from these stages: {total_one / total_many:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "batch": args.batch, "ms_per_request": results}, indent=2))


if __name__ == "__main__":
    main()
