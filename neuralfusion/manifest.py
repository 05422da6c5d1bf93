"""The model package manifest: write it, read it back and verify every file's sha256, without torch.

Serving imports this module (stdlib + numpy + neuralfusion only), so it must never import torch,
onnx or `training`. A package folder looks like this:

    PKG/
      encoder.onnx  encoder.cpu.onnx  [encoder.fp16.onnx]   text -> pooled article vector (fp16: CUDA, optional)
      fusion.onnx   fusion.cpu.onnx                         windows -> logits, top-k weights (always float32)
      *.onnx.data                                           external weights, when a graph has them
      tokenizer/                                            tokenizer.json (+ HF config files)
      manifest.json                                         everything else serving needs (schema below)
      manifest.sha256                                       sha256 of manifest.json
      manifest.sig                                          Ed25519 signature of manifest.json (signed exports)

`manifest.json` lists the sha256 of every other file; `manifest.sha256` holds the manifest's own
digest, so editing the manifest (e.g. its normalisation stats) is caught like editing a graph.
That is integrity against accidents and careless edits; against a deliberate swap (graph, hash and
digest all rewritten) a package is signed (`nfc export --sign-key`, neuralfusion/signing.py) and
loaded with `public_key` (serving: NFC_PACKAGE_PUBLIC_KEY). Every path the manifest names (graph
variants, tokenizer) must be one of its hashed `files`, inside the package. Files that the manifest
does not list are ignored: BentoML keeps its own `model.yaml` beside them in the model store, and no
listed file refers to an unlisted one (ONNX external data locations live inside the hashed graphs).

Manifest keys (format `nfc-package/1`):
  format, version, created (UTC ISO), git_commit
  source      {run, run_from_package, encoder, embeddings}: where the package was exported from (`nfc validate`)
  promotion   {promoted, reason, forced}: whether the run may become the served model (absent: exported before
              promotion was recorded, treated as not promoted by the model store's `latest`)
  universe    Universe.to_dict(): symbols in model order, aliases
  bar_spec    {interval, calendar, max_missing_fraction}
  window      {lookback (L), horizon (H)}
  portfolio   {top_k, cost_bps}
  features    {names, warmup_bars, normaliser: FeatureNormalizer.to_dict()}
  model       CgaConfig.to_dict(), incl. the TimesNet `periods`
  encoder     {max_length, pooling, attention_type, fingerprint, dim, pad_token_id, tokenizer, family, text}
              (text: the publication range of the encoder's training text, neuralfusion/encoder_text.py)
  onnx        {opset, exporter, torch, onnx, onnxruntime}
  graphs      {encoder|fusion: {inputs, outputs, variants: {fp32|cpu[|fp16]: file}}}: the published files (fp16:
              the encoder's, only when its parity held); inputs/outputs are
              [{name, dtype, shape}] with symbolic dims as strings ("batch", "sequence")
  runtime     which variant to load with which ONNX Runtime provider and optimisation level
  files       {relative path: sha256}
  tolerances  {fp32|fp16: {atol, rtol}}: max abs error <= atol + rtol * max |reference|
  parity      [{check, graph, case, max_abs, max_rel, bound, passed, detail}] of every published graph, at export
  fp16_parity {encoder: {published, reason, measured_on, criteria, checks, end_to_end: {data, articles, max_abs,
              bound, min_cosine, windows, same_book, agreement, max_weight_diff}}, fusion: {published: false,
              reason}}: the fp16 encoder's verdict; a variant that failed is not published and `reason` says why
  metrics     the run's metrics.json (training history, best validation Sharpe)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuralfusion.features import FeatureNormalizer
from neuralfusion.signing import SIGNATURE_FILE, SignatureError, load_public_key, verify_manifest_signature
from neuralfusion.specs import BarSpec, PortfolioSpec, Universe, WindowSpec

__all__ = [
    "FORMAT",
    "GRAPHS",
    "MANIFEST_DIGEST_FILE",
    "MANIFEST_FILE",
    "REQUIRED_FIELDS",
    "VARIANTS",
    "PackageError",
    "PackageManifest",
    "check_version",
    "inside_package",
    "load_manifest",
    "manifest_paths",
    "package_files",
    "sha256_file",
    "write_manifest",
]

FORMAT = "nfc-package/1"
MANIFEST_FILE = "manifest.json"
MANIFEST_DIGEST_FILE = "manifest.sha256"
GRAPHS = ("encoder", "fusion")
# fp32: the exported graph; cpu: ORT-optimised offline (extended level) for the CPU provider; fp16: the encoder's
# float16 graph for CUDA (the fusion graph is always float32)
VARIANTS = ("fp32", "cpu", "fp16")
REQUIRED_FIELDS = ("format", "version", "created", "git_commit", "source", "universe", "bar_spec", "window",
                   "portfolio", "features", "model", "encoder", "onnx", "graphs", "runtime", "files", "tolerances",
                   "parity", "metrics")
# a BentoML model-store version: lower-case letters, digits, '.', '_', '-'; starts and ends alphanumeric
_VERSION = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
_CHUNK = 1 << 20


class PackageError(ValueError):
    """A model package is incomplete, altered or malformed; the message names the file or field."""


def check_version(version: str) -> str:
    """Return `version` if it can tag a BentoML model (and name a package), else raise naming the rule."""
    if not _VERSION.match(version):
        raise PackageError(f"version {version!r} must be 1-63 characters of a-z, 0-9, '.', '_', '-', "
                           "starting and ending with a letter or digit")
    return version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def package_files(pkg_dir: Path) -> Iterator[str]:
    """Relative POSIX paths of every file under `pkg_dir` except the manifest, its digest and signature, sorted."""
    skip = {MANIFEST_FILE, MANIFEST_DIGEST_FILE, SIGNATURE_FILE}
    for path in sorted(p for p in pkg_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(pkg_dir).as_posix()
        if relative not in skip:
            yield relative


def write_manifest(pkg_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file of `pkg_dir` into manifest["files"], write manifest.json and its digest; return it."""
    manifest = {**manifest, "files": {name: sha256_file(pkg_dir / name) for name in package_files(pkg_dir)}}
    missing = [key for key in REQUIRED_FIELDS if key not in manifest]
    if missing:
        raise PackageError(f"manifest lacks required fields {missing}")
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    (pkg_dir / MANIFEST_FILE).write_text(text)
    (pkg_dir / MANIFEST_DIGEST_FILE).write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST_FILE}\n")
    return manifest


