"""The API as a client developer meets it, against one real `nfc serve` (bentoml serve subprocess, gRPC, its own
nx-27017 server so MongoDB can be stopped): the README's curl, Python client and grpcurl examples run as written;
`neuralfusion.client` (sync and async) gets typed answers, retries a lost answer into the stored prediction and a
503 until MongoDB is back; every status the OpenAPI document declares per route is triggered and its body
matches the one published error schema; gRPC answers have the HTTP shapes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jsonschema_rs
import pandas as pd
import pyarrow as pa
import pytest
from builders import STEP
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from pymongo import MongoClient
from serving_servers import distinct_free_ports, serve_env, start_nfc_serve

from neuralfusion.client import AsyncClient, Client, Conflict, NotFound, Prediction, ServiceUnavailable, Unauthorized
from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from neuralfusion.request_body import ARROW_MEDIA_TYPE, arrow_body
from nfc.embedded_mongo import EmbeddedMongo
from serving.client import predict_payload
from serving.columns import columns_body
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.mongo]

REPO = Path(__file__).resolve().parents[2]
API_KEY = "contract-key-90d1"
KEY = {"X-API-Key": API_KEY}
JSON = {"content-type": "application/json"}
ARROW = {"content-type": ARROW_MEDIA_TYPE}
DATABASE = "nfc_contract"
BODY_TIMEOUT_S = 2
MAX_BODY_BYTES = 3_000_000
# the README's placeholders, replaced by this server's addresses and the tiny package's data folder
README_URL, README_GRPC, README_DATA = "http://127.0.0.1:3000", "127.0.0.1:50051", "runs/demo/data"


@dataclass
class Served:
    url: str
    grpc_target: str
    mongo: EmbeddedMongo
    data: Path
    bars: pd.DataFrame
    news: pd.DataFrame
    times: list[pd.Timestamp]
    bars_needed: int

    def payload(self, bar: int, request_id: str | None = None) -> dict[str, Any]:
        return predict_payload(self.bars, self.news, self.times[bar], self.bars_needed, STEP, request_id)

    def window(self, bar: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The bars and news frames of the window ending at `bar`, as a user holds them."""
        first, last = self.times[bar - self.bars_needed + 1], self.times[bar]
        bars = self.bars[(self.bars["timestamp"] >= first) & (self.bars["timestamp"] <= last)]
        return bars, self.news[(self.news["published_at"] > first - STEP) & (self.news["published_at"] <= last)]

    def documents(self, **query: Any) -> list[dict[str, Any]]:
        with MongoClient(self.mongo.uri, tz_aware=True, serverSelectionTimeoutMS=5000) as client:
            return list(client[DATABASE]["predictions"].find(query, {"_id": False}))


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("contract")
    mongo = EmbeddedMongo(root / "mongo").start()
    http_port, grpc_port = distinct_free_ports(2)
    env = serve_env(root, NFC_API_KEY=API_KEY, NFC_MONGO_URI=mongo.uri, NFC_MONGO_DB=DATABASE,
                    NFC_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S), NFC_MAX_BODY_BYTES=str(MAX_BODY_BYTES))
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    try:
        with start_nfc_serve(root, ["--model-path", str(tiny.package)], env, http_port, grpc_port) as (_, url, _):
            info = httpx.get(f"{url}/model_info", headers=KEY, timeout=30).json()
            yield Served(url, f"127.0.0.1:{grpc_port}", mongo, tiny.data, bars, read_news(tiny.data / "news.jsonl"),
                         [pd.Timestamp(t) for t in sorted(bars["timestamp"].unique())], info["bars_needed"])
    finally:
        mongo.stop()


@pytest.fixture(scope="module")
def published(served) -> dict[str, Any]:
    return httpx.get(f"{served.url}/docs.json", headers=KEY, timeout=30).json()


# -- the README's examples ------------------------------------------------------------------------------------------


