"""The BentoML services in process: `PortfolioService.to_asgi()` behind starlette's TestClient (startup hooks
run, every request on one event loop), with its own nx-27017 server so MongoDB can be stopped, and the gRPC
front the startup hook opens on a free loopback port."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pandas as pd
import pytest
from builders import STEP
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pymongo import MongoClient
from starlette.testclient import TestClient

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from nfc.embedded_mongo import EmbeddedMongo, free_port
from serving.client import predict_payload, request_to_proto
from serving.columns import columns_from_rows
from serving.errors import ServingError, Unavailable
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc
from serving.proto_convert import timestamp
from serving.runtime import PortfolioRuntime
from serving.schemas import EXAMPLE_INPUT, PredictRequest
from serving.service import PortfolioService, batching, call_inner

pytestmark = pytest.mark.mongo

API_KEY = "test-key-7f3a"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
DATABASE = "nfc_app_test"
BATCH_ATOL = 1e-5  # the package's fp32 tolerance: batching may change float rounding, nothing else


@dataclass
class App:
    client: TestClient
    mongo: EmbeddedMongo
    grpc_target: str
    bars: pd.DataFrame
    news: pd.DataFrame
    times: np.ndarray  # the grid's close times
    bars_needed: int

    def payload(self, bar: int, request_id: str | None = None) -> dict[str, Any]:
        return predict_payload(self.bars, self.news, pd.Timestamp(self.times[bar]), self.bars_needed, STEP, request_id)

    def documents(self, **query: Any) -> list[dict[str, Any]]:
        with MongoClient(self.mongo.uri, tz_aware=True, serverSelectionTimeoutMS=5000) as client:
            return list(client[DATABASE]["predictions"].find(query, {"_id": False}))


@pytest.fixture(scope="session")
def app(tiny, tmp_path_factory) -> Iterator[App]:
    """One in-process app for the session; settings are read when it starts, inside this fixture."""
    mongo = EmbeddedMongo(tmp_path_factory.mktemp("app-mongo")).start()
    grpc_port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BENTOML_DO_NOT_TRACK", "true")
        env.setenv("NFC_MODEL_PATH", str(tiny.package))
        env.setenv("NFC_MONGO_URI", mongo.uri)
        env.setenv("NFC_MONGO_DB", DATABASE)
        env.setenv("NFC_API_KEY", API_KEY)
        env.setenv("NFC_GRPC_PORT", str(grpc_port))
        env.setenv("NFC_GRPC_HOST", "127.0.0.1")
        client = TestClient(PortfolioService.to_asgi())
        client.__enter__()
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    try:
        yield App(client, mongo, f"127.0.0.1:{grpc_port}", bars, read_news(tiny.data / "news.jsonl"),
                  np.sort(bars["timestamp"].unique()), client.get("/model_info", headers=AUTH).json()["bars_needed"])
    finally:
        client.__exit__(None, None, None)
        mongo.stop()


@pytest.fixture
def stub(app) -> Iterator[pb_grpc.PortfolioServiceStub]:
    with grpc.insecure_channel(app.grpc_target) as channel:
        yield pb_grpc.PortfolioServiceStub(channel)


def test_predict_returns_weights_that_mongodb_holds(app):
    response = app.client.post("/predict", json=app.payload(300, "app-predict-1"), headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stored"] is True and body["request_id"] == "app-predict-1" and body["model_version"] == "0.1.0-test"
    assert pd.Timestamp(body["as_of"]) == pd.Timestamp(app.times[300])
    assert abs(sum(abs(w) for w in body["weights"].values()) - 1.0) < 1e-5  # gross exposure 1
    [document] = app.documents(request_id="app-predict-1")
    assert document["weights"] == pytest.approx(body["weights"]) and document["symbols"] == body["symbols"]


def test_a_repeat_answers_the_stored_prediction_and_other_inputs_are_a_409(app):
    first = app.client.post("/predict", json=app.payload(310, "app-repeat"), headers=AUTH).json()
    again = app.client.post("/predict", json=app.payload(310, "app-repeat-2"), headers=AUTH).json()
    assert first["stored"] and not first["duplicate"]
    assert again["stored"] and again["duplicate"] and again["request_id"] == "app-repeat"  # the stored one
    assert again["weights"] == first["weights"]
    other = app.payload(310, "app-other")
    other["bars"][-1]["volume"] += 1.0
    conflict = app.client.post("/predict", json=other, headers=AUTH)
    assert conflict.status_code == 409 and "'app-repeat'" in conflict.json()["error"], conflict.text
    [document] = app.documents(as_of=pd.Timestamp(app.times[310]).to_pydatetime())
    assert document["request_id"] == "app-repeat" and document["weights"] == first["weights"]
    assert len(document["inputs_sha256"]) == 64


def _shorter(payload: dict[str, Any]) -> None:
    payload["bars"] = [b for b in payload["bars"] if b["timestamp"] != payload["bars"][0]["timestamp"]]


def _drop_symbol(payload: dict[str, Any]) -> None:
    payload["bars"] = [b for b in payload["bars"] if b["symbol"] != payload["bars"][0]["symbol"]]


def _add_symbol(payload: dict[str, Any]) -> None:
    payload["bars"].append({**payload["bars"][-1], "symbol": "ZZZZ"})


def _set_first_bar(**prices: Any) -> Any:
    def change(payload: dict[str, Any]) -> None:
        payload["bars"][0].update(prices)
    return change


BAD_INPUTS = {
    "window too short": (_shorter, "too few bars"),
    "symbol missing": (_drop_symbol, "no bars for symbols"),
    "unknown symbol": (_add_symbol, "does not trade"),
    "NaN price": (_set_first_bar(close=float("nan")), "finite number"),
    "infinite volume": (_set_first_bar(volume=float("inf")), "finite number"),
    "negative price": (_set_first_bar(low=-1.0), "greater than 0"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_saying_what_to_fix_and_stores_nothing(app, case):
    change, message = BAD_INPUTS[case]
    payload = app.payload(320, f"bad-{case}")
    change(payload)
    response = app.client.post("/predict", content=json.dumps(payload), headers=AUTH)
    assert response.status_code == 400 and message in response.text, response.text
    assert app.documents(request_id=f"bad-{case}") == []


@pytest.mark.parametrize(("limit", "value", "message"), [("NFC_MAX_NEWS", "1", "over the limit of 1 (NFC_MAX_NEWS)"),
                                                          ("NFC_MAX_TEXT_CHARS", "10", "NFC_MAX_TEXT_CHARS")])
def test_oversize_news_is_refused(app, monkeypatch, limit, value, message):
    payload = app.payload(330, f"oversize-{limit}")
    payload["news"] = [{"id": f"x{i}", "published_at": payload["bars"][-1]["timestamp"], "title": "Aurexa " * 5,
                        "body": "", "symbols": None} for i in range(2)]
    monkeypatch.setenv(limit, value)
    response = app.client.post("/predict", json=payload, headers=AUTH)
    assert response.status_code == 400 and message in response.text
    assert app.documents(request_id=f"oversize-{limit}") == []


def test_malformed_json_is_a_400_and_stores_nothing(app):
    before = len(app.documents())
    response = app.client.post("/predict", content=b'{"bars": [', headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400 and "Invalid JSON" in response.text
    assert len(app.documents()) == before


@pytest.mark.parametrize("route", ["/predict", "/latest", "/history", "/model_info", "/docs.json"])
def test_every_route_but_the_probes_needs_the_key_before_its_body_is_read(app, route):
    payload = app.payload(340, f"no-key{route}")
    method = app.client.post if route == "/predict" else app.client.get
    missing = method(route, json=payload) if method == app.client.post else method(route)
    wrong = method(route, headers={"X-API-Key": "guess"})
    assert missing.status_code == wrong.status_code == 401, missing.text
    assert "Authorization: Bearer <key>" in missing.json()["error"] and API_KEY not in wrong.text
    assert "detail" not in missing.json()  # nothing was parsed: no validation details for a caller without key
    assert app.documents(request_id=f"no-key{route}") == []
    assert app.client.get("/livez").status_code == app.client.get("/readyz").status_code == 200


def test_only_the_entry_routes_are_published_and_reachable(app):
    published = app.client.get("/docs.json", headers=AUTH).json()
    assert {"/predict", "/latest", "/history", "/model_info"} <= set(published["paths"])
    assert not {"/predict_batch", "/run", "/encode", "/info"} & set(published["paths"])  # inner services' APIs
    assert published["openapi"] == "3.1.0" and published["info"]["version"] == importlib.metadata.version(
        "neuralfusioncore")
    assert "API key" in published["info"]["description"]
    for route in ("/predict_batch", "/run", "/encode"):
        assert app.client.post(route, json={"jobs": [{"job": "0" * 32}] * 1000}, headers=AUTH).status_code == 404


def test_batch_size_one_serves_unbatched_and_bentoml_batching_from_two():
    assert batching(1, 500) == {}  # BentoML refuses max_batch_size=1 ("must be > 1")
    assert batching(2, 500) == {"batchable": True, "max_batch_size": 2, "max_latency_ms": 500}
    probe = ("from serving.service import FusionService as F, EncoderService as E; "
             "print(F.apis['run'].batchable, E.apis['encode'].batchable)")
    env = {**os.environ, "NFC_PREDICT_MAX_BATCH": "1", "NFC_ENCODER_MAX_BATCH": "1", "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]


async def _dropping_server(drops: int) -> tuple[asyncio.Server, list[int]]:
    """A loopback HTTP server that closes the first `drops` connections without answering, then answers 200."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        seen.append(len(seen))
        if len(seen) > drops:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


