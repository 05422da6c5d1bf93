"""Train on what the live job reads: bars in ClickHouse and news in MongoDB (real servers on loopback) are
exported with `nfc data export`, a tiny model is trained on that folder and packaged, and `nfc predict --bars
clickhouse --news mongo --start/--end` over the test bars gives the weights `nfc backtest --package` gives on the
exported folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pymongo
import pytest
from builders import fill_candle_table, nfc, package_backtest, seed_news_documents, tiny_model
from click.testing import CliRunner

from neuralfusion.data.news import read_news
from neuralfusion.synth import SynthConfig, generate_market, write_market
from nfc.cli import main

STEP = pd.Timedelta("3min")
NEWS_DB = "export_train"

pytestmark = [pytest.mark.integration, pytest.mark.mongo]


def test_a_model_trained_on_the_exported_folder_predicts_live_what_its_backtest_says(
        clickhouse_server, mongo_uri, tmp_path):
    market = tmp_path / "market"
    write_market(generate_market(SynthConfig(n_assets=6, days=3, seed=23)), market)
    bars, news = pd.read_parquet(market / "bars.parquet"), read_news(market / "news.jsonl")
    fill_candle_table(clickhouse_server.url, "export_train", bars, STEP, label="open")
    with pymongo.MongoClient(mongo_uri) as mongo:
        mongo.drop_database(NEWS_DB)
        mongo[NEWS_DB]["news"].insert_many(seed_news_documents(news))
    env = {"NFC_CLICKHOUSE_URL": clickhouse_server.url, "NFC_MONGO_URI": mongo_uri, "NFC_NEWS_DB": NEWS_DB,
           "NFC_CLICKHOUSE_TABLE": "market.export_train", "NFC_CLICKHOUSE_CANDLE": "3min",
           "NFC_CLICKHOUSE_LABEL": "open", "NFC_STATE_DIR": str(tmp_path / "state"),
           "NFC_MONGO_DB": "export_train_predictions"}  # the tiny package's version and bar times: a database apart
    universe = json.loads((market / "universe.json").read_text())
    aliases = [arg for symbol, names in universe.get("aliases", {}).items() for name in names
               for arg in ("--alias", f"{symbol}={name}")]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        code, output = nfc("data", "export", "--bars", "clickhouse", "--news", "mongo",
                           "--start", (bars["timestamp"].min() - STEP).isoformat(),
                           "--end", bars["timestamp"].max().isoformat(), "--symbols", ",".join(universe["symbols"]),
                           *aliases, "--out", str(tmp_path / "exported"))
    assert code == 0, output
    artifacts = tiny_model(tmp_path, tmp_path / "exported")

    backtest, _, weights = package_backtest(artifacts.package, artifacts.data)
    times = backtest.times[backtest.anchors]
    [every] = np.unique(np.diff(backtest.anchors))
    result = CliRunner().invoke(main, [
        "--log-level", "WARNING", "predict", "--json", "--bars", "clickhouse", "--news", "mongo",
        "--model-path", str(artifacts.package), "--start", times[0].isoformat(), "--end", times[-1].isoformat(),
        "--every", str(every), "--request-id", "exported"], env=env)
    assert result.exit_code == 0, result.output
    served = json.loads(result.stdout)["predictions"]
    assert [pd.Timestamp(p["as_of"]) for p in served] == list(times) and len(times) > 10
    served_weights = np.array([[p["weights"][s] for s in backtest.symbols] for p in served])
    np.testing.assert_array_equal(weights, backtest.model.anchor_weights)
    np.testing.assert_array_equal(served_weights, backtest.model.anchor_weights)  # bit for bit, measured
