"""`nfc demo`: the whole path on the embedded default, each stage run as the `nfc` command a user would type.

Stages and what they write under OUT:
  synth            data/ (bars.parquet, news.jsonl, oracle.json, universe.json)
  data summary     printed
  encoder init     encoder-init/  (tokenizer trained on the news, small random-init BigBird)
  encoder train    encoder/       (sentiment-tuned on the synthetic labels; --encoder-training mlm: masked
                                   language modelling on the news instead, no labels, as a user without labels)
                   both read only news published before the run's training end (the validation and test
                   periods start after it), and record that range; `nfc train` checks it

  embed            embeddings.parquet (+ embedding_cache.parquet)
  train            model/
  export           package/ (encoder.onnx, fusion.onnx, tokenizer/, manifest.json) + BentoML model store
  validate         hashes, ONNX checker, parity and batch invariance against the PyTorch run
                   (meanwhile ablations/{concat,market,news}/ train in processes of their own, one thread each,
                   output in ablations/<variant>.log; not with --no-ablations)
  backtest         report/ (metrics.json, PNG plots, report.html), the model against the ablations
  serve            `nfc serve` on loopback with the embedded MongoDB (mongo/), one HTTP and one gRPC
                   prediction, both read back from MongoDB
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from neuralfusion.cli_common import cli_errors, echo_json, json_option, log_level_option
from nfc.embedded_mongo import EmbeddedMongo, free_port
from nfc.processes import stop_process

__all__ = ["demo"]

log = logging.getLogger(__name__)

ABLATIONS = ("concat", "market", "news")
ENCODER_TRAINING = ("mlm", "sentiment")
# the pretraining the demo runs (PretrainConfig defaults otherwise)
PRETRAIN_SETS: tuple[str, ...] = ()
# the demo's trainings stop after 3 epochs without a better validation Sharpe (default 6). On the default market
# (seed 0) the model's best epoch is 7 of 10 and it trains all 10; concat and OHLCV-only peaked at epochs 2 and 3
# and stop at 5 and 6 rather than running on to at least 8 and 9: the demo's time on 2 cores, not its model
TRAIN_SETS = ("--set", "patience=3")


def run_nfc(args: list[str]) -> Any:
    """Run one `nfc` command in this process, exactly as typed on the command line; returns its result."""
    from nfc.cli import main

    log.info("$ nfc %s", " ".join(args))
    started = time.perf_counter()
    result = main.main(args=args, standalone_mode=False)
    log.info("done in %.1f s", time.perf_counter() - started)
    return result


@click.command()
@click.option("--out", "out_dir", default=Path("runs/demo"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for every stage's output.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic market and of training.")
@click.option("--ablations/--no-ablations", default=True, show_default=True,
              help="Also train the concat / OHLCV-only / news-only ablations, so the report compares the model with "
                   "each stream alone (trained beside the export and validation: about 2 minutes more on 2 cores).")
@click.option("--encoder-training", type=click.Choice(ENCODER_TRAINING), default="sentiment", show_default=True,
              help="sentiment: `nfc encoder train` on the synthetic sentiment labels; mlm: `nfc encoder pretrain` "
                   "on the news, no labels (0.74x the oracle's test Sharpe against ~1.0x, docs/MODEL.md).")
@json_option
@log_level_option
@cli_errors
def demo(out_dir: Path, seed: int, ablations: bool, encoder_training: str, as_json: bool) -> dict[str, Any]:
    """Synthetic market -> encoder -> embeddings -> model -> backtest report -> ONNX package -> validation ->
    BentoML service -> one HTTP and one gRPC prediction read back from MongoDB.

    \b
    nfc demo --out runs/demo
    nfc demo --out runs/demo --no-ablations   # without the ablation baselines (about 2 minutes less)
    nfc demo --out runs/demo --json           # every stage's result as one JSON object; stage output on stderr
    """
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        stages = run_stages(out_dir, seed, ablations, encoder_training)
    result = {"out": str(out_dir), "seconds": round(time.perf_counter() - started, 1),
              "report": str(out_dir / "report" / "report.html"), "stages": stages}
    if as_json:
        echo_json(result)
    else:
        click.echo(f"demo finished in {result['seconds']:.0f} s; report: {result['report']}")
    return result


def run_stages(out_dir: Path, seed: int, ablations: bool, encoder_training: str = "sentiment") -> dict[str, Any]:
    """Every stage as the `nfc` command a user would type; returns each command's result by stage."""
    data, embeddings = out_dir / "data", out_dir / "embeddings.parquet"
    stages: dict[str, Any] = {}
    stages["synth"] = run_nfc(["synth", "--out", str(data), "--seed", str(seed)])
    stages["data summary"] = run_nfc(["data", "summary", str(data)])
    # --data: the cut-off is the training end of this folder's split (the default window, as `nfc train` below)
    stages["encoder init"] = run_nfc(["encoder", "init", "--news", str(data / "news.jsonl"), "--data", str(data),
                                      "--out", str(out_dir / "encoder-init")])
    encoder_args = ["--news", str(data / "news.jsonl"), "--data", str(data), "--encoder", str(out_dir / "encoder-init"),
                    "--out", str(out_dir / "encoder")]
    if encoder_training == "mlm":
        from training.checkpoints import CHECKPOINTS_DIR

        # a new demo pretrains afresh: an earlier demo's resumable states would be refused without --resume
        shutil.rmtree(out_dir / "encoder" / CHECKPOINTS_DIR, ignore_errors=True)
        stages["encoder pretrain"] = run_nfc(["encoder", "pretrain", *encoder_args, *PRETRAIN_SETS])
    else:
        # one epoch reaches a held-out probe accuracy of 1.0 on the synthetic headlines (~90 s on 2 cores)
        stages["encoder train"] = run_nfc(["encoder", "train", *encoder_args, "--set", "epochs=1"])
    stages["embed"] = run_nfc(["embed", "--news", str(data / "news.jsonl"), "--encoder", str(out_dir / "encoder"),
                               "--out", str(embeddings)])
    common = ["--data", str(data), "--embeddings", str(embeddings), "--set", f"seed={seed}", *TRAIN_SETS, "--force"]
    stages["train"] = run_nfc(["train", *common, "--out", str(out_dir / "model")])
    variants = ABLATIONS if ablations else ()
    # the ablations train in processes of their own while this one exports and validates the model: small models
    # keep two cores busier side by side than one after another
    with AblationTrainings(common, out_dir / "ablations", variants) as trainings:
        stages["export"] = run_nfc(["export", "--model", str(out_dir / "model"), "--out", str(out_dir / "package"),
                                    "--force"])
        stages["validate"] = run_nfc(["validate", str(out_dir / "package"), "--model", str(out_dir / "model"),
                                      "--data", str(data), "--embeddings", str(embeddings)])
        stages.update(trainings.results())
    ablation_args = [arg for v in variants for arg in ("--ablation", str(out_dir / "ablations" / v))]
    stages["backtest"] = run_nfc(["backtest", "--model", str(out_dir / "model"), "--data", str(data),
                                  "--embeddings", str(embeddings), *ablation_args, "--out", str(out_dir / "report"),
                                  "--force"])
    stages["serve"] = serve_and_predict(out_dir, data)
    return stages


