"""`nfc predict`: the scheduled job predicts the latest bar from a data folder and stores it idempotently."""

from __future__ import annotations

import json

import pymongo
from click.testing import CliRunner

from neuralfusion.cli import main
from serving.store import DEFAULT_COLLECTION, DEFAULT_DATABASE


def run_predict(*args: str, env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "predict", *args], env=env)
    return result.exit_code, result.output


def test_predict_stores_the_latest_bar_once(model_package, mongo_uri):
    args = ("--data", str(model_package.data), "--model-path", str(model_package.package),
            "--request-id", "job-test")
    code, first = run_predict(*args, env={"NFC_MONGO_URI": mongo_uri})
    assert code == 0, first
    answer = json.loads(first)
    assert answer["outcome"] == "stored"
    assert abs(sum(abs(w) for w in answer["weights"].values()) - 1.0) < 1e-5  # top-k book, gross 1
    code, second = run_predict(*args, env={"NFC_MONGO_URI": mongo_uri})
    assert code == 0 and json.loads(second)["outcome"] == "already present"
    with pymongo.MongoClient(mongo_uri) as client:
        documents = list(client[DEFAULT_DATABASE][DEFAULT_COLLECTION].find({"request_id": "job-test"}))
    assert len(documents) == 1 and documents[0]["weights"] == answer["weights"]


def test_predict_needs_a_mongo_uri_and_one_model_source(model_package):
    code, output = run_predict("--data", str(model_package.data), "--model-path", str(model_package.package),
                               env={})
    assert code == 1 and "set NFC_MONGO_URI" in output
    code, output = run_predict("--data", str(model_package.data), env={})
    assert code == 2 and "exactly one of --model-path, --model or --url" in output


def test_predict_refuses_an_as_of_without_enough_history(model_package, mongo_uri):
    code, output = run_predict("--data", str(model_package.data), "--model-path", str(model_package.package),
                               "--as-of", "2000-01-01T00:00:00Z", env={"NFC_MONGO_URI": mongo_uri})
    assert code == 1 and "cannot predict for 2000-01-01" in output
