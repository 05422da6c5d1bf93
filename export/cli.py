"""`nfc export` and `nfc validate`: a run folder to a verified model package, and its offline check.

    nfc export --model runs/demo/model --out runs/demo/package
    nfc export --model RUN --out PKG --encoder runs/demo/encoder --version 2026-11-27a --no-bentoml
    nfc validate runs/demo/package
    nfc validate PKG --model RUN --data runs/demo/data --json
    nfc keygen --out keys/nfc-signing.pem && nfc export --model RUN --out PKG --sign-key keys/nfc-signing.pem

`export` refuses an encoder whose fingerprint differs from the one that made the run's embeddings,
publishes the package only after every graph passed parity, then registers it in the BentoML model
store as neuralfusion:<version> (BENTOML_HOME) unless --no-bentoml. A run that `nfc finetune` did not
promote is refused unless --force. `validate` exits 0 only if every check holds and ran (hashes, signature
with a public key, configs vs the run, ONNX checker, parity on generated and real inputs, batch invariance,
tokenizer); --allow-skip lets checks that cannot run pass as "skipped".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from export.onnx_export import ExportError
from export.package import build_package
from export.validate import validate_package
from neuralfusion.cli_common import cli_errors, echo_json, json_option, json_result, log_level_option, needs_extra
from neuralfusion.manifest import load_manifest
from neuralfusion.signing import generate_keypair

__all__ = ["export_command", "keygen_command", "validate_command"]

logger = logging.getLogger(__name__)

_existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)


def _exported_lines(result: dict[str, Any]) -> Iterator[str]:
    worst = max(result["parity"], key=lambda r: r["max_abs"] / r["bound"])
    yield (f"wrote {result['out']}: version {result['version']}, {len(result['parity'])} parity checks passed "
           f"(closest to its bound: {worst['graph']} {worst['check']}, max abs {worst['max_abs']:.2e} "
           f"<= {worst['bound']:.1e})")
    if result["registered"] is not None:
        yield f"registered {result['registered']} in the BentoML model store"


@click.command("export")
@click.option("--model", "run_dir", required=True, type=_existing_dir, help="Run folder written by `nfc train`.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Package folder to write.")
@click.option("--encoder", "encoder_path", default=None,
              help="Encoder folder. Default: the one named in the run's embeddings file.")
@click.option("--version", default=None, help="Package version. Default: UTC time + weights hash.")
@click.option("--external-data", is_flag=True, help="Store weights in .onnx.data files (automatic above 2 GB).")
@click.option("--no-bentoml", is_flag=True, help="Do not register the package in the BentoML model store.")
@click.option("--force", is_flag=True, help="Replace an existing package folder; export a run that `nfc finetune` "
              "did not promote (labelled promoted=false: never neuralfusion:latest).")
@click.option("--sign-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Ed25519 private key PEM (`nfc keygen`): sign the manifest into manifest.sig.")
@log_level_option
@json_result(_exported_lines)
@cli_errors(also=(ExportError,))
def export_command(run_dir: Path, out: Path, encoder_path: str | None, version: str | None,
                   external_data: bool, no_bentoml: bool, force: bool, sign_key: Path | None) -> dict[str, Any]:
    """Export the encoder and the fusion model of RUN to ONNX, with parity, into the package OUT.

    \b
    nfc export --model runs/demo/model --out runs/demo/package
    nfc export --model RUN --out PKG --encoder ENCODER_DIR --version v2 --no-bentoml
    nfc export --model RUN --out PKG --sign-key keys/nfc-signing.pem
    """
    build_package(run_dir, out, encoder_path=encoder_path, version=version, external_data=external_data or None,
                  force=force, progress=True, allow_unpromoted=force, sign_key=sign_key)
    manifest = load_manifest(out)
    result = {"out": str(out), "version": manifest.version, "parity": manifest.data["parity"], "registered": None}
    if no_bentoml:
        return result
    with needs_extra("serve", "the BentoML model store (or pass --no-bentoml)"):
        from export.bento import import_package

        result["registered"] = str(import_package(out))
    return result


def _keys_lines(result: dict[str, Any]) -> Iterator[str]:
    yield (f"wrote {result['private_key']} (private, keep it secret) and {result['public_key']} (public): "
           f"key id {result['key_id']}")


@click.command("keygen")
@click.option("--out", "private_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Private key PEM to write (mode 0600); the public key goes to OUT.pub.")
@log_level_option
@json_result(_keys_lines)
@cli_errors
def keygen_command(private_path: Path) -> dict[str, Any]:
    """Create an Ed25519 key pair for signing packages: `nfc export --sign-key OUT`, NFC_PACKAGE_PUBLIC_KEY=OUT.pub.

    \b
    nfc keygen --out keys/nfc-signing.pem
    """
    public_path = private_path.with_name(private_path.name + ".pub")
    kid = generate_keypair(private_path, public_path)
    return {"private_key": str(private_path), "public_key": str(public_path), "key_id": kid}


@click.command("validate")
@click.argument("package", type=_existing_dir)
@click.option("--model", "run_dir", type=_existing_dir, default=None,
              help="Run folder to compare against. Default: the run the package was exported from.")
@click.option("--data", "data_dir", type=_existing_dir, default=None,
              help="Data folder for real articles and windows. Default: the run's data folder.")
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="`nfc embed` file for --data's news. Default: the run's embeddings file.")
@click.option("--encoder", "encoder_path", default=None, help="Encoder folder. Default: the package's source.")
@click.option("--public-key", default=None, envvar="NFC_PACKAGE_PUBLIC_KEY",
              help="Ed25519 public key (PEM file or text) the manifest must be signed by.", show_envvar=True)
@click.option("--allow-skip", is_flag=True,
              help="Pass even when a check cannot run (no real data, ...); the report lists what was skipped.")
@json_option
@log_level_option
@cli_errors(also=(ExportError,))
def validate_command(package: Path, run_dir: Path | None, data_dir: Path | None, embeddings: Path | None,
                     encoder_path: str | None, public_key: str | None, allow_skip: bool,
                     as_json: bool) -> dict[str, Any]:
    """Check PACKAGE offline: hashes, ONNX checker, parity vs PyTorch, batch invariance; exit 0 only if all hold.

    \b
    nfc validate runs/demo/package
    nfc validate PKG --model RUN --data DIR --json
    """
    report = validate_package(package, run_dir=run_dir, data_dir=data_dir, encoder_path=encoder_path,
                              embeddings=embeddings, progress=not as_json, public_key=public_key,
                              allow_skip=allow_skip)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.table())
    if not report.passed:
        raise SystemExit(1)
    return report.to_dict()
