"""Put news on the bar grid: which bar each item belongs to and which assets it covers.

Rule (docs/DESIGN.md, data contracts): an item belongs to the first bar whose close time is >= published_at. On an
exchange's grid that is the next session bar: news after Friday's close belongs to Monday's first bar.
Items published at or before the close of the calendar's bar before the grid, or after its last bar
closed, belong to no bar (index -1) and are counted, never pulled onto the grid.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuralfusion.errors import DataError
from neuralfusion.specs import Universe

__all__ = ["AlignedNews", "align_news", "bar_index", "resolve_symbols"]

log = logging.getLogger(__name__)


def bar_index(published_at: pd.Series, times: pd.DatetimeIndex, previous_close: pd.Timestamp) -> np.ndarray:
    """Index of the first bar with close time >= published_at; -1 outside the grid (at or before
    `previous_close`, the close of the calendar's bar before times[0], or after the last close)."""
    stamps = pd.DatetimeIndex(published_at)
    index = times.searchsorted(stamps, side="left").astype(np.int64)
    before = stamps <= previous_close  # published before the first bar's period began
    after = index >= len(times)
    index[before | after] = -1
    return index


def resolve_symbols(news: pd.DataFrame, universe: Universe, unknown: str = "drop",
                    source: str = "news") -> list[list[str]]:
    """Universe tickers each item is about: its `symbols`, else tickers/aliases named in its text.

    `unknown="drop"` ignores tickers outside the universe (logged with a count); `"error"` refuses them.
    """
    if unknown not in ("drop", "error"):
        raise ValueError(f"unknown must be 'drop' or 'error', got {unknown!r}")
    known = set(universe.symbols)
    names = {s: (s, *universe.aliases.get(s, ())) for s in universe.symbols}
    patterns = {s: re.compile(r"\b(?:" + "|".join(re.escape(n) for n in ns) + r")\b", re.IGNORECASE)
                for s, ns in names.items()}
    resolved, dropped = [], 0
    for row, (symbols, title, body) in enumerate(zip(news["symbols"], news["title"], news["body"], strict=True)):
        if symbols is None:
            text = f"{title} {body}"
            resolved.append([s for s in universe.symbols if patterns[s].search(text)])
            continue
        outside = [s for s in symbols if s not in known]
        if outside and unknown == "error":
            raise DataError(f"symbols {outside} (id {news['id'].iat[row]}) are not in the universe "
                            f"{list(universe.symbols)}", source=source, row=row)
        dropped += len(outside)
        resolved.append([s for s in universe.symbols if s in symbols])
    if dropped:
        log.warning("%s: ignored %d mentions of symbols outside the universe", source, dropped)
    return resolved


@dataclass(frozen=True)
class AlignedNews:
    """News on the grid: per item its bar (-1 = off grid) and assets; per bar the coverage one-hot."""

    bar: np.ndarray  # (M,) int64
    symbols: list[list[str]]  # (M,) universe tickers per item
    coverage: np.ndarray  # (T, N) float32: 1 where a bar's news mention the asset
    n_before: int  # items published before the grid
    n_after: int  # items published after the last bar closed


def align_news(news: pd.DataFrame, times: pd.DatetimeIndex, previous_close: pd.Timestamp, universe: Universe,
               unknown: str = "drop", source: str = "news") -> AlignedNews:
    """Assign each item to its bar (see `bar_index`) and build the (T, N) coverage one-hot."""
    bars = bar_index(news["published_at"], times, previous_close)
    symbols = resolve_symbols(news, universe, unknown=unknown, source=source)
    coverage = np.zeros((len(times), universe.n_assets), dtype=np.float32)
    for bar, item_symbols in zip(bars, symbols, strict=True):
        if bar >= 0:
            for symbol in item_symbols:
                coverage[bar, universe.index(symbol)] = 1.0
    stamps = pd.DatetimeIndex(news["published_at"])
    n_after = int(((bars < 0) & (stamps > times[-1])).sum())
    return AlignedNews(bar=bars, symbols=symbols, coverage=coverage,
                       n_before=int((bars < 0).sum()) - n_after, n_after=n_after)
