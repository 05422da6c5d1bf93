"""Trading calendars: which bars a grid holds, and how many of them make a year.

`"24/7"` is a continuous grid (crypto): every `interval` round the clock. Any other calendar is an
exchange code of `exchange_calendars` (XNYS, XLON, XTKS, ...): the grid holds only that exchange's
sessions. A 1-day interval gives one bar per session labelled at its close (early closes included);
a shorter interval gives bars inside the sessions only, the last bar of a session (or of a morning
session before a lunch break) cut at the close. All times are UTC, so daylight-saving changes move the
bars' UTC labels with the exchange's local clock.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd

__all__ = [
    "CALENDAR_END",
    "CONTINUOUS",
    "BarClock",
    "CalendarBars",
    "calendar_bars",
    "check_calendar",
    "grid_bars_per_year",
    "is_continuous",
]

CONTINUOUS = "24/7"
DAY = pd.Timedelta("1D")
# the continuous calendar's year: every day trades
CONTINUOUS_DAYS_PER_YEAR = 365.0
# the span exchange calendars are built over (holiday rules are known ahead)
CALENDAR_START, CALENDAR_END = "1990-01-01", "2035-12-31"


def is_continuous(calendar: str) -> bool:
    """True for the round-the-clock grid, False for an exchange's sessions."""
    return calendar == CONTINUOUS


def check_calendar(calendar: str, interval: pd.Timedelta) -> None:
    """Refuse an unknown calendar or an interval an exchange calendar cannot hold, naming the fix."""
    if is_continuous(calendar):
        return
    names = _calendar_names()
    if calendar not in names:
        raise ValueError(f"calendar {calendar!r} is neither '24/7' nor an exchange code of exchange_calendars "
                         f"(e.g. XNYS, XLON, XTKS; {len(names)} known)")
    if interval > DAY:
        raise ValueError(f"an exchange calendar holds daily or intraday bars; interval {interval} is longer than a day")
    if interval < DAY and DAY % interval != pd.Timedelta(0):
        raise ValueError(f"intraday interval {interval} must divide one day evenly (e.g. 1min, 5min, 30min, 1h)")


@dataclass(frozen=True)
class CalendarBars:
    """Consecutive bars of a calendar: close times (the labels) and open times, both UTC, ascending."""

    closes: pd.DatetimeIndex
    opens: pd.DatetimeIndex


def calendar_bars(calendar: str, interval: pd.Timedelta, first: pd.Timestamp, last: pd.Timestamp) -> CalendarBars:
    """Every bar of an exchange calendar whose session falls between the dates of `first` and `last` (UTC),
    with a week's margin on each side, so a time just outside still finds the bar it belongs to."""
    exchange = _exchange(calendar)
    start = max(exchange.first_session, (pd.Timestamp(first).tz_convert("UTC") - 7 * DAY).tz_localize(None).normalize())
    end = min(exchange.last_session, (pd.Timestamp(last).tz_convert("UTC") + 10 * DAY).tz_localize(None).normalize())
    if start > end:
        raise ValueError(f"calendar {calendar} covers {exchange.first_session.date()} .. "
                         f"{exchange.last_session.date()}, not {first} .. {last}")
    with _quiet():
        if interval >= DAY:
            sessions = exchange.sessions_in_range(start, end)
            return CalendarBars(closes=pd.DatetimeIndex(exchange.closes[sessions]),
                                opens=pd.DatetimeIndex(exchange.opens[sessions]))
        bars = exchange.trading_index(start, end, interval, intervals=True, closed="right", force=True)
    return CalendarBars(closes=pd.DatetimeIndex(bars.right), opens=pd.DatetimeIndex(bars.left))


