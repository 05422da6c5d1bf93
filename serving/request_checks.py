"""Checks that need a whole request or the served model: the request's frames, its window and its as-of bar,
and the hash that identifies its inputs. A violated rule is a RequestError (HTTP 400, gRPC INVALID_ARGUMENT)
naming the problem; frame-level rules come from `neuralfusion.data` (`validate_bars`, `validate_news`), so
nothing is re-implemented.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from operator import attrgetter

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pydantic import TypeAdapter, ValidationError

from neuralfusion.calendar import BarClock, is_continuous
from neuralfusion.data.bars import BAR_COLUMNS, validate_bars
from neuralfusion.data.news import NEWS_COLUMNS, validate_news
from neuralfusion.errors import DataError
from serving.errors import RequestError
from serving.schemas import BarIn, PredictRequest

__all__ = ["check_as_of", "check_request_against_model", "describe_validation_error", "inputs_sha256",
           "request_frames"]

_BARS = TypeAdapter(list[BarIn])  # serialises validated bars in Rust: the canonical bytes of the hash


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, `bars[3].high: Input should be greater than 0`, for gRPC status details."""
    def place(loc: tuple[int | str, ...]) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "request"
    return "; ".join(f"{place(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors())


def request_frames(request: PredictRequest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The request as the long bar and news frames of the data contracts (docs/DESIGN.md), checked by
    `validate_bars` and `validate_news` (duplicates, ordering); a violated rule is a RequestError."""
    # column by column from the validated models (their timestamps are aware UTC datetimes): a frame built
    # row-wise infers every column's type from Python objects, several times slower for ~2,000 bars
    rows = request.bars
    bars = pd.DataFrame({"timestamp": pd.DatetimeIndex([bar.timestamp for bar in rows], tz="UTC"),
                         "symbol": [bar.symbol for bar in rows],
                         **{c: np.fromiter([getattr(bar, c) for bar in rows], np.float64, len(rows))
                            for c in BAR_COLUMNS[2:]}})
    news = pd.DataFrame({c: [getattr(item, c) for item in request.news] for c in NEWS_COLUMNS})
    news["published_at"] = pd.to_datetime(news["published_at"], utc=True)
    try:
        return validate_bars(bars, source="request bars"), validate_news(news, source="request news")
    except DataError as err:
        raise RequestError(str(err)) from None


def check_request_against_model(request: PredictRequest, symbols: tuple[str, ...], bars_needed: int,
                                interval: pd.Timedelta | BarClock) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refuse a request the model cannot answer, naming the problem; return its validated frames.

    The model trades exactly `symbols` and reads the `bars_needed` grid bars (of `interval` round the clock, or
    the BarClock of the model's calendar) that end with the request's last bar (its as-of bar), so every
    symbol needs bars from the window's first bar on and the last bar must close on the grid (else the as-of
    bar would be incomplete).
    """
    clock = BarClock.of(interval)
    bars, news = request_frames(request)
    sent = set(bars["symbol"])
    unknown = sorted(sent - set(symbols))
    if unknown:
        raise RequestError(f"bars for symbols {unknown} that this model does not trade; it trades {list(symbols)}: "
                           "drop them")
    missing = [s for s in symbols if s not in sent]
    if missing:
        raise RequestError(f"no bars for symbols {missing}; this model needs bars for every one of {list(symbols)}")
    last = bars["timestamp"].max()
    if not clock.is_close(last):
        raise RequestError(f"the last bar closes at {last.isoformat()}, not on the {_grid_text(clock)} bar "
                           "grid, so the as-of bar would be incomplete: end the bars at "
                           f"{clock.last_close(last).isoformat()}")
    window_start = clock.earlier(last, bars_needed - 1)
    slot = pd.Series(clock.ceil(pd.DatetimeIndex(bars["timestamp"])), index=bars.index)
    column = pd.Index(symbols).get_indexer(bars["symbol"])
    first = np.full(len(symbols), np.iinfo(np.int64).max)
    np.minimum.at(first, column, slot.array.asi8)  # each symbol's first grid bar, without a groupby
    first_slot = pd.DatetimeIndex(first.astype(f"datetime64[{slot.dt.unit}]")).tz_localize("UTC")
    short = {s: int(slot[column == i].nunique()) for i, s in enumerate(symbols) if first_slot[i] > window_start}
    if short:
        detail = ", ".join(f"{s} has {n} from {first_slot[symbols.index(s)].isoformat()}" for s, n in short.items())
        raise RequestError(f"too few bars: the model reads {bars_needed} bars of {_grid_text(clock)} per "
                           f"symbol, from {window_start.isoformat()} to {last.isoformat()}; {detail}: "
                           f"send bars from {window_start.isoformat()} on")
    return bars, news


def _grid_text(clock: BarClock) -> str:
    text = _interval_text(clock.interval)
    return text if is_continuous(clock.calendar) else f"{text} {clock.calendar}"


def _interval_text(interval: pd.Timedelta) -> str:
    """'3min' rather than pandas' '0 days 00:03:00' in messages."""
    return to_offset(interval).freqstr


def check_as_of(request: PredictRequest, interval: pd.Timedelta, lead_bars: int, now: datetime | None = None) -> None:
    """Refuse a request whose last bar closes after now plus `lead_bars` bars (NFC_AS_OF_LEAD_BARS): a bar from
    the future would become the newest stored prediction for good."""
    last = max(bar.timestamp for bar in request.bars)
    latest = (now or datetime.now(UTC)) + lead_bars * interval
    if last > latest:
        raise RequestError(f"the last bar closes at {last.isoformat()}, after now plus {lead_bars} bar(s) "
                           f"({latest.isoformat()}, NFC_AS_OF_LEAD_BARS): send bars that have closed")


def inputs_sha256(request: PredictRequest) -> str:
    """sha256 of the request's inputs in a canonical form (bars by time and symbol, news by time and id, UTC
    times, the caller's request id left out): the same inputs in any order or time zone give the same hash."""
    digest = hashlib.sha256(_BARS.dump_json(sorted(request.bars, key=attrgetter("timestamp", "symbol"))))
    news = sorted((n.published_at.isoformat(), n.id, n.title, n.body, None if n.symbols is None else sorted(n.symbols))
                  for n in request.news)
    digest.update(json.dumps(news, ensure_ascii=False).encode())
    return digest.hexdigest()
