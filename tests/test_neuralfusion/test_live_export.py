"""`nfc data export`: ClickHouse bars and MongoDB news (real servers on loopback) -> a training data folder that
loads to the same grid and news alignment as the files they were filled from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pymongo
import pytest
from builders import nfc

from neuralfusion.data.news import read_news
from neuralfusion.dataset import load_data_dir
from neuralfusion.redact import encode_userinfo
from neuralfusion.synth import SynthConfig, generate_market, write_market

NEWS_DB = "export_test"
STEP = pd.Timedelta("3min")


@pytest.fixture(scope="module")
def stores(clickhouse_server, mongo_uri, tmp_path_factory):
    """A 4-asset synthetic market in a seed-shaped candle table (open-time labels) and news collection."""
    from clickhouse_driver import Client

    folder = tmp_path_factory.mktemp("export") / "data"
    write_market(generate_market(SynthConfig(n_assets=4, days=3, seed=11)), folder)
    bars, news = pd.read_parquet(folder / "bars.parquet"), read_news(folder / "news.jsonl")
    client = Client.from_url(encode_userinfo(clickhouse_server.url))
    client.execute("CREATE DATABASE IF NOT EXISTS market")
    client.execute("DROP TABLE IF EXISTS market.export_candles")
    client.execute("CREATE TABLE market.export_candles (symbol String, candle_time DateTime('UTC'), open Float64, "
                   "high Float64, low Float64, close Float64, volume Float64) ENGINE = MergeTree() "
                   "ORDER BY (symbol, candle_time)")
    client.execute("INSERT INTO market.export_candles (symbol, candle_time, open, high, low, close, volume) VALUES",
                   [(r.symbol, (r.timestamp - STEP).to_pydatetime(), r.open, r.high, r.low, r.close, r.volume)
                    for r in bars.itertuples()])
    client.disconnect()
    documents = []
    for item in news.itertuples():
        doc = {"_id": item.id, "releasedAt": item.published_at.to_pydatetime(), "title": item.title,
               "content": item.body}
        if item.symbols is not None:
            doc["assets"] = [{"symbol": s} for s in item.symbols]
        documents.append(doc)
    with pymongo.MongoClient(mongo_uri) as mongo:
        mongo.drop_database(NEWS_DB)
        mongo[NEWS_DB]["news"].insert_many(documents)
    env = {"NFC_CLICKHOUSE_URL": clickhouse_server.url, "NFC_MONGO_URI": mongo_uri, "NFC_NEWS_DB": NEWS_DB,
           "NFC_CLICKHOUSE_TABLE": "market.export_candles", "NFC_CLICKHOUSE_CANDLE": "3min"}
    return folder, bars, env


def export(stores, out, *extra: str) -> tuple[int, str]:
    _, bars, env = stores
    start = (bars["timestamp"].min() - STEP).isoformat()
    end = bars["timestamp"].max().isoformat()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        aliases = [arg for pair in ("AURX=Aurexa Mining", "BLTQ=Boltara Energy", "CRXN=Cruxton Biotech",
                                    "DYNQ=Dynaquil Logistics") for arg in ("--alias", pair)]
        return nfc("data", "export", "--bars", "clickhouse", "--news", "mongo", "--start", start, "--end", end,
                   "--symbols", "AURX,BLTQ,CRXN,DYNQ", *aliases, "--out", str(out), *extra)


def test_exported_folder_loads_to_the_same_grid_and_news_as_the_source_files(stores, tmp_path):
    folder, _, _ = stores
    code, output = export(stores, tmp_path / "live")
    assert code == 0, output
    assert "0.00% stale" in output
    exported, original = load_data_dir(tmp_path / "live"), load_data_dir(folder)
    pd.testing.assert_index_equal(exported.panel.times, original.panel.times)
    for name in ("open", "high", "low", "close", "volume", "stale"):
        np.testing.assert_array_equal(getattr(exported.panel, name), getattr(original.panel, name), err_msg=name)
    assert list(exported.news["id"]) == list(original.news["id"])
    np.testing.assert_array_equal(exported.aligned.bar, original.aligned.bar)
    np.testing.assert_array_equal(exported.aligned.coverage, original.aligned.coverage)
    np.testing.assert_array_equal(exported.features, original.features)


def test_an_existing_folder_is_kept_and_bad_settings_write_nothing(stores, tmp_path):
    (tmp_path / "live").mkdir()
    code, output = export(stores, tmp_path / "live")
    assert code != 0 and "exists" in output
    code, output = export(stores, tmp_path / "other", "--clickhouse-columns", "nonsense")
    assert code != 0 and "BarColumnMap mapping 'nonsense'" in output
    assert not (tmp_path / "other").exists() and not (tmp_path / "other.partial").exists()
