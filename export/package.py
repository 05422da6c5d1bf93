"""Build a model package from a run folder: both graphs, their variants, tokenizer, manifest, parity.

    build_package(Path("runs/demo/model"), Path("runs/demo/package"))   # what `nfc export` calls

The encoder exported is the one whose embeddings the run was trained on: by default the encoder
named in the run's embeddings file, loaded with the attention type, pooling and max length recorded
there, and its fingerprint must equal the run's (else `FingerprintMismatchError`). The package is
written into `PKG.partial/` and renamed to `PKG/` only after every graph passed parity, so a failed
export never leaves a folder that looks finished. Layout and manifest schema: neuralfusion/manifest.py.

Variants: both graphs in fp32 (`.onnx`) and ORT-optimised for the CPU (`.cpu.onnx`), which must pass parity or
nothing is published. The fusion graph has no float16 variant (float16 logits flip top-k selections). The
encoder's float16 variant (`.fp16.onnx`, for CUDA) is optional: it is published only when it passes its
parity on generated inputs and end to end on the run's real data (export.parity.encoder_end_to_end:
vector error and top-k agreement of the portfolios); otherwise it is dropped with a warning, the manifest's
"fp16_parity" says why, and the fp32 package is published all the same.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from tqdm.auto import tqdm

from export.onnx_export import (
    OPSET,
    ExportError,
    check_graph,
    convert_fp16,
    export_encoder,
    export_fusion,
    graph_signature,
    optimize_for_cpu,
)
from export.parity import (
    FP16_CRITERIA,
    FP16_MEASURED_ON,
    TOLERANCES,
    Fp16Criteria,
    ParityResult,
    encoder_cases,
    encoder_end_to_end,
    fusion_cases,
    package_parity,
    variant_session,
)
from neuralfusion.artifacts import git_commit
from neuralfusion.dataset import load_data_dir
from neuralfusion.embeddings import read_embeddings
from neuralfusion.manifest import FORMAT, GRAPHS, MANIFEST_FILE, check_version, write_manifest
from neuralfusion.signing import load_private_key, sign_manifest
from neuralfusion.staging import staged_folder
from training.encoder import NfcEncoder
from training.model import CgaModel
from training.runs import Run, load_run, promotion

__all__ = [
    "EncoderSettings",
    "FingerprintMismatchError",
    "UnpromotedRunError",
    "build_package",
    "default_version",
    "encoder_settings",
    "graph_files",
    "load_run_encoder",
]

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


class FingerprintMismatchError(ValueError):
    """The encoder to export is not the one that made the run's embeddings."""


class UnpromotedRunError(ValueError):
    """The run lost to its incumbent in `nfc finetune`; exported only when asked explicitly."""


@dataclass(frozen=True)
class EncoderSettings:
    """Which encoder made a run's embeddings, and how it was loaded (all part of its fingerprint)."""

    path: str
    attention_type: str = "original_full"
    pooling: str = "mean"
    max_length: int = 2048


def encoder_settings(run: Run, encoder_path: str | None = None) -> EncoderSettings:
    """Settings from the run's embeddings file (written by `nfc embed`); `encoder_path` overrides its path."""
    try:
        embeddings = run.resolve(run.encoder.get("embeddings"), "embeddings file")
    except FileNotFoundError:
        embeddings = None  # then --encoder must say which encoder made them
    meta: dict[str, str] = read_embeddings(embeddings)[2] if embeddings is not None else {}
    path = encoder_path or meta.get("nfc.encoder")
    if not path:
        raise FileNotFoundError(f"run {run.path} does not say which encoder made its embeddings "
                                f"({run.encoder.get('embeddings')} is missing or names none); pass --encoder PATH")
    local = Path(path).expanduser()
    return EncoderSettings(path=str(local.resolve()) if local.exists() else str(path),  # a folder, or a hub id
                           attention_type=meta.get("nfc.attention_type", "original_full"),
                           pooling=meta.get("nfc.pooling", "mean"), max_length=int(meta.get("nfc.max_length", 2048)))


