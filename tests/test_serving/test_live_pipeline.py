"""The live loop end to end against real servers on loopback: ClickHouse bars, MongoDB news (nx-27017),
`nfc predict` in this process, MongoDB predictions, Redis publish; and the back-fill equals the offline
backtest of the same package (no train/serve skew)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pymongo
import pytest
import redis
from builders import fill_candle_table, package_backtest, seed_news_documents
from click.testing import CliRunner
from live_servers import CLICKHOUSE_PASSWORD

from neuralfusion.data.news import read_news
from neuralfusion.dataset import load_data_dir
from nfc.cli import main
from serving.store import DEFAULT_COLLECTION, DEFAULT_DATABASE

STEP = pd.Timedelta("3min")
NEWS_DB = "seed_news"
CHANNEL = "nfc:test:weights"
KEY = "nfc:test:latest"

pytestmark = [pytest.mark.integration, pytest.mark.mongo]


@dataclass(frozen=True)
class LiveWorld:
    """The tiny synthetic market loaded twice: as it is (`synth`) and shifted to end now (`live`)."""

    package: Path
    data: Path
    clickhouse_url: str
    mongo_uri: str
    redis_url: str
    live_end: pd.Timestamp  # close time of the last shifted bar


@pytest.fixture(scope="module")
def world(tiny, clickhouse_server, mongo_uri, redis_url) -> Iterator[LiveWorld]:
    bars = pd.read_parquet(tiny.data / "bars.parquet")
    news = read_news(tiny.data / "news.jsonl")
    shift = pd.Timestamp.now(tz="UTC").floor(STEP) - bars["timestamp"].max()
    fill_candle_table(clickhouse_server.url, "synth", bars, STEP)
    fill_candle_table(clickhouse_server.url, "live", bars, STEP, shift, label="open")
    with pymongo.MongoClient(mongo_uri) as mongo:
        mongo.drop_database(NEWS_DB)
        mongo[NEWS_DB]["synth"].insert_many(seed_news_documents(news, pd.Timedelta(0)))
        mongo[NEWS_DB]["live"].insert_many(seed_news_documents(news, shift))
    yield LiveWorld(tiny.package, tiny.data, clickhouse_server.url, mongo_uri, redis_url,
                    bars["timestamp"].max() + shift)


def run_predict(world: LiveWorld, *args: str, state: Path, table: str = "synth", label: str = "close",
                redis_url: str | None = None) -> tuple[int, str, str]:
    env = {"NFC_MONGO_URI": world.mongo_uri, "NFC_CLICKHOUSE_URL": world.clickhouse_url,
           "NFC_NEWS_DB": NEWS_DB, "NFC_NEWS_COLLECTION": table, "NFC_CLICKHOUSE_TABLE": f"market.{table}",
           "NFC_CLICKHOUSE_LABEL": label, "NFC_CLICKHOUSE_CANDLE": "3min", "NFC_STATE_DIR": str(state),
           "NFC_REDIS_KEY": KEY, "NFC_REDIS_CHANNEL": CHANNEL}
    if redis_url:
        env["NFC_REDIS_URL"] = redis_url
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "predict", "--json", "--bars", "clickhouse",
                                       "--news", "mongo", "--model-path", str(world.package), *args], env=env)
    return result.exit_code, result.stdout, result.output


def stored(mongo_uri: str, times) -> list[dict]:
    """Stored predictions whose as-of bar is one of `times`, oldest first."""
    wanted = [pd.Timestamp(t).to_pydatetime() for t in times]
    with pymongo.MongoClient(mongo_uri, tz_aware=True) as client:
        return list(client[DEFAULT_DATABASE][DEFAULT_COLLECTION].find({"as_of": {"$in": wanted}}).sort("as_of", 1))


def next_message(subscriber, timeout_s: float = 10.0) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = subscriber.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            return json.loads(message["data"])
    return None


def test_live_run_stores_publishes_and_repeats_as_a_no_op(world, tmp_path):
    with redis.Redis.from_url(world.redis_url) as client, client.pubsub() as subscriber:
        subscriber.subscribe(CHANNEL)
        assert subscriber.get_message(timeout=5)["type"] == "subscribe"
        code, out, output = run_predict(world, "--request-id", "live", state=tmp_path, table="live", label="open",
                                        redis_url=world.redis_url)
        assert code == 0, output
        summary = json.loads(out)
        [prediction] = summary["predictions"]
        assert pd.Timestamp(prediction["as_of"]) == world.live_end and summary["stored"] == 1
        assert summary["news_new_items"] > 0 and summary["published"]["receivers"] == 1
        message = next_message(subscriber)
        assert message is not None and message["weights"] == prediction["weights"]
        assert pd.Timestamp(message["as_of"]) == world.live_end
        assert json.loads(client.get(KEY)) == message

        code, out, output = run_predict(world, "--request-id", "live", state=tmp_path, table="live", label="open",
                                        redis_url=world.redis_url)
        assert code == 0, output
        again = json.loads(out)
        assert again["stored"] == 0 and again["news_new_items"] == 0 and again["published"]["unchanged"]
        assert "nothing new: all 1 predictions" in output
        assert next_message(subscriber, timeout_s=1.0) is None
    assert len(stored(world.mongo_uri, [world.live_end])) == 1
    with pymongo.MongoClient(world.mongo_uri) as mongo:
        indexes = mongo[NEWS_DB]["live"].index_information().values()
    assert any(index["key"][0][0] == "releasedAt" for index in indexes)


def test_news_is_read_incrementally_from_the_last_run(world, tmp_path):
    code, out, output = run_predict(world, "--request-id", "incr", state=tmp_path, table="live", label="open")
    assert code == 0, output
    late = {"_id": "late-item", "releasedAt": (world.live_end - pd.Timedelta("1min")).to_pydatetime(),
            "title": "Aurexa Mining wins a large contract", "content": "", "assets": [{"symbol": "AURX"}]}
    with pymongo.MongoClient(world.mongo_uri) as mongo:
        mongo[NEWS_DB]["live"].insert_one(late)
    try:
        code, out, output = run_predict(world, "--request-id", "incr", state=tmp_path, table="live", label="open")
        assert code == 0, output
        assert json.loads(out)["news_new_items"] == 1  # only the item after the last run's newest one
    finally:
        with pymongo.MongoClient(world.mongo_uri) as mongo:
            mongo[NEWS_DB]["live"].delete_one({"_id": "late-item"})


def test_backfill_equals_the_offline_backtest_of_the_same_package(world, tmp_path):
    backtest, logits, weights = package_backtest(world.package, world.data)
    times = backtest.times[backtest.anchors]
    every = int(np.diff(backtest.anchors)[0])
    args = ("--start", times[0].isoformat(), "--end", times[-1].isoformat(), "--every", str(every),
            "--request-id", "backfill")
    code, out, output = run_predict(world, *args, state=tmp_path)
    assert code == 0, output
    assert json.loads(out)["stored"] == len(times) > 10
    documents = stored(world.mongo_uri, times)
    assert {d["request_id"] for d in documents} == {f"backfill-{t.isoformat()}" for t in times}
    assert [pd.Timestamp(d["as_of"]) for d in documents] == list(times)
    symbols = backtest.symbols
    served_weights = np.array([[d["weights"][s] for s in symbols] for d in documents])
    served_logits = np.array([[d["logits"][s] for s in symbols] for d in documents])
    # the same graphs read the same windows: the same assets held on the same sides, and logits and weights up to
    # float rounding, because the backfill embeds each bar's articles in other encoder batches than the offline
    # pass (padding is masked, so a vector depends on its batch-mates only in the last bit: measured 3e-7 on 4 of
    # 198 weights, which a weight shares with its book's gross)
    np.testing.assert_array_equal(weights, backtest.model.anchor_weights)
    np.testing.assert_array_equal(np.sign(served_weights), np.sign(backtest.model.anchor_weights))
    np.testing.assert_allclose(served_weights, backtest.model.anchor_weights, rtol=0, atol=1e-6)
    np.testing.assert_allclose(served_logits, logits, rtol=0, atol=1e-6)

    code, out, output = run_predict(world, *args, state=tmp_path)
    assert code == 0 and json.loads(out)["stored"] == 0
    assert f"nothing new: all {len(times)} predictions" in output
    assert len(stored(world.mongo_uri, times)) == len(times)


def test_a_failed_source_fails_the_run_and_stores_and_publishes_nothing(world, tmp_path):
    as_of = world.live_end - 10 * STEP  # a bar no other test predicts
    common = ("--as-of", as_of.isoformat(), "--request-id", "broken")
    code, _, output = run_predict(world, *common, "--clickhouse-table", "market.missing", state=tmp_path,
                                  table="live", label="open", redis_url=world.redis_url)
    assert code == 1 and "clickhouse table market.missing: query failed" in output
    assert CLICKHOUSE_PASSWORD not in output
    code, _, output = run_predict(world, *common, "--news-fields", "title=headline,body=text", state=tmp_path,
                                  table="live", label="open", redis_url=world.redis_url)
    assert code == 1 and "empty news text" in output
    assert stored(world.mongo_uri, [as_of]) == []
    with redis.Redis.from_url(world.redis_url) as client:
        published = client.get(KEY)
    assert published is None or "broken" not in json.loads(published)["request_id"]
    assert not (tmp_path / f"news-{NEWS_DB}-live.parquet").exists()  # the news cache is kept only after a run


@pytest.mark.slow
def test_backfill_of_a_whole_day_every_bar_equals_the_package_weights(world, tmp_path):
    from serving.package_backtest import package_weights
    from serving.runtime import PortfolioRuntime

    runtime = PortfolioRuntime.load(world.package)
    data = load_data_dir(world.data, universe=runtime.universe)
    anchors = np.arange(data.n_bars - 480, data.n_bars)
    logits, weights = package_weights(runtime, data, anchors)
    times = data.panel.times[anchors]
    code, _, output = run_predict(world, "--start", times[0].isoformat(), "--end", times[-1].isoformat(),
                                    "--request-id", "day", state=tmp_path)
    assert code == 0, output
    documents = stored(world.mongo_uri, times)
    assert [pd.Timestamp(d["as_of"]) for d in documents] == list(times)
    served = np.array([[d["weights"][s] for s in runtime.universe.symbols] for d in documents])
    np.testing.assert_array_equal(served, weights)
    served_logits = np.array([[d["logits"][s] for s in runtime.universe.symbols] for d in documents])
    np.testing.assert_array_equal(served_logits, logits)


@pytest.mark.slow
def test_a_run_by_reference_through_the_bento_service_stores_there_and_publishes(world, tmp_path):
    from serving_servers import API_KEY, distinct_free_ports, serve_env, start_nfc_serve

    http_port, grpc_port, mongo_port = distinct_free_ports(3)
    # the service reads ClickHouse and MongoDB news itself (by reference); the job only names the bar
    env = serve_env(tmp_path, NFC_API_KEY=API_KEY, NFC_CLICKHOUSE_URL=world.clickhouse_url,
                    NFC_NEWS_MONGO_URI=world.mongo_uri, NFC_NEWS_DB=NEWS_DB, NFC_NEWS_COLLECTION="live",
                    NFC_CLICKHOUSE_TABLE="market.live", NFC_CLICKHOUSE_CANDLE="3min")
    as_of = world.live_end - 20 * STEP
    with start_nfc_serve(tmp_path, ["--model-path", str(world.package)], env, http_port, grpc_port,
                         ("--mongo-data", str(tmp_path / "mongo"), "--mongo-port", str(mongo_port))) as (_, url, _):
        result = CliRunner().invoke(main, [
            "--log-level", "WARNING", "predict", "--json", "--url", url,
            "--as-of", as_of.isoformat(), "--request-id", "via-service"], env={
            "NFC_API_KEY": API_KEY, "NFC_STATE_DIR": str(tmp_path / "state"), "NFC_REDIS_URL": world.redis_url,
            "NFC_REDIS_KEY": "nfc:test:service"})
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["mode"] == "by-reference" and summary["sent"] == 1
        [answer] = summary["predictions"]
        assert answer["outcome"] == "stored" and pd.Timestamp(answer["as_of"]) == as_of
        [document] = stored(f"mongodb://127.0.0.1:{mongo_port}/", [as_of])
        assert document["request_id"] == f"via-service-{as_of.isoformat()}"
    with redis.Redis.from_url(world.redis_url) as client:
        assert json.loads(client.get("nfc:test:service"))["weights"] == answer["weights"]
    code, out, output = run_predict(world, "--as-of", as_of.isoformat(), "--request-id", "in-process",
                                    state=tmp_path / "state2", table="live", label="open")
    assert code == 0, output
    [local] = json.loads(out)["predictions"]
    assert local["weights"] == pytest.approx(answer["weights"], abs=1e-6)  # the service batches: float rounding


def test_backtest_of_a_package_is_an_nfc_command_with_a_report(tiny, tmp_path):
    args = ["--log-level", "WARNING", "backtest", "--package", str(tiny.package), "--data",
            str(tiny.data), "--out", str(tmp_path / "report")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["settings"]["model_version"] == "0.1.0-test" and metrics["settings"]["variant"] == "package"
    assert metrics["settings"]["encoder_text"]["status"] == "clean"  # the manifest's record vs this data's split
    assert set(metrics["strategies"]) == {"model", "equal_weight", "momentum"}
    result = CliRunner().invoke(main, [*args[:-2], "--embeddings", str(tiny.embeddings), "--out",
                                       str(tmp_path / "other")])
    assert result.exit_code == 2 and "drop --embeddings" in result.output