@pytest.mark.parametrize("drops", [1, 2, 3])
def test_a_dropped_encoder_connection_is_retried_twice_then_503(drops):
    async def scenario() -> tuple[str | ServingError, list[int]]:
        server, seen = await _dropping_server(drops)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/encode"
        async with server, aiohttp.ClientSession() as session:
            async def call() -> str:
                async with session.post(url, json=["text"]) as response:
                    return await response.text()
            try:
                return await call_inner(call, "the encoder service"), seen
            except ServingError as err:
                return err, seen

    result, seen = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(seen) == min(drops + 1, 3)
    if drops < 3:
        assert result == "ok"
    else:
        assert isinstance(result, Unavailable) and result.status == 503
        assert "the encoder service dropped the connection 3 times (ServerDisconnectedError)" in result.message


def test_latest_and_history_page_newest_first(app):
    for bar in (400, 401, 402, 403):
        assert app.client.post("/predict", json=app.payload(bar), headers=AUTH).status_code == 200
    latest = app.client.get("/latest", headers=AUTH).json()
    assert pd.Timestamp(latest["as_of"]) == max(pd.Timestamp(d["as_of"]) for d in app.documents())
    start, end = (pd.Timestamp(app.times[i]).isoformat() for i in (400, 404))
    first = app.client.get("/history", params={"start": start, "end": end, "limit": 3}, headers=AUTH).json()
    second = app.client.get("/history", params={"start": start, "end": end, "limit": 3,
                                                "before": first["next_before"]}, headers=AUTH).json()
    got = [pd.Timestamp(p["as_of"]) for p in first["items"] + second["items"]]
    assert got == [pd.Timestamp(app.times[i]) for i in (403, 402, 401, 400)] and second["next_before"] is None