@dataclass(frozen=True)
class PackageManifest:
    """A package's manifest (`data`, the JSON above) and the folder it describes."""

    root: Path
    data: dict[str, Any]

    @property
    def version(self) -> str:
        return self.data["version"]

    def graph_path(self, graph: str, variant: str = "fp32") -> Path:
        """File of `graph` ("encoder" or "fusion") in `variant` ("fp32", "cpu", "fp16")."""
        variants = self.data["graphs"][graph]["variants"]
        if variant not in variants:
            raise PackageError(f"package {self.root} has no {variant!r} variant of {graph!r} (has {sorted(variants)})")
        return inside_package(self.root, variants[variant])

    @property
    def universe(self) -> Universe:
        return Universe.from_dict(self.data["universe"])

    @property
    def bar_spec(self) -> BarSpec:
        return BarSpec(**self.data["bar_spec"])

    @property
    def window(self) -> WindowSpec:
        return WindowSpec(lookback=self.data["window"]["lookback"], horizon=self.data["window"]["horizon"])

    @property
    def portfolio(self) -> PortfolioSpec:
        return PortfolioSpec(**self.data["portfolio"])

    @property
    def normaliser(self) -> FeatureNormalizer:
        return FeatureNormalizer.from_dict(self.data["features"]["normaliser"])


def inside_package(root: Path, name: str) -> Path:
    """`root / name`, refused unless it is a relative path that stays inside `root` (links resolved)."""
    path = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not os.path.realpath(path).startswith(
            os.path.realpath(root) + os.sep):
        raise PackageError(f"manifest names {name!r}, which is outside the package {root}")
    return path


def manifest_paths(data: dict[str, Any]) -> dict[str, str]:
    """Every file path the manifest names besides `files`, by where it is named ("graphs.fusion.cpu": path)."""
    paths = {f"graphs.{graph}.{variant}": name for graph, spec in data["graphs"].items()
             for variant, name in spec.get("variants", {}).items()}
    paths["encoder.tokenizer"] = data["encoder"]["tokenizer"]
    return paths


def load_manifest(pkg_dir: Path | str, verify: bool = True, public_key: str | None = None) -> PackageManifest:
    """Read PKG/manifest.json; with `verify`, refuse a package whose manifest or any listed file is
    missing or differs from its recorded sha256 (the error names the file), or that names a path
    (graph variant, tokenizer) which is not one of its hashed files. With `public_key` (PEM text or a
    path), first refuse a package whose manifest.sig is missing or not made by that key."""
    root = Path(pkg_dir)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise PackageError(f"{root} is not a model package: no {MANIFEST_FILE} (build one with `nfc export`)")
    raw = manifest_path.read_bytes()
    if public_key is not None:
        try:
            verify_manifest_signature(root, raw, load_public_key(public_key))
        except SignatureError as err:
            raise PackageError(str(err)) from None
    if verify:
        digest_path = root / MANIFEST_DIGEST_FILE
        if not digest_path.is_file():
            raise PackageError(f"{digest_path} is missing; the manifest cannot be verified")
        recorded = digest_path.read_text().split()[:1]
        if recorded != [hashlib.sha256(raw).hexdigest()]:
            raise PackageError(f"{manifest_path} was modified after export: its sha256 differs from "
                               f"{MANIFEST_DIGEST_FILE}; re-export the package")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise PackageError(f"{manifest_path} is not valid JSON: {err}") from None
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    if missing:
        raise PackageError(f"{manifest_path} lacks required fields {missing}")
    if data["format"] != FORMAT:
        raise PackageError(f"{manifest_path} has format {data['format']!r}; this reader knows {FORMAT!r}")
    if verify:
        _verify_files(root, data["files"])
        unlisted = {where: name for where, name in manifest_paths(data).items() if name not in data["files"]}
        if unlisted:
            raise PackageError(f"{manifest_path} names files it does not hash: {unlisted}; every path must be one of "
                               "its `files`, inside the package")
    return PackageManifest(root=root, data=data)


def _verify_files(root: Path, files: dict[str, str]) -> None:
    for name, expected in sorted(files.items()):
        path = inside_package(root, name)  # no "../" or absolute paths smuggled into a manifest
        if not path.is_file():
            raise PackageError(f"package file {name} is missing from {root}")
        actual = sha256_file(path)
        if actual != expected:
            raise PackageError(f"package file {name} was modified: sha256 {actual[:12]}… differs from the "
                               f"manifest's {expected[:12]}…; refusing to load {root}")
