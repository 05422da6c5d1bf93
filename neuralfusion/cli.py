"""`nfc`: one console command for the whole path data -> train -> export -> validate -> serve.

Subcommands that need an optional extra (torch, onnx, bentoml) are imported only when run, so
`nfc --help` and the data commands work with the core install alone; a missing extra fails with
one line naming the install command.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

import click

# torch's OpenMP threads spin-wait by default; on a busy 2-core machine that stalled training steps for
# seconds (0.6-6.4 s vs 0.24-0.55 s per step). Must be set before torch is imported, which is lazy here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["main"]

# name -> (module:attribute, extra that provides its imports, one-line help shown by `nfc --help`)
LAZY_COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "synth": ("neuralfusion.cli:synth", None, "Write the synthetic market (bars, news, oracle)."),
    "data": ("neuralfusion.cli:data", None, "Inspect a data folder."),
    "embed": ("training.cli_encoder:embed", "train", "Embed news articles (cached)."),
    "encoder": ("training.cli_encoder:encoder", "train", "Build or fine-tune the news encoder."),
    "train": ("training.cli_train:train", "train", "Train the CGA model on a data folder."),
    "finetune": ("training.cli_train:finetune", "train", "Continue training; keep the incumbent unless beaten."),
    "backtest": ("training.cli_backtest:backtest", "train", "Walk-forward test with costs, baselines, ablations."),
    "export": ("export.cli:export_command", "export", "Export a run to an ONNX model package with parity."),
    "validate": ("export.cli:validate_command", "export", "Check a model package: hashes, parity, batch invariance."),
    "serve": ("serving.cli:serve", "serve", "Serve predictions over HTTP and gRPC (BentoML), stored in MongoDB."),
    "predict": ("serving.predict_job:predict", "serve", "One run of the scheduled prediction job, stored in MongoDB."),
    "demo": ("neuralfusion.demo:demo", "train", "Run the whole path on the embedded synthetic default."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS:
            return None
        target, extra, _ = LAZY_COMMANDS[cmd_name]
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if extra is None or (err.name or "").split(".")[0] in ("neuralfusion", "training", "export", "serving"):
                raise
            raise click.ClickException(
                f"'nfc {cmd_name}' needs the '{extra}' extra (missing module {err.name!r}): "
                f"pip install 'neuralfusioncore[{extra}]'") from None
        return getattr(module, attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the table, so `nfc --help` imports no optional extra."""
        rows = [(name, help_text) for name, (_, _, help_text) in sorted(LAZY_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def main(log_level: str) -> None:
    """NeuralFusionCore: news + OHLCV bars -> portfolio weights."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write bars.parquet, news.jsonl, oracle.json, universe.json into.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed writes the same bytes.")
@click.option("--assets", default=12, show_default=True, help="Number of assets in the universe.")
@click.option("--days", default=60, show_default=True, help="Days of 3-minute bars (24/7).")
def synth(out_dir: Path, seed: int, assets: int, days: int) -> None:
    """Write the synthetic market: nfc synth --out data/synth --seed 0"""
    from neuralfusion.synth import SynthConfig, generate_market, write_market

    market = generate_market(SynthConfig(seed=seed, n_assets=assets, days=days))
    write_market(market, out_dir)
    click.echo(f"wrote {out_dir}: {len(market.bars)} bar rows, {len(market.news)} news items, "
               f"oracle Sharpe {market.oracle['sharpe']:.2f}")


@click.group()
def data() -> None:
    """Inspect a data folder (bars + news)."""


@data.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def summary(directory: Path, as_json: bool) -> None:
    """Counts, coverage and gaps per asset: nfc data summary data/synth"""
    from neuralfusion.dataset import load_data_dir
    from neuralfusion.errors import DataError
    from neuralfusion.summary import summarise

    try:
        report = summarise(load_data_dir(directory))
    except DataError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    grid, news = report["grid"], report["news"]
    click.echo(f"grid: {grid['bars']} bars of {grid['interval']} ({grid['calendar']}), "
               f"{grid['start']} .. {grid['end']}, {grid['assets']} assets")
    click.echo(f"news: {news['items']} items, {news['on_grid']} on the grid "
               f"({news['before_grid']} before, {news['after_grid']} after), "
               f"{news['matched_by_alias']} matched by alias, {news['naming_no_asset']} naming no asset, "
               f"{news['bars_with_news']} bars with news")
    header = f"{'symbol':<8}{'stale':>8}{'stale%':>8}{'max gap':>9}{'news':>7}{'first':>12}{'last':>12}"
    click.echo(header)
    for row in report["assets"]:
        click.echo(f"{row['symbol']:<8}{row['stale_bars']:>8}{row['stale_fraction']:>8.2%}"
                   f"{row['longest_gap_bars']:>9}{row['news_items']:>7}"
                   f"{row['first_close']:>12.4f}{row['last_close']:>12.4f}")


if __name__ == "__main__":  # `python -m neuralfusion.cli` / `torchrun -m neuralfusion.cli train ...`
    main()
