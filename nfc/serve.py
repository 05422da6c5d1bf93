"""`nfc serve`: the BentoML services (HTTP + gRPC) for one model package, and MongoDB when none is given.

    nfc serve                                        # neuralfusion:latest from the BentoML model store
    nfc serve --model-path runs/demo/package --port 3000 --grpc-port 50051
    NFC_MONGO_URI=mongodb://db:27017/ NFC_API_KEY=... nfc serve --model neuralfusion:20261127-044612-3fa2b1c0

It runs `bentoml serve serving.service:PortfolioService` as a child process with the settings of
`serving.settings` in its environment. Without NFC_MONGO_URI it first starts the embedded MongoDB wire
server (nx-27017) on loopback with its data in --mongo-data, and stops it when the server exits, on
Ctrl-C and on SIGTERM. The MongoDB URI and the API key are read from the environment only, never from
arguments, which other users can see in the process list; a URI pymongo cannot parse is refused before
any worker starts, and every log line of `nfc` and of the workers hides its password (neuralfusion/redact.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

import click

from neuralfusion.cli_common import cli_errors, log_level_option
from neuralfusion.redact import encode_userinfo, redact_uri, scrub, uri_secrets
from nfc.embedded_mongo import EmbeddedMongo
from nfc.processes import stop_process
from serving.settings import DEFAULT_MODEL_TAG

__all__ = ["check_mongo_uri", "serve"]

log = logging.getLogger(__name__)

# the folder holding the `serving` package: bentoml serve imports serving.service from there
SOURCE_ROOT = Path(__file__).resolve().parents[1]
_STOP_TIMEOUT_S = 30


def _serve_command(host: str, port: int) -> list[str]:
    """The `bentoml serve` command line for the portfolio service (its settings travel in the environment)."""
    return [sys.executable, "-m", "bentoml", "serve", "serving.service:PortfolioService", "--host", host,
            "--port", str(port), "--working-dir", str(SOURCE_ROOT)]


def _check_store_model(tag: str) -> None:
    """Fail early, with the way out, when the model store lacks `tag` (bentoml would fail less clearly)."""
    import bentoml
    from bentoml.exceptions import NotFound

    from serving.model_store import resolve_model_tag

    try:  # a PackageError (no promoted entry for name:latest) is a failure of its own
        bentoml.models.get(resolve_model_tag(tag))  # name:latest -> the newest entry labelled promoted
    except NotFound:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise FileNotFoundError(f"the BentoML model store ({home}) has no {tag}: export a model with "
                                "`nfc export`, or serve a package folder with --model-path") from None


def check_mongo_uri(uri: str) -> None:
    """Refuse a MongoDB URI that pymongo cannot parse before any worker starts: a worker would fail on it at
    every start, and BentoML would restart it in a loop. The message shows the URI redacted."""
    from pymongo.errors import PyMongoError
    from pymongo.uri_parser import parse_uri

    try:
        parse_uri(encode_userinfo(uri))
    except (PyMongoError, ValueError) as err:  # InvalidURI, ConfigurationError, bad ports and options
        raise ValueError(f"NFC_MONGO_URI={redact_uri(uri)} is not a MongoDB URI pymongo accepts: "
                         f"{scrub(err, uri_secrets(uri))}") from None


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup below, like Ctrl-C does


@click.command("serve")
@click.option("--model", default=None, help=f"Model-store tag. Default: $NFC_MODEL or {DEFAULT_MODEL_TAG}.")
@click.option("--model-path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Serve this package folder instead of a model-store entry.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address of the HTTP and gRPC servers.")  # noqa: S104
@click.option("--port", default=3000, show_default=True, help="HTTP port.")
@click.option("--grpc-port", default=50051, show_default=True, help="gRPC port; 0 serves HTTP only.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Portfolio worker processes. Default: $NFC_WORKERS or 1.")
@click.option("--mongo-data", type=click.Path(file_okay=False, path_type=Path), default=Path("nfc-data/mongo"),
              show_default=True, help="Data folder of the embedded MongoDB (only without NFC_MONGO_URI).")
@click.option("--mongo-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the embedded MongoDB. Default: a free one.")
@log_level_option
@cli_errors
def serve(model: str | None, model_path: Path | None, host: str, port: int, grpc_port: int, workers: int | None,
          mongo_data: Path, mongo_port: int | None) -> None:
    """Serve predictions over HTTP and gRPC, storing them in MongoDB.

    \b
    nfc serve --model-path runs/demo/package
    NFC_MONGO_URI=mongodb://db:27017/ nfc serve --model neuralfusion:VERSION --grpc-port 0
    """
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    if env.get("NFC_MONGO_URI"):
        check_mongo_uri(env["NFC_MONGO_URI"])
    if model_path is not None:
        env["NFC_MODEL_PATH"] = str(model_path.resolve())
    else:
        env.pop("NFC_MODEL_PATH", None)
        env["NFC_MODEL"] = model or env.get("NFC_MODEL") or DEFAULT_MODEL_TAG
        _check_store_model(env["NFC_MODEL"])
    if grpc_port:
        env.update(NFC_GRPC_PORT=str(grpc_port), NFC_GRPC_HOST=host)
    else:
        env.pop("NFC_GRPC_PORT", None)
    if workers is not None:
        env["NFC_WORKERS"] = str(workers)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with ExitStack() as stack:
            if not env.get("NFC_MONGO_URI"):
                mongo = stack.enter_context(EmbeddedMongo(mongo_data, port=mongo_port))
                env["NFC_MONGO_URI"] = mongo.uri
                click.echo(f"embedded MongoDB at {mongo.uri} (data in {mongo_data}); set NFC_MONGO_URI to use another")
            process = subprocess.Popen(_serve_command(host, port), env=env)  # noqa: S603 - our own command line
            stack.callback(stop_process, process, _STOP_TIMEOUT_S)
            click.echo(f"serving on http://{host}:{port}" + (f" and gRPC {host}:{grpc_port}" if grpc_port else ""))
            code = process.wait()
    except KeyboardInterrupt:
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code:
        raise SystemExit(code)