@dataclass(frozen=True)
class BarClock:
    """The close times of one calendar's bars as a clock that the live job and the service step: which bar
    closed last by a given time, whether a time is a bar's close, the close n bars earlier. On "24/7" these are
    whole `interval`s since the epoch; on an exchange they are the sessions' bars of `calendar_bars`, so nights,
    weekends and holidays are skipped exactly as the training grid skips them."""

    calendar: str
    interval: pd.Timedelta

    @classmethod
    def of(cls, grid: BarClock | pd.Timedelta) -> BarClock:
        """`grid` itself, or the round-the-clock grid of a bare interval (as callers of the 24/7 era pass it)."""
        return grid if isinstance(grid, BarClock) else cls(CONTINUOUS, pd.Timedelta(grid))

    def closes(self, first: pd.Timestamp, last: pd.Timestamp) -> pd.DatetimeIndex:
        """Every bar close c with first <= c <= last (UTC), ascending."""
        if is_continuous(self.calendar):
            return pd.date_range(first.ceil(self.interval), last, freq=self.interval)
        closes = calendar_bars(self.calendar, self.interval, first, last).closes
        return closes[(closes >= first) & (closes <= last)]

    def ceil(self, times: pd.DatetimeIndex) -> pd.DatetimeIndex:
        """The close of the bar each time falls in: the first close at or after it (a time after the calendar's
        last known session stays NaT)."""
        if is_continuous(self.calendar):
            return times.ceil(self.interval)
        closes = calendar_bars(self.calendar, self.interval, times.min(), times.max()).closes
        index = closes.searchsorted(times, side="left")
        return pd.DatetimeIndex(closes.append(pd.DatetimeIndex([pd.NaT], tz="UTC"))[index])

    def is_close(self, time: pd.Timestamp) -> bool:
        """Whether `time` is a bar's close."""
        return bool(self.ceil(pd.DatetimeIndex([time]))[0] == time)

    def last_close(self, time: pd.Timestamp) -> pd.Timestamp:
        """The close of the last bar complete at `time` (the latest close <= time): over a weekend or holiday
        the previous session's, never a bar of a shut market."""
        if is_continuous(self.calendar):
            return time.floor(self.interval)
        closes = calendar_bars(self.calendar, self.interval, time, time).closes
        return closes[closes.searchsorted(time, side="right") - 1]

    def next_close(self, time: pd.Timestamp) -> pd.Timestamp:
        """The close of the first bar after `time` (the earliest close > time)."""
        if is_continuous(self.calendar):
            return time.floor(self.interval) + self.interval
        closes = calendar_bars(self.calendar, self.interval, time, time).closes
        return closes[closes.searchsorted(time, side="right")]

    def earlier(self, close: pd.Timestamp, n: int) -> pd.Timestamp:
        """The close `n` bars before the bar closing at `close` (itself for n=0)."""
        if is_continuous(self.calendar):
            return close - n * self.interval
        # an exchange has at least one bar per session and a session at least every ~5 days: widen until found
        span = (n + 1) * min(self.interval, DAY) * 2 + 10 * DAY
        while True:
            closes = calendar_bars(self.calendar, self.interval, close - span, close).closes
            position = int(closes.searchsorted(close, side="right")) - 1 - n
            if position >= 0:
                return closes[position]
            if (close - span).tz_localize(None) < _exchange(self.calendar).first_session:
                raise ValueError(f"calendar {self.calendar} has no bar {n} bars before {close.isoformat()}")
            span *= 2


def grid_bars_per_year(calendar: str, interval: pd.Timedelta, times: pd.DatetimeIndex) -> float:
    """Bars a year on the calendar the grid `times` uses: for an exchange, the calendar's bars over the whole
    calendar years the grid spans, divided by their number (XNYS daily: ~252; 30 minutes: ~3,270); for "24/7"
    365 days of round-the-clock bars."""
    if is_continuous(calendar):
        return CONTINUOUS_DAYS_PER_YEAR * (24 * 60 / (interval / pd.Timedelta("1min")))
    exchange = _exchange(calendar)
    first_year, last_year = times[0].tz_convert("UTC").year, times[-1].tz_convert("UTC").year
    start = max(exchange.first_session, pd.Timestamp(f"{first_year}-01-01"))
    end = min(exchange.last_session, pd.Timestamp(f"{last_year}-12-31"))
    with _quiet():
        if interval >= DAY:
            count = len(exchange.sessions_in_range(start, end))
        else:
            count = len(exchange.trading_index(start, end, interval, intervals=False, closed="right", force=True))
    days = (end - start + DAY) / DAY
    return float(count / days * 365.25) if days < 365 else float(count / (last_year - first_year + 1))


@functools.cache
def _calendar_names() -> frozenset[str]:
    import exchange_calendars

    return frozenset(exchange_calendars.get_calendar_names(include_aliases=True))


@functools.cache
def _exchange(calendar: str):  # -> exchange_calendars.ExchangeCalendar (imported lazily: ~0.3 s)
    """The exchange's calendar over fixed bounds, so a grid never depends on today's date: CALENDAR_START (or the
    library's default start where the exchange's history is shorter) to CALENDAR_END."""
    import exchange_calendars

    with _quiet():
        try:
            return exchange_calendars.get_calendar(calendar, start=CALENDAR_START, end=CALENDAR_END)
        except ValueError:  # e.g. XTKS from 1997, XSHG from 1991
            return exchange_calendars.get_calendar(calendar, end=CALENDAR_END)


@contextmanager
def _quiet() -> Iterator[None]:
    """exchange_calendars 4.13 reads tz-aware Series.values, which pandas 3.1 deprecates (Pandas4Warning); the
    values it reads are UTC nanoseconds either way, so the warning is silenced around its calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=getattr(pd.errors, "Pandas4Warning", FutureWarning))
        yield
