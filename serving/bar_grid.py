"""A by-reference worker's bars on the model's grid, kept in step with its bar buffer, so that the window of a new
as-of bar is a slice of arrays rather than a rebuild from the source's rows (serving/by_reference.py).

The bar buffer tells the grid every change of the rows it holds: replaced by one window's rows, extended by the rows
after a time (read again from OVERLAP before its newest row, so a late row replaces what was held), cleared. For
every grid close of the buffer's span the grid keeps each symbol's bar and whether the close is *clean*: exactly one
row per symbol, at the close itself, no other row since the previous close, and every per-bar rule of a request
holding (`serving.column_checks.bar_rule_breaks`). A window whose closes, with the staleness margin before them, are
all clean is exactly the window the full path builds from the same rows: gridding such rows changes nothing, no bar
is stale and every check passes, so the grid's slice is that window to the bit (tested against the full path, bar
by bar). Any other window (a bar missing or late, rows between closes or outside the sessions, a broken rule) goes
the full way, which says what is wrong with it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuralfusion.calendar import BarClock
from neuralfusion.data.bars import BarPanel
from serving.column_checks import BAR_VALUES, bar_rule_breaks, request_bars

__all__ = ["BarGrid", "GridWindow", "clean_panel"]

_AFTER = pd.Timedelta(1, "ns")  # BarClock.closes includes its first time; a span (lo, hi] does not


@dataclass(frozen=True)
class GridWindow:
    """A window's checked bars (`request_bars`' frame, what the inputs hash reads) and the same bars as the panel
    `resample_bars` would grid them into (what the model's preparation reads)."""

    bars: pd.DataFrame
    panel: BarPanel


class BarGrid:
    """The clean closes of one bar buffer's span (module docstring); thread-safe. Changes come from the buffer,
    one at a time (under its lock); `window` may be called from any thread."""

    def __init__(self, universe: tuple[str, ...], clock: BarClock) -> None:
        self.universe = universe  # the model's order: a panel's
        self.symbols = tuple(sorted(universe))  # the contract's order within one bar time: the frames'
        self._to_universe = np.array([self.symbols.index(s) for s in universe])
        self.clock = clock
        self._index = pd.Index(self.symbols)
        self._lock = threading.Lock()
        self.lo: pd.Timestamp | None = None  # the span (lo, hi]: every row the buffer holds in it was seen
        self.hi: pd.Timestamp | None = None
        self.closes = np.empty(0, np.int64)  # every grid close of the span, UTC nanoseconds, ascending
        self.clean = np.empty(0, bool)  # per close
        self.values = np.empty((0, len(self.symbols), len(BAR_VALUES)))  # (close, symbol, BAR_VALUES)

    def cleared(self) -> None:
        """The buffer forgot its rows."""
        with self._lock:
            self.lo = self.hi = None
            self.closes, self.clean, self.values = self.closes[:0], self.clean[:0], self.values[:0]

    def replaced(self, rows: pd.DataFrame, lo: pd.Timestamp, hi: pd.Timestamp) -> None:
        """The buffer now holds `rows`: every row of its source with lo < time <= hi, sorted by time."""
        closes, clean, values = self._gridded(rows, lo, hi)
        with self._lock:
            self.lo, self.hi, self.closes, self.clean, self.values = lo, hi, closes, clean, values

    def extended(self, rows: pd.DataFrame, start: pd.Timestamp, lo: pd.Timestamp, hi: pd.Timestamp) -> None:
        """The buffer now holds `rows` (lo < time <= hi, sorted by time), read again from the source after `start`:
        the closes after the last one at or before `start` are gridded again (a late row may have changed them, and
        the first of them may gather rows from both sides of `start`), those up to it are kept."""
        if self.lo is None or self.hi is None or not self.lo <= start <= self.hi:
            self.replaced(rows, lo, hi)
            return
        redo = max(self.clock.last_close(start), lo)
        times = pd.DatetimeIndex(rows["timestamp"]).as_unit("ns").asi8
        closes, clean, values = self._gridded(rows.iloc[int(np.searchsorted(times, redo.value, side="right")):],
                                              redo, hi)
        with self._lock:
            keep = (self.closes > lo.value) & (self.closes <= redo.value)
            self.closes = np.concatenate([self.closes[keep], closes])
            self.clean = np.concatenate([self.clean[keep], clean])
            self.values = np.concatenate([self.values[keep], values])
            self.lo, self.hi = lo, hi

    def window(self, first: pd.Timestamp, start: pd.Timestamp, as_of: pd.Timestamp) -> GridWindow | None:
        """The bars of the closes from `start` to `as_of` when every close after `first` up to `as_of` is clean;
        None when some is not, or the span does not reach from `first` to `as_of`."""
        held = self._clean_slice(first, start, as_of)
        if held is None:
            return None
        closes, values = held
        n = len(self.symbols)
        symbol = pd.Series(np.tile(np.array(self.symbols, dtype=object), len(closes)), dtype="str")
        flat = values.reshape(len(closes) * n, len(BAR_VALUES))
        bars = request_bars(np.repeat(closes, n), symbol, {name: flat[:, i] for i, name in enumerate(BAR_VALUES)},
                            in_order=True)
        return GridWindow(bars, self._panel(values, start, as_of))

    def panel(self, first: pd.Timestamp, start: pd.Timestamp, as_of: pd.Timestamp) -> BarPanel | None:
        """`window`'s panel alone."""
        held = self._clean_slice(first, start, as_of)
        return None if held is None else self._panel(held[1], start, as_of)

    def _clean_slice(self, first: pd.Timestamp, start: pd.Timestamp, as_of: pd.Timestamp
                     ) -> tuple[np.ndarray, np.ndarray] | None:
        """(closes, values) from `start` to `as_of` when every close after `first` up to `as_of` is clean."""
        with self._lock:
            if self.lo is None or self.hi is None or self.lo > first or self.hi < as_of:
                return None
            end = int(np.searchsorted(self.closes, as_of.value, side="right"))
            if end == 0 or self.closes[end - 1] != as_of.value:
                return None
            if not self.clean[int(np.searchsorted(self.closes, first.value, side="right")):end].all():
                return None
            begin = int(np.searchsorted(self.closes, start.value, side="left"))
            return self.closes[begin:end], self.values[begin:end]

    def _panel(self, values: np.ndarray, start: pd.Timestamp, as_of: pd.Timestamp) -> BarPanel:
        """Every bar is real and on its close: gridding changes nothing, nothing is stale or dropped, the times are
        the grid's own index (its frequency too) and the bar before the first is the calendar's previous_close."""
        ordered = values[:, self._to_universe]
        times = self.clock.closes(start, as_of).as_unit("ns")
        return BarPanel(times=times, symbols=self.universe, stale=np.zeros(ordered.shape[:2], bool),
                        previous_close=self.clock.earlier(times[0], 1),
                        **{name: ordered[:, :, i].copy() for i, name in enumerate(BAR_VALUES)})

    def _gridded(self, rows: pd.DataFrame, lo: pd.Timestamp, hi: pd.Timestamp
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(closes, clean, values) of the grid closes in (lo, hi] from the source's rows in that span."""
        try:
            closes = self.clock.closes(lo + _AFTER, hi).as_unit("ns").asi8
        except ValueError:  # outside the calendar's sessions: nothing is clean, the full way says what is wrong
            closes = np.empty(0, np.int64)
        n_closes, n_symbols = len(closes), len(self.symbols)
        if not n_closes:
            return closes, np.empty(0, bool), np.empty((0, n_symbols, len(BAR_VALUES)))
        times = pd.DatetimeIndex(rows["timestamp"]).as_unit("ns").asi8
        symbol = self._index.get_indexer(rows["symbol"])  # -1: not the model's (the full path names it)
        row_values = {name: rows[name].to_numpy(np.float64) for name in BAR_VALUES}
        slot = np.searchsorted(closes, times, side="left")  # the close each row's bar falls in (n_closes: none)
        on_close = (slot < n_closes) & (closes[np.minimum(slot, n_closes - 1)] == times) & (symbol >= 0)
        spoiled = np.zeros(n_closes + 1, bool)
        spoiled[slot[~on_close | bar_rule_breaks(times, row_values)]] = True
        key = slot[on_close] * n_symbols + symbol[on_close]
        once = np.bincount(key, minlength=n_closes * n_symbols).reshape(n_closes, n_symbols) == 1
        values = np.full((n_closes, n_symbols, len(BAR_VALUES)), np.nan)
        values[slot[on_close], symbol[on_close]] = np.column_stack([row_values[name][on_close] for name in BAR_VALUES])
        return closes, once.all(axis=1) & ~spoiled[:n_closes], values


def clean_panel(bars: pd.DataFrame, universe: tuple[str, ...], clock: BarClock, bars_needed: int) -> BarPanel | None:
    """The panel `resample_bars` grids a request's checked bars (sorted by time) into, when every bar sits on its
    close, every symbol of the universe (and no other) has one at every close from the first to the last, the last
    is a close and there are at least `bars_needed` of them: what `check_request_against_model` asks of a request,
    and more. None otherwise: then the request is checked against the model and gridded the full way, which names
    what is wrong."""
    first, last = bars["timestamp"].iat[0], bars["timestamp"].iat[-1]
    try:
        before = clock.earlier(clock.last_close(first), 1)  # the span starts a bar before the first: all are in it
    except (ValueError, IndexError):  # before the calendar's first session: the full way says so
        return None
    grid = BarGrid(universe, clock)
    grid.replaced(bars, before, last)
    if len(grid.closes) < bars_needed:
        return None
    return grid.panel(before, grid.clock.next_close(before), last)
