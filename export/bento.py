"""Register a model package in the BentoML model store as `neuralfusion:<version>`.

The package's files (manifest included) are copied into the model's folder unchanged, so serving
verifies them with `neuralfusion.manifest.load_manifest(bentoml.models.get(tag).path)` exactly as on disk;
BentoML's own `model.yaml` beside them is not listed in the manifest and is ignored there.
Each entry is labelled `promoted=true|false` from the manifest's `promotion` (a run `nfc finetune` did not
promote is false), and serving resolves `neuralfusion:latest` to the newest promoted entry, so exporting a
losing challenger (with --force) never replaces the served model. The store lives under $BENTOML_HOME
(default ~/bentoml); set BENTOML_DO_NOT_TRACK=true for no telemetry.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from neuralfusion.manifest import MANIFEST_FILE, PackageError, PackageManifest, load_manifest

__all__ = ["MODEL_NAME", "bento_labels", "bento_metadata", "import_package"]

logger = logging.getLogger(__name__)

MODEL_NAME = "neuralfusion"


def bento_labels(manifest: PackageManifest) -> dict[str, str]:
    """String labels to filter models by in the store (`bentoml models list`)."""
    data = manifest.data
    return {"project": "neuralfusioncore", "interval": data["bar_spec"]["interval"],
            "assets": str(len(data["universe"]["symbols"])), "lookback": str(data["window"]["lookback"]),
            "horizon": str(data["window"]["horizon"]), "opset": str(data["onnx"]["opset"]),
            "encoder_fingerprint": data["encoder"]["fingerprint"][:16],
            # serving's `neuralfusion:latest` is the newest entry with promoted=true (serving/model_store.py)
            "promoted": "true" if data.get("promotion", {}).get("promoted") is True else "false"}


def bento_metadata(manifest: PackageManifest) -> dict[str, Any]:
    """Parity results with their tolerances, the run's metrics, and the manifest's digest."""
    data = manifest.data
    parity = data["parity"]
    worst: dict[str, float] = {}
    for row in parity:
        key = f"{row['graph']} {row['check']}"
        worst[key] = max(worst.get(key, 0.0), row["max_abs"])
    return {
        "manifest_sha256": hashlib.sha256((manifest.root / MANIFEST_FILE).read_bytes()).hexdigest(),
        "created": data["created"],
        "git_commit": data["git_commit"] or "",
        "symbols": list(data["universe"]["symbols"]),
        "parity_passed": all(row["passed"] for row in parity),
        "parity_max_abs": worst,
        "parity": parity,
        "tolerances": data["tolerances"],
        "metrics": data["metrics"],
    }


def import_package(pkg_dir: Path) -> str:
    """Copy a verified package into the model store; returns the tag. Importing the same package again
    is a no-op; a different package under an existing version is refused."""
    import bentoml
    from bentoml.exceptions import NotFound

    manifest = load_manifest(pkg_dir, verify=True)
    tag = bentoml.Tag(MODEL_NAME, manifest.version)
    metadata = bento_metadata(manifest)
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata.get("manifest_sha256") == metadata["manifest_sha256"]:
            logger.info("%s is already in the model store", tag)
            return str(existing.tag)
        raise PackageError(f"the model store already holds another {tag}; export with a new --version")
    with bentoml.models.create(tag, labels=bento_labels(manifest), metadata=metadata) as model:
        shutil.copytree(manifest.root, model.path, dirs_exist_ok=True)
    logger.info("imported %s into the BentoML model store", model.tag)
    return str(model.tag)