def readme_blocks() -> dict[str, str]:
    """The Python, curl and grpcurl blocks of the README's "Calling the service"."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Calling the service"):]
    section = section[:section.index("\n## ")]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL)
    found = {"python": [b for lang, b in blocks if lang == "python"],
             "curl": [b for lang, b in blocks if lang == "bash" and b.startswith("curl")],
             "grpcurl": [b for lang, b in blocks if lang == "bash" and b.startswith("grpcurl")]}
    assert all(len(b) == 1 for b in found.values()), {k: len(b) for k, b in found.items()}
    return {kind: b[0] for kind, b in found.items()}


def localised(block: str, served: Served) -> str:
    """`block` aimed at this server and data folder; each placeholder it uses must be one of the README's."""
    for placeholder, here in ((README_URL, served.url), (README_GRPC, served.grpc_target),
                              (README_DATA, str(served.data))):
        block = block.replace(placeholder, here)
    assert not re.search(r"127\.0\.0\.1:(3000|50051)\b|runs/demo", block), block
    return block


def json_documents(text: str) -> list[Any]:
    """The JSON documents printed one after another (curl prints no newline between answers)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text.rstrip()):
        document, i = decoder.raw_decode(text, i)
        out.append(document)
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def grpcurl_via_reflection(command: str) -> dict[str, Any]:
    """What `grpcurl -plaintext [-H 'k: v']... -d JSON TARGET SERVICE/METHOD` does: the method's types from the
    server's reflection, the JSON body parsed into its request, the answer printed in proto3's JSON mapping."""
    args = shlex.split(command)
    assert args.pop(0) == "grpcurl" and args.pop(0) == "-plaintext"
    metadata, body = [], "{}"
    while args[0].startswith("-"):
        flag, value = args.pop(0), args.pop(0)
        if flag == "-H":
            name, _, given = value.partition(":")
            metadata.append((name.strip().lower(), given.strip()))
        else:
            assert flag == "-d", f"the test does not know grpcurl's {flag}"
            body = value
    target, method_path = args
    service_name, method_name = method_path.split("/")
    with grpc.insecure_channel(target) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_type = message_factory.GetMessageClass(method.input_type)
        answer_type = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(f"/{service_name}/{method_name}", request_serializer=request_type.SerializeToString,
                                   response_deserializer=answer_type.FromString)
        answer = call(json_format.Parse(body, request_type()), metadata=metadata, timeout=60)
    return json_format.MessageToDict(answer)


# -- the client --------------------------------------------------------------------------------------------------


def test_sync_and_async_clients_give_typed_answers(served):
    bars, news = served.window(300)
    with Client(served.url, API_KEY) as client:
        made = client.predict(bars, news, request_id="contract-typed")
        rows = client.predict(bars.to_dict("records"), news.to_dict("records"), request_id="contract-typed-2")
        info = client.model_info()
        with pytest.raises(NotFound, match="no prediction is stored yet for model version 'none-such'") as missing:
            client.latest("none-such")
    assert isinstance(made, Prediction) and made.stored and not made.duplicate
    assert made.as_of == served.times[300].to_pydatetime() and made.as_of.utcoffset().total_seconds() == 0
    assert set(made.weights) == set(made.symbols) == set(info.symbols) and made.request_id == "contract-typed"
    assert rows.duplicate and rows.request_id == "contract-typed" and rows.weights == made.weights
    assert missing.value.status == 404 and info.bars_needed == served.bars_needed

    async def read() -> tuple[Prediction, list[Prediction], list[Prediction]]:
        async with AsyncClient(served.url, API_KEY) as client:
            await client.predict(*served.window(301), request_id="contract-async")
            latest = await client.latest()
            paged = [p async for p in client.history(start=served.times[300], end=served.times[302], page_size=1)]
            limited = [p async for p in client.history(limit=1)]
        return latest, paged, limited

    latest, paged, limited = asyncio.run(read())
    assert latest.request_id == "contract-async" and limited == [latest]
    assert [p.request_id for p in paged] == ["contract-async", "contract-typed"]  # page by page, newest first
    with Client(served.url, "wrong-key") as client, pytest.raises(Unauthorized, match="not valid for this server"):
        client.latest()


class LoseFirstAnswer(httpx.HTTPTransport):
    """The real transport, except that the first answer to a predict is read and then lost, as when the
    connection breaks after the server stored the prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/predict/arrow":
            self.sent.append(request.content)
            if len(self.sent) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("the connection broke before the answer arrived", request=request)
        return response


