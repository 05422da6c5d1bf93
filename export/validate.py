"""Offline validation of a model package against the PyTorch run it came from (`nfc validate`).

Checks, in order (a failed hash check stops there: a tampered package is refused, not evaluated):
1. hashes: manifest digest and the sha256 of every listed file, every path the manifest names inside the
   package and hashed (neuralfusion.manifest.load_manifest); with a public key, the manifest's signature;
2. the ONNX checker (with shape inference) on every graph, and each graph's inputs/outputs equal the
   manifest's, batch (and sequence) axes still symbolic;
3. the references: the run (--model, else the manifest's source run, else the same run relative to the
   package) and each config the package copied from it: model, normaliser, feature names, warm-up,
   universe, bar spec, window, portfolio, encoder fingerprint; then the encoder with that fingerprint;
4. parity of every graph variant vs PyTorch on generated inputs (seeded differently from the export's):
   batch 1/7/64, the encoder's longest inputs (> 704 tokens when it takes them), market windows
   whose periods differ from the model's; batch invariance in ONNX Runtime;
5. the same on real data: articles of the data folder's news and windows of its test split; and, when the
   package has an fp16 encoder, that encoder end to end on the data's real windows (article vector error,
   and the fraction of windows whose top-k book the fp32 fusion graph picks the same as with fp32 vectors,
   against export.parity.FP16_CRITERIA); without one, a row says why the export dropped it;
6. the tokenizer file in the package, read with `tokenizers` alone (as serving reads it), gives the
   ids the encoder was fed.
The report passes only if no check failed and every check ran: a check that could not run (no data
folder, no embeddings file, a signed package without its public key) is "skipped" and fails the report
unless `allow_skip` (--allow-skip), which the report then states. A path the run recorded that cannot be
found is named with every place looked at (`Run.resolve`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from export.onnx_export import check_graph, graph_signature
from export.package import EncoderSettings, graph_files, load_run_encoder
from export.parity import (
    FP16_CRITERIA,
    EncoderBatch,
    FusionBatch,
    ParityResult,
    encoder_cases,
    encoder_end_to_end,
    fusion_cases,
    package_parity,
    variant_session,
)
from neuralfusion.data.news import article_text
from neuralfusion.dataset import MarketData, load_data_dir
from neuralfusion.inputs import INPUT_NAMES
from neuralfusion.manifest import GRAPHS, MANIFEST_FILE, PackageError, PackageManifest, load_manifest
from neuralfusion.signing import SIGNATURE_FILE, SignatureError, load_public_key, verify_manifest_signature
from training.encoder import NfcEncoder
from training.model import CgaModel
from training.runs import Run, load_run
from training.train import prepare

__all__ = ["Check", "ValidationReport", "validate_package"]

# rows per real-data case; 64 also bounds how many articles and windows are read
_BATCHES = (1, 7, 64)


@dataclass(frozen=True)
class Check:
    """One line of the report; `passed` is None when the check could not run (e.g. no data folder)."""

    check: str
    passed: bool | None
    detail: str = ""
    graph: str = ""
    case: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    bound: float | None = None

    @classmethod
    def from_parity(cls, result: ParityResult) -> Check:
        return cls(check=result.check, passed=result.passed, detail=result.detail, graph=result.graph,
                   case=result.case, max_abs=result.max_abs, max_rel=result.max_rel, bound=result.bound)


@dataclass
class ValidationReport:
    """Every check on one package; `passed` only if none failed, the parity checks ran, and none was
    skipped (unless `allow_skip`)."""

    package: str
    version: str | None = None
    checks: list[Check] = field(default_factory=list)
    allow_skip: bool = False

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.passed is None]

    @property
    def passed(self) -> bool:
        ran_parity = any(c.max_abs is not None and c.passed is not None for c in self.checks)
        return (ran_parity and all(c.passed is not False for c in self.checks)
                and (self.allow_skip or not self.skipped))

    def to_dict(self) -> dict[str, Any]:
        return {"package": self.package, "version": self.version, "passed": self.passed,
                "allow_skip": self.allow_skip, "skipped": [f"{c.check}: {c.detail}" for c in self.skipped],
                "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A fixed-width table, one row per check, then the verdict."""
        rows = [("check", "graph", "case", "max abs", "bound", "result")]
        for c in self.checks:
            result = {True: "ok", False: "FAIL", None: "skipped"}[c.passed]
            case = c.case or c.detail
            rows.append((c.check, c.graph, case[:48], "" if c.max_abs is None else f"{c.max_abs:.2e}",
                         "" if c.bound is None else f"{c.bound:.1e}", result))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        failed = [c for c in self.checks if c.passed is False]
        skipped = self.skipped
        if self.passed:
            verdict = "PASSED" + (f" with {len(skipped)} checks skipped (--allow-skip)" if skipped else "")
        elif failed:
            verdict = f"FAILED: {len(failed)} of {len(self.checks)} checks failed"
        else:
            verdict = f"FAILED: {len(skipped)} checks could not run (pass what they need, or --allow-skip)"
        notes = [f"FAIL {c.check} {c.graph} {c.case}: {c.detail}" for c in failed if c.detail]
        notes += [f"SKIPPED {c.check} {c.graph}: {c.detail}" for c in skipped]
        return "\n".join([f"package {self.package} (version {self.version})", *lines, *notes, verdict])


