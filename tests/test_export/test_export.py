"""`nfc export`: a tiny real run and encoder to an ONNX package; manifest, parity, hashes, BentoML store.

The package is built once per test session (`builders.tiny_artifacts`, the `tiny` fixture) through
the CLI, with external data so the `.onnx.data` path and its hashes are exercised too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import FP32_ATOL, TinyArtifacts, nfc, tiny_encoder


@pytest.fixture
def package_copy(tiny: TinyArtifacts, tmp_path: Path) -> Path:
    """A copy of the package that a test may damage."""
    return Path(shutil.copytree(tiny.package, tmp_path / "pkg"))


def test_export_and_validate_are_nfc_commands():
    code, output = nfc("--help")
    assert code == 0 and "export" in output and "validate" in output


def test_package_has_every_file_and_no_partial_folder(tiny):
    names = {p.relative_to(tiny.package).as_posix() for p in tiny.package.rglob("*") if p.is_file()}
    graphs = ["encoder.onnx", "encoder.cpu.onnx", "encoder.fp16.onnx", "fusion.onnx", "fusion.cpu.onnx"]
    for graph in graphs:
        assert graph in names and f"{graph}.data" in names  # --external-data
    assert not any(name.startswith("fusion.fp16") for name in names)  # the fusion graph is float32 only
    assert {"manifest.json", "manifest.sha256", "tokenizer/tokenizer.json"} <= names
    assert not tiny.package.with_name("pkg.partial").exists()


def test_manifest_has_every_required_field(tiny):
    from neuralfusion.manifest import REQUIRED_FIELDS, load_manifest
    from training.runs import load_run

    manifest = load_manifest(tiny.package)
    data, run = manifest.data, load_run(tiny.run)
    assert set(REQUIRED_FIELDS) <= set(data) and manifest.version == "0.1.0-test"
    assert data["window"] == {"lookback": 16, "horizon": 8}
    assert manifest.portfolio == run.portfolio and manifest.window.horizon == run.window.horizon
    assert data["bar_spec"]["interval"] == "3min" and data["bar_spec"]["calendar"] == "24/7"
    assert data["universe"]["symbols"] == list(run.universe.symbols)
    assert data["features"]["names"] == run.meta["feature_names"] and data["features"]["warmup_bars"] == 80
    assert manifest.normaliser == run.normaliser
    assert data["model"]["periods"] == list(run.model_config.periods)
    assert data["onnx"]["opset"] == 18
    assert data["encoder"]["fingerprint"] == run.encoder["fingerprint"]
    assert {k: data["encoder"][k] for k in ("max_length", "pooling", "attention_type")} == {
        "max_length": 1024, "pooling": "mean", "attention_type": "original_full"}
    assert data["metrics"]["best_epoch"] == run.metrics["best_epoch"]
    assert data["tolerances"]["fp32"] == {"atol": FP32_ATOL, "rtol": 2e-6}
    expected_files = {p.relative_to(tiny.package).as_posix() for p in tiny.package.rglob("*") if p.is_file()}
    assert set(data["files"]) == expected_files - {"manifest.json", "manifest.sha256"}


def test_manifest_declares_named_symbolic_dims(tiny):
    from neuralfusion.inputs import INPUT_NAMES
    from neuralfusion.manifest import load_manifest

    graphs = load_manifest(tiny.package).data["graphs"]
    encoder_inputs = {i["name"]: (i["dtype"], i["shape"]) for i in graphs["encoder"]["inputs"]}
    assert encoder_inputs == {"input_ids": ("int64", ["batch", "sequence"]),
                              "attention_mask": ("int64", ["batch", "sequence"])}
    assert graphs["encoder"]["outputs"] == [{"name": "pooled", "dtype": "float32", "shape": ["batch", 32]}]
    fusion_inputs = {i["name"]: i["shape"] for i in graphs["fusion"]["inputs"]}
    assert fusion_inputs == {"news_emb": ["batch", 16, 6, 32], "coverage": ["batch", 16, 6],
                             "market_news_emb": ["batch", 16, 32], "market_news_mask": ["batch", 16],
                             "market": ["batch", 16, 6, 7]}
    assert list(fusion_inputs) == list(INPUT_NAMES)
    assert [o["name"] for o in graphs["fusion"]["outputs"]] == ["logits", "weights"]


@pytest.mark.parametrize("variant", ["fp32", "cpu", "fp16"])
def test_input_dims_stay_symbolic_in_every_graph(tiny, variant):
    from export.parity import variant_session
    from neuralfusion.manifest import load_manifest

    manifest = load_manifest(tiny.package)
    for graph in ("encoder", "fusion") if variant != "fp16" else ("encoder",):
        session = variant_session(manifest.graph_path(graph, variant), variant)
        for value in session.get_inputs():
            assert value.shape[0] == "batch", (graph, value.name, value.shape)
            if graph == "encoder":
                assert value.shape[1] == "sequence"


def test_export_recorded_parity_within_tolerance_above_704_tokens(tiny):
    from neuralfusion.manifest import load_manifest

    parity = load_manifest(tiny.package).data["parity"]
    assert parity and all(row["passed"] for row in parity)
    fp32 = [r for r in parity if "fp16" not in r["graph"]]
    assert max(r["max_abs"] for r in fp32) <= FP32_ATOL
    cases = {r["case"] for r in parity if r["check"] == "encoder parity"}
    assert "generated batch 2, 1024 tokens" in cases and "generated batch 3, 705-800 tokens" in cases
    assert {"generated batch 1", "generated batch 7", "generated batch 64"} <= {r["case"] for r in parity}


def test_fp16_encoder_is_published_with_its_end_to_end_agreement_on_real_windows(tiny):
    """Measured on the tiny package: 68 articles, 1,337 windows of which 701 read news, agreement 1.0, vector max
    abs ~5e-4, cosine 0.9999998, weights within 4e-7."""
    from export.parity import FP16_CRITERIA
    from neuralfusion.manifest import load_manifest

    data = load_manifest(tiny.package).data
    fp16 = data["fp16_parity"]["encoder"]
    assert fp16["published"] is True and fp16["reason"] == "passed"
    assert data["graphs"]["encoder"]["variants"]["fp16"] == "encoder.fp16.onnx"
    assert fp16["measured_on"].startswith("CPUExecutionProvider at ORT_ENABLE_BASIC")
    measured = fp16["end_to_end"]
    assert measured["data"] == str(tiny.data) and measured["windows"] > 1000 and measured["articles"] > 50
    assert measured["agreement"] == measured["same_book"] / measured["news_windows"] >= FP16_CRITERIA.min_agreement
    assert 0 < measured["news_windows"] < measured["windows"]
    assert 0 < measured["max_abs"] <= measured["bound"] and FP16_CRITERIA.min_cosine <= measured["min_cosine"] < 1
    assert fp16["checks"] and all(row["passed"] and row["graph"] == "encoder.fp16.onnx" for row in fp16["checks"])
    assert {row["graph"] for row in data["parity"]} == {"encoder.onnx", "encoder.cpu.onnx", "encoder.fp16.onnx",
                                                          "fusion.onnx", "fusion.cpu.onnx"}
    assert data["fp16_parity"]["fusion"]["published"] is False


def test_end_to_end_agreement_sees_an_encoder_that_changes_the_portfolios(tiny, tmp_path):
    """The encoder graph with its vectors scaled by 20 (same direction: the cosine cannot tell) against the real
    one through the fusion graph: the books of windows with news change and the verdict says so (measured: 627 of
    701 unchanged, 0.894); the graph against itself agrees on every window."""
    import onnx
    from onnx import helper, numpy_helper

    from export.package import encoder_settings, load_run_encoder
    from export.parity import FP16_CRITERIA, encoder_end_to_end, variant_session
    from neuralfusion.dataset import load_data_dir
    from neuralfusion.manifest import load_manifest
    from training.runs import load_run

    manifest, run = load_manifest(tiny.package), load_run(tiny.run)
    encoder = load_run_encoder(run, encoder_settings(run))
    graph = onnx.load(str(tiny.package / "encoder.onnx"))
    [producer] = [node for node in graph.graph.node if "pooled" in node.output]
    producer.output[list(producer.output).index("pooled")] = "pooled_unscaled"
    graph.graph.initializer.append(numpy_helper.from_array(np.array(20.0, np.float32), "scale"))
    graph.graph.node.append(helper.make_node("Mul", ["pooled_unscaled", "scale"], ["pooled"]))
    onnx.save_model(graph, str(tmp_path / "scaled.onnx"), save_as_external_data=True, location="scaled.onnx.data")

    reference = variant_session(tiny.package / "encoder.onnx", "fp32")
    fusion = variant_session(tiny.package / "fusion.onnx", "fp32")
    data = load_data_dir(tiny.data, universe=manifest.universe)
    args = (data, manifest.normaliser, manifest.window, manifest.data["features"]["warmup_bars"])
    same = encoder_end_to_end(encoder, reference, reference, fusion, *args)
    assert same.max_abs == 0 and same.agreement == 1.0 and same.failures(FP16_CRITERIA) == []
    assert 0 < same.news_windows < same.windows and same.same_book == same.news_windows
    scaled = encoder_end_to_end(encoder, reference, variant_session(tmp_path / "scaled.onnx", "fp32"), fusion, *args)
    assert scaled.news_windows == same.news_windows and scaled.agreement < FP16_CRITERIA.min_agreement
    assert scaled.min_cosine > FP16_CRITERIA.min_cosine and scaled.max_weight_diff > 0.1
    reasons = scaled.failures(FP16_CRITERIA)
    assert [r.split()[0] for r in reasons] == ["top-k", "article"] and "max abs error" in reasons[1]


def test_a_failed_fp16_check_drops_that_variant_and_publishes_fp32(tiny, tmp_path, caplog):
    """A threshold the fp16 encoder cannot meet (cosine 1.0): no fp16 file, the manifest neither lists nor hashes
    it and says why; every fp32 check passed, and the package serves and validates without it."""
    import logging

    from export.package import build_package
    from export.parity import Fp16Criteria
    from export.validate import validate_package
    from neuralfusion.manifest import load_manifest
    from serving.runtime import PortfolioRuntime

    out = tmp_path / "pkg"
    with caplog.at_level(logging.WARNING, logger="export.package"):
        build_package(tiny.run, out, version="0.1.0-nofp16", fp16_criteria=Fp16Criteria(min_cosine=1.0))
    assert "encoder.fp16.onnx is not published (the fp32 package is): article vector cosine" in caplog.text
    data = load_manifest(out).data
    assert "fp16" not in data["graphs"]["encoder"]["variants"] and not list(out.glob("*.fp16.onnx*"))
    assert not any("fp16" in name for name in data["files"])
    fp16 = data["fp16_parity"]["encoder"]
    assert fp16["published"] is False and fp16["reason"].startswith("article vector cosine 0.99999")
    assert fp16["reason"].endswith("< 1.0")
    assert fp16["end_to_end"]["agreement"] == 1.0  # the measurement itself is kept
    assert data["parity"] and all(row["passed"] and "fp16" not in row["graph"] for row in data["parity"])
    runtime = PortfolioRuntime.load(out)
    assert runtime.encoder is not None and runtime.encoder.graph.variant == "cpu"
    report = validate_package(out)
    assert report.passed
    [dropped] = [c for c in report.checks if c.check == "fp16 encoder"]
    assert dropped.passed is True and dropped.detail.startswith("not published by the export: article vector cosine")


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_fusion_graph_matches_pytorch(tiny, batch_size):
    """An independent comparison: ONNX Runtime vs CgaModel on fresh random windows, allclose at 1e-5."""
    import torch

    from export.onnx_export import CgaOnnxWrapper, open_session
    from neuralfusion.manifest import load_manifest
    from training.model import CgaModel, cga_example_inputs

    model = CgaModel.from_checkpoint(tiny.run / "model.safetensors")
    inputs = cga_example_inputs(model.config, batch_size, seed=1000 + batch_size)
    session = open_session(load_manifest(tiny.package).graph_path("fusion"))
    logits, weights = session.run(None, {n: x.numpy() for n, x in zip(CgaOnnxWrapper.input_names, inputs,
                                                                         strict=True)})
    with torch.no_grad():
        expected = model(*inputs)
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=FP32_ATOL, rtol=0)
    np.testing.assert_allclose(weights, expected.weights.numpy(), atol=FP32_ATOL, rtol=0)


def test_fresh_fusion_model_exports_with_a_dynamic_batch(tmp_path):
    """A random-init model (period 5 does not divide the lookback: the padding path) through `export_fusion`."""
    import torch

    from export.onnx_export import CgaOnnxWrapper, export_fusion, open_session
    from neuralfusion.model_config import CgaConfig
    from training.model import CgaModel, cga_example_inputs

    torch.manual_seed(0)
    config = CgaConfig(n_assets=5, embed_dim=16, lookback=24, d_model=16, n_heads=2, periods=(12, 5), top_k=2)
    model = CgaModel(config)
    session = open_session(export_fusion(model, tmp_path / "fusion.onnx"))
    assert all(isinstance(i.shape[0], str) for i in session.get_inputs())  # the batch axis stayed symbolic
    for size in (1, 7):
        inputs = cga_example_inputs(config, size, seed=size)
        got = session.run(None, {n: x.numpy() for n, x in zip(CgaOnnxWrapper.input_names, inputs, strict=True)})
        with torch.no_grad():
            expected = CgaOnnxWrapper(model)(*inputs)
        for name, g, e in zip(CgaOnnxWrapper.output_names, got, expected, strict=True):
            np.testing.assert_allclose(g, e.numpy(), atol=FP32_ATOL, rtol=1e-4, err_msg=f"{name}, batch {size}")


def test_topk_weights_are_compared_only_where_the_choice_is_clear():
    from export.parity import Tolerance, fusion_parity

    class Replay:  # a session that answers with fixed outputs
        def __init__(self, *outputs: np.ndarray) -> None:
            self.outputs = list(outputs)

        def run(self, _names: None, _feeds: dict) -> list[np.ndarray]:
            return self.outputs

    # top-3 of 4: in sample 0 the 3rd and 4th |logit| are closer than the bound, in sample 1 they are not
    logits = np.array([[3.0, -2.0, 1.0, 0.999995], [3.0, -2.0, 1.0, 0.5]], dtype=np.float32)
    book = np.array([[0.5, -1 / 3, 1 / 6, 0.0], [0.5, -1 / 3, 1 / 6, 0.0]], dtype=np.float32)
    flip_0 = np.array([[0.5, -1 / 3, 0.0, 1 / 6], [0.5, -1 / 3, 1 / 6, 0.0]], dtype=np.float32)
    flip_1 = flip_0[::-1].copy()
    tolerance = Tolerance(atol=1e-5)
    logit_check, weight_check = fusion_parity("g", Replay(logits, flip_0), tolerance, "c", {}, (logits, book), k=3)
    assert logit_check.passed and weight_check.passed and weight_check.detail.startswith("1/2 samples")
    _, weight_check = fusion_parity("g", Replay(logits, flip_1), tolerance, "c", {}, (logits, book), k=3)
    assert not weight_check.passed and "selected assets differ" in weight_check.detail


@pytest.mark.parametrize(("batch_size", "length"), [(1, 12), (7, 300), (2, 1024)])
def test_encoder_graph_matches_pytorch(tiny, batch_size, length):
    """ONNX Runtime pooled vectors vs NfcEncoder on random ids with a padded row, allclose at 1e-5."""
    import torch

    from export.onnx_export import open_session
    from neuralfusion.manifest import load_manifest
    from training.encoder import NfcEncoder

    encoder = NfcEncoder.load(tiny.encoder, max_length=1024)
    gen = torch.Generator().manual_seed(length)
    ids = torch.randint(5, len(encoder.tokenizer), (batch_size, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # the first row is padded
    session = open_session(load_manifest(tiny.package).graph_path("encoder"))
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.inference_mode():
        expected = encoder.forward_pooled(ids, mask).numpy()
    np.testing.assert_allclose(got, expected, atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize(("name", "damage"), [
    ("fusion.onnx", "edit"),
    ("encoder.onnx.data", "edit"),  # external weights are hashed too
    ("tokenizer/tokenizer.json", "delete"),
])
def test_tampered_or_missing_file_is_refused_at_load(package_copy, name, damage):
    from neuralfusion.manifest import PackageError, load_manifest

    path = package_copy / name
    if damage == "delete":
        path.unlink()
    else:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    with pytest.raises(PackageError, match=f"package file {name} (was modified|is missing)"):
        load_manifest(package_copy)


def test_tampered_manifest_is_refused_at_load(package_copy):
    from neuralfusion.manifest import PackageError, load_manifest

    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["portfolio"]["cost_bps"] = 0.0
    (package_copy / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(PackageError, match=r"manifest\.json was modified after export"):
        load_manifest(package_copy)
    assert load_manifest(package_copy, verify=False).data["portfolio"]["cost_bps"] == 0.0


def test_manifest_reader_needs_no_torch(tiny):
    """Serving reads and verifies packages without torch, onnx or the training code."""
    code = ("import sys; from neuralfusion.manifest import load_manifest\n"
            f"m = load_manifest({str(tiny.package)!r})\n"
            "print(m.universe.symbols, m.window.lookback, m.graph_path('fusion', 'cpu').name)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'training', 'onnx', 'transformers'))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "fusion.cpu.onnx" in result.stdout


def test_fingerprint_mismatch_is_refused(tiny, tmp_path):
    other = tiny_encoder(tiny.data, tmp_path / "other-encoder", seed=1)  # same shape, other weights
    out = tmp_path / "pkg"
    code, output = nfc("export", "--model", str(tiny.run), "--out", str(out), "--encoder", str(other), "--no-bentoml")
    assert code == 1 and "fingerprint" in output and "export the encoder that made them" in output
    assert not out.exists() and not out.with_name("pkg.partial").exists()


def test_block_sparse_encoder_is_refused(tiny):
    """Block-sparse BigBird exports only at a static length (the exporter fixes the sequence axis), so it is refused."""
    from export.onnx_export import ExportError, NfcEncoderOnnxWrapper
    from training.encoder import NfcEncoder

    encoder = NfcEncoder.load(tiny.encoder, attention_type="block_sparse", max_length=1024)
    with pytest.raises(ExportError, match="re-embed the news with --attention-type original_full"):
        NfcEncoderOnnxWrapper(encoder)


def test_version_must_be_a_model_store_tag():
    from neuralfusion.manifest import PackageError, check_version

    assert check_version("20261127-044612-3fa2b1c0") == "20261127-044612-3fa2b1c0"
    with pytest.raises(PackageError, match="must be 1-63 characters"):
        check_version("Version 2")


def test_bentoml_store_entry_has_metadata(tiny, tmp_path):
    """Imported in a subprocess with its own BENTOML_HOME, so ~/bentoml is never touched."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    code = ("import json, sys, bentoml\nfrom pathlib import Path\n"
            "from export.bento import import_package\nfrom neuralfusion.manifest import load_manifest\n"
            "tag = import_package(Path(sys.argv[1]))\n"
            "again = import_package(Path(sys.argv[1]))\n"
            "model = bentoml.models.get(tag)\n"
            "stored = load_manifest(model.path)\n"
            "print(json.dumps({'tag': tag, 'again': again, 'labels': model.info.labels, "
            "'metadata': model.info.metadata, 'version': stored.version}))\n")
    result = subprocess.run([sys.executable, "-c", code, str(tiny.package)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["tag"] == info["again"] == "neuralfusion:0.1.0-test" and info["version"] == "0.1.0-test"
    metadata = info["metadata"]
    assert metadata["parity_passed"] is True and len(metadata["parity"]) > 40
    assert metadata["tolerances"]["fp32"]["atol"] == FP32_ATOL
    assert "best_val_sharpe" in metadata["metrics"]
    assert info["labels"]["interval"] == "3min" and info["labels"]["lookback"] == "16"
    listed = subprocess.run([sys.executable, "-m", "bentoml", "models", "list", "-o", "json"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "neuralfusion:0.1.0-test" in {entry["tag"] for entry in json.loads(listed.stdout)}
