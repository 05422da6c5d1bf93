"""`nfc synth` and `nfc data`: the core's commands (no optional extra needed)."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["data", "synth"]


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