@pytest.mark.parametrize(("query", "message"), [({"limit": 0}, "greater than or equal to 1"),
                                                ({"start": "2026-01-06T00:00:00Z", "end": "2026-01-05T00:00:00Z"},
                                                 "must be before end"),
                                                ({"start": "2026-01-05T00:00:00"}, "no time zone"),
                                                ({"end": "9999-12-31T23:59:59.999999Z"}, "is outside"),
                                                ({"model_version": "v" * 129}, "at most 128 characters")])
def test_bad_history_queries_are_400(app, query, message):
    response = app.client.get("/history", params=query, headers=AUTH)
    assert response.status_code == 400 and message in response.text


def test_model_info_and_probes(app):
    info = app.client.get("/model_info", headers=AUTH).json()
    assert info["version"] == "0.1.0-test" and info["bars_needed"] == 80 + info["lookback"]
    assert info["providers"] == {"fusion": "CPUExecutionProvider", "encoder": "CPUExecutionProvider"}
    # a CPU build of onnxruntime: the CPU graphs (fp32, never fp16), and the reason the device was chosen
    for graph in ("fusion", "encoder"):
        execution = info["execution"][graph]
        assert execution["provider"] == "CPUExecutionProvider" and execution["variant"] in ("cpu", "fp32")
        assert execution["reason"].startswith("cuda unavailable, fell back to the CPU: onnxruntime")
    assert app.client.get("/livez").status_code == app.client.get("/readyz").status_code == 200
    assert "/predict" in app.client.get("/docs.json", headers=AUTH).json()["paths"]


