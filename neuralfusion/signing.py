"""Ed25519 signatures of model packages: who exported a package, not only whether its files are intact.

What is signed: the exact bytes of `PKG/manifest.json`. The manifest lists the sha256 of every other file
(graphs, external weights, tokenizer), so the signature covers them all; `load_manifest` checks those
hashes after the signature. The signature lives beside it in `PKG/manifest.sig` (JSON):

    {"format": "nfc-signature/1", "algorithm": "Ed25519", "signed_file": "manifest.json",
     "key_id": "<first 16 hex digits of the sha256 of the raw 32-byte public key>",
     "signature": "<base64 of the 64-byte Ed25519 signature of manifest.json's bytes>"}

Keys are PEM files: the private key PKCS#8 (`nfc keygen` writes an unencrypted one with mode 0600), the
public key SubjectPublicKeyInfo. Serving takes the public key, as a path or the PEM text itself, from
NFC_PACKAGE_PUBLIC_KEY and then refuses unsigned packages and packages signed by another key.
`cryptography` is imported only here and only when a key is used (extras `export` and `serve`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "SIGNATURE_FILE",
    "SignatureError",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_manifest",
    "verify_manifest_signature",
]

SIGNATURE_FILE = "manifest.sig"
_FORMAT = "nfc-signature/1"
_MANIFEST = "manifest.json"


class SignatureError(ValueError):
    """A key cannot be read, or a package is unsigned or not signed by the expected key."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError("package signatures need `cryptography`: pip install 'neuralfusioncore[serve]' "
                             "(or [export])") from None
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """First 16 hex digits of the sha256 of the raw public key: names a key in messages and signatures."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Any:
    """The Ed25519 private key in the PEM file `path` (unencrypted PKCS#8)."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise SignatureError(f"cannot read the private key {path}: {err} (create one with `nfc keygen`)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path} is a {type(key).__name__}; packages are signed with Ed25519 keys (`nfc keygen`)")
    return key


def load_public_key(value: str) -> Any:
    """The Ed25519 public key in `value`: PEM text, or the path of a PEM file."""
    serialization, ed25519 = _crypto()
    text = value.strip()
    if not text.startswith("-----BEGIN"):
        try:
            text = Path(text).expanduser().read_text()
        except OSError as err:
            raise SignatureError(f"the public key {value!r} is neither PEM text nor a readable file: "
                                 f"{err.strerror}") from None
    try:
        key = serialization.load_pem_public_key(text.encode())
    except ValueError as err:
        raise SignatureError(f"cannot read the public key: {err}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"the public key is a {type(key).__name__}; packages are signed with Ed25519 keys")
    return key


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private PEM with mode 0600, public PEM); returns its key id. Never overwrites."""
    serialization, ed25519 = _crypto()
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} exists; choose another path (a key is never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


def sign_manifest(pkg_dir: Path, private_key: Any) -> str:
    """Sign PKG/manifest.json's bytes into PKG/manifest.sig; returns the key id."""
    signature = private_key.sign((pkg_dir / _MANIFEST).read_bytes())
    kid = key_id(private_key.public_key())
    record = {"format": _FORMAT, "algorithm": "Ed25519", "signed_file": _MANIFEST, "key_id": kid,
              "signature": base64.b64encode(signature).decode()}
    (pkg_dir / SIGNATURE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return kid


def verify_manifest_signature(pkg_dir: Path, manifest_bytes: bytes, public_key: Any) -> str:
    """Check that `manifest_bytes` (PKG/manifest.json as read) carry a valid signature by `public_key`;
    returns the key id, or raises SignatureError saying what is wrong."""
    from cryptography.exceptions import InvalidSignature

    expected = key_id(public_key)
    path = pkg_dir / SIGNATURE_FILE
    if not path.is_file():
        raise SignatureError(f"package {pkg_dir} is not signed (no {SIGNATURE_FILE}); a public key is set "
                             f"(NFC_PACKAGE_PUBLIC_KEY, key {expected}), so only packages signed by it are loaded: "
                             "export with `nfc export --sign-key KEY`")
    try:
        record = json.loads(path.read_text())
        signature = base64.b64decode(record["signature"], validate=True)
        signed_by = str(record.get("key_id"))
    except (ValueError, KeyError, TypeError) as err:
        raise SignatureError(f"{path} is malformed ({type(err).__name__}: {err})") from None
    if record.get("format") != _FORMAT or record.get("algorithm") != "Ed25519":
        raise SignatureError(f"{path} is not an {_FORMAT} Ed25519 signature")
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        who = "another key" if signed_by != expected else "this key, but the manifest changed since"
        raise SignatureError(f"package {pkg_dir}: the signature of {_MANIFEST} does not verify with key {expected} "
                             f"(signed by {who}: {signed_by}); refusing to load it") from None
    return expected
