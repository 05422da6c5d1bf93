"""Artifacts: a package with a tampered ONNX graph, external-data file or manifest is refused when the services
load it. Both services (constructed and started as BentoML does, with MongoDB open) stay up but never ready, say
why in the log and on /model_info, answer /predict with 503, and write nothing. (One `to_asgi()` app per process:
tests/test_serving/test_serving_app.py holds it, so the routes are called on the service objects here.)
Live: an encoder graph altered under a running `nfc serve` whose encoder worker restarts: a /predict without news
(which needs no article vector) is a 503 naming the file too, never an answer from half a model."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient
from serving_servers import KEY, Payloads, distinct_free_ports, serve_env, service_workers, start_nfc_serve

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from neuralfusion.manifest import load_manifest
from serving.columns import columns_from_rows
from serving.errors import ServingError
from serving.schemas import PredictRequest
from serving.service import EncoderService, PortfolioService

pytestmark = pytest.mark.mongo

DATABASE = "nfc_artifacts_test"


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def zero_the_costs(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["portfolio"]["cost_bps"] = 0.0
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


TAMPERING = {
    "fusion.onnx": (flip_a_byte, "package file fusion.onnx was modified"),
    "encoder.onnx.data": (flip_a_byte, "package file encoder.onnx.data was modified"),
    "manifest.json": (zero_the_costs, "manifest.json was modified after export"),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_a_tampered_package_is_refused_at_load(name, tiny, mongo_uri, tmp_path, monkeypatch, caplog):
    damage, reason = TAMPERING[name]
    package = Path(shutil.copytree(tiny.package, tmp_path / "pkg"))
    damage(package / name)
    for setting, value in {"NFC_MODEL_PATH": str(package), "NFC_MONGO_URI": mongo_uri,
                           "NFC_MONGO_DB": DATABASE}.items():
        monkeypatch.setenv(setting, value)
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    manifest = load_manifest(tiny.package)
    bars_needed = manifest.data["features"]["warmup_bars"] + manifest.window.lookback
    payload = Payloads(bars, read_news(tiny.data / "news.jsonl"), bars_needed)(300, f"tampered-{name}")

    async def serve_once(service: PortfolioService) -> tuple[bool, int, str, ServingError]:
        await service.start()  # the startup hook: MongoDB opened and indexed
        try:
            with pytest.raises(ServingError) as info:  # what GET /model_info answers with
                await service.query_model_info()
            with pytest.raises(ServingError) as refused:
                await service.predict_inline(lambda: columns_from_rows(PredictRequest.model_validate(payload)))
            return await service.is_ready(), int(info.value.status), info.value.message, refused.value
        finally:
            await service.stop()

    with caplog.at_level(logging.ERROR, logger="serving.model_swap"):
        encoder, portfolio = EncoderService(), PortfolioService()
        ready, status, message, refused = asyncio.run(serve_once(portfolio))
    assert encoder.__is_ready__() is False and reason in (encoder.model_error or "")
    assert ready is False and portfolio.runtime is None
    assert status == 503 and reason in message and "not loaded" in message
    assert refused.status == 503 and reason in refused.message
    logged = [r.getMessage() for r in caplog.records if "will not become ready" in r.getMessage()]
    assert len(logged) == 2 and all(reason in line for line in logged)
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as mongo:
        assert mongo[DATABASE]["predictions"].count_documents({}) == 0


@pytest.mark.integration
def test_an_encoder_graph_altered_under_a_running_server_stops_predictions_without_news(tiny, tmp_path):
    package = Path(shutil.copytree(tiny.package, tmp_path / "pkg"))
    http_port, grpc_port, mongo_port = distinct_free_ports(3)
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    manifest = load_manifest(tiny.package)
    payloads = Payloads(bars, read_news(tiny.data / "news.jsonl"),
                        manifest.data["features"]["warmup_bars"] + manifest.window.lookback)

    def without_news(bar: int, request_id: str) -> dict:
        return {**payloads(bar, request_id), "news": []}

    with start_nfc_serve(tmp_path, ["--model-path", str(package)], serve_env(tmp_path, NFC_API_KEY=KEY["X-API-Key"]),
                         http_port, grpc_port, ("--mongo-data", str(tmp_path / "mongo"), "--mongo-port",
                                                str(mongo_port))) as (process, url, _):
        answer = httpx.post(f"{url}/predict", json=without_news(300, "whole"), headers=KEY, timeout=60)
        assert answer.status_code == 200, answer.text
        flip_a_byte(package / "encoder.cpu.onnx")
        [encoder_pid] = service_workers(process.pid)["nfc-encoder"]
        os.kill(encoder_pid, signal.SIGKILL)  # BentoML starts a new encoder worker, which reads the altered file
        deadline = time.monotonic() + 120
        while True:  # 503 while the encoder worker restarts, then 503 naming the file; never an answer
            refused = httpx.post(f"{url}/predict", json=without_news(301, "half"), headers=KEY, timeout=60)
            assert refused.status_code == 503, refused.text
            if "encoder.cpu.onnx" in refused.json()["error"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert "package file encoder.cpu.onnx was modified" in refused.json()["error"], refused.text
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
        with MongoClient(f"mongodb://127.0.0.1:{mongo_port}/", serverSelectionTimeoutMS=5000) as mongo:
            assert mongo["neuralfusion"]["predictions"].count_documents({"request_id": "half"}) == 0