def test_a_retry_after_a_lost_answer_reads_back_the_stored_prediction(served):
    transport = LoseFirstAnswer()
    with Client(served.url, API_KEY, backoff_s=0.1, http=httpx.Client(transport=transport, timeout=60)) as client:
        prediction = client.predict(*served.window(310))
    first, retry = transport.sent
    request_id = pa.ipc.open_stream(first).read_all().column("request_id")[0].as_py()
    assert first == retry and re.fullmatch(r"[0-9a-f]{32}", request_id)  # one id, assigned by the client
    assert prediction.duplicate and prediction.stored and prediction.request_id == request_id
    assert len(served.documents(request_id=request_id)) == 1  # one prediction, not two


def test_a_503_is_retried_after_retry_after_until_mongodb_answers(served):
    statuses: list[tuple[int, str | None]] = []

    async def record(response: httpx.Response) -> None:
        statuses.append((response.status_code, response.headers.get("retry-after")))

    async def predict(retries: int) -> Prediction:
        http = httpx.AsyncClient(timeout=60, event_hooks={"response": [record]})
        async with AsyncClient(served.url, API_KEY, retries=retries, http=http) as client:
            return await client.predict(*served.window(320), request_id="contract-503")

    served.mongo.stop()
    restart = threading.Timer(6, served.mongo.start)
    try:
        with pytest.raises(ServiceUnavailable, match="MongoDB") as down:
            asyncio.run(predict(retries=0))
        assert down.value.status == 503 and statuses == [(503, "1")]
        statuses.clear()
        restart.start()
        prediction = asyncio.run(predict(retries=30))
    finally:
        if restart.is_alive() or restart.finished.is_set():
            restart.join()
        else:  # failed before the timer started
            served.mongo.start()
    assert prediction.stored and not prediction.duplicate
    assert len(statuses) >= 2 and set(statuses[:-1]) == {(503, "1")} and statuses[-1][0] == 200
    assert len(served.documents(request_id="contract-503")) == 1


# -- the OpenAPI document and the real refusals ---------------------------------------------------------------------


def stalled_body(url: str, path: str) -> tuple[int, bytes]:
    """POST `path` announcing 100 bytes and sending 10: (status, body) of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT_S + 30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json"
                     f"\r\nContent-Length: 100\r\n\r\n{{\"bars\": [".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def changed_window(served: Served, bar: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The window of `bar` with other inputs: its last close moved to that bar's high."""
    bars, news = served.window(bar)
    bars = bars.copy()
    bars.loc[bars.index[-1], "close"] = bars["high"].iloc[-1]
    return bars, news


def bodies(served: Served, bar: int, request_id: str, change: bool = False) -> dict[str, dict[str, Any]]:
    """httpx arguments of a valid request for `bar` on each predict route (with `change`: other inputs, the last
    close moved to its bar's high)."""
    bars, news = changed_window(served, bar) if change else served.window(bar)
    columns = columns_body(bars, news, request_id)
    rows = {**{name: [dict(zip(columns[name], values, strict=True)) for values in zip(*columns[name].values(),
                                                                                     strict=True)]
               for name in ("bars", "news")}, "request_id": request_id}
    return {"/predict": {"json": rows}, "/predict/columns": {"json": columns},
            "/predict/arrow": {"content": arrow_body(bars, news, request_id), "headers": ARROW}}


