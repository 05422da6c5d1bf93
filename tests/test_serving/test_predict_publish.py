"""`nfc predict` against nx-27017 and redis-server: NFC_MONGO_DB is honoured, Redis gets what MongoDB holds,
and Redis's latest key only moves forward (before: the default database was always used, a bar already
stored with other weights was published with the job's weights, and `--as-of` an older bar moved the key
backwards)."""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pymongo
import redis
from click.testing import CliRunner

from neuralfusion.manifest import load_manifest
from nfc.cli import main
from serving.store import DEFAULT_COLLECTION, DEFAULT_DATABASE, PredictionRecord, PredictionStore


def run_predict(tiny, as_of: pd.Timestamp, env: dict[str, str], state, key: str, prefix: str) -> dict:
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "predict", "--json", "--data", str(tiny.data),
                                       "--model-path", str(tiny.package), "--as-of", as_of.isoformat(), "--state-dir",
                                       str(state), "--redis-key", key, "--redis-channel", "", "--request-id", prefix],
                                env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def bars(tiny) -> list[pd.Timestamp]:
    return sorted(pd.read_parquet(tiny.data / "bars.parquet")["timestamp"].unique())


def test_predict_stores_in_nfc_mongo_db_and_publishes_what_mongo_holds(tiny, mongo_uri, redis_url, tmp_path):
    as_of = pd.Timestamp(bars(tiny)[-1])
    version = load_manifest(tiny.package).version
    symbols = tuple(load_manifest(tiny.package).universe.symbols)
    # an earlier answer for the same (version, bar) with other weights: the first answer is the one MongoDB keeps
    earlier = PredictionRecord(model_version=version, as_of=as_of.to_pydatetime(), symbols=symbols,
                               weights={s: (1.0 if i == 0 else 0.0) for i, s in enumerate(symbols)},
                               logits=dict.fromkeys(symbols, 0.0), horizon_bars=8, request_id="earlier")

    async def save_earlier() -> None:
        async with PredictionStore(mongo_uri, database="nfc_other_db") as store:
            await store.save([earlier])

    asyncio.run(save_earlier())
    env = {"NFC_MONGO_URI": mongo_uri, "NFC_MONGO_DB": "nfc_other_db", "NFC_REDIS_URL": redis_url}
    summary = run_predict(tiny, as_of, env, tmp_path, "nfc:test:mongo-holds", "db-test")
    assert summary["stored"] == 0 and summary["already_present"] == 1
    assert summary["predictions"][0]["weights"] != earlier.weights  # the job computed other weights ...
    with redis.Redis.from_url(redis_url) as client:
        published = json.loads(client.get("nfc:test:mongo-holds"))
    assert published["weights"] == earlier.weights and published["request_id"] == "earlier"  # ... Redis got Mongo's
    with pymongo.MongoClient(mongo_uri) as client:
        assert client[DEFAULT_DATABASE][DEFAULT_COLLECTION].count_documents({"request_id": {"$regex": "^db-test"}}) == 0
        [doc] = client["nfc_other_db"][DEFAULT_COLLECTION].find({"model_version": version})
    assert doc["request_id"] == "earlier"


def test_redis_latest_key_only_moves_forward(tiny, mongo_uri, redis_url, tmp_path):
    times = bars(tiny)
    newer, older = pd.Timestamp(times[-2]), pd.Timestamp(times[-3])
    env = {"NFC_MONGO_URI": mongo_uri, "NFC_MONGO_DB": "nfc_forward_db", "NFC_REDIS_URL": redis_url}
    first = run_predict(tiny, newer, env, tmp_path, "nfc:test:forward", "fwd")
    assert first["published"]["status"] == "published"
    second = run_predict(tiny, older, env, tmp_path, "nfc:test:forward", "fwd")
    assert second["stored"] == 1  # the older bar is stored in MongoDB ...
    assert second["published"]["status"] == "older"  # ... but the key keeps the newer one
    assert second["published"]["key_as_of"] == newer.isoformat()
    with redis.Redis.from_url(redis_url) as client:
        assert json.loads(client.get("nfc:test:forward"))["as_of"] == newer.isoformat()
    again = run_predict(tiny, newer, env, tmp_path, "nfc:test:forward", "fwd")
    assert again["published"]["status"] == "unchanged"
