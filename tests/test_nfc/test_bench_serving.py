"""bench/bench_serving.py's bookkeeping: CPU time per server process from /proc, and the issue's must-hold checks
computed from what a run measured (the servers themselves are exercised by the benchmark, not here)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # the scripts import each other by name

from bench_serving import (
    Level,
    Server,
    Workload,
    cpu_by_label,
    drive,
    grpc_sender,
    move_out,
    must_hold,
    parse_args,
    served_over_raw,
    served_over_raw_cpu,
)
from machine import process_tree_cpu

from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc

BUSY = "import sys, time\nstart = time.process_time()\nwhile time.process_time() - start < 0.4: pass\nsys.stdin.read()"


def test_process_tree_cpu_reads_each_worker_s_cpu_time_under_its_service_name():
    worker = subprocess.Popen([sys.executable, "-c", BUSY, "--service-name", "nfc-encoder"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = process_tree_cpu(os.getpid())
            if seen.get(worker.pid, ("", 0.0))[1] >= 0.4:
                break
            time.sleep(0.1)
        label, seconds = seen[worker.pid]
        assert label == "nfc-encoder" and 0.4 <= seconds < 5
        assert seen[os.getpid()][0] == "supervisor"  # no --service-name on this process's command line
        assert cpu_by_label({worker.pid: (label, 0.1)}, {worker.pid: (label, seconds)}) == \
            pytest.approx({"encoder": seconds - 0.1})
    finally:
        worker.communicate(b"", timeout=30)


def level(mode: str, concurrency: int, rps: float, errors: int = 0, stored: bool | None = True,
          cpu_ms: float = 40.0) -> Level:
    return Level(mode=mode, concurrency=concurrency, bursts=2, requests=10, ok=10 - errors, errors=errors, wall_s=1.0,
                 rps=rps, p50_ms=100.0, p99_ms=200.0, max_latency_ms=30_000, p99_inside_max_latency=True,
                 cpu_ms_per_request={"total": cpu_ms}, mean_batch={}, stored_as_answered=stored, burst_rps=[rps],
                 load_before=[0.0, 0.0, 0.0])


def test_must_hold_checks_served_over_raw_byref_batching_and_the_database():
    levels = [level("raw", 8, 10.0, cpu_ms=30.0), level("rows", 8, 7.5, cpu_ms=60.0), level("rows-b1", 8, 8.0),
              level("grpc", 8, 6.0), level("byref", 8, 20.0, errors=1, stored=False)]
    assert served_over_raw(levels) == {"rows": {8: 0.75}, "rows-b1": {8: 0.8}, "grpc": {8: 0.6}, "byref": {8: 2.0}}
    assert served_over_raw_cpu(levels)["rows"] == {8: 0.5}  # raw's 30 CPU ms a request against the server's 60
    held = {check["check"]: check["held"] for check in must_hold(levels, "cpu")}
    assert held["rows served/raw >= 0.7 at concurrency 8"] is True
    assert held["grpc served/raw >= 0.7 at concurrency 8"] is False
    assert "byref served/raw >= 0.7 at concurrency 8" not in held  # by reference is not an inline request
    assert held["byref >= 3x this run's inline rows req/s at concurrency 8 (stricter than the issue, whose rows were "
                "the slower ones of its day)"] is False  # 2.67x
    assert held["batching not below batch size 1 beyond noise at concurrency 8 (ratio >= 0.9, or the rounds' 95% "
                "interval reaching 1)"] is True  # 0.94x
    assert held["byref >= 3x the issue's inline 16 req/s at concurrency 8 (2-core host)"] is False  # 1.25x
    database = [name for name in held if name.startswith("byref at concurrency 8")]
    assert len(database) == 1 and held[database[0]] is False  # an error and a database that does not match


def test_batching_is_below_batch_size_1_only_beyond_the_rounds_noise():
    def pair(batching: list[float], b1: list[float]) -> list[Level]:
        levels = [level("rows", 64, float(np.mean(batching))), level("rows-b1", 64, float(np.mean(b1)))]
        levels[0].burst_rps[:], levels[1].burst_rps[:] = batching, b1
        return levels

    def held(levels: list[Level]) -> bool:
        [check] = [c for c in must_hold(levels, "cpu") if c["check"].startswith("batching not below")]
        return check["held"]

    assert held(pair([34.7, 26.8, 23.2], [35.1, 35.5, 28.6]))  # 0.84x, rounds 0.99 / 0.76 / 0.81: noise
    assert not held(pair([25.0, 26.0, 24.0], [33.0, 34.0, 32.0]))  # 0.75x in every round: below beyond noise


def test_served_over_raw_cached_is_beside_raw_and_no_served_mode():
    levels = [level("raw", 8, 10.0, cpu_ms=30.0), level("raw-cached", 8, 40.0, cpu_ms=8.0),
              level("rows", 8, 20.0, cpu_ms=40.0), level("byref", 8, 50.0)]
    assert served_over_raw(levels, "raw-cached") == {"rows": {8: 0.5}, "byref": {8: 1.25}}
    assert served_over_raw_cpu(levels, "raw-cached") == {"rows": {8: 0.2}, "byref": {8: 0.2}}
    held = {check["check"]: check["held"] for check in must_hold(levels, "cpu")}
    assert not any(name.startswith("raw") for name in held)  # the limits are not checked as served modes
    assert held["byref >= 3x the issue's inline 16 req/s at concurrency 8 (2-core host)"] is True  # 50 req/s


def test_quick_settings_and_refused_options():
    args = parse_args(["--quick", "--out", "x"])
    assert (args.concurrency, args.rounds, args.burst_factor, args.warmup) == ([8, 64], 3, 1, 16)
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--set", "NFC_PREDICT_MAX_BATCH=4"])  # the benchmark sets it per server
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--package", "somewhere"])  # --package needs --data


@pytest.mark.mongo
def test_each_burst_checks_its_predictions_then_empties_the_database(mongo_uri):
    """`move_out`: the database must hold exactly the OK answers since the last move, which then leave it (so the
    next burst starts from an empty collection) and count as stored for the run."""
    server = Server(name="batching", process=None, url="", grpc_target="", database="bench_move_out")  # type: ignore[arg-type]
    with MongoClient(mongo_uri) as client:
        predictions = client[server.database]["predictions"]
        predictions.insert_many([{"request_id": f"r{i}"} for i in range(3)])
        server.answered |= {"r0", "r1", "r2"}
        assert move_out(mongo_uri, server) and predictions.count_documents({}) == 0
        assert server.moved == {"r0", "r1", "r2"}
        predictions.insert_one({"request_id": "r3"})
        server.answered |= {"r3", "r4"}  # r4 answered OK but never stored
        assert not move_out(mongo_uri, server) and predictions.count_documents({}) == 0
        predictions.insert_many([{"request_id": "r5"}, {"request_id": "stray"}])  # a document nobody was answered
        server.answered.add("r5")
        assert not move_out(mongo_uri, server)


class OneCallPerConnection(pb_grpc.PortfolioServiceServicer):
    """A loopback PortfolioService that answers Predict after a short wait and records, per client connection (the
    peer's address and port), the most calls it held at once."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.Prediction:
        peer = context.peer()
        self.in_flight[peer] = self.in_flight.get(peer, 0) + 1
        self.most[peer] = max(self.most.get(peer, 0), self.in_flight[peer])
        await asyncio.sleep(0.005)
        self.in_flight[peer] -= 1
        return pb.Prediction(request_id=request.request_id, stored=True)


def test_grpc_calls_go_one_at_a_time_on_each_connection_and_every_connection_is_used():
    """bench_serving's gRPC sender: with as many connections as calls in flight, a connection never carries two calls
    at once (each is a client slot, as a pooled HTTP connection is), and every request is answered as itself."""
    async def run() -> tuple[OneCallPerConnection, list[str], list[int]]:
        servicer = OneCallPerConnection()
        server = grpc.aio.server()
        pb_grpc.add_PortfolioServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(6)]
        try:
            work = Workload(ids=[f"r{i}" for i in range(60)], as_of=[],
                            bodies=[pb.PredictRequest(request_id=f"r{i}") for i in range(60)])
            send = grpc_sender([pb_grpc.PortfolioServiceStub(c).Predict for c in channels], work, timeout_s=30)
            _, errors, ok, _ = await drive(send, range(60), 6)
        finally:
            for channel in channels:
                await channel.close()
            await server.stop(None)
        return servicer, errors, ok

    servicer, errors, ok = asyncio.run(run())
    assert errors == [] and sorted(ok) == list(range(60))
    assert len(servicer.most) == 6 and set(servicer.most.values()) == {1}
