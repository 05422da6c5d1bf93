"""`nfc validate`: passes on an exported package, refuses tampering, and catches a graph with wrong weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import FP32_ATOL, TinyArtifacts, nfc
from click.testing import CliRunner

from nfc.cli import main


@pytest.fixture(scope="module")
def report(tiny: TinyArtifacts) -> dict:
    code, report = validate_json(tiny.package)
    assert code == 0, [c for c in report["checks"] if c["passed"] is False]
    return report


def validate_json(package: Path) -> tuple[int, dict]:
    """`nfc validate PKG --json`: exit code and the report from stdout (progress bars go to stderr)."""
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "validate", str(package), "--json"])
    return result.exit_code, json.loads(result.stdout)


def rows(report: dict, check: str) -> list[dict]:
    return [c for c in report["checks"] if c["check"] == check]


def test_validate_passes_on_the_exported_package(report):
    assert report["passed"] is True and report["version"] == "0.1.0-test"
    assert all(c["passed"] is not False for c in report["checks"])
    assert rows(report, "hashes")[0]["passed"] and len(rows(report, "onnx checker")) == 5
    assert all(c["passed"] for c in rows(report, "signature") + rows(report, "tokenizer"))


def test_validate_compares_every_graph_on_generated_and_real_inputs(report):
    parity = [c for c in report["checks"] if c["max_abs"] is not None]
    graphs = {c["graph"] for c in parity}
    assert graphs == {"encoder.onnx", "encoder.cpu.onnx", "encoder.fp16.onnx", "fusion.onnx", "fusion.cpu.onnx"}
    cases = {c["case"] for c in parity}
    assert {"generated batch 1", "generated batch 7", "generated batch 64", "real windows batch 1",
            "real windows batch 7", "real windows batch 64", "real articles batch 7",
            "batch 7, market periods unlike the model's", "generated batch 3, 705-800 tokens"} <= cases
    fp32 = [c for c in parity if "fp16" not in c["graph"]]
    assert max(c["max_abs"] for c in fp32) <= FP32_ATOL


def test_validate_reports_the_fp16_encoder_end_to_end_on_real_windows(report):
    [vectors] = rows(report, "fp16 article vectors")
    [agreement] = rows(report, "fp16 top-k agreement")
    assert vectors["passed"] and vectors["graph"] == "encoder.fp16.onnx" and vectors["max_abs"] <= vectors["bound"]
    assert agreement["passed"] and agreement["case"].startswith("agreement 1.0000 on ")
    windows = int(agreement["case"].split()[3])
    assert windows > 500 and agreement["detail"].startswith(f"{windows}/{windows} real windows with news (")


def test_validate_checks_batch_invariance_in_onnx_runtime(report):
    invariance = rows(report, "fusion batch invariance") + rows(report, "encoder batch invariance")
    assert {c["graph"] for c in invariance} >= {"fusion.onnx", "encoder.onnx"}
    assert all(c["passed"] for c in invariance)
    assert any(c["case"] == "real windows batch 7" for c in invariance)


def test_validate_refuses_a_tampered_package(tiny, tmp_path):
    package = Path(shutil.copytree(tiny.package, tmp_path / "pkg"))
    raw = bytearray((package / "encoder.onnx").read_bytes())
    raw[-10] ^= 0xFF
    (package / "encoder.onnx").write_bytes(bytes(raw))
    code, output = nfc("validate", str(package))
    assert code == 1
    assert "package file encoder.onnx was modified" in output and "FAILED" in output


def test_validate_catches_a_fusion_graph_with_wrong_weights(tiny, tmp_path):
    """Another model's weights in fusion.onnx, hashes fixed up: only parity against the checkpoint can tell."""
    import onnx
    from onnx import numpy_helper

    from neuralfusion.manifest import load_manifest, write_manifest

    package = Path(shutil.copytree(tiny.package, tmp_path / "pkg"))
    graph = onnx.load(str(package / "fusion.onnx"))
    largest = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(largest)
    noise = np.random.default_rng(0).normal(0, values.std() + 1e-3, values.shape).astype(values.dtype)
    largest.CopyFrom(numpy_helper.from_array(values + noise, largest.name))
    onnx.save_model(graph, str(package / "fusion.onnx"), save_as_external_data=True, location="fusion.onnx.data")
    manifest = load_manifest(package, verify=False).data
    write_manifest(package, {k: v for k, v in manifest.items() if k != "files"})

    code, report = validate_json(package)
    assert code == 1
    assert rows(report, "hashes")[0]["passed"] is True
    failed = {(c["check"], c["graph"]) for c in report["checks"] if c["passed"] is False}
    assert ("fusion logits", "fusion.onnx") in failed
    assert not any(graph.startswith("encoder") for _, graph in failed)  # the untouched graph still passes


def test_validate_table_is_readable(tiny, tmp_path):
    from export.validate import validate_package

    package = Path(shutil.copytree(tiny.package, tmp_path / "pkg"))
    (package / "tokenizer" / "tokenizer.json").unlink()
    table = validate_package(package).table()
    assert table.splitlines()[1].split() == ["check", "graph", "case", "max", "abs", "bound", "result"]
    assert "tokenizer/tokenizer.json is missing" in table and table.endswith("FAILED: 1 of 1 checks failed")
