"""`nfc serve` for real: `bentoml serve` in a subprocess on free loopback ports, with the embedded nx-27017
server that `nfc serve` starts, reached over HTTP (httpx) and gRPC (grpcio); documents checked in MongoDB.
One server for the module, with NFC_API_KEY_READS=open (writes need the key, reads do not); the last test stops it
with SIGTERM and checks that nothing is left listening."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_servers import API_KEY, KEY, Live, distinct_free_ports, serve_env, start_nfc_serve

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from serving.client import request_to_proto
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc
from serving.proto_convert import timestamp

SERVING = health_pb2.HealthCheckResponse.SERVING

pytestmark = pytest.mark.integration


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def live(tiny, tmp_path_factory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live")
    http_port, grpc_port, mongo_port = distinct_free_ports(3)
    env = serve_env(root, NFC_API_KEY=API_KEY, NFC_API_KEY_READS="open")
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    with start_nfc_serve(root, ["--model-path", str(tiny.package)], env, http_port, grpc_port,
                         ("--mongo-data", str(root / "mongo"), "--mongo-port", str(mongo_port))) as (process, url,
                                                                                                      log):
        yield Live(process, log, url, f"127.0.0.1:{grpc_port}", f"mongodb://127.0.0.1:{mongo_port}/",
                   (http_port, grpc_port, mongo_port), bars, read_news(tiny.data / "news.jsonl"),
                   np.sort(bars["timestamp"].unique()), httpx.get(f"{url}/model_info").json()["bars_needed"])


@pytest.fixture
def stub(live) -> Iterator[pb_grpc.PortfolioServiceStub]:
    with grpc.insecure_channel(live.grpc_target) as channel:
        yield pb_grpc.PortfolioServiceStub(channel)


def test_http_predict_is_stored_in_mongodb(live):
    response = httpx.post(f"{live.url}/predict", json=live.payload(300, "live-http"), headers=KEY, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stored"] and body["model_version"] == "0.1.0-test"
    [document] = live.documents(request_id="live-http")
    assert pd.Timestamp(document["as_of"]) == pd.Timestamp(body["as_of"]) == pd.Timestamp(live.times[300])
    assert document["weights"] == pytest.approx(body["weights"])


def test_bad_input_over_the_wire_is_a_400_and_stores_nothing(live):
    payload = live.payload(310, "live-bad")
    payload["bars"] = payload["bars"][len(live.bars["symbol"].unique()):]  # one bar short
    response = httpx.post(f"{live.url}/predict", json=payload, headers=KEY, timeout=60)
    assert response.status_code == 400 and "too few bars" in response.json()["error"]
    assert httpx.post(f"{live.url}/predict", json=live.payload(310), timeout=60).status_code == 401
    assert httpx.get(f"{live.url}/latest", timeout=30).status_code in (200, 404)  # reads are open here
    assert live.documents(request_id="live-bad") == []


def test_grpc_predict_is_stored_in_mongodb(live, stub):
    reply = stub.Predict(request_to_proto(live.payload(320, "live-grpc")), metadata=[("x-api-key", API_KEY)],
                         timeout=60)
    assert reply.stored and pd.Timestamp(reply.as_of.ToDatetime(tzinfo=UTC)) == pd.Timestamp(live.times[320])
    [document] = live.documents(request_id="live-grpc")
    assert document["weights"] == pytest.approx(dict(reply.weights))
    # each worker has its own gRPC server and health poll (every 0.5 s until ready): a connection may land on a
    # worker whose first readiness check, which asks both inner services, is still under way on a loaded host
    with grpc.insecure_channel(live.grpc_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        deadline = time.monotonic() + 15
        while (status := check(health_pb2.HealthCheckRequest(service=""), timeout=10).status) != SERVING:
            assert time.monotonic() < deadline, f"gRPC health still {status} 15 s after a stored prediction"
            time.sleep(0.5)


def test_history_pages_newest_first_over_http_and_grpc(live, stub):
    for bar in (400, 401, 402):
        assert httpx.post(f"{live.url}/predict", json=live.payload(bar), headers=KEY, timeout=60).status_code == 200
    start, end = (pd.Timestamp(live.times[i]).isoformat() for i in (400, 403))
    first = httpx.get(f"{live.url}/history", params={"start": start, "end": end, "limit": 2}, timeout=30).json()
    rest = httpx.get(f"{live.url}/history", params={"start": start, "end": end, "limit": 2,
                                                     "before": first["next_before"]}, timeout=30).json()
    expected = [pd.Timestamp(live.times[i]) for i in (402, 401, 400)]
    assert [pd.Timestamp(p["as_of"]) for p in first["items"] + rest["items"]] == expected
    over_grpc = stub.GetHistory(pb.HistoryRequest(start=timestamp(pd.Timestamp(start)),
                                                  end=timestamp(pd.Timestamp(end))), timeout=30)
    assert [pd.Timestamp(p.as_of.ToDatetime(tzinfo=UTC)) for p in over_grpc.items] == expected
    assert not over_grpc.HasField("next_before")
    latest = httpx.get(f"{live.url}/latest", timeout=30).json()
    newest = stub.GetLatest(pb.LatestRequest(), timeout=30).as_of.ToDatetime(tzinfo=UTC)
    assert pd.Timestamp(newest) == pd.Timestamp(latest["as_of"])


def test_http_and_grpc_requests_share_one_batching_queue(live, stub):
    """16 concurrent requests, every other one over gRPC: the fusion service counts every one of them in its batches
    (both routes end in its one queue) and merges some into one run. Preparation is fast enough that a burst can
    reach the queue one request at a time, so up to 3 bursts (of other bars) are sent until one merges."""

    def burst(bars: list[int]) -> dict[int, int]:
        before = httpx.get(f"{live.url}/model_info", timeout=30).json()["batches"]["fusion"]["sizes"]
        barrier = threading.Barrier(len(bars))
        answers: dict[int, bool] = {}

        def call(bar: int) -> None:
            barrier.wait()
            if bar % 2:
                answers[bar] = stub.Predict(request_to_proto(live.payload(bar)), metadata=[("x-api-key", API_KEY)],
                                            timeout=120).stored
            else:
                answers[bar] = httpx.post(f"{live.url}/predict", json=live.payload(bar), headers=KEY,
                                          timeout=120).json()["stored"]

        threads = [threading.Thread(target=call, args=(bar,)) for bar in bars]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = httpx.get(f"{live.url}/model_info", timeout=30).json()["batches"]["fusion"]["sizes"]
        assert len(answers) == len(bars) and all(answers.values())
        stored = live.documents(as_of={"$in": [pd.Timestamp(live.times[b]).to_pydatetime() for b in bars]})
        assert len(stored) == len(bars)
        return {int(n): count - before.get(n, 0) for n, count in after.items() if count > before.get(n, 0)}

    for first in (500, 516, 532):
        new = burst(list(range(first, first + 16)))
        assert sum(size * runs for size, runs in new.items()) == 16  # every request, either route, in its runs
        if max(new) > 1:
            return
    pytest.fail(f"no fusion batch merged concurrent HTTP and gRPC requests in 3 bursts: {new}")


def test_metrics_openapi_and_probes(live):
    metrics = httpx.get(f"{live.url}/metrics", timeout=30).text
    assert 'bentoml_service_adaptive_batch_size_count{method_name="run"' in metrics
    assert "/predict" in httpx.get(f"{live.url}/docs.json", timeout=30).json()["paths"]
    assert httpx.get(f"{live.url}/livez", timeout=10).status_code == 200
    assert httpx.get(f"{live.url}/readyz", timeout=10).status_code == 200


def test_serve_names_the_way_out_when_the_model_store_lacks_the_model():
    from click.testing import CliRunner

    from nfc.cli import main

    result = CliRunner().invoke(main, ["serve", "--model", "neuralfusion:no-such-version"])
    assert result.exit_code == 1 and "has no neuralfusion:no-such-version" in result.output
    assert "--model-path" in result.output


def test_sigterm_stops_the_server_and_the_embedded_mongodb(live):
    live.process.send_signal(signal.SIGTERM)
    assert live.process.wait(timeout=90) == 128 + signal.SIGTERM
    assert not any(listening(port) for port in live.ports), live.log.read_text()[-2000:]
