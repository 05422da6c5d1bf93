"""`nfc demo`: the whole path on the embedded default, each stage run as the `nfc` command a user would type.

Stages and what they write under OUT:
  synth            data/ (bars.parquet, news.jsonl, oracle.json, universe.json)
  data summary     printed
  encoder init     encoder-init/  (tokenizer trained on the news, small random-init BigBird)
  encoder train    encoder/       (sentiment-tuned on the synthetic labels)
  embed            embeddings.parquet (+ embedding_cache.parquet)
  train            model/ and ablations/{concat,market,news}/
  backtest         report/ (metrics.json, PNG plots, report.html)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

__all__ = ["demo"]

log = logging.getLogger(__name__)

ABLATIONS = ("concat", "market", "news")


def run_nfc(args: list[str]) -> None:
    """Run one `nfc` command in this process, exactly as typed on the command line."""
    from neuralfusion.cli import main

    log.info("$ nfc %s", " ".join(args))
    started = time.perf_counter()
    main.main(args=args, standalone_mode=False)
    log.info("done in %.1f s", time.perf_counter() - started)


@click.command()
@click.option("--out", "out_dir", default=Path("runs/demo"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for every stage's output.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic market and of training.")
def demo(out_dir: Path, seed: int) -> None:
    """Synthetic market -> encoder -> embeddings -> model + ablations -> backtest report.

    \b
    nfc demo --out runs/demo
    """
    started = time.perf_counter()
    data, embeddings = out_dir / "data", out_dir / "embeddings.parquet"
    run_nfc(["synth", "--out", str(data), "--seed", str(seed)])
    run_nfc(["data", "summary", str(data)])
    run_nfc(["encoder", "init", "--news", str(data / "news.jsonl"), "--out", str(out_dir / "encoder-init")])
    run_nfc(["encoder", "train", "--news", str(data / "news.jsonl"), "--encoder", str(out_dir / "encoder-init"),
             "--out", str(out_dir / "encoder")])
    run_nfc(["embed", "--news", str(data / "news.jsonl"), "--encoder", str(out_dir / "encoder"),
             "--out", str(embeddings)])
    common = ["--data", str(data), "--embeddings", str(embeddings), "--set", f"seed={seed}", "--force"]
    run_nfc(["train", *common, "--out", str(out_dir / "model")])
    for variant in ABLATIONS:
        run_nfc(["train", *common, "--variant", variant, "--out", str(out_dir / "ablations" / variant)])
    ablations = [arg for v in ABLATIONS for arg in ("--ablation", str(out_dir / "ablations" / v))]
    run_nfc(["backtest", "--model", str(out_dir / "model"), "--data", str(data), "--embeddings", str(embeddings),
             *ablations, "--out", str(out_dir / "report"), "--force"])
    click.echo(f"demo finished in {time.perf_counter() - started:.0f} s; report: {out_dir / 'report' / 'report.html'}")
