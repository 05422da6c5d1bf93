"""The inputs of one `nfc predict` run: bars on the model's grid and the news its windows read.

Bars come from a data folder or ClickHouse, news from a data folder or MongoDB; either way they are cut to
the time span the run's as-of bars need, resampled by `resample_bars` (the training code, so on the model's
calendar), and checked for staleness: an asset whose last real bar is older than the limit fails the run, naming
the asset and its age, rather than being predicted from forward-filled prices.

MongoDB news is read incrementally: items already read are kept in a local cache file, and each run asks
MongoDB only for items after the cache's newest one (minus a small overlap that catches late inserts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from pymongo.errors import PyMongoError

from neuralfusion.calendar import BarClock, is_continuous
from neuralfusion.data.bars import BAR_COLUMNS, BarFileSource, resample_bars
from neuralfusion.data.news import NEWS_COLUMNS, MongoNewsSource, read_news, validate_news
from neuralfusion.embeddings import write_table_atomic
from neuralfusion.errors import DataError, SourceUnavailable
from neuralfusion.specs import BarSpec, Universe

__all__ = ["NEWS_OVERLAP", "BarReader", "FileBars", "FileNews", "IncrementalMongoNews", "NewsReader", "check_staleness",
           "grid_bars", "grid_name", "live_as_of_bar"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# MongoDB items are re-read this far before the newest cached one: an item inserted late with an earlier time
NEWS_OVERLAP = pd.Timedelta("15min")


class BarReader(Protocol):
    """Bars in the long contract of `validate_bars` whose close time t satisfies start < t <= end."""

    def load(self, symbols: list[str] | tuple[str, ...], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        ...


class NewsReader(Protocol):
    """Validated news items with start < published_at <= end."""

    def load(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        ...


@dataclass(frozen=True)
class FileBars:
    """A bar file as a BarReader. The file is read whole (data folders are for modest histories) and again only
    when its size or modification time changed, so a service asking for one window after another parses it once."""

    path: Path
    _held: dict[tuple[int, int], _TimedFrame] = field(default_factory=dict, compare=False, repr=False)

    def load(self, symbols: list[str] | tuple[str, ...], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        held = self._frame()
        unknown = sorted(set(symbols) - held.symbols)
        if unknown:
            raise DataError(f"symbols {unknown} have no bars in this file", source=str(self.path))
        rows = held.frame.iloc[held.between(start, end)]
        return (rows if held.symbols <= set(symbols) else rows[rows["symbol"].isin(symbols)]).reset_index(drop=True)

    def latest(self) -> pd.Timestamp:
        return self._frame().frame["timestamp"].iat[-1]

    def _frame(self) -> _TimedFrame:
        return _read_when_changed(self.path, self._held, _read_bar_file)


@dataclass(frozen=True)
class FileNews:
    """A news file as a NewsReader, read again only when it changed (as FileBars)."""

    path: Path
    _held: dict[tuple[int, int], _TimedFrame] = field(default_factory=dict, compare=False, repr=False)

    def load(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        held = _read_when_changed(self.path, self._held, _read_news_file)
        return held.frame.iloc[held.between(start, end)].reset_index(drop=True)


@dataclass(frozen=True)
class _TimedFrame:
    """A validated file's rows (sorted by time) with their times as UTC nanoseconds and their symbols: a window is
    two binary searches."""

    frame: pd.DataFrame
    times: np.ndarray
    symbols: frozenset[str] = frozenset()

    @classmethod
    def of(cls, frame: pd.DataFrame, time_column: str, symbols: frozenset[str] = frozenset()) -> _TimedFrame:
        return cls(frame, pd.DatetimeIndex(frame[time_column]).as_unit("ns").asi8, symbols)

    def between(self, start: pd.Timestamp, end: pd.Timestamp) -> slice:
        """The positions of the rows with start < time <= end."""
        return slice(int(np.searchsorted(self.times, start.value, side="right")),
                     int(np.searchsorted(self.times, end.value, side="right")))


def _read_bar_file(path: Path) -> _TimedFrame:
    """The validated bars of a file (sorted by time and symbol) and their symbols (each load checks the symbols it
    asks)."""
    frame = BarFileSource(path).read()
    return _TimedFrame.of(frame, "timestamp", frozenset(frame["symbol"].unique()))


def _read_news_file(path: Path) -> _TimedFrame:
    """The validated news of a file (sorted by publication time and id)."""
    return _TimedFrame.of(read_news(path), "published_at")


def _read_when_changed(path: Path, held: dict[tuple[int, int], T], read: Callable[[Path], T]) -> T:
    """`read(path)` as last read, or read again when the file's size or modification time changed. Callers only
    hand out filtered copies, so the frame held is never changed."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    if stamp not in held:
        frame = read(path)
        held.clear()
        held[stamp] = frame
    return held[stamp]


