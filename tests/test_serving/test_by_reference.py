"""Predictions by reference (POST /predict/at, gRPC PredictAt, `nfc predict --url`): the service reads the bars
and news itself and answers what an inline /predict, a local `nfc predict` and the offline package backtest give
on the same bars; the per-worker buffers read only what is new; refusals say what to fix.

The service is `nfc serve` (a `bentoml serve` subprocess) on loopback ports, so `nfc predict --url` reaches it over
real HTTP; MongoDB is the session's nx-27017 server, ClickHouse the session's clickhouse-server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pymongo
import pytest
from builders import STEP, fill_candle_table, package_backtest, seed_news_documents
from click.testing import CliRunner
from live_servers import CLICKHOUSE_PASSWORD
from serving_servers import distinct_free_ports, serve_env, start_nfc_serve

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from nfc.cli import main
from nfc.embedded_mongo import free_port
from serving.by_reference import OVERLAP, ModelWindow, ReferenceSources
from serving.client import predict_payload
from serving.errors import NotFound, RequestError, Unavailable
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc
from serving.proto_convert import timestamp
from serving.request_checks import inputs_sha256
from serving.runtime import PortfolioRuntime
from serving.schemas import PredictAtRequest, PredictRequest
from serving.settings import ServeSettings

pytestmark = pytest.mark.mongo

API_KEY = "byref-key-93d1"
KEY = {"X-API-Key": API_KEY}
DATABASE = "nfc_by_reference"
NEWS_DB = "byref_news"
WEIGHTS_ATOL = 1e-6  # the bound for every path to the same bars (the vector cache's rounding included)


@dataclass(frozen=True)
class Service:
    url: str
    grpc_target: str
    mongo_uri: str
    package: Path
    data: Path
    symbols: tuple[str, ...]
    bars_needed: int
    lookback: int

    def post(self, route: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{route}", json=body, headers=KEY if headers is None else headers, timeout=60)

    def weights(self, answer: dict[str, Any]) -> np.ndarray:
        return np.array([answer["weights"][s] for s in self.symbols])


@pytest.fixture(scope="module")
def service(tiny, mongo_uri, tmp_path_factory) -> Iterator[Service]:
    """`nfc serve` (bentoml serve) of the tiny package on free loopback ports, reading bars and news from the
    package's data folder. A subprocess: BentoML's metrics allow one in-process app per process, and
    test_serving_app.py has it."""
    root = tmp_path_factory.mktemp("by-reference")
    http_port, grpc_port = distinct_free_ports(2)
    env = serve_env(root, NFC_API_KEY=API_KEY, NFC_MONGO_URI=mongo_uri, NFC_MONGO_DB=DATABASE,
                    NFC_BARS_DIR=str(tiny.data))
    with start_nfc_serve(root, ["--model-path", str(tiny.package)], env, http_port, grpc_port) as (_, url, _):
        info = httpx.get(f"{url}/model_info", headers=KEY, timeout=30).json()
        yield Service(url, f"127.0.0.1:{grpc_port}", mongo_uri, tiny.package, tiny.data, tuple(info["symbols"]),
                      info["bars_needed"], info["lookback"])


@pytest.fixture(scope="module")
def backtest(tiny):
    """The offline package backtest: its anchors' times and the package's weights there."""
    result, _, weights = package_backtest(tiny.package, tiny.data)
    return result.times[result.anchors], weights


def stored(service: Service, request_id: str) -> list[dict[str, Any]]:
    with pymongo.MongoClient(service.mongo_uri) as client:
        return list(client[DATABASE]["predictions"].find({"request_id": request_id}, {"_id": False}))


def test_by_reference_inline_local_job_and_offline_backtest_give_the_same_weights(service, backtest, tmp_path):
    times, offline = backtest
    picks = [0, len(times) // 2, len(times) - 1]
    bars = BarFileSource(service.data / "bars.parquet").read()
    news = read_news(service.data / "news.jsonl")
    for pick in picks:
        when = pd.Timestamp(times[pick])
        by_reference = service.post("/predict/at", {"as_of": when.isoformat(), "request_id": f"ref-{pick}"})
        assert by_reference.status_code == 200, by_reference.text
        answer = by_reference.json()
        assert answer["stored"] and not answer["duplicate"] and pd.Timestamp(answer["as_of"]) == when
        np.testing.assert_allclose(service.weights(answer), offline[pick], rtol=0, atol=WEIGHTS_ATOL)
        # the same bars and news sent inline hash the same: the stored prediction, `duplicate: true`
        payload = predict_payload(bars, news, when, service.bars_needed, STEP, f"inline-{pick}",
                                  news_bars=service.lookback)
        inline = service.post("/predict", payload).json()
        assert inline["duplicate"] and inline["request_id"] == f"ref-{pick}", inline
        [document] = stored(service, f"ref-{pick}")
        assert document["inputs_sha256"] == inputs_sha256(PredictRequest.model_validate(payload))
        # `nfc predict` in this process, into a database of its own
        result = CliRunner().invoke(main, [
            "--log-level", "WARNING", "predict", "--json", "--data", str(service.data), "--model-path",
            str(service.package), "--as-of", when.isoformat(), "--state-dir", str(tmp_path / "state")],
            env={"NFC_MONGO_URI": service.mongo_uri, "NFC_MONGO_DB": "nfc_by_reference_local"})
        assert result.exit_code == 0, result.output
        [local] = json.loads(result.stdout)["predictions"]
        np.testing.assert_allclose(service.weights(local), service.weights(answer), rtol=0, atol=WEIGHTS_ATOL)


def test_nfc_predict_url_backfills_by_reference_and_a_rerun_stores_nothing(service, backtest):
    times, offline = backtest
    first, last = pd.Timestamp(times[1]), pd.Timestamp(times[3])
    every = int((pd.Timestamp(times[2]) - pd.Timestamp(times[1])) / STEP)
    args = ["--log-level", "WARNING", "predict", "--json", "--url", service.url, "--start", first.isoformat(),
            "--end", last.isoformat(), "--every", str(every), "--request-id", "by-url", "--api-key-env", "BYREF_KEY"]
    result = CliRunner().invoke(main, args, env={"BYREF_KEY": API_KEY})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mode"] == "by-reference" and summary["sent"] == 3 and summary["stored"] == 3
    for k, prediction in enumerate(summary["predictions"]):
        assert pd.Timestamp(prediction["as_of"]) == pd.Timestamp(times[1 + k])
        assert prediction["request_id"] == f"by-url-{pd.Timestamp(times[1 + k]).isoformat()}"
        np.testing.assert_allclose(service.weights(prediction), offline[1 + k], rtol=0, atol=WEIGHTS_ATOL)
    again = CliRunner().invoke(main, args, env={"BYREF_KEY": API_KEY})
    assert again.exit_code == 0 and json.loads(again.stdout)["stored"] == 0, again.output
    assert "nothing new" in again.output
    refused = CliRunner().invoke(main, args, env={})  # no key in BYREF_KEY: the service's 401, said plainly
    assert refused.exit_code == 1 and "(401)" in refused.output
    mixed = CliRunner().invoke(main, [*args, "--data", str(service.data)], env={"BYREF_KEY": API_KEY})
    assert mixed.exit_code == 2 and "drop --data" in mixed.output
    live = CliRunner().invoke(main, ["--log-level", "WARNING", "predict", "--url", service.url],
                              env={"NFC_API_KEY": API_KEY})  # the folder's newest bar is months old
    assert live.exit_code == 1 and "the bar feed is behind" in live.output, live.output


def test_grpc_predict_at_answers_as_http_does(service, backtest):
    times, _ = backtest
    when = pd.Timestamp(times[4])
    http = service.post("/predict/at", {"as_of": when.isoformat(), "request_id": "grpc-pair"}).json()
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = pb_grpc.PortfolioServiceStub(channel)
        reply = stub.PredictAt(pb.PredictAtRequest(as_of=timestamp(when), symbols=list(service.symbols)),
                               metadata=[("x-api-key", API_KEY)], timeout=60)
        assert reply.duplicate and reply.request_id == "grpc-pair"
        assert dict(reply.weights) == http["weights"]  # the same shape: keyed by symbol
        with pytest.raises(grpc.RpcError) as refused:
            stub.PredictAt(pb.PredictAtRequest(as_of=timestamp(when)), timeout=30)  # no key
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as off_grid:
            stub.PredictAt(pb.PredictAtRequest(as_of=timestamp(when + pd.Timedelta("1min"))),
                           metadata=[("x-api-key", API_KEY)], timeout=30)
        assert off_grid.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_default_as_of_is_the_newest_bar_and_a_repeat_is_a_duplicate(service):
    newest = BarFileSource(service.data / "bars.parquet").read()["timestamp"].max()
    first = service.post("/predict/at", {"symbols": list(reversed(service.symbols))}).json()
    again = service.post("/predict/at", {}).json()
    assert pd.Timestamp(first["as_of"]) == newest and first["stored"]
    assert again["duplicate"] and again["request_id"] == first["request_id"] and again["weights"] == first["weights"]


def test_refusals_name_the_problem_and_store_nothing(service, backtest):
    times, _ = backtest
    when = pd.Timestamp(times[0])
    cases = {
        "off the grid": ({"as_of": (when + pd.Timedelta("1min")).isoformat()}, 400, "not a bar close of the model's"),
        "future": ({"as_of": "2199-01-01T00:00:00Z"}, 400, "is in the future"),
        "universe": ({"symbols": ["AURX", "ZZZZ"]}, 400, "['ZZZZ'] not traded by the model"),
        "no bars": ({"as_of": "2020-01-01T00:00:00Z"}, 404, "has no bars for the as-of bar 2020-01-01T00:00:00"),
        "unknown field": ({"asof": when.isoformat()}, 400, "asof"),
    }
    for name, (body, status, message) in cases.items():
        response = service.post("/predict/at", {**body, "request_id": f"refused-{name}"})
        assert response.status_code == status and message in response.text, (name, response.text)
        assert stored(service, f"refused-{name}") == []
    assert service.post("/predict/at", {}, headers={}).status_code == 401


def test_a_bar_asked_again_answers_the_stored_prediction_and_inline_repeats_know_their_vectors(service, backtest):
    times, _ = backtest
    bars = BarFileSource(service.data / "bars.parquet").read()
    news = read_news(service.data / "news.jsonl")
    with_news = [k for k in range(5, len(times) // 2) if predict_payload(  # bars no other test of the service asks
        bars, news, pd.Timestamp(times[k]), service.bars_needed, STEP, news_bars=service.lookback)["news"]]
    assert len(with_news) >= 2
    for k in with_news[:2]:  # windows whose texts the encoder must have been asked for once
        when = pd.Timestamp(times[k])
        first = service.post("/predict/at", {"as_of": when.isoformat(), "request_id": f"cache-{k}"}).json()
        before = httpx.get(f"{service.url}/model_info", headers=KEY, timeout=60).json()["vector_cache"]
        again = service.post("/predict/at", {"as_of": when.isoformat(), "request_id": f"cache-{k}-again"}).json()
        assert again["duplicate"] and again["request_id"] == f"cache-{k}" and again["weights"] == first["weights"]
        asked = httpx.get(f"{service.url}/model_info", headers=KEY, timeout=60).json()["vector_cache"]
        assert (asked["hits"], asked["misses"]) == (before["hits"], before["misses"])  # not computed again
        payload = predict_payload(bars, news, when, service.bars_needed, STEP, news_bars=service.lookback)
        inline = service.post("/predict", payload).json()  # computed again, then found stored
        assert inline["duplicate"] and inline["request_id"] == f"cache-{k}"
        after = httpx.get(f"{service.url}/model_info", headers=KEY, timeout=60).json()["vector_cache"]
        # the worker knew every article's vector from the first ask: the encoder service was not asked at all
        assert after["capacity"] == 4096
        assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


# -- the sources and their buffers, against ClickHouse and MongoDB ---------------------------------------------


@pytest.fixture(scope="module")
def clickhouse_settings(tiny, clickhouse_server, mongo_uri) -> ServeSettings:
    """The tiny market in a ClickHouse candle table (open-labelled 3-minute candles) and MongoDB news (the seed's
    shape), as a service would be configured for them."""
    fill_candle_table(clickhouse_server.url, "byref", pd.read_parquet(tiny.data / "bars.parquet"), STEP,
                      label="open")
    with pymongo.MongoClient(mongo_uri) as client:
        client.drop_database(NEWS_DB)
        client[NEWS_DB]["news"].insert_many(seed_news_documents(read_news(tiny.data / "news.jsonl")))
    return ServeSettings(mongo_uri=mongo_uri, clickhouse_url=clickhouse_server.url, clickhouse_table="market.byref",
                         clickhouse_candle="3min", news_mongo_uri=mongo_uri, news_db=NEWS_DB)


@pytest.fixture(scope="module")
def window(tiny) -> ModelWindow:
    return ModelWindow.of(PortfolioRuntime.load(tiny.package, with_encoder=False))


def test_clickhouse_and_mongodb_give_the_request_of_the_data_folder_and_a_later_bar_reads_only_new_rows(
        tiny, clickhouse_settings, window):
    times = np.sort(pd.read_parquet(tiny.data / "bars.parquet")["timestamp"].unique())
    first_as_of, second_as_of = pd.Timestamp(times[-40]), pd.Timestamp(times[-39])
    live = ReferenceSources(clickhouse_settings)
    folder = ReferenceSources(ServeSettings(bars_dir=str(tiny.data)))
    try:
        for when in (first_as_of, second_as_of):
            query = PredictAtRequest(as_of=when.to_pydatetime(), request_id="same")
            from_clickhouse, from_folder = live.request(window, query), folder.request(window, query)
            assert from_clickhouse.inputs_sha256 == from_folder.inputs_sha256
            assert from_clickhouse.inputs_sha256 == inputs_sha256(from_folder.frames)
            assert len(from_clickhouse.frames.bars) == window.bars_needed * len(window.universe.symbols)
        bar_reads, news_reads = list(live.bar_buffer.reads), list(live.news_buffer.reads)
    finally:
        live.close()
        folder.close()
    n_symbols = len(window.universe.symbols)
    assert len(bar_reads) == 2 and bar_reads[0].rows > window.bars_needed * n_symbols  # the whole window once
    second = bar_reads[1]  # then from the newest buffered bar less the overlap: 5 bars again, 1 new
    assert second.start == first_as_of - OVERLAP and second.end == second_as_of
    assert second.rows == (OVERLAP // STEP + 1) * n_symbols
    assert len(news_reads) == 2 and news_reads[1].start == first_as_of - OVERLAP


def test_an_as_of_the_buffer_holds_reads_nothing_and_an_older_one_leaves_the_buffer(tiny, window):
    times = np.sort(pd.read_parquet(tiny.data / "bars.parquet")["timestamp"].unique())
    sources = ReferenceSources(ServeSettings(bars_dir=str(tiny.data)))
    newer, older = pd.Timestamp(times[-1]), pd.Timestamp(times[-300])
    try:
        sources.request(window, PredictAtRequest(as_of=newer.to_pydatetime()))
        reads = len(sources.bar_buffer.reads)
        sources.request(window, PredictAtRequest(as_of=newer.to_pydatetime()))
        assert len(sources.bar_buffer.reads) == reads  # already held: no read
        sources.request(window, PredictAtRequest(as_of=older.to_pydatetime()))
        assert sources.bar_buffer.reads[-1].end == older and sources.bar_buffer.hi == newer  # read once, not kept
        held = sources.bar_buffer.frame
        assert held["timestamp"].min() > newer - (window.bars_needed + 2) * STEP - OVERLAP  # one window, bounded
    finally:
        sources.close()


def test_an_as_of_a_few_bars_older_than_the_newest_is_answered_from_the_buffer(tiny, window):
    times = np.sort(pd.read_parquet(tiny.data / "bars.parquet")["timestamp"].unique())
    sources = ReferenceSources(ServeSettings(bars_dir=str(tiny.data)))
    asked = [pd.Timestamp(t) for t in times[-40:-36]]
    try:
        built = [sources.request(window, PredictAtRequest(as_of=when.to_pydatetime())) for when in asked]
        reads = len(sources.bar_buffer.reads)
        assert reads == len(asked)  # the first window whole, then one incremental read a bar
        older = sources.request(window, PredictAtRequest(as_of=asked[1].to_pydatetime()))  # as concurrent asks come
        assert len(sources.bar_buffer.reads) == reads and sources.bar_buffer.hi == asked[-1]  # from memory
        assert older.inputs_sha256 == built[1].inputs_sha256
    finally:
        sources.close()


def test_an_unreachable_source_is_a_503_without_its_password(tiny, window):
    port = free_port()  # nothing listens there
    settings = ServeSettings(clickhouse_url=f"clickhouse://nfc:{CLICKHOUSE_PASSWORD}@127.0.0.1:{port}/default",
                             clickhouse_table="market.byref", clickhouse_candle="3min",
                             news_mongo_uri=f"mongodb://127.0.0.1:{port}/", mongo_timeout_ms=300)
    sources = ReferenceSources(settings)
    try:
        with pytest.raises(Unavailable) as refused:
            sources.request(window, PredictAtRequest(as_of=pd.Timestamp("2026-01-05T12:00Z").to_pydatetime()))
    finally:
        sources.close()
    assert "clickhouse table market.byref" in refused.value.message and "retry" in refused.value.message
    assert CLICKHOUSE_PASSWORD not in refused.value.message and str(port) not in refused.value.message
    with pytest.raises(NotFound, match=r"sets NFC_BARS_DIR .* or NFC_CLICKHOUSE_URL"):
        ReferenceSources(ServeSettings()).request(window, PredictAtRequest())


def test_a_stale_or_missing_bar_is_not_found_and_bad_as_ofs_are_request_errors(tiny, tmp_path, window):
    data = tmp_path / "data"
    bars = pd.read_parquet(tiny.data / "bars.parquet")
    end = bars["timestamp"].max()
    lagging = window.universe.symbols[1]
    data.mkdir()
    bars[~((bars["symbol"] == lagging) & (bars["timestamp"] > end - pd.Timedelta("30min")))].to_parquet(
        data / "bars.parquet")
    sources = ReferenceSources(ServeSettings(bars_dir=str(data)))
    try:
        with pytest.raises(NotFound, match=f"{lagging} \\(last bar 0 days 00:30:00 before\\)"):
            sources.request(window, PredictAtRequest(as_of=end.to_pydatetime()))
        with pytest.raises(RequestError, match="in the future"):
            sources.request(window, PredictAtRequest(as_of=end.to_pydatetime()), now=end - STEP)
        before_the_gap = sources.request(window, PredictAtRequest(as_of=(end - 11 * STEP).to_pydatetime()))
        assert before_the_gap.frames.news.empty  # a folder without news: windows without news
        assert len(before_the_gap.frames.bars) == window.bars_needed * len(window.universe.symbols)
        bars.to_parquet(data / "bars.parquet")  # the lagging bars arrive: the same bar is asked again
        late = sources.request(window, PredictAtRequest(as_of=end.to_pydatetime()))
        assert len(late.frames.bars) == window.bars_needed * len(window.universe.symbols)
        reads = len(sources.bar_buffer.reads)
        assert sources.known(window, PredictAtRequest(as_of=end.to_pydatetime())) == (end, late.inputs_sha256)
        again = sources.request(window, PredictAtRequest(as_of=end.to_pydatetime(), request_id="again"))
        assert again.frames.request_id == "again" and again.inputs_sha256 == late.inputs_sha256
        assert len(sources.bar_buffer.reads) == reads  # the repeat read nothing
        sources.request(window, PredictAtRequest(as_of=(end - STEP).to_pydatetime()))  # an older window, read once
        assert sources.known(window, PredictAtRequest(as_of=end.to_pydatetime()))[1] == late.inputs_sha256
    finally:
        sources.close()
