"""The bento: `bentoml build` offline into a temporary BENTOML_HOME, its Dockerfile and requirements (CUDA base
image, onnxruntime-gpu, no torch), and one prediction from `bentoml serve` of the built bento against the
session's nx-27017 server. BentoML runs in subprocesses, so its home is never this process's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from builders import STEP
from pymongo import MongoClient

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from nfc.embedded_mongo import free_port
from serving.client import predict_payload, wait_until_ready

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BENTOFILE = yaml.safe_load((REPO / "bentofile.yaml").read_text())


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower()


@dataclass(frozen=True)
class Bento:
    env: dict[str, str]
    tag: str
    path: Path


def bentoml_env(home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("NFC_")}
    return {**env, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}


def run(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def bento(tiny, tmp_path_factory) -> Bento:
    """The package imported into a fresh model store, and the bento built from bentofile.yaml."""
    env = bentoml_env(tmp_path_factory.mktemp("bentoml-home"))
    package = str(tiny.package)
    run([sys.executable, "-c", f"from export.bento import import_package; import_package({package!r})"], env)
    run([sys.executable, "-m", "bentoml", "build"], env)
    tag = run([sys.executable, "-c", "import bentoml; print(bentoml.bentos.get('neuralfusion:latest').tag)"],
              env).strip()
    return Bento(env, tag, Path(env["BENTOML_HOME"]) / "bentos" / tag.replace(":", "/"))


def test_bentofile_packages_follow_pyproject_and_leave_out_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {requirement_name(s) for s in project["dependencies"] + project["optional-dependencies"]["serve"]}
    packed = {requirement_name(s) for s in BENTOFILE["python"]["packages"]}
    assert wanted - {"bentoml"} <= packed  # bentoml adds itself, pinned to the building version
    assert "onnxruntime-gpu" in packed and not packed & {"torch", "onnxruntime", "transformers", "onnx"}
    assert BENTOFILE["python"]["lock_packages"] is False


def test_built_bento_has_the_cuda_image_onnxruntime_gpu_and_the_model(bento, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    run([sys.executable, "-c", "import bentoml; bentoml.container.get_containerfile("
         f"{bento.tag!r}, output_path={str(dockerfile)!r})"], bento.env)
    text = dockerfile.read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.8\.\d+-cudnn-runtime-ubuntu", text, re.MULTILINE)
    assert "env/python/install.sh" in text and "torch" not in text
    requirements = (bento.path / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert "onnxruntime-gpu==1.26.*" in requirements
    assert not [r for r in requirements if requirement_name(r) in ("torch", "onnxruntime", "transformers")]
    info = yaml.safe_load((bento.path / "bento.yaml").read_text())
    assert {m["tag"] for s in info["services"] for m in s["models"]} == {"neuralfusion:0.1.0-test"}
    assert not list((bento.path / "src").rglob("training")) and (bento.path / "src/neuralfusion/manifest.py").is_file()


@pytest.fixture(scope="module")
def served_bento(bento, mongo_uri) -> Iterator[str]:
    port = free_port()
    env = {**bento.env, "NFC_MONGO_URI": mongo_uri, "NFC_MONGO_DB": "nfc_bento_test"}
    log = Path(bento.env["BENTOML_HOME"]) / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", bento.tag, "--host", "127.0.0.1",
                                    "--port", str(port)], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_ready(url, process, timeout_s=180):
            pytest.fail(f"the bento did not become ready:\n{log.read_text()[-4000:]}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_the_built_bento_serves_a_stored_prediction(served_bento, tiny, mongo_uri):
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    end = pd.Timestamp(np.sort(bars["timestamp"].unique())[600])
    bars_needed = httpx.post(f"{served_bento}/model_info", timeout=30).json()["bars_needed"]
    payload = predict_payload(bars, read_news(tiny.data / "news.jsonl"), end, bars_needed, STEP, "from-bento")
    response = httpx.post(f"{served_bento}/predict", json=payload, timeout=60)
    assert response.status_code == 200 and response.json()["stored"], response.text
    with MongoClient(mongo_uri, tz_aware=True) as client:
        [document] = client["nfc_bento_test"]["predictions"].find({"request_id": "from-bento"})
    assert document["model_version"] == "0.1.0-test" and document["as_of"] == end
