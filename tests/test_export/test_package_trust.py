"""Package trust: Ed25519-signed manifests, every manifest path confined to the package, `nfc validate` comparing
configs with the run and failing on checks it could not run, and finetune's promotion decision enforced.

Each test replays a finding: a manifest rewritten with a 4x normaliser std (or a swapped graph) and fixed-up
hashes passed `nfc validate` and was served; a variant path `../elsewhere/x.onnx` was opened; validate run from
another directory skipped the real-data check and still passed; a losing challenger could be exported and
became `neuralfusion:latest`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from builders import TinyArtifacts, nfc
from click.testing import CliRunner

from neuralfusion.manifest import MANIFEST_DIGEST_FILE, MANIFEST_FILE, PackageError, load_manifest, write_manifest
from nfc.cli import main
from serving.runtime import PortfolioRuntime

SIGNED_VERSION = "0.3.0-signed"
LOSER_VERSION = "0.4.0-loser"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    for name in ("ours", "theirs"):
        code, output = nfc("keygen", "--out", str(root / f"{name}.pem"))
        assert code == 0 and "key id" in output, output
    return {"private": root / "ours.pem", "public": root / "ours.pem.pub", "other_public": root / "theirs.pem.pub"}


@pytest.fixture(scope="module")
def signed(tiny: TinyArtifacts, keys, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signed") / "pkg"
    code, output = nfc("export", "--model", str(tiny.run), "--out", str(out), "--version", SIGNED_VERSION,
                       "--sign-key", str(keys["private"]), "--no-bentoml")
    assert code == 0, output
    return out


def rewrite_manifest(package: Path, change) -> None:
    """What an attacker without the key can do: edit the manifest, rehash every file, rewrite the digest."""
    data = load_manifest(package, verify=False).data
    change(data)
    write_manifest(package, {k: v for k, v in data.items() if k != "files"})


def validate_json(package: Path, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "validate", str(package), "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def test_keygen_writes_an_owner_only_private_key_and_never_overwrites(keys):
    assert stat.S_IMODE(os.stat(keys["private"]).st_mode) == 0o600
    assert keys["public"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    code, output = nfc("keygen", "--out", str(keys["private"]))
    assert code == 1 and "exists" in output


def test_serving_with_a_public_key_loads_only_what_that_key_signed(tiny, signed, keys, monkeypatch):
    signature = json.loads((signed / "manifest.sig").read_text())
    assert signature["algorithm"] == "Ed25519" and signature["signed_file"] == MANIFEST_FILE
    monkeypatch.setenv("NFC_PACKAGE_PUBLIC_KEY", str(keys["public"]))
    assert PortfolioRuntime.load(signed, device="cpu", with_encoder=False).version == SIGNED_VERSION
    monkeypatch.setenv("NFC_PACKAGE_PUBLIC_KEY", keys["public"].read_text())  # the PEM text itself works too
    assert PortfolioRuntime.load(signed, device="cpu", with_encoder=False).version == SIGNED_VERSION
    with pytest.raises(PackageError, match="is not signed"):
        PortfolioRuntime.load(tiny.package, device="cpu", with_encoder=False)
    monkeypatch.setenv("NFC_PACKAGE_PUBLIC_KEY", str(keys["other_public"]))
    with pytest.raises(PackageError, match="signed by another key"):
        PortfolioRuntime.load(signed, device="cpu", with_encoder=False)


def _scale_std(data: dict) -> None:
    data["features"]["normaliser"]["std"] = [4 * s for s in data["features"]["normaliser"]["std"]]


@pytest.mark.parametrize("tamper", ["normaliser std x4", "encoder.onnx swapped"])
def test_a_rewritten_manifest_with_fixed_up_hashes_is_refused(signed, keys, tmp_path, monkeypatch, tamper):
    package = Path(shutil.copytree(signed, tmp_path / "pkg"))
    if tamper == "encoder.onnx swapped":
        shutil.copy(package / "encoder.cpu.onnx", package / "encoder.onnx")
    rewrite_manifest(package, _scale_std if tamper.startswith("normaliser") else lambda data: None)  # rehash only
    load_manifest(package)  # the hashes agree again: integrity alone cannot tell
    monkeypatch.setenv("NFC_PACKAGE_PUBLIC_KEY", str(keys["public"]))
    with pytest.raises(PackageError, match=r"does not verify with key .* the manifest changed since"):
        PortfolioRuntime.load(package, device="cpu", with_encoder=False)
    code, report = validate_json(package)  # validate reads the key from the same variable
    assert code == 1 and [c["passed"] for c in report["checks"] if c["check"] == "manifest signature"] == [False]
    if tamper.startswith("normaliser"):
        monkeypatch.delenv("NFC_PACKAGE_PUBLIC_KEY")
        code, report = validate_json(package, "--allow-skip")  # without a key: the run's normaliser tells
        [normaliser] = [c for c in report["checks"] if c["check"] == "config" and c["graph"] == "normaliser"]
        assert code == 1 and normaliser["passed"] is False and "std" in normaliser["detail"]


def test_variant_paths_outside_the_package_are_refused(tiny, tmp_path):
    package = Path(shutil.copytree(tiny.package, tmp_path / "a" / "b" / "pkg"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(package / "encoder.cpu.onnx", elsewhere / "x.onnx")
    outside = "../../../elsewhere/x.onnx"

    def point_outside(data: dict) -> None:
        data["graphs"]["encoder"]["variants"]["cpu"] = outside

    rewrite_manifest(package, point_outside)
    with pytest.raises(PackageError, match=r"names files it does not hash: \{'graphs.encoder.cpu'"):
        load_manifest(package)
    with pytest.raises(PackageError, match="outside the package"):
        load_manifest(package, verify=False).graph_path("encoder", "cpu")
    # listed among the hashed files too: still outside
    data = json.loads((package / MANIFEST_FILE).read_text())
    data["files"][outside] = hashlib.sha256((elsewhere / "x.onnx").read_bytes()).hexdigest()
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    (package / MANIFEST_FILE).write_text(text)
    (package / MANIFEST_DIGEST_FILE).write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST_FILE}\n")
    with pytest.raises(PackageError, match="outside the package"):
        PortfolioRuntime.load(package, device="cpu")
    code, report = validate_json(package)
    assert code == 1 and report["checks"][0]["check"] == "hashes" and "outside the package" in \
        report["checks"][0]["detail"]


def test_validate_from_another_directory_finds_relative_run_paths_or_fails_naming_them(tiny, tmp_path, monkeypatch):
    """A run trained as `nfc train --data data --embeddings emb.parquet` (paths relative to its cwd)."""
    work = tmp_path / "work"
    run = Path(shutil.copytree(tiny.run, work / "run"))
    (work / "data").symlink_to(tiny.data, target_is_directory=True)
    shutil.copy(tiny.embeddings, work / "emb.parquet")
    meta = json.loads((run / "run.json").read_text())
    meta["data_dir"], meta["encoder"]["embeddings"] = "data", "emb.parquet"
    (run / "run.json").write_text(json.dumps(meta))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, report = validate_json(tiny.package, "--model", str(run))
    assert code == 0 and report["passed"] and report["skipped"] == []
    assert any(c["case"] == "real windows batch 7" for c in report["checks"])  # the real-data check ran
    assert {c["graph"] for c in report["checks"] if c["check"] == "config" and c["passed"]} >= {"normaliser", "model"}
    (work / "data").unlink()
    code, report = validate_json(tiny.package, "--model", str(run))
    assert code == 1 and not report["passed"] and len(report["skipped"]) == 1
    assert f"looked at data, {run / 'data'}, {work / 'data'}" in report["skipped"][0]
    code, report = validate_json(tiny.package, "--model", str(run), "--allow-skip")
    assert code == 0 and report["allow_skip"] and len(report["skipped"]) == 1


@pytest.fixture(scope="module")
def loser(tiny, tmp_path_factory) -> Path:
    """A finetune that cannot beat its incumbent (lr 1e-12: the same weights, a tie keeps the incumbent)."""
    out = tmp_path_factory.mktemp("loser") / "run"
    code, output = nfc("finetune", "--model", str(tiny.run), "--data", str(tiny.data), "--embeddings",
                       str(tiny.embeddings), "--out", str(out), "--set", "epochs=1", "--set", "lr=1e-12")
    assert code == 0 and "kept the incumbent" in output, output
    assert json.loads((out / "decision.json").read_text())["promoted"] is False
    return out


def test_a_challenger_that_lost_is_not_exported_unless_forced_and_never_becomes_latest(tiny, loser, tmp_path):
    code, output = nfc("export", "--model", str(loser), "--out", str(tmp_path / "refused"), "--no-bentoml")
    assert code == 1 and "was not promoted by `nfc finetune`" in output and "--force" in output
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.partial").exists()
    code, output = nfc("export", "--model", str(loser), "--out", str(tmp_path / "forced"), "--version",
                       LOSER_VERSION, "--no-bentoml", "--force")
    assert code == 0, output
    assert load_manifest(tmp_path / "forced").data["promotion"]["promoted"] is False
    home = tmp_path / "bentoml"
    script = ("import sys, json, bentoml; from pathlib import Path; from export.bento import import_package; "
              "from serving.model_store import resolve_model_tag; "
              "[import_package(Path(p)) for p in sys.argv[1:]]; "
              "print(json.dumps({'bentoml_latest': str(bentoml.models.get('neuralfusion:latest').tag), "
              "'served': resolve_model_tag('neuralfusion:latest'), "
              "'labels': {str(m.tag): m.info.labels['promoted'] for m in bentoml.models.list('neuralfusion')}}))")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run([sys.executable, "-c", script, str(tiny.package), str(tmp_path / "forced")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    store = json.loads(result.stdout.strip().splitlines()[-1])
    assert store["bentoml_latest"] == f"neuralfusion:{LOSER_VERSION}"  # the last import: BentoML's own `latest`
    assert store["served"] == "neuralfusion:0.1.0-test"  # serving's: the newest promoted one
    assert store["labels"] == {"neuralfusion:0.1.0-test": "true", f"neuralfusion:{LOSER_VERSION}": "false"}


def test_finetune_decision_is_written_inside_the_run_folder(loser):
    run = json.loads((loser / "run.json").read_text())
    assert run["finetune"] == json.loads((loser / "decision.json").read_text())
    assert Path(run["data_dir"]).is_absolute() and Path(run["encoder"]["embeddings"]).is_absolute()


def test_validate_finds_the_run_beside_a_moved_package_or_names_where_it_looked(tiny, tmp_path):
    """The manifest's absolute source run is gone (package and run moved together): the run is found at the
    same place relative to the package; with neither there, the report names both paths."""
    moved = tmp_path / "moved"
    package = Path(shutil.copytree(tiny.package, moved / "pkg"))
    shutil.copytree(tiny.run, moved / "run")

    def moved_away(data: dict) -> None:
        data["source"]["run"], data["source"]["run_from_package"] = str(tmp_path / "gone" / "run"), "../run"

    rewrite_manifest(package, moved_away)
    code, report = validate_json(package, "--allow-skip")
    [references] = [c for c in report["checks"] if c["check"] == "references"]
    assert code == 0 and references["passed"] and str(moved / "run") in references["detail"], references
    shutil.rmtree(moved / "run")
    code, report = validate_json(package)
    [references] = [c for c in report["checks"] if c["check"] == "references"]
    assert code == 1 and references["passed"] is False
    assert f"looked at {tmp_path / 'gone' / 'run'}, {moved / 'run'}; pass --model RUN" in references["detail"]