class AblationTrainings:
    """`nfc train --variant V` of each ablation as its own process (one torch thread each, output in
    ablations/V.log); `results()` waits for them and raises naming the log of any that failed. As a context
    manager, any still running when the block is left (an error in it) are stopped."""

    def __init__(self, common: list[str], folder: Path, variants: tuple[str, ...]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.runs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for variant in variants:
            command = [sys.executable, "-m", "nfc.cli", "train", *common, "--variant", variant, "--set", "threads=1",
                       "--out", str(folder / variant), "--json"]
            log_path = folder / f"{variant}.log"
            log.info("$ nfc %s  (in the background, output in %s)", " ".join(command[3:]), log_path)
            with log_path.open("wb") as errors:
                process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)  # noqa: S603 - our own command
                self.runs[variant] = (process, log_path)

    def __enter__(self) -> AblationTrainings:
        return self

    def __exit__(self, *exc: object) -> None:
        for process, _ in self.runs.values():
            stop_process(process, 10.0)

    def results(self) -> dict[str, Any]:
        """Each ablation's `nfc train --json` result, by stage name, once all have finished."""
        out: dict[str, Any] = {}
        for variant, (process, log_path) in self.runs.items():
            stdout, _ = process.communicate()
            if process.returncode != 0:
                raise click.ClickException(f"nfc train --variant {variant} failed (exit {process.returncode}); its "
                                           f"output: {log_path}")
            out[f"train {variant}"] = json.loads(stdout)
            log.info("train %s done in %.1f s (from the start of the ablations)", variant,
                     time.perf_counter() - self.started)
        return out


