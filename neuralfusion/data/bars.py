"""OHLCV bars: read and validate the long format, then resample onto one bar grid.

Contract (docs/DESIGN.md, data contracts): columns `timestamp` (UTC), `symbol`, `open, high, low, close, volume`.
Each input row is a bar labelled by its close time (`label="close"`, the default) or by its open time
(`label="open"`, e.g. exchange candles). Gaps are forward-filled from the last close, with zero volume
and a stale flag; prices are never zero-filled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuralfusion.calendar import CalendarBars, calendar_bars, is_continuous
from neuralfusion.data.columns import read_table, standard_columns
from neuralfusion.errors import DataError
from neuralfusion.specs import BarSpec, Universe
from neuralfusion.timeutil import to_utc

__all__ = ["BAR_COLUMNS", "OHLC_TOLERANCE", "PRICE_COLUMNS", "BarFileSource", "BarPanel", "resample_bars",
           "validate_bars"]

log = logging.getLogger(__name__)

PRICE_COLUMNS = ("open", "high", "low", "close")
# how far (relative) a high/low may miss open/close and still be widened rather than refused
OHLC_TOLERANCE = 1e-9
BAR_COLUMNS = ("timestamp", "symbol", *PRICE_COLUMNS, "volume")


@dataclass(frozen=True)
class BarPanel:
    """Bars on one grid: `times` (T,) are bar close times in UTC; each array is (T, N) in `symbols` order."""

    times: pd.DatetimeIndex
    symbols: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    stale: np.ndarray  # True where the bar had no trades and was forward-filled
    previous_close: pd.Timestamp  # close of the calendar's bar before times[0]: later news belongs to the grid
    outside_sessions: int = 0  # input bars dropped because they closed outside every session (intraday)

    @property
    def n_bars(self) -> int:
        return len(self.times)

    def head(self, n_bars: int) -> BarPanel:
        """The first `n_bars` bars: what was known at the close of bar n_bars-1."""
        return BarPanel(times=self.times[:n_bars], symbols=self.symbols, previous_close=self.previous_close,
                        outside_sessions=self.outside_sessions,
                        **{name: getattr(self, name)[:n_bars]
                           for name in ("open", "high", "low", "close", "volume", "stale")})


def validate_bars(frame: pd.DataFrame, source: str, timezone: str | None = None) -> pd.DataFrame:
    """Check the bar contract and return a clean copy sorted by (timestamp, symbol).

    Errors name the source, the row (0-based, in input order) and the symbol: missing columns,
    missing/non-positive prices, high/low that do not bound open/close, negative or missing volume,
    naive timestamps (unless `timezone` declares their zone) and duplicate (timestamp, symbol) pairs.
    A high or low that misses open/close by at most OHLC_TOLERANCE (relative: a vendor's rounding, a few
    ULPs) is widened to bound them; the count is in the result's attrs["widened_bars"] and the log.
    """
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing columns {missing}; bars need {list(BAR_COLUMNS)}", source=source)
    if frame.empty:
        raise DataError("no bars", source=source)
    timestamp = to_utc(frame["timestamp"].reset_index(drop=True), column="timestamp", source=source,
                       timezone=timezone)
    symbol = frame["symbol"].reset_index(drop=True)
    if symbol.isna().any():
        raise DataError("empty symbol", source=source, row=int(symbol.isna().to_numpy().argmax()))
    symbol = symbol.astype(str)
    values: dict[str, np.ndarray] = {}
    for column in (*PRICE_COLUMNS, "volume"):
        try:
            values[column] = pd.to_numeric(frame[column]).astype(np.float64).to_numpy()
        except (ValueError, TypeError):
            raise DataError(f"column {column!r} is not numeric", source=source) from None
    rows = _RowNamer(symbol, timestamp, source)
    prices = np.column_stack([values[c] for c in PRICE_COLUMNS])
    rows.check((~np.isfinite(prices)).any(axis=1),
               "missing or infinite price (NaN/inf); fix or drop the row, prices are never filled")
    rows.check((prices <= 0).any(axis=1), "price <= 0")
    volume = values["volume"]
    rows.check(~np.isfinite(volume) | (volume < 0), "volume is missing, infinite or negative")
    body_high = np.maximum(values["open"], values["close"])
    body_low = np.minimum(values["open"], values["close"])
    miss = np.maximum((body_high - values["high"]) / body_high, (values["low"] - body_low) / body_low)
    rows.check(miss > OHLC_TOLERANCE, f"high/low do not bound open and close (by more than {OHLC_TOLERANCE:g} "
               "relative); fix the bar or drop it")
    widened = int((miss > 0).sum())
    if widened:
        log.warning("%s: widened high/low of %d bars to bound open/close (missed by at most %.1e relative)",
                    source, widened, float(miss.max()))
        values["high"] = np.maximum(values["high"], body_high)
        values["low"] = np.minimum(values["low"], body_low)
    # sorted by (timestamp, symbol); a stable sort keeps equal keys in input order, so of each run of equal keys
    # all but the first row (in input order) are duplicates, as pandas' duplicated(keep="first") marks them
    code = pd.factorize(symbol, sort=True)[0]
    ticks = timestamp.array.asi8
    order = np.lexsort((code, ticks))
    repeat = (ticks[order[1:]] == ticks[order[:-1]]) & (code[order[1:]] == code[order[:-1]])
    dupes = np.zeros(len(order), dtype=bool)
    dupes[order[1:][repeat]] = True
    rows.check(dupes, "duplicate (timestamp, symbol); keep one bar per symbol and time")
    clean = pd.DataFrame({"timestamp": timestamp.array.take(order), "symbol": symbol.array.take(order),
                          **{column: values[column][order] for column in (*PRICE_COLUMNS, "volume")}})
    clean.attrs["widened_bars"] = widened
    return clean


@dataclass(frozen=True)
class _RowNamer:
    """Names bad rows of a bar frame by symbol and time, in input order."""

    symbol: pd.Series
    timestamp: pd.Series
    source: str

    def check(self, bad: np.ndarray, message: str) -> None:
        """Raise for the first bad row, naming its symbol and time and how many rows share the problem."""
        if bad.any():
            row = int(bad.argmax())
            more = f" ({int(bad.sum())} rows in all)" if bad.sum() > 1 else ""
            raise DataError(f"{message}: symbol {self.symbol.iat[row]!r} at {self.timestamp.iat[row]}{more}",
                            source=self.source, row=row)


class BarFileSource:
    """Bars from a parquet or CSV file in the long format; `columns` maps a vendor's column names to the
    contract's (the contract names also match ignoring case) and `timezone` declares the zone of naive times.

    >>> BarFileSource("data/bars.parquet").load(["AURA"], start, end).head(2)
                      timestamp symbol    open    high     low   close   volume
    0 2026-01-05 00:03:00+00:00   AURA  100.00  100.21   99.93  100.12  5123.0
    1 2026-01-05 00:06:00+00:00   AURA  100.12  100.30  100.02  100.27  4810.0
    dtypes: timestamp datetime64[ns, UTC], symbol str, prices and volume float64.
    """

    def __init__(self, path: Path | str, columns: Mapping[str, str] | None = None,
                 timezone: str | None = None) -> None:
        self.path = Path(path)
        self.columns = dict(columns or {})
        self.timezone = timezone

    def read(self) -> pd.DataFrame:
        """The whole file, validated."""
        frame = read_table(self.path, ("parquet", "csv"), "bar")
        frame = standard_columns(frame, BAR_COLUMNS, self.columns, source=str(self.path))
        return validate_bars(frame, source=str(self.path), timezone=self.timezone)

    def load(self, symbols: list[str] | None = None, start: pd.Timestamp | None = None,
             end: pd.Timestamp | None = None) -> pd.DataFrame:
        """Bars of `symbols` (all when None) with start <= timestamp <= end; unknown symbols are an error."""
        frame = self.read()
        if symbols is not None:
            unknown = sorted(set(symbols) - set(frame["symbol"].unique()))
            if unknown:
                raise DataError(f"symbols {unknown} have no bars in this file", source=str(self.path))
            frame = frame[frame["symbol"].isin(symbols)]
        if start is not None:
            frame = frame[frame["timestamp"] >= pd.Timestamp(start)]
        if end is not None:
            frame = frame[frame["timestamp"] <= pd.Timestamp(end)]
        return frame.reset_index(drop=True)


def resample_bars(frame: pd.DataFrame, universe: Universe, spec: BarSpec, label: str = "close",
                  source: str = "bars") -> BarPanel:
    """Aggregate validated bars onto one grid of `spec.interval` bars labelled by close time.

    The grid holds the calendar's bars (every interval for "24/7", the exchange's sessions otherwise) from the
    first bar at which every asset has traded to the last bar seen. An input bar closing at c falls in the first
    grid bar closing at or after c; on an exchange's intraday grid, bars closing outside every session (pre- and
    after-market) are dropped and counted in the log. Empty grid bars repeat the last close as
    open/high/low/close, get volume 0 and stale=True. An asset with more than `spec.max_missing_fraction` stale
    bars is refused, naming it.
    """
    if label not in ("close", "open"):
        raise ValueError(f"label must be 'close' or 'open', got {label!r}")
    slots = _grid_slots(frame, spec, label, source)
    outside = len(frame) - len(slots.frame)
    frame, slot, grid = slots.frame, slots.index, slots.grid
    present = set(frame["symbol"].unique())
    unknown = sorted(present - set(universe.symbols))
    if unknown:
        raise DataError(f"symbols {unknown} are not in the universe {list(universe.symbols)}", source=source)
    absent = [s for s in universe.symbols if s not in present]
    if absent:
        raise DataError(f"universe symbols {absent} have no bars", source=source)
    symbols = universe.symbols
    column = pd.Index(symbols).get_indexer(frame["symbol"])  # every symbol is in the universe (checked)
    first_seen = np.full(len(symbols), np.iinfo(np.int64).max)
    np.minimum.at(first_seen, column, slot)
    first = int(first_seen.max())
    times = grid.closes[first:int(slot.max()) + 1]
    row = slot - first  # bars before the first complete grid bar get a negative row and are dropped
    arrays = _one_bar_per_slot(frame, row, column, len(times), len(symbols))
    if arrays is None:  # several input bars share a grid bar: aggregate them
        arrays = _aggregated(frame, row, column, len(times), len(symbols))
    stale = np.isnan(arrays["close"])
    missing_fraction = stale.mean(axis=0)
    too_sparse = [(s, f) for s, f in zip(symbols, missing_fraction, strict=True) if f > spec.max_missing_fraction]
    if too_sparse:
        detail = ", ".join(f"{s} ({f:.1%} of {len(times)} bars missing)" for s, f in too_sparse)
        raise DataError(f"assets over the missing-data limit of {spec.max_missing_fraction:.1%}: {detail}; "
                        "drop them from the universe or raise max_missing_fraction", source=source)
    close = _forward_filled(arrays["close"])
    for name in ("open", "high", "low"):
        arrays[name] = np.where(stale, close, arrays[name])
    arrays["close"] = close
    arrays["volume"] = np.where(stale, 0.0, arrays["volume"])
    previous_close = grid.closes[first - 1] if first > 0 else grid.opens[first]
    return BarPanel(times=times, symbols=symbols, stale=stale, previous_close=previous_close,
                    outside_sessions=outside, **arrays)


@dataclass(frozen=True)
class _Slots:
    """Input bars (those that belong to a grid bar) with the position of their grid bar in `grid`."""

    frame: pd.DataFrame
    index: np.ndarray  # (rows,) int64 positions in grid.closes
    grid: CalendarBars


def _grid_slots(frame: pd.DataFrame, spec: BarSpec, label: str, source: str) -> _Slots:
    """The grid bar of every input bar. "24/7": the grid bar (g - interval, g] with g >= the bar's close time.
    An exchange calendar: the first session bar closing at or after the bar's close (after its open time when
    labelled by open); intraday bars outside that bar's (open, close] are outside the sessions and dropped."""
    step = spec.timedelta
    if is_continuous(spec.calendar):
        close_time = frame["timestamp"] + (step if label == "open" else pd.Timedelta(0))
        slots = close_time.dt.ceil(step)
        unit = slots.dt.unit
        ticks = slots.array.asi8  # grid-bar close times in `unit` since the epoch
        first = int(ticks.min())
        index = (ticks - first) // (step // pd.Timedelta(1, unit))  # exact: grid bars are whole steps apart
        closes = pd.date_range(pd.Timestamp(first, unit=unit, tz="UTC"), pd.Timestamp(int(ticks.max()), unit=unit,
                               tz="UTC"), freq=step, tz="UTC")
        return _Slots(frame=frame, index=index, grid=CalendarBars(closes=closes, opens=closes - step))
    stamps = pd.DatetimeIndex(frame["timestamp"])
    try:
        grid = calendar_bars(spec.calendar, step, stamps.min(), stamps.max())
    except ValueError as err:
        raise DataError(str(err), source=source) from None
    index = grid.closes.searchsorted(stamps, side="left" if label == "close" else "right").astype(np.int64)
    inside = index < len(grid.closes)
    if step < pd.Timedelta("1D"):
        opens = grid.opens[np.minimum(index, len(grid.closes) - 1)]
        inside &= (stamps > opens) if label == "close" else (stamps >= opens)
    if not inside.all():
        log.warning("%s: dropped %d of %d bars outside the %s sessions (pre-/after-market or past the calendar)",
                    source, int((~inside).sum()), len(inside), spec.calendar)
        if not inside.any():
            raise DataError(f"no bar falls inside a {spec.calendar} session; check the timestamps' time zone",
                            source=source)
    return _Slots(frame=frame[inside].reset_index(drop=True), index=index[inside], grid=grid)


