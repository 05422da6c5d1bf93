"""Checks that need a whole request or the served model: the request's frames, its window and its as-of bar,
and the hash that identifies its inputs. A violated rule is a RequestError (HTTP 400, gRPC INVALID_ARGUMENT)
naming the problem. Every function takes a /predict body (PredictRequest) or the RequestFrames of any body
format (serving/column_checks.py, where the per-item rules are checked over whole arrays); frame-level rules
come from `neuralfusion.data` (`validate_bars`, `validate_news`), so nothing is re-implemented.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pydantic import ValidationError

from neuralfusion.calendar import BarClock, is_continuous
from neuralfusion.data.bars import BAR_COLUMNS, BarPanel
from serving.column_checks import RequestFrames, check_columns
from serving.columns import columns_from_rows
from serving.errors import RequestError
from serving.schemas import PredictRequest, RequestLimits

__all__ = ["CheckedRequest", "as_frames", "check_as_of", "check_request_against_model", "describe_validation_error",
           "inputs_sha256", "request_frames"]

_HASH_VERSION = b"nfc-inputs-2\0"  # the canonical form below; a change of form changes this prefix


@dataclass(frozen=True)
class CheckedRequest:
    """A request's checked frames with their `inputs_sha256`, as predictions by reference build them: the service
    prepares these without checking or hashing them again. `panel`: the bars on the model's grid, when the builder
    had them so (serving/bar_grid.py): the preparation reads it rather than checking and gridding the bars again."""

    frames: RequestFrames
    inputs_sha256: str
    panel: BarPanel | None = None


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, `bars[3].high: Input should be greater than 0`, for gRPC status details."""
    def place(loc: tuple[int | str, ...]) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "request"
    return "; ".join(f"{place(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors())


def as_frames(request: PredictRequest | RequestFrames, limits: RequestLimits | None = None) -> RequestFrames:
    """The frames of a request: a /predict body (already checked row by row by its models) goes through the same
    array checks as the columnar bodies, so every format meets one rule set."""
    if isinstance(request, RequestFrames):
        return request
    return check_columns(columns_from_rows(request), limits or RequestLimits.from_env())


def request_frames(request: PredictRequest | RequestFrames) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The request as the long bar and news frames of the data contracts (docs/DESIGN.md), checked by
    `validate_bars` and `validate_news` (duplicates, ordering); a violated rule is a RequestError."""
    frames = as_frames(request)
    return frames.bars, frames.news


def check_request_against_model(request: PredictRequest | RequestFrames, symbols: tuple[str, ...], bars_needed: int,
                                interval: pd.Timedelta | BarClock) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refuse a request the model cannot answer, naming the problem; return its validated frames.

    The model trades exactly `symbols` and reads the `bars_needed` grid bars (of `interval` round the clock, or
    the BarClock of the model's calendar) that end with the request's last bar (its as-of bar), so every
    symbol needs bars from the window's first bar on and the last bar must close on the grid (else the as-of
    bar would be incomplete).
    """
    clock = BarClock.of(interval)
    bars, news = request_frames(request)
    codes, distinct = pd.factorize(bars["symbol"])  # a window repeats each symbol at every bar
    sent = set(distinct)
    unknown = sorted(sent - set(symbols))
    if unknown:
        raise RequestError(f"bars for symbols {unknown} that this model does not trade; it trades {list(symbols)}: "
                           "drop them")
    missing = [s for s in symbols if s not in sent]
    if missing:
        raise RequestError(f"no bars for symbols {missing}; this model needs bars for every one of {list(symbols)}")
    last = bars["timestamp"].max()
    try:
        if not clock.is_close(last):
            raise RequestError(f"the last bar closes at {last.isoformat()}, not on the {_grid_text(clock)} bar "
                               "grid, so the as-of bar would be incomplete: end the bars at "
                               f"{clock.last_close(last).isoformat()}")
        window_start = clock.earlier(last, bars_needed - 1)
        slot = pd.Series(clock.ceil(pd.DatetimeIndex(bars["timestamp"])), index=bars.index)
    except ValueError as err:  # times outside the calendar's known sessions
        raise RequestError(f"the bars' times are outside the model's {_grid_text(clock)} calendar: {err}") from None
    column = np.array([symbols.index(s) for s in distinct], dtype=np.int64)[codes]
    # each symbol's first grid bar is at its first row: the frames are sorted by time, and every symbol is sent
    first = slot.array.asi8[np.unique(column, return_index=True)[1]]
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


def check_as_of(request: PredictRequest | RequestFrames, interval: pd.Timedelta, lead_bars: int,
                now: datetime | None = None) -> None:
    """Refuse a request whose last bar closes after now plus `lead_bars` bars (NFC_AS_OF_LEAD_BARS): a bar from
    the future would become the newest stored prediction for good."""
    last = as_frames(request).bars["timestamp"].iat[-1]  # the frames are sorted by time
    latest = (now or datetime.now(UTC)) + lead_bars * interval
    if last > latest:
        raise RequestError(f"the last bar closes at {last.isoformat()}, after now plus {lead_bars} bar(s) "
                           f"({latest.isoformat()}, NFC_AS_OF_LEAD_BARS): send bars that have closed")


def inputs_sha256(request: PredictRequest | RequestFrames) -> str:
    """sha256 of the request's inputs in a canonical form, read from its frames (bars by time and symbol, news by
    time and id, times as UTC nanoseconds, the caller's request id left out): the same inputs in any order, time
    zone or body format (JSON rows, JSON columns, Arrow) give the same hash."""
    frames = as_frames(request)
    bars, news = frames.bars, frames.news
    digest = hashlib.sha256(_HASH_VERSION)
    digest.update(np.ascontiguousarray(pd.DatetimeIndex(bars["timestamp"]).as_unit("ns").asi8, "<i8").tobytes())
    digest.update(json.dumps(bars["symbol"].tolist()).encode())
    for column in BAR_COLUMNS[2:]:
        digest.update(np.ascontiguousarray(bars[column].to_numpy(np.float64), "<f8").tobytes())
    times = pd.DatetimeIndex(news["published_at"]).as_unit("ns").asi8.tolist()
    items = [[t, i, title, body, None if symbols is None else sorted(symbols)] for t, i, title, body, symbols in
             zip(times, news["id"], news["title"], news["body"], news["symbols"], strict=True)]
    digest.update(json.dumps(items, ensure_ascii=False).encode())
    return digest.hexdigest()
