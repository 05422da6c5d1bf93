"""`nfc predict` on a data folder: idempotent stores, the run lock, staleness and option errors."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pymongo
from click.testing import CliRunner

from nfc.cli import main
from serving.live_lock import RunLock
from serving.store import DEFAULT_COLLECTION, DEFAULT_DATABASE


def run_predict(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "predict", "--json", *args], env=env)
    return result.exit_code, result.stdout, result.output  # output: stdout and stderr together


def last_bar(data) -> pd.Timestamp:
    return pd.read_parquet(data / "bars.parquet")["timestamp"].max()


def stored(mongo_uri: str, request_prefix: str) -> list[dict]:
    with pymongo.MongoClient(mongo_uri) as client:
        return list(client[DEFAULT_DATABASE][DEFAULT_COLLECTION].find({"request_id": {"$regex": f"^{request_prefix}"}}))


def test_predict_stores_a_bar_once_and_says_so_the_second_time(tiny, mongo_uri, tmp_path):
    args = ("--data", str(tiny.data), "--model-path", str(tiny.package), "--request-id", "job-1",
            "--as-of", last_bar(tiny.data).isoformat(), "--state-dir", str(tmp_path))
    code, first, output = run_predict(*args, env={"NFC_MONGO_URI": mongo_uri})
    assert code == 0, output
    answer = json.loads(first)
    assert answer["stored"] == 1 and answer["already_present"] == 0 and answer["mode"] == "in-process"
    [prediction] = answer["predictions"]
    assert abs(sum(abs(w) for w in prediction["weights"].values()) - 1.0) < 1e-5  # top-k book, gross 1
    code, second, message = run_predict(*args, env={"NFC_MONGO_URI": mongo_uri})
    assert code == 0 and json.loads(second)["stored"] == 0
    assert "nothing new: all 1 predictions" in message
    assert json.loads(second)["embeddings"]["computed"] == 0  # every article vector came from the cache
    [document] = stored(mongo_uri, "job-1")
    assert document["weights"] == prediction["weights"]


def test_predict_needs_a_mongo_uri_one_model_source_and_one_data_route(tiny):
    package = str(tiny.package)
    code, _, output = run_predict("--data", str(tiny.data), "--model-path", package, env={})
    assert code == 1 and "set NFC_MONGO_URI" in output
    code, _, output = run_predict("--data", str(tiny.data), env={})
    assert code == 2 and "exactly one of --model-path, --model or --url" in output
    code, _, output = run_predict("--bars", "clickhouse", "--model-path", package, env={})
    assert code == 2 and "--bars clickhouse and --news mongo" in output
    code, _, output = run_predict("--data", str(tiny.data), "--model-path", package, "--start",
                                  "2026-01-01T00:00Z", env={})
    assert code == 2 and "both --start and --end" in output


def test_predict_refuses_an_as_of_without_enough_history(tiny, mongo_uri, tmp_path):
    code, _, output = run_predict("--data", str(tiny.data), "--model-path", str(tiny.package),
                                  "--as-of", "2000-01-01T00:00:00Z", "--state-dir", str(tmp_path),
                                  env={"NFC_MONGO_URI": mongo_uri})
    assert code == 1 and "2000-01-01" in output


def test_a_held_lock_stops_the_second_run_before_it_does_anything(tiny, mongo_uri, tmp_path):
    args = ("--data", str(tiny.data), "--model-path", str(tiny.package), "--request-id",
            "locked", "--as-of", last_bar(tiny.data).isoformat(), "--state-dir", str(tmp_path))
    with RunLock(tmp_path / "predict.lock"):
        code, _, output = run_predict(*args, env={"NFC_MONGO_URI": mongo_uri})
    assert code == 1 and "another nfc predict run holds the lock" in output
    assert stored(mongo_uri, "locked") == []
    code, _, output = run_predict(*args, env={"NFC_MONGO_URI": mongo_uri})  # released: the next run works
    assert code == 0, output


def test_a_stale_asset_fails_the_run_naming_it_and_stores_nothing(tiny, mongo_uri, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny.data, data)
    bars = pd.read_parquet(data / "bars.parquet")
    end = bars["timestamp"].max()
    symbol = sorted(bars["symbol"].unique())[1]
    bars = bars[~((bars["symbol"] == symbol) & (bars["timestamp"] > end - pd.Timedelta("30min")))]
    bars.to_parquet(data / "bars.parquet")
    code, _, output = run_predict("--data", str(data), "--model-path", str(tiny.package), "--request-id",
                                  "stale", "--as-of", end.isoformat(), "--state-dir", str(tmp_path / "state"),
                                  env={"NFC_MONGO_URI": mongo_uri})
    assert code == 1 and f"{symbol} (last bar 0 days 00:30:00 before)" in output and "--max-staleness" in output
    assert stored(mongo_uri, "stale") == []


def test_live_mode_on_old_files_is_refused_as_stale(tiny, mongo_uri, tmp_path):
    code, _, output = run_predict("--data", str(tiny.data), "--model-path", str(tiny.package),
                                  "--state-dir", str(tmp_path), env={"NFC_MONGO_URI": mongo_uri})
    assert code == 1 and "over the staleness limit of 0 days 00:15:00" in output


def test_an_as_of_bar_that_has_not_closed_yet_is_refused(tiny, mongo_uri, tmp_path):
    future = last_bar(tiny.data) + pd.Timedelta("3min")
    code, _, output = run_predict("--data", str(tiny.data), "--model-path", str(tiny.package),
                                  "--as-of", future.isoformat(), "--state-dir", str(tmp_path),
                                  env={"NFC_MONGO_URI": mongo_uri})
    assert code == 1 and f"the as-of bar {future.isoformat()} is not complete" in output