def test_concurrent_requests_each_answer_what_the_model_computes_alone(app, tiny):
    bars = list(range(500, 516))
    runtime = PortfolioRuntime.load(tiny.package, device="cpu")
    alone = {bar: runtime.predict_requests([PredictRequest.model_validate(app.payload(bar))])[0] for bar in bars}
    together: dict[int, Any] = {}
    barrier = threading.Barrier(len(bars))

    def call(bar: int) -> None:
        barrier.wait()
        together[bar] = app.client.post("/predict", json=app.payload(bar), headers=AUTH)

    threads = [threading.Thread(target=call, args=(bar,)) for bar in bars]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.status_code == 200 for r in together.values())
    worst = max(abs(together[bar].json()[field][s] - getattr(alone[bar], field)[s])
                for bar in bars for field in ("weights", "logits") for s in alone[bar].symbols)
    assert worst <= BATCH_ATOL, f"an answer moved by {worst:.2e}"


def test_mongodb_down_answers_503_and_reports_nothing_stored(app, stub):
    app.mongo.stop()
    try:
        response = app.client.post("/predict", json=app.payload(600, "while-down"), headers=AUTH)
        assert response.status_code == 503
        assert "MongoDB" in response.json()["error"] and "not stored" in response.json()["error"]
        assert app.mongo.uri.split("//")[1].split("/")[0] not in response.text  # no host:port to callers
        read = app.client.get("/latest", headers=AUTH)
        assert read.status_code == 503 and "MongoDB is unavailable" in read.json()["error"]
        assert "127.0.0.1" not in read.text and "Topology" not in read.text
        assert app.client.get("/readyz").status_code == 503
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request_to_proto(app.payload(601, "grpc-while-down")), metadata=[("x-api-key", API_KEY)])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        app.mongo.start()
    deadline = time.monotonic() + 30
    while app.client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert app.client.get("/readyz").status_code == 200
    assert app.documents(request_id="while-down") == app.documents(request_id="grpc-while-down") == []


def test_grpc_predict_is_the_http_prediction_and_is_stored(app, stub):
    payload = app.payload(700, "grpc-1")
    reply = stub.Predict(request_to_proto(payload), metadata=[("authorization", f"Bearer {API_KEY}")])
    http = app.client.post("/predict", json={**payload, "request_id": "http-1"}, headers=AUTH).json()
    assert reply.stored and list(reply.symbols) == http["symbols"]
    assert dict(reply.weights) == pytest.approx(http["weights"], abs=BATCH_ATOL)  # the same shape: keyed by symbol
    assert len(app.documents(request_id="grpc-1")) == 1


