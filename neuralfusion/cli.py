"""`nfc synth` and `nfc data`: the core's commands (no optional extra needed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pandas as pd

from neuralfusion.cli_common import cli_errors, json_result, live_source_options, log_level_option

__all__ = ["data", "synth"]


def _written_lines(result: dict[str, Any]) -> Iterator[str]:
    yield (f"wrote {result['out']}: {result['bar_rows']} bar rows, {result['news_items']} news items, "
           f"oracle Sharpe {result['oracle_sharpe']:.2f}")


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write bars.parquet, news.jsonl, oracle.json, universe.json into.")
@click.option("--preset", type=click.Choice(["default", "realistic", "interaction"]), default="default",
              show_default=True,
              help="default: the demo market (strong signals, 3-minute bars). realistic: weak news and flow effects, "
                   "half the news uninformative, heavy tails, volatility regimes, 30-minute XNYS bars with a year of "
                   "test bars. interaction: news moves an asset its own way only in its active (high-volume) state "
                   "and against the headline when quiet (docs/SYNTHETIC.md).")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed writes the same bytes.")
@click.option("--assets", type=click.IntRange(min=1), help="Number of assets in the universe.  [default: the preset's]")
@click.option("--days", type=click.IntRange(min=1),
              help="Calendar days the market spans.  [default: the preset's; for the default preset 60, 1100 for "
                   "daily bars]")
@click.option("--calendar",
              help="'24/7' or an exchange code (XNYS, ...): bars only in that exchange's sessions, news round the "
                   "clock, and leak items after the close that tell the next session's move.  [default: the preset's]")
@click.option("--interval", help="Bar interval (1D = one bar per session).  [default: the preset's]")
@log_level_option
@json_result(_written_lines)
@cli_errors
def synth(out_dir: Path, preset: str, seed: int, assets: int | None, days: int | None, calendar: str | None,
          interval: str | None) -> dict[str, Any]:
    """Write the synthetic market: nfc synth --out data/synth --seed 0

    \b
    nfc synth --out data/realistic --preset realistic
    nfc synth --out data/interaction --preset interaction --seed 1
    nfc synth --out data/xnys --calendar XNYS --interval 1D
    nfc synth --out data/xnys30 --calendar XNYS --interval 30min --days 120
    """
    from neuralfusion.synth import SYNTH_PRESETS, generate_market, preset_config, write_market

    given = {"n_assets": assets, "days": days, "calendar": calendar, "interval": interval}
    overrides: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if days is None and "days" not in SYNTH_PRESETS[preset] and interval is not None \
            and pd.Timedelta(interval) >= pd.Timedelta("1D"):
        overrides["days"] = 1100  # 60 days of daily bars are too few for the splits
    config = preset_config(preset, seed=seed, **overrides)
    market = generate_market(config)
    write_market(market, out_dir)
    return {"out": str(out_dir), "preset": preset, "seed": seed, "assets": config.n_assets, "days": config.days,
            "calendar": config.calendar, "interval": config.interval, "bar_rows": len(market.bars),
            "news_items": len(market.news), "oracle_sharpe": market.oracle["sharpe"]}


@click.group()
@log_level_option
def data() -> None:
    """Inspect a data folder (bars + news)."""


def _summary_lines(report: dict[str, Any]) -> Iterator[str]:
    grid, news = report["grid"], report["news"]
    yield (f"grid: {grid['bars']} bars of {grid['interval']} ({grid['calendar']}, "
           f"{grid['bars_per_year']:,.1f} bars a year), {grid['start']} .. {grid['end']}, {grid['assets']} assets, "
           f"{grid['stale_fraction']:.2%} stale")
    if grid["widened_bars"] or grid["bars_outside_sessions"]:
        yield (f"repairs: {grid['widened_bars']} bars with high/low widened by a rounding error; "
               f"{grid['bars_outside_sessions']} bars outside the sessions dropped")
    yield (f"news: {news['items']} items, {news['on_grid']} on the grid "
           f"({news['before_grid']} before, {news['after_grid']} after), "
           f"{news['matched_by_alias']} matched by alias, {news['naming_no_asset']} naming no asset, "
           f"{news['bars_with_news']} bars with news")
    for symbol, count in news["bare_word_refused"].items():
        yield (f"news: {count} items name {symbol} only as the common word {symbol!r}: not counted "
               f"(${symbol} and aliases are)")
    header = f"{'symbol':<8}{'stale':>8}{'stale%':>8}{'max gap':>9}{'news':>7}{'first':>12}{'last':>12}"
    yield header
    for row in report["assets"]:
        yield (f"{row['symbol']:<8}{row['stale_bars']:>8}{row['stale_fraction']:>8.2%}"
               f"{row['longest_gap_bars']:>9}{row['news_items']:>7}"
               f"{row['first_close']:>12.4f}{row['last_close']:>12.4f}")


@data.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@log_level_option
@json_result(_summary_lines)
@cli_errors
def summary(directory: Path) -> dict[str, Any]:
    """Counts, coverage and gaps per asset: nfc data summary data/synth"""
    from neuralfusion.dataset import load_data_dir
    from neuralfusion.summary import summarise

    return summarise(load_data_dir(directory))


def _imported_lines(result: dict[str, Any]) -> Iterator[str]:
    for heading in ("repaired", "dropped", "kept"):
        for line in result[heading] or ["nothing"]:
            yield f"{heading}: {line}"
    yield f"wrote {result['out']}"


def _exported_lines(result: dict[str, Any]) -> Iterator[str]:
    grid, news = result["grid"], result["news"]
    yield (f"wrote {result['out']}: {grid['bars']} bars of {grid['interval']} x {grid['assets']} assets "
           f"({grid['stale_fraction']:.2%} stale), {news['items']} news items ({news['on_grid']} on the grid)")


@data.command(name="import")
@click.option("--bars", "bars_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The vendor's bar file (CSV, CSV.gz or parquet), long format: one row per symbol and bar.")
@click.option("--news", "news_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The vendor's news file (CSV, JSONL or parquet).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Clean data folder to write (bars.parquet, news.jsonl, universe.json).")
@click.option("--calendar", default="24/7", show_default=True, help="'24/7' or an exchange code (XNYS, XLON, ...).")
@click.option("--interval", default="3min", show_default=True, help="Bar interval: 1D (one bar a session), 30min...")
@click.option("--timezone", help="Zone of naive timestamps, e.g. America/New_York (naive times are refused without).")
@click.option("--bar-column", "bar_columns", multiple=True, metavar="VENDOR=NAME",
              help="Map a vendor bar column to timestamp/symbol/open/high/low/close/volume (names also match "
                   "ignoring case).")
@click.option("--news-column", "news_columns", multiple=True, metavar="VENDOR=NAME",
              help="Map a vendor news column to id/published_at/title/body/symbols.")
@click.option("--symbols", help="Comma-separated universe, in model order.  [default: every symbol, sorted]")
@click.option("--alias", "aliases", multiple=True, metavar="SYMBOL=NAME",
              help="A name that means SYMBOL in news text (repeatable), e.g. ON=onsemi.")
@click.option("--label", type=click.Choice(["close", "open"]), default="close", show_default=True,
              help="Whether a bar's timestamp is its close or its open time.")
@click.option("--max-missing-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.05,
              show_default=True, help="Share of an asset's bars that may be missing before it is refused.")
@click.option("--force", is_flag=True, help="Replace an existing --out folder (only once the new one is whole).")
@log_level_option
@json_result(_imported_lines)
@cli_errors
def import_command(bars_path: Path, news_path: Path, out_dir: Path, calendar: str, interval: str,
                   timezone: str | None, bar_columns: tuple[str, ...], news_columns: tuple[str, ...],
                   symbols: str | None, aliases: tuple[str, ...], label: str, max_missing_fraction: float,
                   force: bool) -> dict[str, Any]:
    """A vendor's files -> a clean data folder, saying what was repaired and dropped:

    \b
    nfc data import --bars raw/prices.csv --news raw/news.csv --calendar XNYS --interval 1D \\
        --timezone America/New_York --bar-column Date=timestamp --bar-column Ticker=symbol --out data/us
    """
    from neuralfusion.data.columns import parse_column_map
    from neuralfusion.data.vendor import VendorFiles, import_data
    from neuralfusion.specs import BarSpec

    files = VendorFiles(bars=bars_path, news=news_path, bar_columns=parse_column_map(bar_columns),
                        news_columns=parse_column_map(news_columns), timezone=timezone, label=label)
    alias_map = _alias_map(aliases)
    spec = BarSpec(interval=interval, calendar=calendar, max_missing_fraction=max_missing_fraction)
    universe = tuple(s.strip() for s in symbols.split(",") if s.strip()) if symbols else None
    report = import_data(files, spec, out_dir, symbols=universe, aliases=alias_map, force=force)
    return {"out": str(out_dir), **dataclasses.asdict(report)}


@data.command(name="export")
@click.option("--bars", "bars_source", type=click.Choice(["clickhouse"]), required=True,
              help="Bar store; connection from $NFC_CLICKHOUSE_URL (clickhouse://user:pw@host:9000/db).")
@click.option("--news", "news_source", type=click.Choice(["mongo"]), required=True,
              help="News store; $NFC_NEWS_MONGO_URI, else $NFC_MONGO_URI.")
@click.option("--start", required=True, help="Export bars closing and news published after this time (ISO 8601).")
@click.option("--end", required=True, help="... up to and including this time.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Data folder to write (bars.parquet, news.jsonl, universe.json).")
@click.option("--symbols", required=True, help="Comma-separated universe, in model order.")
@click.option("--alias", "aliases", multiple=True, metavar="SYMBOL=NAME", help="A name that means SYMBOL in news.")
@click.option("--interval", default="3min", show_default=True, help="Bar interval of the grid.")
@click.option("--calendar", default="24/7", show_default=True, help="'24/7' or an exchange code (XNYS, ...).")
@live_source_options
@click.option("--force", is_flag=True, help="Replace an existing --out folder (only once the new one is whole).")
@log_level_option
@json_result(_exported_lines)
@cli_errors
def export_command(bars_source: str, news_source: str, start: str, end: str, out_dir: Path, symbols: str,
                   aliases: tuple[str, ...], interval: str, calendar: str, clickhouse_table: str,
                   clickhouse_columns: str, clickhouse_label: str, clickhouse_candle: str, news_db: str,
                   news_collection: str, news_fields: str, force: bool) -> dict[str, Any]:
    """The live stores' history as a training data folder, read as `nfc predict` reads them:

    \b
    NFC_CLICKHOUSE_URL=clickhouse://... NFC_MONGO_URI=mongodb://... nfc data export --bars clickhouse \\
        --news mongo --symbols BTC,ETH,SOL --start 2026-01-01T00:00Z --end 2026-03-01T00:00Z --out data/live
    """
    import os

    import pymongo

    from neuralfusion.data.clickhouse import BarColumnMap, ClickHouseBarSource, field_map_from_text
    from neuralfusion.data.live_export import export_data
    from neuralfusion.data.news import MongoNewsSource, NewsFieldMap
    from neuralfusion.specs import BarSpec, Universe

    del bars_source, news_source  # one choice each for now; the options name the store as `nfc predict` does
    clickhouse_url = os.environ.get("NFC_CLICKHOUSE_URL")
    mongo_uri = os.environ.get("NFC_NEWS_MONGO_URI") or os.environ.get("NFC_MONGO_URI")
    if not clickhouse_url or not mongo_uri:
        raise click.ClickException("set NFC_CLICKHOUSE_URL and NFC_NEWS_MONGO_URI (or NFC_MONGO_URI)")
    first, last = (_utc_time(value, name) for value, name in ((start, "--start"), (end, "--end")))
    universe = Universe(symbols=tuple(s.strip() for s in symbols.split(",") if s.strip()),
                        aliases=_alias_map(aliases))
    spec = BarSpec(interval=interval, calendar=calendar)
    with ClickHouseBarSource.from_url(clickhouse_url, table=clickhouse_table,
                                      columns=BarColumnMap.parse(clickhouse_columns), label=clickhouse_label,
                                      candle=pd.Timedelta(clickhouse_candle)) as bars, \
            pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000, tz_aware=True) as client:
        news = MongoNewsSource(client[news_db][news_collection], field_map_from_text(NewsFieldMap, news_fields))
        report = export_data(bars, news, universe, spec, first, last, out_dir, force=force)
    return {"out": str(out_dir), **report}


def _utc_time(value: str, option: str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(f"{option} {value!r} has no time zone; write it like 2026-03-05T12:00:00Z")
    return stamp.tz_convert("UTC")


def _alias_map(pairs: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """SYMBOL=NAME pairs as the universe's aliases; one symbol may have several names."""
    from neuralfusion.data.columns import parse_column_map

    aliases: dict[str, tuple[str, ...]] = {}
    for pair in pairs:
        ((symbol, name),) = parse_column_map([pair]).items()
        aliases[symbol] = (*aliases.get(symbol, ()), name)
    return aliases