def _aggregated(frame: pd.DataFrame, row: np.ndarray, column: np.ndarray, n_times: int,
                n_symbols: int) -> dict[str, np.ndarray]:
    """(T, N) OHLCV arrays (NaN where no input bar falls) aggregated per grid bar: first open, highest high,
    lowest low, last close, summed volume; input rows with a negative `row` are dropped."""
    keep = row >= 0
    agg = frame[keep].assign(bar=row[keep], col=column[keep]).groupby(["bar", "col"], sort=True).agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"),
        close=("close", "last"), volume=("volume", "sum"))
    return {name: agg[name].unstack("col").reindex(index=range(n_times), columns=range(n_symbols))
            .to_numpy(np.float64) for name in ("open", "high", "low", "close", "volume")}


def _one_bar_per_slot(frame: pd.DataFrame, row: np.ndarray, column: np.ndarray, n_times: int,
                      n_symbols: int) -> dict[str, np.ndarray] | None:
    """`_aggregated` for the common case (bars already on the grid, e.g. a served request) without pandas'
    groupby: when no two input bars share a (grid bar, symbol), each grid value is its one bar's value, so
    the arrays are scattered directly (the same numbers, bit for bit: the aggregate of one value is that
    value, -0.0 included). None when some bars do share one."""
    key = (row - row.min()) * n_symbols + column
    if len(np.unique(key)) != len(key):
        return None
    keep = row >= 0  # bars before the first complete grid bar are dropped
    arrays = {}
    for name in ("open", "high", "low", "close", "volume"):
        grid = np.full((n_times, n_symbols), np.nan)
        grid[row[keep], column[keep]] = frame[name].to_numpy(np.float64)[keep]
        arrays[name] = grid
    return arrays


def _forward_filled(values: np.ndarray) -> np.ndarray:
    """(T, N) with each NaN replaced by the last non-NaN value above it in its column (NaN while none is):
    pandas' ffill, without building a frame."""
    seen = np.where(np.isnan(values), 0, np.arange(len(values))[:, None])
    np.maximum.accumulate(seen, axis=0, out=seen)
    return values[seen, np.arange(values.shape[1])]
