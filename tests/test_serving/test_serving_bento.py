"""The bento: `bentoml build` offline into a temporary BENTOML_HOME, its Dockerfile and requirements (CUDA base
image, onnxruntime-gpu, no torch, the gRPC port exposed, the `nfc predict` job runnable), one prediction from
`bentoml serve` of the built bento against the session's nx-27017 server, and (slow) the bento as it will run:
its own `bentoml serve` from the bento folder in a fresh virtualenv made from the bento's requirements, where
the repository's code cannot be imported. BentoML runs in subprocesses, so its home is never this process's."""

from __future__ import annotations

import hashlib
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
from nfc.processes import stop_process
from serving.client import predict_grpc, predict_http, predict_payload, wait_until_ready

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
    extras = project["optional-dependencies"]
    # serve: the service; live: `nfc predict`'s ClickHouse and Redis clients (the job runs from the same image)
    wanted = {requirement_name(s) for s in project["dependencies"] + extras["serve"] + extras["live"]}
    packed = {requirement_name(s) for s in BENTOFILE["python"]["packages"]}
    assert wanted - {"bentoml"} <= packed  # bentoml adds itself, pinned to the building version
    assert "onnxruntime-gpu" in packed and not packed & {"torch", "onnxruntime", "transformers", "onnx"}
    assert BENTOFILE["python"]["lock_packages"] is False


