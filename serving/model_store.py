"""Which package serving loads, and how it checks it: `promoted` tag resolution and signed-manifest loading.

    resolve_model_tag("neuralfusion:latest")   -> "neuralfusion:20261127-044612-3fa2b1c0" (newest promoted)
    load_verified_manifest(folder)              -> PackageManifest, hashes (and signature, with a key) checked

`nfc export` labels every model-store entry `promoted=true|false`: false for a run that `nfc finetune`
did not promote (exported only with --force). The moving tag `<name>:latest` resolves here to the newest
entry labelled promoted=true, never to an export that lost to its incumbent, whatever was exported last;
an explicit version (`neuralfusion:VERSION`) is served as named. With NFC_PACKAGE_PUBLIC_KEY set, every
package is refused unless its manifest is signed by that key (neuralfusion/signing.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from neuralfusion.manifest import PackageError, PackageManifest, load_manifest

__all__ = ["LATEST", "PROMOTED_LABEL", "PUBLIC_KEY_ENV", "load_verified_manifest", "resolve_model_tag"]

LATEST = "latest"
PROMOTED_LABEL = "promoted"
PUBLIC_KEY_ENV = "NFC_PACKAGE_PUBLIC_KEY"


def resolve_model_tag(tag: str) -> str:
    """The model-store tag to serve for `tag`: `name` or `name:latest` -> the newest entry labelled
    promoted=true (PackageError when there is none); `name:version` -> itself."""
    import bentoml
    from bentoml.exceptions import NotFound

    name, _, version = tag.partition(":")
    if version and version != LATEST:
        return tag
    try:
        entries = bentoml.models.list(name)
    except NotFound:
        entries = []
    promoted = [model for model in entries if model.info.labels.get(PROMOTED_LABEL) == "true"]
    if not promoted:
        raise PackageError(f"the model store ({os.environ.get('BENTOML_HOME', '~/bentoml')}) has no {name} entry "
                           f"labelled {PROMOTED_LABEL}=true for {name}:{LATEST}: export a promoted run with "
                           "`nfc export`, or name a version")
    newest = max(promoted, key=lambda model: model.creation_time)
    return str(newest.tag)


def load_verified_manifest(folder: Path | str, environ: Mapping[str, str] = os.environ) -> PackageManifest:
    """The package's manifest with every hash verified and, when $NFC_PACKAGE_PUBLIC_KEY is set (PEM text or
    a path), its signature by that key: what serving loads a package through."""
    return load_manifest(folder, verify=True, public_key=environ.get(PUBLIC_KEY_ENV, "").strip() or None)