def _graph_paths(manifest: PackageManifest) -> dict[str, dict[str, Path]]:
    """The graph files the manifest lists, per graph and variant."""
    listed = {graph: manifest.data["graphs"][graph]["variants"] for graph in GRAPHS}
    return {graph: {variant: manifest.graph_path(graph, variant) for variant in variants}
            for graph, variants in listed.items()}


def _fp16_checks(manifest: PackageManifest, encoder: NfcEncoder, graphs: dict[str, dict[str, Path]],
                 data: MarketData) -> list[Check]:
    """The fp16 encoder end to end on the real windows of `data` (export.parity.encoder_end_to_end)."""
    if "fp16" not in graphs["encoder"]:  # a valid package: the export dropped it, and serving runs the fp32 encoder
        verdict = manifest.data.get("fp16_parity", {}).get("encoder", {})
        consistent = not verdict.get("published", False)
        detail = (f"not published by the export: {verdict.get('reason', 'the manifest does not say why')}"
                  if consistent else "the manifest says it was published, but it lists no fp16 encoder")
        return [Check("fp16 encoder", consistent, detail, graph=graph_files("encoder")["fp16"])]
    path = graphs["encoder"]["fp16"]
    measured = encoder_end_to_end(encoder, variant_session(graphs["encoder"]["fp32"], "fp32"),
                                  variant_session(path, "fp16"), variant_session(graphs["fusion"]["fp32"], "fp32"),
                                  data, manifest.normaliser, manifest.window,
                                  int(manifest.data["features"]["warmup_bars"]), FP16_CRITERIA)
    agreed = measured.news_windows > 0 and measured.agreement >= FP16_CRITERIA.min_agreement
    vectors_ok = measured.articles > 0 and measured.max_abs <= measured.bound and \
        measured.min_cosine >= FP16_CRITERIA.min_cosine
    return [Check("fp16 article vectors", vectors_ok, f"min cosine {measured.min_cosine:.6f} (>= "
                  f"{FP16_CRITERIA.min_cosine}) vs the fp32 encoder graph", graph=path.name,
                  case=f"{measured.articles} real articles", max_abs=measured.max_abs, bound=measured.bound),
            Check("fp16 top-k agreement", agreed,
                  f"{measured.same_book}/{measured.news_windows} real windows with news ({measured.windows} checked) "
                  f"pick the same top-k book with fp16 vectors (>= {FP16_CRITERIA.min_agreement} needed); max weight "
                  f"difference {measured.max_weight_diff:.3g}",
                  graph=path.name, case=f"agreement {measured.agreement:.4f} on {measured.news_windows} windows")]


def _structure_checks(manifest: PackageManifest) -> Iterator[Check]:
    """ONNX checker and signature (names, dtypes, shapes, symbolic axes) of every graph variant."""
    for graph, variants in _graph_paths(manifest).items():
        declared = {key: manifest.data["graphs"][graph][key] for key in ("inputs", "outputs")}
        for path in variants.values():
            try:
                check_graph(path)
                yield Check("onnx checker", True, graph=path.name)
            except Exception as err:  # the checker raises several types; any is a failed check
                yield Check("onnx checker", False, f"{type(err).__name__}: {err}"[:300], graph=path.name)
            actual = graph_signature(path)
            batch_symbolic = all(isinstance(v["shape"][0], str) for v in actual["inputs"] + actual["outputs"])
            same = actual == declared
            detail = "" if same and batch_symbolic else f"graph has {actual}, manifest declares {declared}"
            yield Check("signature", same and batch_symbolic, detail, graph=path.name)