def load_run_encoder(run: Run, settings: EncoderSettings) -> NfcEncoder:
    """The encoder on CPU in float32, refused unless its fingerprint equals the one the run's embeddings record."""
    encoder = NfcEncoder.load(settings.path, attention_type=settings.attention_type, max_length=settings.max_length,
                              pooling=settings.pooling, device="cpu", dtype="float32")
    expected = run.encoder.get("fingerprint")
    if encoder.fingerprint != expected:
        raise FingerprintMismatchError(
            f"encoder {settings.path} ({settings.attention_type}, {settings.pooling} pooling, max_length "
            f"{settings.max_length}, float32) has fingerprint {encoder.fingerprint[:12]}, but run {run.path} was "
            f"trained on embeddings made by {str(expected)[:12]}; export the encoder that made them "
            "(--encoder PATH), or re-embed the news and retrain")
    if encoder.dim != run.model_config.embed_dim:
        raise FingerprintMismatchError(f"encoder {settings.path} makes {encoder.dim}-d vectors, the model reads "
                                       f"{run.model_config.embed_dim}-d ones")
    return encoder


def default_version(run: Run) -> str:
    """UTC time of the export and the first 8 hex digits of the weights' sha256, e.g. 20261127-044612-3fa2b1c0."""
    digest = hashlib.sha256(run.weights_path.read_bytes()).hexdigest()[:8]
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{digest}"


def graph_files(graph: str) -> dict[str, str]:
    """File names of the variants a package may hold for `graph`; only the encoder has an fp16 one. The manifest's
    "variants" lists those actually published."""
    files = {"fp32": f"{graph}.onnx", "cpu": f"{graph}.cpu.onnx"}
    return {**files, "fp16": f"{graph}.fp16.onnx"} if graph == "encoder" else files


def _write_graphs(encoder: NfcEncoder, model: CgaModel, root: Path, external_data: bool | None,
                  steps: tqdm) -> str | None:
    """Export both graphs into `root`, check them, and derive the CPU-optimised variants and the encoder's fp16
    one. Returns why the fp16 encoder could not be made, or None."""
    fp16_error = None
    for graph, export in (("encoder", lambda p: export_encoder(encoder, p, external_data)),
                          ("fusion", lambda p: export_fusion(model, p, external_data))):
        files = graph_files(graph)
        steps.set_postfix_str(files["fp32"])
        source = export(root / files["fp32"])
        check_graph(source)
        optimize_for_cpu(source, root / files["cpu"])
        if "fp16" in files:
            try:
                check_graph(convert_fp16(source, root / files["fp16"]))
            except Exception as err:  # the converter and the checker raise several types; the variant is optional
                fp16_error = f"conversion failed: {type(err).__name__}: {err}"[:300]
                _drop_file(root, files["fp16"])
        steps.update(1)
    return fp16_error


def _fp16_encoder(run: Run, encoder: NfcEncoder, root: Path, generated: list[ParityResult],
                  criteria: Fp16Criteria, data_dir: Path | None) -> dict[str, Any]:
    """The fp16 encoder's verdict, the manifest's "fp16_parity" entry: its parity on generated inputs and end to
    end on the real windows of the run's data; `published` only when every part passed."""
    files = graph_files("encoder")
    failures = [f"{r.check} ({r.case}): max abs {r.max_abs:.3g} > {r.bound:.3g}" for r in generated if not r.passed]
    entry: dict[str, Any] = {"measured_on": FP16_MEASURED_ON, "criteria": criteria.to_dict(),
                             "checks": [r.to_dict() for r in generated]}
    data_dir = data_dir or (Path(run.meta["data_dir"]) if run.meta.get("data_dir") else None)
    try:
        if data_dir is None:
            raise FileNotFoundError(f"run {run.path} names no data folder")
        data = load_data_dir(data_dir, universe=run.universe)
        measured = encoder_end_to_end(
            encoder, variant_session(root / files["fp32"], "fp32"), variant_session(root / files["fp16"], "fp16"),
            variant_session(root / graph_files("fusion")["fp32"], "fp32"), data, run.normaliser, run.window,
            int(run.meta["warmup_bars"]), criteria)
        entry["end_to_end"] = {"data": str(data_dir), **measured.to_dict()}
        failures += measured.failures(criteria)
    except (OSError, ValueError) as err:  # no data folder, or data the model cannot read (DataError)
        failures.append(f"not measured end to end: {err}")
    return {**entry, "published": not failures, "reason": "; ".join(failures) or "passed"}


