"""The execution-provider decision (serving.providers) and the graph variant each device runs: CUDA only when a
CUDA session on the probe graph really runs there; a float16 graph never on the CPU provider; the fusion graph
always in float32; NFC_DEVICE=cuda without CUDA a clear error. onnxruntime-gpu on a host whose CUDA cannot start
opens the probe's [CUDA, CPU] session on the CPU, which is what this CPU build does when asked for CUDA, so that
path runs here for real; the subprocess test loads and serves a package as a fresh process would."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from neuralfusion.manifest import load_manifest
from serving.providers import CPU, CUDA, PROBE_GRAPH, DeviceError, ExecutionChoice, choose_device, probe_cuda
from serving.runtime import PortfolioRuntime, graph_variant, open_session

REPO = Path(__file__).resolve().parents[2]
# what a process on a CUDA host would decide; used to check which graphs such a process opens
ON_CUDA = ExecutionChoice("cuda", (CUDA, CPU), "test: as if CUDA ran the probe graph")


def test_probe_graph_is_the_one_node_graph_onnx_builds():
    from onnx import TensorProto, checker, helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "cuda_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    checker.check_model(model)
    assert model.SerializeToString() == PROBE_GRAPH
    session = ort.InferenceSession(PROBE_GRAPH, providers=[CPU])
    np.testing.assert_array_equal(session.run(None, {"x": np.array([1.5], np.float32)})[0], [3.0])


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="onnxruntime-gpu installed: not a CPU build")
def test_a_cpu_build_serves_on_the_cpu_and_says_why():
    choice = choose_device("auto")
    assert choice.device == "cpu" and choice.providers == (CPU,)
    assert choice.reason == (f"cuda unavailable, fell back to the CPU: onnxruntime {ort.__version__} has no "
                             f"{CUDA} (a CPU build; the 'gpu' extra installs onnxruntime-gpu)")
    assert choose_device("cpu") == ExecutionChoice("cpu", (CPU,), "NFC_DEVICE=cpu")


def test_a_build_offering_cuda_that_cannot_start_falls_back_to_the_cpu(caplog):
    """The probe really opens [CUDA, CPU] here; ONNX Runtime opens it on the CPU, as onnxruntime-gpu does on a host
    without a usable GPU, and the decision is the CPU with the provider list and the reason."""
    with caplog.at_level(logging.WARNING, logger="serving.providers"):
        choice = choose_device("auto", available=[CUDA, CPU])
    assert choice.device == "cpu" and choice.providers == (CPU,)
    assert choice.reason.startswith(f"cuda unavailable, fell back to the CPU: ONNX Runtime could not start {CUDA} "
                                    f"(session providers ['{CPU}']")
    assert "serving on the CPU because" in caplog.text
    if CUDA not in ort.get_available_providers():  # the CPU build warns that it lacks CUDA; the probe logs that
        assert "opening the CUDA probe" in caplog.text
    assert probe_cuda([CPU]) is not None and "CPU build" in probe_cuda([CPU])


@pytest.mark.parametrize("available", [None, [CUDA, CPU]])
def test_nfc_device_cuda_without_cuda_is_a_clear_error(available):
    with pytest.raises(DeviceError, match=r"NFC_DEVICE=cuda but CUDA is not usable here: .*set NFC_DEVICE=auto or cpu"):
        choose_device("cuda", available=available)
    with pytest.raises(ValueError, match="device must be one of"):
        choose_device("gpu")


def test_each_device_runs_its_graph_variants(tiny):
    """CUDA: the encoder's fp16 graph (published by this package) and the fusion graph in fp32; CPU: the fp32
    CPU graphs; an fp16 request on the CPU is refused, and on CUDA it never reaches the fusion graph."""
    manifest = load_manifest(tiny.package)
    assert "fp16" in manifest.data["graphs"]["encoder"]["variants"]
    assert "fp16" not in manifest.data["graphs"]["fusion"]["variants"]
    cpu = choose_device("cpu")
    assert {g: graph_variant(manifest, g, ON_CUDA) for g in ("encoder", "fusion")} == {"encoder": "fp16",
                                                                                      "fusion": "fp32"}
    assert {g: graph_variant(manifest, g, cpu) for g in ("encoder", "fusion")} == {"encoder": "cpu", "fusion": "cpu"}
    assert graph_variant(manifest, "fusion", ON_CUDA, "fp16") == "fp32"
    assert graph_variant(manifest, "encoder", cpu, "fp32") == "fp32"
    with pytest.raises(DeviceError, match="NFC_ORT_VARIANT=fp16 runs only on CUDA"):
        graph_variant(manifest, "encoder", cpu, "fp16")
    without_fp16 = load_manifest(tiny.package)
    del without_fp16.data["graphs"]["encoder"]["variants"]["fp16"]
    assert graph_variant(without_fp16, "encoder", ON_CUDA) == "fp32"


def test_a_cuda_session_that_lands_on_the_cpu_is_reopened_as_the_cpu_graph(tiny, caplog):
    """The guard after the probe: a session asked for [CUDA, CPU] that runs on the CPU is replaced by the CPU
    variant on the CPU alone, and the reason says so."""
    # the CPU build warns that it lacks CUDA; onnxruntime-gpu without a usable GPU logs it instead
    lacks_cuda = pytest.warns(UserWarning, match=CUDA) if CUDA not in ort.get_available_providers() else nullcontext()
    with lacks_cuda, caplog.at_level(logging.WARNING, logger="serving.runtime"):
        graph = open_session(load_manifest(tiny.package), "fusion", ON_CUDA)
    assert graph.session.get_providers() == [CPU] and graph.variant == "cpu"
    assert graph.reason.startswith("CUDA ran the probe graph but ONNX Runtime did not use it for fusion")
    assert "running the cpu variant on the CPU" in caplog.text


def test_runtime_load_with_nfc_device_cuda_refuses_before_opening_a_graph(tiny):
    with pytest.raises(DeviceError, match="NFC_DEVICE=cuda but CUDA is not usable here"):
        PortfolioRuntime.load(tiny.package, device="cuda")


def test_the_encoder_service_with_nfc_device_cuda_stays_up_not_ready_and_says_why(tiny, monkeypatch):
    from serving.service import EncoderService

    monkeypatch.setenv("NFC_MODEL_PATH", str(tiny.package))
    monkeypatch.setenv("NFC_DEVICE", "cuda")
    service = EncoderService()
    assert service.__is_ready__() is False
    assert (service.model_error or "").startswith("DeviceError: NFC_DEVICE=cuda but CUDA is not usable here")


# A fresh process loads the package and serves one request; every ONNX Runtime session it creates is recorded
# (the real class, subclassed only to note the path). "gpu-build": onnxruntime reports CUDA among its providers,
# as onnxruntime-gpu does on a host where CUDA cannot start; "as-installed": the onnxruntime installed (this test
# also passes under onnxruntime-gpu on a host without a usable GPU, where it is the real thing).
LOAD_AND_SERVE = textwrap.dedent("""
    import json, sys
    import onnxruntime as ort

    opened = []

    class RecordingSession(ort.InferenceSession):
        def __init__(self, path_or_bytes, *args, **kwargs):
            opened.append(path_or_bytes if isinstance(path_or_bytes, str) else "<probe graph>")
            super().__init__(path_or_bytes, *args, **kwargs)

    ort.InferenceSession = RecordingSession
    if sys.argv[3] == "gpu-build":
        offered = ["CUDAExecutionProvider", *ort.get_available_providers()]
        ort.get_available_providers = lambda: offered

    import pandas as pd
    from neuralfusion.data.bars import BarFileSource
    from neuralfusion.data.news import read_news
    from serving.client import predict_payload
    from serving.runtime import PortfolioRuntime
    from serving.schemas import PredictRequest

    runtime = PortfolioRuntime.load(sys.argv[1])  # NFC_DEVICE's default: auto
    bars = BarFileSource(sys.argv[2] + "/bars.parquet").read()
    news = read_news(sys.argv[2] + "/news.jsonl")
    as_of = pd.Timestamp(sorted(bars["timestamp"].unique())[-20])
    payload = predict_payload(bars, news, as_of, runtime.bars_needed, runtime.bar_spec.timedelta)
    [record] = runtime.predict_requests([PredictRequest.model_validate(payload)])
    print(json.dumps({"opened": opened, "fusion": runtime.graph.info(), "encoder": runtime.encoder.graph.info(),
                      "held": sum(w != 0 for w in record.weights.values())}))
""")


@pytest.mark.parametrize("build", ["as-installed", "gpu-build"])
def test_a_fresh_process_serves_on_the_cpu_and_never_opens_a_float16_graph(tiny, build):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    env.pop("NFC_DEVICE", None)
    done = subprocess.run([sys.executable, "-c", LOAD_AND_SERVE, str(tiny.package), str(tiny.data), build],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, f"exit {done.returncode} (negative: killed by that signal): {done.stderr[-2000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    probed = build == "gpu-build" or CUDA in ort.get_available_providers()
    assert result["opened"][0] == ("<probe graph>" if probed else str(tiny.package / "fusion.cpu.onnx"))
    assert not [path for path in result["opened"] if path.endswith(".fp16.onnx")]
    assert {Path(path).name for path in result["opened"][-2:]} == {"fusion.cpu.onnx", "encoder.cpu.onnx"}
    for graph in ("fusion", "encoder"):
        assert result[graph]["provider"] == CPU and result[graph]["variant"] == "cpu"
        assert result[graph]["reason"].startswith("cuda unavailable, fell back to the CPU")
    assert result["held"] == load_manifest(tiny.package).data["portfolio"]["top_k"]