def test_every_declared_status_is_sent_with_a_body_matching_the_error_schema(served, published):
    error = jsonschema_rs.validator_for({"$ref": "#/components/schemas/Error", "components": published["components"]})
    sent: dict[tuple[str, str], list[Any]] = {}

    def check(method: str, path: str, response: httpx.Response | tuple[int, bytes]) -> None:
        status, body = (response.status_code, response.content) if isinstance(response, httpx.Response) else response
        sent.setdefault((f"{method} {path}", str(status)), []).append(json.loads(body))

    def send(method: str, path: str, key: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {**(KEY if key else {}), **kwargs.pop("headers", {})}
        return httpx.request(method, f"{url}{path}", headers=headers, timeout=60, **kwargs)

    url, routes = served.url, ("/predict", "/predict/columns", "/predict/arrow")
    with Client(url, API_KEY) as client:  # the stored prediction the 409s collide with
        client.predict(*served.window(331), request_id="contract-409")
    bad_bar = served.payload(330, "contract-400")
    bad_bar["bars"][-1]["high"] = bad_bar["bars"][-1]["low"] / 2
    malformed = {"/predict": {"content": b'{"bars": [', "headers": JSON}, "/predict/arrow": {"content": b"not arrow",
                                                                                           "headers": ARROW},
                 "/predict/columns": {"json": {"bars": {"timestamp": [1], "symbol": []}}}}
    for path in routes:
        check("POST", path, send("POST", path, **malformed[path]))
        check("POST", path, send("POST", path, key=False, **bodies(served, 332, "contract-401")[path]))
        check("POST", path, stalled_body(url, path))
        check("POST", path, send("POST", path, **bodies(served, 331, f"contract-409{path}", change=True)[path]))
        oversize = {"content": b" " * (MAX_BODY_BYTES + 1), "headers": ARROW if path.endswith("arrow") else JSON}
        check("POST", path, send("POST", path, **oversize))
    check("POST", "/predict", send("POST", "/predict", json=bad_bar))
    check("POST", "/predict", send("POST", "/predict", json={"news": []}))
    for path, params in (("/latest", {"model_version": "v" * 129}), ("/history", {"limit": 0}),
                         ("/model_info", {"verbose": 1})):
        check("GET", path, send("GET", path, params=params))
        check("GET", path, send("GET", path, key=False))
    check("GET", "/latest", send("GET", "/latest", params={"model_version": "none-such"}))
    at = "/predict/at"  # by reference; this server has no bar source of its own
    check("POST", at, send("POST", at, content=b'{"as_of": ', headers=JSON))
    check("POST", at, send("POST", at, key=False, json={}))
    check("POST", at, send("POST", at, json={}))
    check("POST", at, stalled_body(url, at))
    check("POST", at, send("POST", at, content=b" " * (MAX_BODY_BYTES + 1), headers=JSON))
    with Client(url, API_KEY) as client, pytest.raises(NotFound, match="bar source"):
        client.predict_at(served.times[400])
    with Client(url, API_KEY) as client, pytest.raises(Conflict, match="'contract-409'"):
        client.predict(*changed_window(served, 331))  # the client raises the 409 as Conflict
    served.mongo.stop()
    try:
        for path in routes:
            check("POST", path, send("POST", path, **bodies(served, 333, f"contract-503{path}")[path]))
        for path in ("/latest", "/history"):
            check("GET", path, send("GET", path))
    finally:
        served.mongo.start()

    declared = {(f"{method.upper()} {path}", status) for path, item in published["paths"].items()
                for method, op in item.items() if op.get("security") for status in op["responses"] if status != "200"}
    # /model_info answers 503 only without a loadable model (tests/test_serving/test_reliability_artifacts.py);
    # /predict/at's 409 and 503 need a bar source (tests/test_serving/test_by_reference.py)
    excused = {("GET /model_info", "503"), ("POST /predict/at", "409"), ("POST /predict/at", "503")}
    assert set(sent) == declared - excused, sorted(set(sent) ^ declared)
    for (route, status), answers in sent.items():
        for body in answers:
            assert error.is_valid(body), (route, status, body)
    assert any("detail" in body for body in sent[("POST /predict", "400")])  # BentoML's own schema errors match too


def test_the_published_document_describes_the_routes(published):
    info = published["info"]
    assert info["title"] == "NeuralFusionCore" and "Contract version 2.0" in info["description"]
    assert set(published["components"]["securitySchemes"]) == {"ApiKeyHeader", "Bearer"}
    history = published["paths"]["/history"]["get"]
    assert [p["name"] for p in history["parameters"]] == ["start", "end", "model_version", "limit", "before"]
    assert history["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HistoryOut"}
    assert "post" not in published["paths"]["/latest"]  # reads are GET only
    retry_after = published["paths"]["/predict"]["post"]["responses"]["503"]["headers"]["Retry-After"]
    assert retry_after["schema"]["type"] == "integer"


def test_grpc_and_http_answers_have_the_same_shape(served):
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = pb_grpc.PortfolioServiceStub(channel)
        over_grpc = stub.GetLatest(pb.LatestRequest(), metadata=[("x-api-key", API_KEY)], timeout=60)
    over_http = httpx.get(f"{served.url}/latest", headers=KEY, timeout=60).json()
    as_json = json_format.MessageToDict(over_grpc, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    assert as_json == over_http


def test_the_readme_examples_run_against_a_served_model(served):
    blocks = readme_blocks()
    with Client(served.url, API_KEY) as client:  # two older predictions, so that the history has pages
        for bar in (340, 341):
            client.predict(*served.window(bar), request_id=f"contract-readme-{bar}")
    env = {**os.environ, "NFC_API_KEY": API_KEY, "PYTHONPATH": str(REPO)}
    python = subprocess.run([sys.executable, "-c", localised(blocks["python"], served)], env=env, text=True,
                            capture_output=True, timeout=300, check=False)
    assert python.returncode == 0, python.stderr[-3000:]
    lines = python.stdout.splitlines()
    as_of = lines[0].split()[0]  # the last bar of the data: the newest prediction stored
    assert "stored=True" in lines[0] and len(lines) == 4 and lines[1].split()[0] == as_of
    assert pd.Timestamp(as_of) == served.times[-1]

    curl = subprocess.run(["bash", "-euo", "pipefail", "-c", localised(blocks["curl"], served)], env=env, text=True,
                          capture_output=True, timeout=120, check=False)
    assert curl.returncode == 0, curl.stderr[-3000:]
    latest, history, info = json_documents(curl.stdout)
    assert pd.Timestamp(latest["as_of"]) == pd.Timestamp(as_of) and latest["stored"]
    assert len(history["items"]) == 2 and history["items"][0] == latest and history["next_before"] is not None
    assert info["bars_needed"] == served.bars_needed

    command = localised(blocks["grpcurl"], served)
    over_grpc = grpcurl_via_reflection(command.replace("$NFC_API_KEY", API_KEY))
    # proto3's JSON mapping of the gRPC answer is the HTTP answer: same names, times, weights by symbol
    assert over_grpc == {**history, "items": [{k: v for k, v in p.items() if v is not False} for p in history["items"]]}
    assert list(over_grpc["items"][0]) == ["model_version", "as_of", "symbols", "weights", "logits", "horizon_bars",
                                           "request_id", "stored"]
    if shutil.which("grpcurl"):  # grpcurl itself, where it is installed
        real = subprocess.run(["bash", "-c", command], env=env, text=True, capture_output=True, timeout=60, check=False)
        assert real.returncode == 0 and json.loads(real.stdout) == over_grpc, real.stderr[-2000:]
