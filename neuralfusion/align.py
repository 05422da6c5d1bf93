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

__all__ = ["COMMON_WORD_TICKERS", "AlignedNews", "align_news", "bar_index", "is_common_word", "resolve_symbols"]

log = logging.getLogger(__name__)

# listed tickers that are also everyday English words (single letters count too, see is_common_word)
COMMON_WORD_TICKERS = frozenset({
    "ALL", "AN", "ARE", "AT", "BE", "BIG", "BOX", "BUY", "CAN", "CAR", "CASH", "CAT", "DO", "EAT", "EYE", "FAST",
    "FIVE", "FOR", "FUN", "GO", "GOOD", "HAS", "HE", "HOME", "IT", "KEY", "LIFE", "LOVE", "LOW", "MAN", "MAIN",
    "NEW", "NICE", "NOW", "OK", "ON", "ONE", "OPEN", "OR", "OUT", "PLAY", "REAL", "RUN", "SAVE", "SEE", "SO",
    "TEN", "TRUE", "TWO", "UP", "WELL", "WIN", "YOU",
})


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
                    source: str = "news") -> tuple[list[list[str]], dict[str, int]]:
    """Universe tickers each item is about (its `symbols`, else the tickers named in its text), and per
    common-word ticker the number of items that named it only as a bare word (refused).

    In text, a cashtag (`$ON`) always names its ticker, and so does an alias (whole words, any case). A bare
    ticker (whole word, any case) names it too unless the ticker is also a common word (`is_common_word`: ON,
    A, IT, ALL, T, ...): "Markets turn on rate-cut hopes" is not about ON Semiconductor. Those bare matches
    are refused and counted in a warning, so the fix (an alias such as the company's name) is visible.
    `unknown="drop"` ignores listed tickers outside the universe (logged with a count); `"error"` refuses them.
    """
    if unknown not in ("drop", "error"):
        raise ValueError(f"unknown must be 'drop' or 'error', got {unknown!r}")
    known = set(universe.symbols)
    matchers = {s: _TickerMatcher.build(s, universe.aliases.get(s, ())) for s in universe.symbols}
    resolved, dropped = [], 0
    refused = dict.fromkeys(universe.symbols, 0)
    for row, (symbols, title, body) in enumerate(zip(news["symbols"], news["title"], news["body"], strict=True)):
        if symbols is None:
            text = f"{title} {body}"
            named = []
            for symbol, matcher in matchers.items():
                if matcher.names(text):
                    named.append(symbol)
                elif matcher.bare_word_only(text):
                    refused[symbol] += 1
            resolved.append(named)
            continue
        outside = [s for s in symbols if s not in known]
        if outside and unknown == "error":
            raise DataError(f"symbols {outside} (id {news['id'].iat[row]}) are not in the universe "
                            f"{list(universe.symbols)}", source=source, row=row)
        dropped += len(outside)
        resolved.append([s for s in universe.symbols if s in symbols])
    if dropped:
        log.warning("%s: ignored %d mentions of symbols outside the universe", source, dropped)
    for symbol, count in refused.items():
        if count:
            log.warning("%s: ticker %s is also a common word; %d items name it only as the bare word %r and are "
                        "not counted as its news (a cashtag $%s always counts; add an alias, e.g. the company's "
                        "name, to match more)", source, symbol, count, symbol, symbol)
    return resolved, {symbol: count for symbol, count in refused.items() if count}


def is_common_word(ticker: str) -> bool:
    """True for tickers that are also everyday words or single letters, whose bare mention proves nothing."""
    return len(ticker) == 1 or ticker.upper() in COMMON_WORD_TICKERS


@dataclass(frozen=True)
class _TickerMatcher:
    """How text names one ticker: cashtag, aliases, and the bare ticker unless it is a common word."""

    cashtag: re.Pattern[str]
    names_pattern: re.Pattern[str] | None  # aliases (+ the bare ticker when it is not a common word)
    bare: re.Pattern[str] | None  # the bare ticker of a common-word ticker: counted, never matched

    @classmethod
    def build(cls, symbol: str, aliases: tuple[str, ...]) -> _TickerMatcher:
        common = is_common_word(symbol)
        words = [*([] if common else [symbol]), *aliases]
        return cls(cashtag=re.compile(r"(?<!\w)\$" + re.escape(symbol) + r"\b"),
                   names_pattern=_words(words), bare=_words([symbol]) if common else None)

    def names(self, text: str) -> bool:
        return bool(self.cashtag.search(text) or (self.names_pattern and self.names_pattern.search(text)))

    def bare_word_only(self, text: str) -> bool:
        return bool(self.bare and self.bare.search(text))


def _words(names: list[str]) -> re.Pattern[str] | None:
    if not names:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class AlignedNews:
    """News on the grid: per item its bar (-1 = off grid) and assets; per bar the coverage one-hot."""

    bar: np.ndarray  # (M,) int64
    symbols: list[list[str]]  # (M,) universe tickers per item
    assets: np.ndarray  # (M, N) bool: the item names asset n (its `symbols` as a mask in universe order)
    coverage: np.ndarray  # (T, N) float32: 1 where a bar's news mention the asset
    n_before: int  # items published before the grid
    n_after: int  # items published after the last bar closed
    bare_word_refused: dict[str, int]  # common-word ticker -> items naming it only as a bare word (not counted)


def align_news(news: pd.DataFrame, times: pd.DatetimeIndex, previous_close: pd.Timestamp, universe: Universe,
               unknown: str = "drop", source: str = "news") -> AlignedNews:
    """Assign each item to its bar (see `bar_index`) and its assets, and build the (T, N) coverage one-hot."""
    bars = bar_index(news["published_at"], times, previous_close)
    symbols, refused = resolve_symbols(news, universe, unknown=unknown, source=source)
    assets = np.zeros((len(symbols), universe.n_assets), dtype=bool)
    for row, item_symbols in enumerate(symbols):
        assets[row, [universe.index(symbol) for symbol in item_symbols]] = True
    coverage = np.zeros((len(times), universe.n_assets), dtype=np.float32)
    on_grid = bars >= 0
    np.maximum.at(coverage, bars[on_grid], assets[on_grid].astype(np.float32))
    stamps = pd.DatetimeIndex(news["published_at"])
    n_after = int(((bars < 0) & (stamps > times[-1])).sum())
    return AlignedNews(bar=bars, symbols=symbols, assets=assets, coverage=coverage,
                       n_before=int((bars < 0).sum()) - n_after, n_after=n_after, bare_word_refused=refused)