def test_grpc_refuses_bad_input_and_a_missing_key(app, stub):
    bad = app.payload(710)
    _shorter(bad)
    with pytest.raises(grpc.RpcError) as invalid:
        stub.Predict(request_to_proto(bad), metadata=[("x-api-key", API_KEY)])
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "too few bars" in invalid.value.details()
    nan = app.payload(710)
    nan["bars"][0]["high"] = float("nan")
    with pytest.raises(grpc.RpcError) as invalid_nan:
        stub.Predict(request_to_proto(nan), metadata=[("x-api-key", API_KEY)])
    assert invalid_nan.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.match(r"bars row 0 \(AURX at .*\): high nan must be a finite number", invalid_nan.value.details())
    with pytest.raises(grpc.RpcError) as unauthenticated:
        stub.Predict(request_to_proto(app.payload(710)))
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_malformed_message_is_invalid_argument_and_stores_nothing(app):
    before = len(app.documents())
    with grpc.insecure_channel(app.grpc_target) as channel:
        raw = channel.unary_unary("/neuralfusion.v2.PortfolioService/Predict")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff not a protobuf", metadata=[("x-api-key", API_KEY)], timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request for /neuralfusion.v2.PortfolioService/Predict" in err.value.details()
    assert len(app.documents()) == before


def test_grpc_latest_and_history(app, stub):
    for bar in (800, 801, 802):
        stub.Predict(request_to_proto(app.payload(bar)), metadata=[("x-api-key", API_KEY)])
    start, end = (timestamp(pd.Timestamp(app.times[i])) for i in (800, 803))
    key = [("x-api-key", API_KEY)]
    first = stub.GetHistory(pb.HistoryRequest(start=start, end=end, limit=2), metadata=key)
    rest = stub.GetHistory(pb.HistoryRequest(start=start, end=end, limit=2, before=first.next_before), metadata=key)
    got = [pd.Timestamp(p.as_of.ToDatetime(tzinfo=UTC)) for p in [*first.items, *rest.items]]
    assert got == [pd.Timestamp(app.times[i]) for i in (802, 801, 800)] and not rest.HasField("next_before")
    newest = stub.GetLatest(pb.LatestRequest(), metadata=key).as_of.ToDatetime(tzinfo=UTC)
    assert pd.Timestamp(newest) >= pd.Timestamp(app.times[802])
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetLatest(pb.LatestRequest(model_version="no-such-version"), metadata=key)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    for request in (pb.HistoryRequest(start=Timestamp(seconds=10**12)),  # outside what a Timestamp may hold
                    pb.HistoryRequest(end=timestamp(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))),
                    pb.HistoryRequest(model_version="v" * 17_000_000)):
        with pytest.raises(grpc.RpcError) as invalid:
            stub.GetHistory(request, metadata=key)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT, invalid.value.details()
    with pytest.raises(grpc.RpcError) as too_long:
        stub.GetLatest(pb.LatestRequest(model_version="v" * 17_000_000), metadata=key)
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for call, request in ((stub.GetLatest, pb.LatestRequest()), (stub.GetHistory, pb.HistoryRequest())):
        with pytest.raises(grpc.RpcError) as unauthenticated:
            call(request)
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_health_and_reflection(app):
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(app.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="neuralfusion.v2.PortfolioService")
        deadline = time.monotonic() + 15  # the status is refreshed every 5 s (after the MongoDB-down test)
        while health.Check(request).status != serving and time.monotonic() < deadline:
            time.sleep(0.5)
        status = health.Check(request).status
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        [answer] = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert status == serving
    assert "neuralfusion.v2.PortfolioService" in {s.name for s in answer.list_services_response.service}


def test_an_altered_package_leaves_the_service_up_but_never_ready(tiny, tmp_path, monkeypatch):
    package = Path(shutil.copytree(tiny.package, tmp_path / "pkg"))
    with (package / "manifest.json").open("a") as manifest:
        manifest.write("\n")
    monkeypatch.setenv("NFC_MODEL_PATH", str(package))
    service = PortfolioService()
    assert service.runtime is None and "manifest.json was modified" in (service.model.error or "")
    assert asyncio.run(service.is_ready()) is False
    with pytest.raises(ServingError) as caught:
        asyncio.run(service.predict_inline(lambda: columns_from_rows(PredictRequest.model_validate(EXAMPLE_INPUT))))
    assert caught.value.status == 503 and "not loaded" in caught.value.message