def _drop_file(root: Path, name: str) -> None:
    """Remove a graph and its external-data file from the staged package."""
    for path in (root / name, root / f"{name}.data"):
        path.unlink(missing_ok=True)


def _manifest(run: Run, encoder: NfcEncoder, settings: EncoderSettings, root: Path, version: str,
              parity: list[ParityResult], fp16_parity: dict[str, Any], out: Path,
              promotion_record: dict[str, Any]) -> dict[str, Any]:
    bar_spec = run.bar_spec
    tokenizer = encoder.tokenizer
    return {
        "format": FORMAT,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "source": {"run": str(run.path.resolve()), "run_git_commit": run.meta.get("git_commit"),
                   "encoder": settings.path, "embeddings": run.encoder.get("embeddings"),
                   # for `nfc validate` when package and run moved together: the run relative to the package
                   "run_from_package": os.path.relpath(run.path.resolve(), out.resolve())},
        "promotion": promotion_record,
        "universe": run.universe.to_dict(),
        "bar_spec": {"interval": bar_spec.interval, "calendar": bar_spec.calendar,
                     "max_missing_fraction": bar_spec.max_missing_fraction},
        "window": {"lookback": run.window.lookback, "horizon": run.window.horizon},
        "portfolio": {"top_k": run.portfolio.top_k, "cost_bps": run.portfolio.cost_bps},
        "features": {"names": list(run.meta["feature_names"]), "warmup_bars": int(run.meta["warmup_bars"]),
                     "normaliser": run.normaliser.to_dict()},
        "model": run.model_config.to_dict(),
        "encoder": {"max_length": encoder.max_length, "pooling": encoder.pooling,
                    "attention_type": encoder.attention_type, "fingerprint": encoder.fingerprint, "dim": encoder.dim,
                    # when the text it was trained on was published (neuralfusion/encoder_text.py): None if unknown
                    "text": run.encoder.get("text"), "family": encoder.family,
                    "pad_token_id": tokenizer.pad_token_id, "tokenizer": f"{TOKENIZER_DIR}/tokenizer.json",
                    # what serving's tokenizer must reproduce: special tokens added, then cut to max_length
                    "truncation": "ids incl. [CLS]/[SEP] cut to max_length; batches right-padded with pad_token_id"},
        "onnx": {"opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
                 "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "graphs": {graph: {**graph_signature(root / graph_files(graph)["fp32"]),
                           "variants": {v: name for v, name in graph_files(graph).items() if (root / name).is_file()}}
                   for graph in GRAPHS},
        "runtime": {"device": "decided before any graph opens: CUDA only when a CUDA session on a one-node graph "
                              "runs on CUDA, else the CPU provider alone",
                    "cpu": "the 'cpu' variants (fp32) with CPUExecutionProvider at ORT_ENABLE_ALL; the 'fp32' ones "
                           "when another onnxruntime version wrote them",
                    "gpu": "the encoder's 'fp16' variant (when listed) at ORT_ENABLE_EXTENDED and the fusion's "
                           "'fp32' variant, with CUDAExecutionProvider then CPUExecutionProvider",
                    "fusion": "always float32: float16 logits flip top-k selections",
                    "fp16_on_cpu": "never: ORT's CPU layout optimisations (ORT_ENABLE_ALL) crashed on a float16 graph"},
        "tolerances": {name: asdict(tolerance) for name, tolerance in TOLERANCES.items()},
        "parity": [result.to_dict() for result in parity],
        "fp16_parity": fp16_parity,
        "metrics": run.metrics,
    }