class IncrementalMongoNews:
    """MongoDB news read incrementally through a local cache of the items already read.

    `load(start, end)` asks MongoDB for (max(start, newest cached - overlap), end] only, merges by id with
    the cached items, and returns the items in (start, end]. `commit()` writes the merged items of the last
    load to the cache (atomically), so a failed run leaves the cache as it was.
    """

    def __init__(self, source: MongoNewsSource, cache_path: Path, overlap: pd.Timedelta = NEWS_OVERLAP) -> None:
        self.source = source
        self.cache_path = Path(cache_path)
        self.overlap = overlap
        self.new_items = 0  # items of the last load that the cache did not hold
        self._pending: pd.DataFrame | None = None

    def _cached(self) -> pd.DataFrame:
        if not self.cache_path.exists():
            return pd.DataFrame(columns=list(NEWS_COLUMNS))
        frame = pd.read_parquet(self.cache_path)
        frame["symbols"] = [None if v is None else list(v) for v in frame["symbols"]]
        return validate_news(frame, source=str(self.cache_path)) if len(frame) else frame

    def load(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        cached = self._cached()
        cached = cached[(cached["published_at"] > start) & (cached["published_at"] <= end)] if len(cached) else cached
        read_from = start if cached.empty else max(start, cached["published_at"].max() - self.overlap)
        try:
            self.source.ensure_index()
            fresh = self.source.load(read_from, end)
        except PyMongoError as err:
            raise SourceUnavailable(f"reading news failed ({type(err).__name__}: {str(err)[:300]})",
                                    source=f"mongodb collection {self.source.collection.full_name}") from None
        self.new_items = int((~fresh["id"].isin(cached["id"])).sum()) if len(fresh) else 0
        log.info("news: %d items from MongoDB after %s, %d of them new; %d from the cache", len(fresh),
                 read_from.isoformat(), self.new_items, len(cached))
        parts = [part for part in (cached, fresh) if len(part)]
        if not parts:
            self._pending = None
            return fresh
        merged = pd.concat(parts, ignore_index=True).drop_duplicates("id", keep="last")
        merged = validate_news(merged, source=f"{self.source.collection.full_name} + {self.cache_path}")
        self._pending = merged
        return merged

    def commit(self) -> None:
        """Keep the items of the last load for the next run."""
        if self._pending is not None:
            frame = self._pending[list(NEWS_COLUMNS)]
            write_table_atomic(pa.Table.from_pandas(frame, preserve_index=False), self.cache_path)


def live_as_of_bar(clock: BarClock, last_close: pd.Timestamp, now: pd.Timestamp, limit: pd.Timedelta) -> pd.Timestamp:
    """The as-of bar of a live run: the last grid bar that the newest input bar (closing at `last_close`, NaT when
    there is none) completes; a bar still filling is not used. The feed is behind, a DataError, when a grid bar
    that closed more than `limit` before `now` is missing. On an exchange calendar that bar is the last session bar
    closing by `now - limit`, so a shut market (night, weekend, holiday) is never stale: the last session's bar
    stays the as-of bar until the next session's first bar is due."""
    due = clock.last_close(now - limit)
    latest = None if pd.isna(last_close) else clock.last_close(last_close)
    if latest is None or latest < due:
        held = "no bar" if latest is None else f"the latest complete bar closed at {latest.isoformat()}"
        raise DataError(f"{held}; the bar closing at {due.isoformat()}, {now - due} ago, is missing, over the "
                        f"staleness limit of {limit} (--max-staleness): the bar feed is behind, nothing was "
                        "predicted", source="bars")
    return latest


def grid_name(spec: BarSpec) -> str:
    """'3min' round the clock, '1h XNYS' on an exchange calendar: how messages name the model's bar grid."""
    return spec.interval if is_continuous(spec.calendar) else f"{spec.interval} {spec.calendar}"


def grid_bars(frame: pd.DataFrame, universe: Universe, spec: BarSpec, source: str) -> pd.DataFrame:
    """Bars resampled onto the model's grid (`resample_bars`) and back in the long contract, without the
    forward-filled bars: the model's own resampling marks those stale again, exactly as in training."""
    panel = resample_bars(frame, universe, spec, source=source)
    t, n = panel.stale.shape
    long = pd.DataFrame({"timestamp": np.repeat(panel.times, n), "symbol": np.tile(panel.symbols, t),
                         **{name: getattr(panel, name).reshape(-1) for name in BAR_COLUMNS[2:]}})
    return long[~panel.stale.reshape(-1)].reset_index(drop=True)


def check_staleness(bars: pd.DataFrame, symbols: tuple[str, ...], as_of_times: Sequence[pd.Timestamp],
                    limit: pd.Timedelta, clock: BarClock, source: str) -> None:
    """Every asset's last real bar at or before each as-of bar must be within `limit` of it; else a DataError
    naming the first stale as-of bar, each stale asset and its age. Round the clock the age is the time between
    them; on an exchange calendar it is the grid bars the asset missed times the interval, so a night, weekend or
    holiday between its last bar and the as-of bar does not age it. Each asset's close times are sorted once, so a
    back-fill of many as-of bars costs one search per bar and asset, not a pass over all bars."""
    closes = {symbol: np.sort(pd.DatetimeIndex(times).as_unit("ns").asi8)  # Timestamp.value is in ns too
              for symbol, times in bars.groupby("symbol")["timestamp"]}
    empty = np.empty(0, dtype=np.int64)
    grid = None if is_continuous(clock.calendar) or bars.empty else clock.closes(
        bars["timestamp"].min(), max(as_of_times)).as_unit("ns").asi8
    for as_of in as_of_times:
        stale: dict[str, pd.Timedelta | None] = {}
        for symbol in symbols:
            known = closes.get(symbol, empty)
            index = int(np.searchsorted(known, as_of.value, side="right"))
            if not index:
                stale[symbol] = None
                continue
            if grid is None:
                age = pd.Timedelta(as_of.value - int(known[index - 1]), unit="ns")
            else:  # the grid bars closing after the asset's last bar, up to the as-of bar
                missed = np.searchsorted(grid, as_of.value, side="right") - np.searchsorted(
                    grid, int(known[index - 1]), side="right")
                age = int(missed) * clock.interval
            if age > limit:
                stale[symbol] = age
        if stale:
            detail = ", ".join(f"{s} (no bars)" if age is None else f"{s} (last bar {age} before)"
                               for s, age in stale.items())
            raise DataError(f"stale data for the as-of bar {as_of.isoformat()}: {detail}; the limit is {limit} "
                            "(--max-staleness): fix the feed, nothing was predicted", source=source)