def containerfile(bento: Bento, folder: Path) -> str:
    """The Dockerfile `bentoml containerize` would build. With a dockerfile_template, BentoML 1.4 resolves the
    template in its temporary build folder and refuses one outside the working directory (bentoml issue #5566),
    so it runs with TMPDIR under its working directory, as docs/DESIGN.md tells `bentoml containerize` users."""
    (folder / "tmp").mkdir()
    dockerfile = folder / "Dockerfile"
    result = subprocess.run([sys.executable, "-c", "import bentoml; bentoml.container.get_containerfile("
                             f"{bento.tag!r}, output_path={str(dockerfile)!r})"],
                            env={**bento.env, "TMPDIR": str(folder / "tmp")}, cwd=folder, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dockerfile.read_text()


def test_built_bento_has_the_cuda_image_onnxruntime_gpu_and_the_model(bento, tmp_path):
    text = containerfile(bento, tmp_path)
    assert re.search(r"^FROM nvidia/cuda:12\.8\.\d+-cudnn-runtime-ubuntu", text, re.MULTILINE)
    assert "env/python/install.sh" in text and "torch" not in text
    requirements = (bento.path / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert "onnxruntime-gpu==1.26.*" in requirements
    assert not [r for r in requirements if requirement_name(r) in ("torch", "onnxruntime", "transformers")]
    info = yaml.safe_load((bento.path / "bento.yaml").read_text())
    assert {m["tag"] for s in info["services"] for m in s["models"]} == {"neuralfusion:0.1.0-test"}
    assert not list((bento.path / "src").rglob("training")) and (bento.path / "src/neuralfusion/manifest.py").is_file()
    assert (bento.path / "src/pyproject.toml").is_file()  # /docs.json's version and description where not installed


def test_the_image_exposes_http_and_grpc_and_can_run_the_predict_job(bento, tmp_path):
    text = containerfile(bento, tmp_path)
    [grpc_port] = [env["value"] for env in BENTOFILE["envs"] if env["name"] == "NFC_GRPC_PORT"]
    exposed = re.findall(r"^EXPOSE (\d+)$", text, re.MULTILINE)
    assert {"3000", grpc_port} <= set(exposed)
    # `docker run IMAGE python -m nfc.cli predict ...`: the bento's code is importable from any working directory
    assert re.search(r"^ENV PYTHONPATH=(\S+)/src$", text, re.MULTILINE)
    assert (bento.path / "src/nfc/cli.py").is_file() and not (bento.path / "src/nfc/demo.py").exists()
    requirements = {requirement_name(r) for r in (bento.path / "env/python/requirements.txt").read_text().split()}
    assert {"clickhouse-driver", "redis", "click"} <= requirements


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
    bars_needed = httpx.get(f"{served_bento}/model_info", timeout=30).json()["bars_needed"]
    payload = predict_payload(bars, read_news(tiny.data / "news.jsonl"), end, bars_needed, STEP, "from-bento")
    response = httpx.post(f"{served_bento}/predict", json=payload, timeout=60)
    assert response.status_code == 200 and response.json()["stored"], response.text
    with MongoClient(mongo_uri, tz_aware=True) as client:
        [document] = client["nfc_bento_test"]["predictions"].find({"request_id": "from-bento"})
    assert document["model_version"] == "0.1.0-test" and document["as_of"] == end
    published = httpx.get(f"{served_bento}/docs.json", timeout=30).json()
    assert published["info"]["version"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def cpu_requirements(bento_path: Path) -> str:
    """The bento's requirements with onnxruntime-gpu swapped for the CPU onnxruntime of the same version."""
    lines = (bento_path / "env" / "python" / "requirements.txt").read_text().splitlines()
    swapped = [re.sub(r"^onnxruntime-gpu(?=[=<>~!])", "onnxruntime", line) for line in lines]
    assert swapped != lines, "the bento no longer asks for onnxruntime-gpu: update this test"
    return "\n".join(swapped) + "\n"


def outside_env(bento: Bento) -> dict[str, str]:
    """bento.env without this checkout's PYTHONPATH and virtualenv: nothing of the repository is importable."""
    return {k: v for k, v in bento.env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="module")
def bento_python(bento, tmp_path_factory) -> Path:
    """The python of a fresh virtualenv holding only the bento's own requirements (CPU onnxruntime). The wheels are
    downloaded from the package index once and kept under pytest's temp root, keyed by the requirements; later
    sessions install from them offline."""
    requirements = cpu_requirements(bento.path)
    digest = hashlib.sha256(requirements.encode()).hexdigest()[:16]
    wheels = tmp_path_factory.getbasetemp().parent / f"bento-wheels-{digest}"
    folder = tmp_path_factory.mktemp("bento-venv")
    (folder / "requirements.txt").write_text(requirements)
    env = outside_env(bento)

    def call(args: list[str], timeout_s: int) -> None:
        result = subprocess.run(args, env=env, cwd=folder, capture_output=True, text=True, timeout=timeout_s)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    call([sys.executable, "-m", "venv", str(folder / "venv")], 300)
    python = folder / "venv" / "bin" / "python"
    if not (wheels / "COMPLETE").exists():
        call([str(python), "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(wheels),
              "-r", "requirements.txt"], 1200)
        (wheels / "COMPLETE").write_text(requirements)
    call([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
          "--find-links", str(wheels), "-r", "requirements.txt"], 1200)
    return python


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_bento_serves_and_predicts_from_its_own_virtualenv(bento, bento_python, tiny, mongo_uri, tmp_path):
    env = outside_env(bento)
    where = subprocess.run([str(bento_python), "-c", "import importlib.util as u; print(u.find_spec('serving'))"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == "None", "the repository's code is importable in the bento's virtualenv"
    port, grpc_port = free_port(), free_port()
    serve_env = {**env, "NFC_MONGO_URI": mongo_uri, "NFC_MONGO_DB": "nfc_bento_venv", "NFC_GRPC_PORT": str(grpc_port),
                 "NFC_GRPC_HOST": "127.0.0.1"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(bento_python), "-m", "bentoml", "serve", str(bento.path), "--host",
                                    "127.0.0.1", "--port", str(port)], env=serve_env, cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    news = read_news(tiny.data / "news.jsonl")
    times = np.sort(bars["timestamp"].unique())
    end = pd.Timestamp(times[610])
    try:
        if not wait_until_ready(url, process, timeout_s=300):
            pytest.fail(f"the bento did not become ready in its virtualenv:\n{log.read_text()[-4000:]}")
        bars_needed = httpx.get(f"{url}/model_info", timeout=30).json()["bars_needed"]
        over_http = predict_http(url, predict_payload(bars, news, end, bars_needed, STEP, "venv-http"))
        over_grpc = predict_grpc(f"127.0.0.1:{grpc_port}",
                                 predict_payload(bars, news, pd.Timestamp(times[611]), bars_needed, STEP, "venv-grpc"))
    finally:
        stop_process(process, 60, group=True)
    assert over_http["stored"] and over_grpc.stored and over_grpc.request_id == "venv-grpc"
    # the scheduled job as the image runs it: the same virtualenv, the bento's code, the model from its store
    job = subprocess.run([str(bento_python), "-m", "nfc.cli", "predict", "--data", str(tiny.data), "--model",
                          "neuralfusion:0.1.0-test", "--as-of", end.isoformat(), "--state-dir", str(tmp_path / "state"),
                          "--json"],
                         env={**env, "PYTHONPATH": str(bento.path / "src"), "NFC_MONGO_URI": mongo_uri,
                              "NFC_MONGO_DB": "nfc_bento_job"},
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    with MongoClient(mongo_uri, tz_aware=True) as client:
        [served] = client["nfc_bento_venv"]["predictions"].find({"request_id": "venv-http"})
        [by_job] = client["nfc_bento_job"]["predictions"].find({"as_of": end})
    assert served["as_of"] == end and served["model_version"] == by_job["model_version"] == "0.1.0-test"
    assert served["weights"].keys() == by_job["weights"].keys()
    assert max(abs(served["weights"][s] - by_job["weights"][s]) for s in served["weights"]) <= 1e-6
