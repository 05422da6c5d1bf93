"""OHLCV bars: read and validate the long format, then resample onto one bar grid.

Contract (DESIGN.md section 2): columns `timestamp` (UTC), `symbol`, `open, high, low, close, volume`.
Each input row is a bar labelled by its close time (`label="close"`, the default) or by its open time
(`label="open"`, e.g. exchange candles). Gaps are forward-filled from the last close, with zero volume
and a stale flag; prices are never zero-filled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuralfusion.errors import DataError
from neuralfusion.settings import BarSpec, Universe
from neuralfusion.timeutil import to_utc

__all__ = ["BAR_COLUMNS", "PRICE_COLUMNS", "BarFileSource", "BarPanel", "resample_bars", "validate_bars"]

PRICE_COLUMNS = ("open", "high", "low", "close")
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

    @property
    def n_bars(self) -> int:
        return len(self.times)

    def head(self, n_bars: int) -> BarPanel:
        """The first `n_bars` bars: what was known at the close of bar n_bars-1."""
        return BarPanel(times=self.times[:n_bars], symbols=self.symbols,
                        **{name: getattr(self, name)[:n_bars]
                           for name in ("open", "high", "low", "close", "volume", "stale")})


def validate_bars(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check the bar contract and return a clean copy sorted by (timestamp, symbol).

    Errors name the source, the row (0-based, in input order) and the symbol: missing columns,
    missing/non-positive prices, high/low that do not bound open/close, negative or missing volume,
    naive timestamps and duplicate (timestamp, symbol) pairs.
    """
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing columns {missing}; bars need {list(BAR_COLUMNS)}", source=source)
    if frame.empty:
        raise DataError("no bars", source=source)
    out = frame.loc[:, list(BAR_COLUMNS)].reset_index(drop=True)
    out["timestamp"] = to_utc(out["timestamp"], column="timestamp", source=source)
    if out["symbol"].isna().any():
        raise DataError("empty symbol", source=source, row=int(out["symbol"].isna().to_numpy().argmax()))
    out["symbol"] = out["symbol"].astype(str)
    for column in (*PRICE_COLUMNS, "volume"):
        try:
            out[column] = pd.to_numeric(out[column]).astype(np.float64)
        except (ValueError, TypeError):
            raise DataError(f"column {column!r} is not numeric", source=source) from None
    _check_rows(out, (~np.isfinite(out[list(PRICE_COLUMNS)].to_numpy())).any(axis=1),
                "missing or infinite price (NaN/inf); fix or drop the row, prices are never filled", source)
    _check_rows(out, (out[list(PRICE_COLUMNS)].to_numpy() <= 0).any(axis=1), "price <= 0", source)
    _check_rows(out, ~np.isfinite(out["volume"].to_numpy()) | (out["volume"].to_numpy() < 0),
                "volume is missing, infinite or negative", source)
    body_high = np.maximum(out["open"], out["close"])
    body_low = np.minimum(out["open"], out["close"])
    _check_rows(out, (out["high"] < body_high) | (out["low"] > body_low),
                "high/low do not bound open and close", source)
    dupes = out.duplicated(["timestamp", "symbol"], keep="first")
    _check_rows(out, dupes.to_numpy(), "duplicate (timestamp, symbol); keep one bar per symbol and time", source)
    return out.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)


def _check_rows(frame: pd.DataFrame, bad: np.ndarray, message: str, source: str) -> None:
    """Raise for the first bad row, naming its symbol and time and how many rows share the problem."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        row = int(bad.argmax())
        more = f" ({int(bad.sum())} rows in all)" if bad.sum() > 1 else ""
        raise DataError(f"{message}: symbol {frame['symbol'].iat[row]!r} at {frame['timestamp'].iat[row]}{more}",
                        source=source, row=row)


class BarFileSource:
    """Bars from a parquet or CSV file in the long format.

    >>> BarFileSource("data/bars.parquet").load(["AURA"], start, end).head(2)
                      timestamp symbol    open    high     low   close   volume
    0 2026-01-05 00:03:00+00:00   AURA  100.00  100.21   99.93  100.12  5123.0
    1 2026-01-05 00:06:00+00:00   AURA  100.12  100.30  100.02  100.27  4810.0
    dtypes: timestamp datetime64[ns, UTC], symbol str, prices and volume float64.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def read(self) -> pd.DataFrame:
        """The whole file, validated."""
        if not self.path.exists():
            raise DataError("file not found", source=str(self.path))
        suffix = self.path.suffix.lower()
        if suffix == ".parquet":
            frame = pd.read_parquet(self.path)
        elif suffix in (".csv", ".gz"):
            frame = pd.read_csv(self.path)
        else:
            raise DataError("unsupported bar file type; use .parquet or .csv", source=str(self.path))
        return validate_bars(frame, source=str(self.path))

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

    The grid runs from the first bar at which every asset has traded to the last bar seen. An input
    bar closing at c falls in the grid bar (g - interval, g] with g >= c. Empty grid bars repeat the
    last close as open/high/low/close, get volume 0 and stale=True. An asset with more than
    `spec.max_missing_fraction` stale bars is refused, naming it.
    """
    if label not in ("close", "open"):
        raise ValueError(f"label must be 'close' or 'open', got {label!r}")
    step = spec.timedelta
    present = set(frame["symbol"].unique())
    unknown = sorted(present - set(universe.symbols))
    if unknown:
        raise DataError(f"symbols {unknown} are not in the universe {list(universe.symbols)}", source=source)
    absent = [s for s in universe.symbols if s not in present]
    if absent:
        raise DataError(f"universe symbols {absent} have no bars", source=source)
    close_time = frame["timestamp"] + (step if label == "open" else pd.Timedelta(0))
    keyed = frame.assign(bar=close_time.dt.ceil(step))
    agg = keyed.groupby(["bar", "symbol"], sort=True).agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"),
        close=("close", "last"), volume=("volume", "sum"))
    first_seen = agg.reset_index().groupby("symbol")["bar"].min()
    start = first_seen.max()
    end = agg.index.get_level_values("bar").max()
    times = pd.date_range(start, end, freq=step, tz="UTC")
    symbols = universe.symbols
    arrays = {name: agg[name].unstack("symbol").reindex(index=times, columns=list(symbols)).to_numpy(np.float64)
              for name in ("open", "high", "low", "close", "volume")}
    stale = np.isnan(arrays["close"])
    missing_fraction = stale.mean(axis=0)
    too_sparse = [(s, f) for s, f in zip(symbols, missing_fraction, strict=True) if f > spec.max_missing_fraction]
    if too_sparse:
        detail = ", ".join(f"{s} ({f:.1%} of {len(times)} bars missing)" for s, f in too_sparse)
        raise DataError(f"assets over the missing-data limit of {spec.max_missing_fraction:.1%}: {detail}; "
                        "drop them from the universe or raise max_missing_fraction", source=source)
    close = pd.DataFrame(arrays["close"]).ffill().to_numpy()
    for name in ("open", "high", "low"):
        arrays[name] = np.where(stale, close, arrays[name])
    arrays["close"] = close
    arrays["volume"] = np.where(stale, 0.0, arrays["volume"])
    return BarPanel(times=times, symbols=symbols, stale=stale, **arrays)