def build_package(run_dir: Path, out: Path, encoder_path: str | None = None, version: str | None = None,
                  external_data: bool | None = None, force: bool = False, progress: bool = False,
                  allow_unpromoted: bool = False, sign_key: Path | None = None,
                  fp16_criteria: Fp16Criteria = FP16_CRITERIA, data_dir: Path | None = None) -> Path:
    """Export run `run_dir` into the package folder `out` (module docstring); returns `out`.

    external_data: True stores every graph's weights in a `.data` file beside it, None only when a
    graph is too large for one protobuf file (2 GB). progress: a bar over the stages on stderr.
    allow_unpromoted: export a run that `nfc finetune` did not promote (its manifest says so, and the model
    store labels it promoted=false, so `neuralfusion:latest` never resolves to it). sign_key: an Ed25519
    private key PEM; the manifest is signed into manifest.sig before the package is published.
    fp16_criteria: when the fp16 encoder is published; data_dir: its real data (default: the run's data folder).
    """
    run = load_run(run_dir)
    decision = promotion(run)
    if not decision["promoted"] and not allow_unpromoted:
        raise UnpromotedRunError(f"run {run.path} was not promoted by `nfc finetune`: it {decision['reason']}; "
                                 "export it anyway with --force (it is then labelled promoted=false and never "
                                 "becomes neuralfusion:latest)")
    private_key = load_private_key(sign_key) if sign_key is not None else None  # a bad key fails before the work
    settings = encoder_settings(run, encoder_path)
    encoder = load_run_encoder(run, settings)
    model = CgaModel.from_checkpoint(run.weights_path)
    version = check_version(version or default_version(run))
    with staged_folder(out, force, required=(MANIFEST_FILE,)) as partial, \
            tqdm(total=3, desc="export", unit="step", disable=not progress) as steps:
        fp16_error = _write_graphs(encoder, model, partial, external_data, steps)
        encoder.tokenizer.save_pretrained(partial / TOKENIZER_DIR)
        graphs = {graph: {variant: partial / name for variant, name in graph_files(graph).items()
                          if (partial / name).is_file()} for graph in GRAPHS}
        steps.set_postfix_str("parity")
        parity = package_parity(encoder, model, graphs, encoder_cases(encoder), fusion_cases(model.config))
        fp16_file = graph_files("encoder")["fp16"]
        published = [r for r in parity if r.graph != fp16_file]
        failed = [r for r in published if not r.passed]
        if failed:
            rows = "; ".join(f"{r.graph} {r.check} ({r.case}): max abs {r.max_abs:.3g} > {r.bound:.3g}"
                             for r in failed[:5])
            raise ExportError(f"{len(failed)} parity checks failed, nothing published: {rows}")
        generated = [r for r in parity if r.graph == fp16_file]
        fp16 = ({"published": False, "reason": fp16_error} if fp16_error else
                _fp16_encoder(run, encoder, partial, generated, fp16_criteria, data_dir))
        if fp16["published"]:
            published += generated
        else:
            _drop_file(partial, fp16_file)
            logger.warning("%s is not published (the fp32 package is): %s", fp16_file, fp16["reason"])
        fp16_parity = {"encoder": fp16, "fusion": {"published": False, "reason": "the fusion graph always runs in "
                                                   "float32: float16 logits flip top-k selections"}}
        write_manifest(partial, _manifest(run, encoder, settings, partial, version, published, fp16_parity, out,
                                          {"promoted": decision["promoted"], "reason": decision["reason"],
                                           "forced": not decision["promoted"]}))
        if private_key is not None:
            logger.info("signed the manifest with key %s", sign_manifest(partial, private_key))
        steps.update(1)
    logger.info("wrote package %s (version %s)", out, version)
    return out
