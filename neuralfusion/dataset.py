"""A data folder (docs/DESIGN.md, data contracts) loaded into grid-aligned arrays: the input of training and backtest.

`DIR/bars.parquet` (or `bars.csv`) and `DIR/news.jsonl` (or `news.parquet`) are required;
`DIR/universe.json` (symbols, aliases, interval, calendar) is optional: without it the universe is
the bar file's symbols in sorted order with no aliases, on the default 3-minute 24/7 grid.
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

__all__ = ["MarketData", "find_data_file", "load_data_dir", "load_universe", "market_data"]


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


def load_universe(directory: Path, bars: pd.DataFrame) -> tuple[Universe, BarSpec]:
    """Universe and grid from `universe.json` when present, else from the bars' symbols."""
    path = directory / "universe.json"
    if not path.exists():
        return Universe(symbols=tuple(sorted(bars["symbol"].unique()))), BarSpec()
    config = json.loads(path.read_text())
    spec_keys = {k: config[k] for k in ("interval", "calendar", "max_missing_fraction") if k in config}
    try:
        return Universe.from_dict(config), BarSpec(**spec_keys)
    except (KeyError, ValueError) as err:
        raise DataError(f"invalid universe: {err}", source=str(path)) from None


def market_data(bars: pd.DataFrame, news: pd.DataFrame, universe: Universe, bar_spec: BarSpec,
                source: str = "data") -> MarketData:
    """Grid, features, returns and aligned news from validated bar and news frames."""
    panel = resample_bars(bars, universe, bar_spec, source=source)
    aligned = align_news(news, panel.times, panel.previous_close, universe, source=source)
    return MarketData(universe=universe, bar_spec=bar_spec, panel=panel, news=news, aligned=aligned,
                      features=market_features(panel), returns=simple_returns(panel.close),
                      bars_per_year=grid_bars_per_year(bar_spec.calendar, bar_spec.timedelta, panel.times))


def load_data_dir(directory: Path | str, universe: Universe | None = None) -> MarketData:
    """Load a data folder; `universe` overrides the folder's own (e.g. a trained model's universe)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("data folder not found", source=str(directory))
    bars = BarFileSource(find_data_file(directory, "bars", (".parquet", ".csv"))).read()
    news = read_news(find_data_file(directory, "news", (".jsonl", ".parquet")))
    folder_universe, bar_spec = load_universe(directory, bars)
    if universe is not None:  # a model trades its own universe; extra assets in the data are not its business
        bars = bars[bars["symbol"].isin(universe.symbols)]
    return market_data(bars, news, universe or folder_universe, bar_spec, source=str(directory))
