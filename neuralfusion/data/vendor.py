"""`nfc data import`: a vendor's bar and news files as they come -> a clean data folder, with an account.

The vendor's files are read with the same readers as any data folder (column map, case-insensitive
contract names, a declared time zone for naive times, CSV news, the OHLC rounding tolerance), put on
the calendar's grid with the same code as training, and written back as the contract's clean form:
bars.parquet holds the grid's traded bars labelled at their close in UTC, news.jsonl every item in UTC
with the tickers it was resolved to, universe.json the universe and grid. Loading the folder gives
the same grid and news alignment as the import checked, without any of the vendor settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from neuralfusion.datafolder import DATA_FILES, json_bytes, news_records, write_bars, write_news
from neuralfusion.dataset import MarketData, market_data
from neuralfusion.specs import BarSpec, Universe
from neuralfusion.staging import staged_folder
from neuralfusion.summary import summarise

__all__ = ["ImportReport", "VendorFiles", "grid_bars_frame", "import_data", "write_data_folder"]


@dataclass(frozen=True)
class VendorFiles:
    """Where a vendor's files are and how to read them."""

    bars: Path
    news: Path
    bar_columns: dict[str, str] = field(default_factory=dict)  # vendor name -> contract name
    news_columns: dict[str, str] = field(default_factory=dict)
    timezone: str | None = None  # zone of naive timestamps (IANA name); None refuses them
    label: str = "close"  # bars labelled by their "close" or "open" time


@dataclass(frozen=True)
class ImportReport:
    """What the import repaired, dropped and kept, in words, with the summary of the folder it wrote."""

    repaired: list[str]
    dropped: list[str]
    kept: list[str]
    summary: dict[str, Any]


def import_data(files: VendorFiles, bar_spec: BarSpec, out: Path, symbols: tuple[str, ...] | None = None,
                aliases: dict[str, tuple[str, ...]] | None = None, force: bool = False) -> ImportReport:
    """Read, check and write a clean data folder `out` (whole or not at all); bad input is a DataError naming
    the file, row and symbol."""
    bars = BarFileSource(files.bars, columns=files.bar_columns, timezone=files.timezone).read()
    news = read_news(files.news, columns=files.news_columns, timezone=files.timezone)
    present = sorted(bars["symbol"].unique())
    universe = Universe(symbols=tuple(symbols or present), aliases=dict(aliases or {}))
    others = sorted(set(present) - set(universe.symbols))
    widened = int(bars.attrs.get("widened_bars", 0))
    chosen = bars[bars["symbol"].isin(universe.symbols)]
    data = market_data(chosen, news, universe, bar_spec, source=str(files.bars), label=files.label)
    with staged_folder(out, force, DATA_FILES) as folder:
        write_data_folder(folder, data)
    written = summarise(data)
    repaired = []
    if widened:
        repaired.append(f"{widened} bars: high/low missed open/close by a rounding error (<= 1e-9 relative) and "
                        "were widened to bound them")
    if files.timezone:
        repaired.append(f"naive timestamps read as {files.timezone} wall time and written in UTC")
    dropped = []
    if others:
        dropped.append(f"{int((~bars['symbol'].isin(universe.symbols)).sum())} bars of symbols not in the "
                       f"universe: {others}")
    if data.panel.outside_sessions:
        dropped.append(f"{data.panel.outside_sessions} bars closing outside the {bar_spec.calendar} sessions "
                       "(pre-/after-market)")
    not_one_to_one = int(len(chosen) - data.panel.outside_sessions - int((~data.panel.stale).sum()))
    if not_one_to_one:
        dropped.append(f"{not_one_to_one} input bars not written one to one: before the first bar at which every "
                       "symbol has traded, or aggregated into a coarser grid bar")
    news_stats = written["news"]
    if news_stats["before_grid"] or news_stats["after_grid"]:
        dropped.append(f"{news_stats['before_grid']} news items before and {news_stats['after_grid']} after the "
                       "grid: kept in news.jsonl, on no bar")
    for symbol, count in news_stats["bare_word_refused"].items():
        dropped.append(f"{count} news items naming {symbol} only as the common word {symbol!r}: not counted as "
                       f"its news (${symbol} and aliases are; add an alias to match more)")
    stale = int(data.panel.stale.sum())
    kept = [f"{data.n_bars} bars of {bar_spec.interval} ({bar_spec.calendar}) x {universe.n_assets} symbols, "
            f"{stale} missing bars filled forward ({data.panel.stale.mean():.2%})",
            f"{len(news)} news items, {news_stats['on_grid']} on the grid: "
            + ", ".join(f"{row['symbol']} {row['news_items']}" for row in written["assets"])]
    return ImportReport(repaired=repaired, dropped=dropped, kept=kept, summary=written)


def grid_bars_frame(data: MarketData) -> pd.DataFrame:
    """The grid's traded (not forward-filled) bars in the long contract format, labelled at their grid close."""
    panel = data.panel
    traded = ~panel.stale
    rows, columns = np.nonzero(traded)
    return pd.DataFrame({
        "timestamp": panel.times[rows],
        "symbol": np.asarray(panel.symbols, dtype=object)[columns],
        **{name: getattr(panel, name)[rows, columns] for name in ("open", "high", "low", "close", "volume")},
    })


def write_data_folder(folder: Path, data: MarketData) -> None:
    """bars.parquet (the grid's traded bars), news.jsonl (with the tickers each item was resolved to) and
    universe.json (universe and grid): a folder `load_data_dir` reads back to the same grid and alignment."""
    news = data.news.assign(symbols=data.aligned.symbols)
    spec = data.bar_spec
    universe = {**data.universe.to_dict(), "interval": spec.interval, "calendar": spec.calendar,
                "max_missing_fraction": spec.max_missing_fraction}
    write_bars(grid_bars_frame(data), folder / "bars.parquet")
    write_news(news_records(news), folder / "news.jsonl")
    (folder / "universe.json").write_bytes(json_bytes(universe))