def _real_encoder_inputs(encoder: NfcEncoder, texts: list[str]) -> list[tuple[str, EncoderBatch]]:
    ids, _ = encoder.tokenize(texts)
    cases = []
    for size in _BATCHES:
        if size <= len(ids):
            input_ids, mask = encoder.pad_batch(ids[:size])
            cases.append((f"real articles batch {size}", (input_ids.cpu().numpy(), mask.cpu().numpy())))
    return cases


def _real_fusion_inputs(manifest: PackageManifest, data: MarketData, embeddings: Path) -> list[tuple[str, FusionBatch]]:
    """Windows of the data's test split (never trained on), evenly spaced, normalised with the package's stats."""
    prepared = prepare(data, embeddings, manifest.window, normaliser=manifest.normaliser)
    anchors = prepared.splits.test
    chosen = anchors[np.linspace(0, len(anchors) - 1, min(len(anchors), max(_BATCHES))).astype(int)]
    windows = prepared.grid.windows(chosen, manifest.window.lookback)
    return [(f"real windows batch {size}", {name: windows[name][:size].astype(np.float32) for name in INPUT_NAMES})
            for size in _BATCHES if size <= len(chosen)]


def _tokenizer_check(manifest: PackageManifest, encoder: NfcEncoder, texts: list[str]) -> Check:
    """The package's tokenizer.json through `tokenizers` alone, truncated as the manifest says, vs the encoder."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(manifest.root / manifest.data["encoder"]["tokenizer"]))
    tokenizer.enable_truncation(manifest.data["encoder"]["max_length"])
    words = " ".join(texts).split()
    long_text = " ".join(words * (2 * manifest.data["encoder"]["max_length"] // len(words) + 1))
    texts = [*texts, long_text]  # far over max_length tokens: truncation must agree too
    got = [e.ids for e in tokenizer.encode_batch(texts)]
    expected, _ = encoder.tokenize(texts)
    differ = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    detail = f"{len(texts)} texts" if not differ else f"{len(differ)} of {len(texts)} texts tokenize differently"
    return Check("tokenizer", not differ, detail, graph=manifest.data["encoder"]["tokenizer"])


def _source_run(manifest: PackageManifest, run_dir: Path | None) -> Path:
    """The run to compare with: `run_dir`, else the manifest's source run, else the one at the same place
    relative to the package (both moved together); FileNotFoundError names every place looked at."""
    if run_dir is not None:
        return run_dir
    source = manifest.data["source"]
    places = [Path(source["run"])]
    if source.get("run_from_package"):
        places.append(Path(os.path.normpath(manifest.root / source["run_from_package"])))
    for place in places:
        if (place / "run.json").is_file():
            return place
    raise FileNotFoundError(f"the run this package was exported from is missing: looked at "
                            f"{', '.join(str(p) for p in places)}; pass --model RUN")


def _json(value: Any) -> Any:
    """`value` as JSON reads it back (tuples become lists), so package and run compare like for like."""
    return json.loads(json.dumps(value))


def _differences(package: Any, run: Any) -> str:
    if isinstance(package, dict) and isinstance(run, dict):
        keys = sorted(k for k in package.keys() | run.keys() if package.get(k) != run.get(k))
        return "; ".join(f"{k}: package {str(package.get(k))[:80]} vs run {str(run.get(k))[:80]}" for k in keys)
    return f"package {str(package)[:120]} vs run {str(run)[:120]}"


def _config_checks(manifest: PackageManifest, run: Run) -> list[Check]:
    """One check per config the package copied from the run (module docstring, step 3)."""
    data, meta = manifest.data, run.meta
    pairs = {
        "model": (data["model"], run.model_config.to_dict()),
        "normaliser": (data["features"]["normaliser"], run.normaliser.to_dict()),
        "feature names": (data["features"]["names"], meta.get("feature_names")),
        "warmup bars": (data["features"]["warmup_bars"], meta.get("warmup_bars")),
        "universe": (data["universe"], run.universe.to_dict()),
        "bar spec": (data["bar_spec"], meta.get("bar_spec")),
        "window": (data["window"], {"lookback": run.window.lookback, "horizon": run.window.horizon}),
        "portfolio": (data["portfolio"], {"top_k": run.portfolio.top_k, "cost_bps": run.portfolio.cost_bps}),
        "encoder fingerprint": (data["encoder"]["fingerprint"], run.encoder.get("fingerprint")),
    }
    checks = []
    for name, (package, ran) in pairs.items():
        package, ran = _json(package), _json(ran)
        checks.append(Check("config", package == ran, "" if package == ran else
                            f"the package's {name} differs from run {run.path}: {_differences(package, ran)}",
                            graph=name))
    return checks


def _signature_check(manifest: PackageManifest, public_key: str | None) -> Check | None:
    """The manifest's signature by `public_key`; skipped for a signed package without a key; none for an
    unsigned package without a key (nothing to check against)."""
    signed = (manifest.root / SIGNATURE_FILE).is_file()
    if public_key is None:
        return Check("manifest signature", None, f"{SIGNATURE_FILE} present but no public key given "
                     "(--public-key or NFC_PACKAGE_PUBLIC_KEY)") if signed else None
    try:
        raw = (manifest.root / MANIFEST_FILE).read_bytes()
        return Check("manifest signature", True,
                     f"signed by key {verify_manifest_signature(manifest.root, raw, load_public_key(public_key))}")
    except SignatureError as err:
        return Check("manifest signature", False, str(err))


def _encoder(manifest: PackageManifest, run: Run, encoder_path: str | None) -> NfcEncoder:
    spec = manifest.data["encoder"]
    settings = EncoderSettings(path=encoder_path or manifest.data["source"]["encoder"],
                               attention_type=spec["attention_type"], pooling=spec["pooling"],
                               max_length=spec["max_length"])
    return load_run_encoder(run, settings)


def validate_package(pkg_dir: Path, run_dir: Path | None = None, data_dir: Path | None = None,
                     encoder_path: str | None = None, embeddings: Path | None = None,
                     progress: bool = False, public_key: str | None = None,
                     allow_skip: bool = False) -> ValidationReport:
    """Run every check (module docstring) on the package at `pkg_dir`.

    run_dir, encoder_path: the PyTorch references (default: where the manifest says it was exported from).
    data_dir: real data (default: the run's data folder); embeddings: its `nfc embed` file (default: the run's).
    """
    report = ValidationReport(package=str(pkg_dir), allow_skip=allow_skip)
    with tqdm(total=5, desc="validate", disable=not progress, unit="step") as steps:
        try:
            manifest = load_manifest(pkg_dir, verify=True)
        except PackageError as err:
            report.checks.append(Check("hashes", False, str(err)))
            return report
        report.version = manifest.version
        report.checks.append(Check("hashes", True, f"{len(manifest.data['files'])} files match the manifest"))
        report.checks += _structure_checks(manifest)
        steps.update(1)
        signature = _signature_check(manifest, public_key)
        if signature is not None:
            report.checks.append(signature)
        try:
            run = load_run(_source_run(manifest, run_dir))
        except (OSError, ValueError) as err:  # missing or unreadable run
            report.checks.append(Check("references", False, str(err)))
            return report
        configs = _config_checks(manifest, run)
        report.checks += configs
        if not all(c.passed for c in configs):
            return report  # parity against a run with other settings would say nothing
        try:
            model, encoder = CgaModel.from_checkpoint(run.weights_path), _encoder(manifest, run, encoder_path)
        except (OSError, ValueError) as err:  # missing encoder, fingerprint mismatch
            report.checks.append(Check("references", False, str(err)))
            return report
        report.checks.append(Check("references", True, f"run {run.path}, encoder {encoder.source}"))
        steps.update(1)
        graphs = _graph_paths(manifest)
        generated = package_parity(encoder, model, graphs, encoder_cases(encoder, seed=1),
                                   fusion_cases(model.config, seed=1))
        report.checks += [Check.from_parity(r) for r in generated]
        steps.update(1)
        try:
            data_dir = data_dir or run.resolve(run.meta.get("data_dir"), "data folder")
            embeddings = embeddings or run.resolve(run.encoder.get("embeddings"), "embeddings file")
        except FileNotFoundError as err:
            report.checks.append(Check("real data", None, f"{err} (--data DIR, --embeddings FILE)"))
            report.checks.append(_tokenizer_check(manifest, encoder, ["Shares rally after results.", "Weak demand."]))
            return report
        try:
            data = load_data_dir(data_dir, universe=manifest.universe)
            texts = [article_text(t, b) for t, b in zip(data.news["title"], data.news["body"], strict=True)]
            texts = texts[:max(_BATCHES)]
            real = package_parity(encoder, model, graphs, _real_encoder_inputs(encoder, texts),
                                  _real_fusion_inputs(manifest, data, embeddings))
            fp16 = _fp16_checks(manifest, encoder, graphs, data)
        except (ValueError, OSError) as err:  # DataError (a ValueError): data the model cannot read
            report.checks.append(Check("real data", False, f"{data_dir}: {err}"))
            return report
        steps.update(1)
        report.checks += [Check.from_parity(r) for r in real] + fp16
        report.checks.append(_tokenizer_check(manifest, encoder, texts))
        steps.update(1)
    return report
