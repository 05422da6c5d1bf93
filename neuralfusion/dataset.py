"""A data folder (docs/DESIGN.md, data contracts) loaded into grid-aligned arrays: the input of training and backtest.

`DIR/bars.parquet` (or `bars.csv`) and `DIR/news.jsonl` (or `news.parquet`, `news.csv`) are required;
`DIR/universe.json` (symbols, aliases, interval, calendar) is optional: without it the universe is
the bar file's symbols in sorted order with no aliases, on the default 3-minute 24/7 grid. It may also
say where the files are and how to read them (a vendor's files as they come):
  "files": {"bars": "raw/prices.csv", "news": "raw/news.csv"}   (relative to DIR, or absolute)
  "columns": {"bars": {"Date": "timestamp", "Ticker": "symbol"}, "news": {"Headline": "title"}}
  "timezone": "America/New_York"   (the zone of naive timestamps; without it they are refused)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuralfusion.align import AlignedNews, align_news
from neuralfusion.calendar import grid_bars_per_year
from neuralfusion.data.bars import BarFileSource, BarPanel, resample_bars
from neuralfusion.data.news import read_news
from neuralfusion.errors import DataError
from neuralfusion.features import market_features, simple_returns
from neuralfusion.specs import BarSpec, Universe

__all__ = ["FolderConfig", "MarketData", "find_data_file", "load_data_dir", "load_folder_config", "load_universe",
           "market_data", "panel_market_data"]


@dataclass(frozen=True)
class MarketData:
    """Everything the model sees, on one grid of T bars and N assets."""

    universe: Universe
    bar_spec: BarSpec
    panel: BarPanel
    news: pd.DataFrame  # validated items, sorted by published_at
    aligned: AlignedNews
    features: np.ndarray  # (T, N, F) raw causal features, NaN during warm-up
    returns: np.ndarray  # (T, N) simple returns of each bar; row 0 is 0
    bars_per_year: float  # of the grid's calendar, for annualising every per-bar statistic
    widened_bars: int = 0  # input bars whose high/low missed open/close by a rounding error and were widened

    @property
    def n_bars(self) -> int:
        return self.panel.n_bars


def find_data_file(directory: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    """The first existing `DIR/stem.suffix`; a clear error listing what was looked for otherwise."""
    for suffix in suffixes:
        candidate = directory / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    tried = ", ".join(f"{stem}{s}" for s in suffixes)
    raise DataError(f"data folder has none of {tried}", source=str(directory))


@dataclass(frozen=True)
class FolderConfig:
    """A data folder's universe.json: universe and grid, plus where its files are and how to read them."""

    directory: Path
    universe: Universe | None  # None: the bar file's symbols, sorted
    bar_spec: BarSpec
    files: dict[str, str]  # "bars" / "news" -> path relative to the folder (or absolute)
    bar_columns: dict[str, str]
    news_columns: dict[str, str]
    timezone: str | None

    def bar_file(self) -> Path:
        if "bars" in self.files:
            return self.directory / self.files["bars"]
        return find_data_file(self.directory, "bars", (".parquet", ".csv"))

    def news_file(self) -> Path:
        if "news" in self.files:
            return self.directory / self.files["news"]
        return find_data_file(self.directory, "news", (".jsonl", ".parquet", ".csv"))


def load_folder_config(directory: Path) -> FolderConfig:
    """Read `DIR/universe.json` (all keys optional) and find the folder's bar and news files."""
    path = directory / "universe.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    try:
        spec = BarSpec(**{k: config[k] for k in ("interval", "calendar", "max_missing_fraction") if k in config})
        universe = Universe.from_dict(config) if "symbols" in config else None
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"invalid universe: {err}", source=str(path)) from None
    columns = config.get("columns", {})
    return FolderConfig(directory=directory, universe=universe, bar_spec=spec, files=dict(config.get("files", {})),
                        bar_columns=dict(columns.get("bars", {})), news_columns=dict(columns.get("news", {})),
                        timezone=config.get("timezone"))


def load_universe(directory: Path, bars: pd.DataFrame) -> tuple[Universe, BarSpec]:
    """Universe and grid from `universe.json` when present, else from the bars' symbols."""
    config = load_folder_config(directory)
    return config.universe or Universe(symbols=tuple(sorted(bars["symbol"].unique()))), config.bar_spec


def market_data(bars: pd.DataFrame, news: pd.DataFrame, universe: Universe, bar_spec: BarSpec,
                source: str = "data", label: str = "close") -> MarketData:
    """Grid, features, returns and aligned news from validated bar and news frames (bars' attrs["widened_bars"]
    counts the bars whose high/low validation widened)."""
    panel = resample_bars(bars, universe, bar_spec, label=label, source=source)
    return panel_market_data(panel, news, universe, bar_spec, source, int(bars.attrs.get("widened_bars", 0)))


def panel_market_data(panel: BarPanel, news: pd.DataFrame, universe: Universe, bar_spec: BarSpec,
                      source: str = "data", widened_bars: int = 0) -> MarketData:
    """`market_data` of bars already on the grid (`resample_bars`' panel, or one equal to it)."""
    aligned = align_news(news, panel.times, panel.previous_close, universe, source=source)
    return MarketData(universe=universe, bar_spec=bar_spec, panel=panel, news=news, aligned=aligned,
                      features=market_features(panel), returns=simple_returns(panel.close),
                      bars_per_year=grid_bars_per_year(bar_spec.calendar, bar_spec.timedelta, panel.times),
                      widened_bars=widened_bars)


def load_data_dir(directory: Path | str, universe: Universe | None = None) -> MarketData:
    """Load a data folder; `universe` overrides the folder's own (e.g. a trained model's universe)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("data folder not found", source=str(directory))
    config = load_folder_config(directory)
    bars = BarFileSource(config.bar_file(), columns=config.bar_columns, timezone=config.timezone).read()
    news = read_news(config.news_file(), columns=config.news_columns, timezone=config.timezone)
    folder_universe = config.universe or Universe(symbols=tuple(sorted(bars["symbol"].unique())))
    if universe is not None:  # a model trades its own universe; extra assets in the data are not its business
        widened = bars.attrs.get("widened_bars", 0)
        bars = bars[bars["symbol"].isin(universe.symbols)]
        bars.attrs["widened_bars"] = widened
    return market_data(bars, news, universe or folder_universe, config.bar_spec, source=str(directory))