def serve_and_predict(out_dir: Path, data: Path, startup_timeout_s: float = 180.0) -> dict[str, Any]:
    """Start `nfc serve` on loopback, send one HTTP and one gRPC prediction, read both back from MongoDB."""
    import pymongo

    from neuralfusion.client import Client
    from neuralfusion.data.bars import BarFileSource
    from neuralfusion.data.news import read_news
    from neuralfusion.dataset import load_universe
    from serving.client import predict_grpc, predict_payload, wait_until_ready
    from serving.store import DEFAULT_COLLECTION, DEFAULT_DATABASE

    http_port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    with EmbeddedMongo(out_dir / "mongo") as mongo:
        env = {**os.environ, "NFC_MONGO_URI": mongo.uri, "BENTOML_DO_NOT_TRACK": "true"}
        command = [sys.executable, "-m", "nfc.cli", "serve", "--model-path", str(out_dir / "package"),
                   "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port)]
        log.info("$ nfc %s", " ".join(command[3:]))
        # its output to our stderr (fd 2), so stdout holds only the result (`--json`)
        server = subprocess.Popen(command, env=env, stdout=2)  # noqa: S603 - our own command line
        try:
            if not wait_until_ready(url, server, startup_timeout_s):
                raise click.ClickException("nfc serve did not become ready; see its log above")
            bars = BarFileSource(data / "bars.parquet").read()
            news = read_news(data / "news.jsonl")
            step = load_universe(data, bars)[1].timedelta
            times = sorted(bars["timestamp"].unique())
            with Client(url) as client:  # the project's Python client (neuralfusion.client)
                info = client.model_info()
                # only the news of the model's lookback: the bars of its feature warm-up need none
                http_body = predict_payload(bars, news, times[-2], info.bars_needed, step, "demo-http",
                                            news_bars=info.lookback)
                over_http = client.predict(http_body["bars"], http_body["news"], http_body["request_id"])
            grpc_body = predict_payload(bars, news, times[-1], info.bars_needed, step, "demo-grpc",
                                        news_bars=info.lookback)
            over_grpc = predict_grpc(f"127.0.0.1:{grpc_port}", grpc_body)
            click.echo(f"HTTP prediction as of {over_http.as_of.isoformat()}: {_top(over_http.weights)}")
            click.echo(f"gRPC prediction as of {over_grpc.as_of.ToJsonString()}: {_top(dict(over_grpc.weights))}")
            with pymongo.MongoClient(mongo.uri) as client:
                stored = list(client[DEFAULT_DATABASE][DEFAULT_COLLECTION].find(
                    {"request_id": {"$in": ["demo-http", "demo-grpc"]}}, {"_id": 0, "request_id": 1, "as_of": 1}))
            if len(stored) != 2:
                raise click.ClickException(f"expected both demo predictions in MongoDB, found {stored}")
            click.echo(f"MongoDB holds both predictions: {sorted(doc['request_id'] for doc in stored)}")
            return {"http": {"as_of": over_http.as_of.isoformat(), "weights": over_http.weights},
                    "grpc": {"as_of": over_grpc.as_of.ToJsonString(), "weights": dict(over_grpc.weights)},
                    "stored_in_mongodb": sorted(doc["request_id"] for doc in stored)}
        finally:
            server.terminate()
            server.wait(timeout=60)


def _top(weights: dict[str, float], n: int = 4) -> str:
    """The largest positions, e.g. 'AURX +0.31, CRXN -0.27'."""
    ranked = sorted(weights.items(), key=lambda item: -abs(item[1]))[:n]
    return ", ".join(f"{symbol} {weight:+.2f}" for symbol, weight in ranked if weight)
