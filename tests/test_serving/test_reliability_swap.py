"""Model swap under traffic: the served store tag (`neuralfusion:latest`, NFC_RELOAD_INTERVAL_S=1) starts at the
tiny package and is moved to a second version while requests run. Both versions answer, and every answer's
weights and logits are the ones its declared model_version computes for that request offline (ONNX Runtime in
this process), so no answer mixes versions; MongoDB holds each answer under its version.
In process: a tampered package is refused as a swap target and the current model keeps serving."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from serving_servers import AS_OF_BARS, KEY, SECOND_VERSION, Answer, Load, import_into_store

from serving.runtime import PortfolioRuntime
from serving.schemas import PredictRequest
from serving.service import PortfolioService
from serving.settings import ServeSettings

pytestmark = pytest.mark.integration

FIRST_VERSION = "0.1.0-test"
FIRST_VERSION_ANSWERS = 8  # the second version is imported after these
NEW_VERSION_ANSWERS = 16  # the load stops after these (or when the swap bars run out)
CONCURRENCY = 8
ATOL = 1e-5  # the package's fp32 tolerance: batching may change float rounding, nothing else


def expected_answers(package: Path, bodies: list[dict]) -> dict[str, np.ndarray]:
    """Weights and logits (N, assets) that `package` computes for the bodies in this process (one batch: a
    sample's answer does not depend on its batch-mates, tests/test_serving/test_serving_app.py)."""
    runtime = PortfolioRuntime.load(package, device="cpu")
    records = runtime.predict_requests([PredictRequest.model_validate(body) for body in bodies])
    return {field: np.array([[getattr(r, field)[s] for s in r.symbols] for r in records])
            for field in ("weights", "logits")}


def test_a_model_swap_under_traffic_never_mixes_versions(reliable, tiny, second_package):
    info = httpx.get(f"{reliable.url}/model_info", headers=KEY, timeout=30).json()
    if info["version"] != FIRST_VERSION:
        pytest.fail(f"the shared server already serves {info['version']}; this test must see the swap happen")
    new_answers: list[Answer] = []

    def enough_of_the_new_version(answer: Answer) -> bool:
        if answer.status == 200 and answer.body["model_version"] == SECOND_VERSION:
            new_answers.append(answer)
        return len(new_answers) >= NEW_VERSION_ANSWERS

    bodies = [reliable.payload(bar, f"swap-{bar}") for bar in AS_OF_BARS["swap"]]
    load = Load(f"{reliable.url}/predict", bodies, CONCURRENCY, bound_s=300, stop_when=enough_of_the_new_version)
    answers: list[Answer] = []
    runner = threading.Thread(target=lambda: answers.extend(load.run()))
    runner.start()
    try:
        while load.done < FIRST_VERSION_ANSWERS and runner.is_alive():
            time.sleep(0.05)
        import_into_store(second_package, reliable.bentoml_home)  # `latest` now names the second version
        swapped_at = load.done
    finally:
        runner.join(timeout=300)
    bars, bodies = list(AS_OF_BARS["swap"])[:len(answers)], bodies[:len(answers)]
    assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200][:3]

    versions = [a.body["model_version"] for a in answers]
    assert set(versions) == {FIRST_VERSION, SECOND_VERSION}, f"swap requested after {swapped_at}: {set(versions)}"
    expected = {FIRST_VERSION: expected_answers(tiny.package, bodies),
                SECOND_VERSION: expected_answers(second_package, bodies)}
    differ = np.abs(expected[FIRST_VERSION]["logits"] - expected[SECOND_VERSION]["logits"]).max(axis=1) > 100 * ATOL
    assert differ.mean() > 0.9, "the two versions answer alike, so a mix could not be seen"
    for i, answer in enumerate(answers):
        body = answer.body
        for field in ("weights", "logits"):
            got = np.array([body[field][s] for s in body["symbols"]])
            np.testing.assert_allclose(got, expected[body["model_version"]][field][i], atol=ATOL, rtol=0,
                                       err_msg=f"{body['request_id']} ({body['model_version']}) {field}")
    first_new = versions.index(SECOND_VERSION)
    print(f"\nswap requested after {swapped_at} answers; first {SECOND_VERSION} answer #{first_new}, "
          f"{versions.count(FIRST_VERSION)} + {versions.count(SECOND_VERSION)} answers")

    documents = reliable.documents(as_of={"$gte": reliable.as_of(bars[0]), "$lte": reliable.as_of(bars[-1])})
    stored = {(d["model_version"], pd.Timestamp(d["as_of"])): d for d in documents}
    assert len(stored) == len(documents) == len(answers)
    for answer in answers:
        body = answer.body
        assert stored[(body["model_version"], pd.Timestamp(body["as_of"]))]["weights"] == body["weights"]
    info = httpx.get(f"{reliable.url}/model_info", headers=KEY, timeout=30).json()
    assert info["version"] == SECOND_VERSION and info["refused_model"] is None


def test_a_tampered_package_is_refused_as_a_swap_and_the_current_model_keeps_serving(tiny, second_package,
                                                                                    tmp_path, monkeypatch):
    tampered = Path(shutil.copytree(second_package, tmp_path / "tampered"))
    raw = bytearray((tampered / "fusion.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tampered / "fusion.onnx").write_bytes(bytes(raw))
    monkeypatch.setenv("NFC_MODEL_PATH", str(tiny.package))
    service = PortfolioService()
    assert service.runtime is not None and service.runtime.version == FIRST_VERSION

    async def swaps() -> tuple[bool, bool, bool]:
        refused = await service.model.swap_to(f"neuralfusion:{SECOND_VERSION}", tampered)
        again = await service.model.swap_to(f"neuralfusion:{SECOND_VERSION}", tampered)  # not retried every poll
        same = await service.model.swap_to(f"neuralfusion:{FIRST_VERSION}", tiny.package)
        return refused, again, same

    assert asyncio.run(swaps()) == (False, False, False)
    assert service.runtime.version == FIRST_VERSION
    assert service.model.refused is not None and "package file fusion.onnx was modified" in service.model.refused


def test_model_swaps_follow_a_store_tag_only():
    settings = ServeSettings.from_env({"NFC_RELOAD_INTERVAL_S": "30", "NFC_MONGO_TIMEOUT_MS": "500"})
    assert settings.reload_interval_s == 30 and settings.mongo_timeout_ms == 500
    with pytest.raises(ValueError, match="NFC_RELOAD_INTERVAL_S follows a model-store tag"):
        ServeSettings.from_env({"NFC_RELOAD_INTERVAL_S": "30", "NFC_MODEL_PATH": "/srv/pkg"})
    with pytest.raises(ValueError, match=r"NFC_RELOAD_INTERVAL_S='0\.5' must be a positive integer"):
        ServeSettings.from_env({"NFC_RELOAD_INTERVAL_S": "0.5"})
