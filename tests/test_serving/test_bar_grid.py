"""The by-reference grid (serving/bar_grid.py): a window sliced from the checked bars on the model's grid equals,
frame and inputs hash, the window built the full way from the same source rows, as-of bar after as-of bar, while
the feed is complete, while a vendor corrects a bar inside the re-read overlap, while a bar is missing and then
arrives late, with rows between grid closes, on an exchange calendar; and a window the grid cannot vouch for goes
the full way, with the full way's refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import STEP, make_bars, make_news, session_times, walk_bars

from neuralfusion.data.bars import BarPanel, resample_bars
from neuralfusion.specs import BarSpec, Universe
from serving.bar_grid import BarGrid, clean_panel
from serving.by_reference import OVERLAP, ModelWindow, ReferenceSources
from serving.column_checks import RequestColumns, RequestFrames, check_columns
from serving.errors import RequestError
from serving.request_checks import check_request_against_model
from serving.schemas import PredictAtRequest, RequestLimits
from serving.settings import ServeSettings

SYMBOLS = ("AAA", "BBB", "CCC", "DDD")
WINDOW = ModelWindow(Universe(symbols=SYMBOLS), BarSpec(interval="3min"), bars_needed=30, lookback=12)


def write_folder(folder: Path, bars: pd.DataFrame, news: pd.DataFrame | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    bars.to_parquet(folder / "bars.parquet")
    if news is not None:
        news.to_parquet(folder / "news.parquet")
    return folder


class Pair:
    """The same data folder read by a worker with the grid and by one without it (the full way only); counts the
    windows the grid answered (with its panel)."""

    def __init__(self, folder: Path, window: ModelWindow = WINDOW) -> None:
        self.window = window
        self.with_grid = ReferenceSources(ServeSettings(bars_dir=str(folder)))
        self.full_way = ReferenceSources(ServeSettings(bars_dir=str(folder)), views=False)
        self.from_grid = 0

    def ask(self, as_of: pd.Timestamp) -> None:
        """Both workers' windows of `as_of` are the same frames and hash, and the grid's panel is what the
        preparation would grid from those frames."""
        query = PredictAtRequest(as_of=as_of.to_pydatetime(), request_id="same")
        sliced, built = self.with_grid.request(self.window, query), self.full_way.request(self.window, query)
        assert sliced.inputs_sha256 == built.inputs_sha256, as_of
        pd.testing.assert_frame_equal(sliced.frames.bars, built.frames.bars)
        pd.testing.assert_frame_equal(sliced.frames.news, built.frames.news)
        assert sliced.frames.bars.attrs == built.frames.bars.attrs
        assert built.panel is None
        if sliced.panel is not None:  # the grid's panel is the one the preparation would grid from the bars
            spec, symbols = self.window.bar_spec, self.window.universe.symbols
            check_request_against_model(built.frames, symbols, self.window.bars_needed, spec.clock)
            assert_same_panel(sliced.panel, resample_bars(built.frames.bars, self.window.universe, spec))
            self.from_grid += 1

    def close(self) -> None:
        self.with_grid.close()
        self.full_way.close()


def assert_same_panel(panel: BarPanel, expected: BarPanel) -> None:
    pd.testing.assert_index_equal(panel.times, expected.times)
    assert panel.symbols == expected.symbols and panel.previous_close == expected.previous_close
    assert panel.outside_sessions == expected.outside_sessions
    for name in ("open", "high", "low", "close", "volume", "stale"):
        got, want = getattr(panel, name), getattr(expected, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name


def closes_of(bars: pd.DataFrame) -> list[pd.Timestamp]:
    return [pd.Timestamp(t) for t in np.sort(bars["timestamp"].unique())]


def test_a_complete_feed_is_answered_from_the_grid_as_the_full_way_builds_it(tmp_path):
    bars = make_bars(SYMBOLS, n_bars=200)
    pair = Pair(write_folder(tmp_path / "data", bars, make_news(SYMBOLS, n_items=150, n_bars=200)))
    try:
        asked = closes_of(bars)[60:140]
        for as_of in asked:
            pair.ask(as_of)
        for as_of in asked[-6:-1]:  # a few bars older than the newest, as concurrent asks arrive
            pair.ask(as_of)
    finally:
        pair.close()
    assert pair.from_grid == len(asked) + 5  # every window: only the first was gridded whole


def test_a_corrected_bar_and_a_late_bar_inside_the_overlap_give_the_full_ways_windows(tmp_path):
    bars = make_bars(SYMBOLS, n_bars=200)
    closes = closes_of(bars)
    late = (bars["symbol"] == "BBB") & (bars["timestamp"] == closes[99])  # written after its bar was first asked
    folder = write_folder(tmp_path / "data", bars[~late])
    pair = Pair(folder)
    try:
        for as_of in closes[60:100]:
            pair.ask(as_of)
        assert pair.from_grid == 39  # without BBB's bar at closes[99] that window is built the full way
        corrected = bars.copy()
        fix = (corrected["symbol"] == "CCC") & (corrected["timestamp"] == closes[97])
        corrected.loc[fix, ["high", "close"]] = corrected.loc[fix, ["high", "close"]] * 1.01  # a vendor's correction
        write_folder(folder, corrected)
        assert closes[99] - closes[97] <= OVERLAP  # both changes lie inside the rows read again
        for as_of in closes[100:130]:
            pair.ask(as_of)
        grid = pair.with_grid.bar_buffer.view
        window = grid.window(closes[96], closes[97], closes[99])
        assert window is not None  # the late bar arrived and the correction replaced what was held
        held = window.bars.set_index(["timestamp", "symbol"])
        assert held.loc[(closes[97], "CCC"), "close"] == corrected.loc[fix, "close"].iat[0]
        assert held.loc[(closes[99], "BBB"), "close"] == bars.loc[late, "close"].iat[0]
    finally:
        pair.close()
    assert pair.from_grid == 39 + 30


def test_a_gap_goes_the_full_way_until_it_leaves_the_window(tmp_path):
    bars = make_bars(SYMBOLS, n_bars=200)
    closes = closes_of(bars)
    gap = (bars["symbol"] == "DDD") & (bars["timestamp"] == closes[100])  # never delivered
    pair = Pair(write_folder(tmp_path / "data", bars[~gap]))
    asked = closes[101:170]
    try:
        for as_of in asked:
            pair.ask(as_of)
    finally:
        pair.close()
    # windows reading closes[100] (and its staleness margin) go the full way, which grids the gap as a stale bar
    touched = [a for a in asked if WINDOW.bar_spec.clock.earlier(a, WINDOW.bars_needed + 1) - pd.Timedelta("15min")
               < closes[100]]
    assert 0 < len(touched) < len(asked) and pair.from_grid == len(asked) - len(touched)


def test_rows_between_grid_closes_are_never_sliced(tmp_path):
    one_minute = walk_bars(pd.date_range("2026-01-05 00:01", periods=600, freq="1min", tz="UTC"), SYMBOLS)
    pair = Pair(write_folder(tmp_path / "data", one_minute))
    try:
        for as_of in closes_of(one_minute)[170:200:3]:  # 3-minute closes of a 1-minute feed
            pair.ask(as_of)
    finally:
        pair.close()
    assert pair.from_grid == 0


def test_the_grid_vouches_only_for_closes_whose_rows_pass_every_request_rule():
    """Readers validate their rows, and a request's rules are stricter in places (high and low must bound open and
    close exactly): a close with a row that a request would refuse is never sliced."""
    bars = make_bars(SYMBOLS, n_bars=40)
    closes = closes_of(bars)
    grid = BarGrid(SYMBOLS, WINDOW.bar_spec.clock)
    grid.replaced(bars, closes[0] - STEP, closes[-1])
    assert grid.window(closes[5], closes[10], closes[-1]) is not None
    loose = bars.copy()
    row = loose.index[(loose["symbol"] == "CCC") & (loose["timestamp"] == closes[20])][0]
    loose.loc[row, "high"] = max(loose.loc[row, "open"], loose.loc[row, "close"]) * (1 - 1e-12)
    grid.replaced(loose, closes[0] - STEP, closes[-1])
    assert grid.window(closes[5], closes[10], closes[-1]) is None  # close 20 is inside
    assert grid.window(closes[21], closes[25], closes[-1]) is not None  # after it
    assert grid.window(closes[5], closes[10], closes[19]) is not None  # before it
    assert not grid.clean[20] and grid.clean[19] and grid.clean[21]


def test_an_exchange_calendar_feed_is_sliced_across_nights_and_weekends(tmp_path):
    times = session_times("XNYS", "30min", "2025-03-03", "2025-03-21")
    bars = walk_bars(times, SYMBOLS)
    window = ModelWindow(Universe(symbols=SYMBOLS), BarSpec(interval="30min", calendar="XNYS"), bars_needed=20,
                         lookback=8)
    pair = Pair(write_folder(tmp_path / "data", bars), window)
    try:
        asked = closes_of(bars)[30:100]  # crosses two weekends and every night between
        for as_of in asked:
            pair.ask(as_of)
    finally:
        pair.close()
    assert pair.from_grid == len(asked)


def request_frames_of(bars: pd.DataFrame, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    """A request's checked bars: the rows of [first, last], as the array checks hand them on."""
    window = bars[(bars["timestamp"] >= first) & (bars["timestamp"] <= last)]
    return check_columns(RequestColumns(bars={c: window[c].tolist() if c == "symbol" else window[c].to_numpy()
                                              for c in window.columns} | {
        "timestamp": pd.DatetimeIndex(window["timestamp"]).as_unit("ns").asi8}, news={}), RequestLimits()).bars


@pytest.mark.parametrize("calendar", ["24/7", "XNYS"])
def test_a_complete_request_is_read_into_the_panel_resample_bars_would_build(calendar):
    if calendar == "XNYS":
        spec = BarSpec(interval="30min", calendar="XNYS")
        bars = walk_bars(session_times("XNYS", "30min", "2025-03-03", "2025-03-14"), SYMBOLS)
    else:
        spec, bars = WINDOW.bar_spec, make_bars(SYMBOLS, n_bars=120)
    closes, needed = closes_of(bars), 40
    universe = Universe(symbols=SYMBOLS)
    for first, last in ((closes[10], closes[49]), (closes[0], closes[-1]), (closes[30], closes[80])):
        frames = request_frames_of(bars, first, last)
        assert_same_panel(clean_panel(frames, SYMBOLS, spec.clock, needed), resample_bars(frames, universe, spec))
    # the universe in another order than the contract's: the panel is in the model's order
    reordered = clean_panel(request_frames_of(bars, closes[10], closes[49]), SYMBOLS[::-1], spec.clock, needed)
    assert reordered.symbols == SYMBOLS[::-1]
    assert_same_panel(reordered, resample_bars(request_frames_of(bars, closes[10], closes[49]),
                                               Universe(symbols=SYMBOLS[::-1]), spec))


def test_a_request_that_is_not_complete_on_the_grid_is_gridded_the_full_way():
    bars = make_bars(SYMBOLS, n_bars=120)
    closes, clock, needed = closes_of(bars), WINDOW.bar_spec.clock, 40
    whole = request_frames_of(bars, closes[10], closes[59])
    assert clean_panel(whole, SYMBOLS, clock, needed) is not None
    assert clean_panel(whole, SYMBOLS, clock, 51) is None  # fewer bars than the model reads
    assert clean_panel(whole, SYMBOLS[:3], clock, needed) is None  # a symbol the model does not trade
    assert clean_panel(whole, (*SYMBOLS, "EEE"), clock, needed) is None  # a symbol without bars
    gap = whole[~((whole["symbol"] == "BBB") & (whole["timestamp"] == closes[30]))].reset_index(drop=True)
    assert clean_panel(gap, SYMBOLS, clock, needed) is None
    late = whole.assign(timestamp=whole["timestamp"] + pd.Timedelta("1min"))  # every bar between closes
    assert clean_panel(late, SYMBOLS, clock, needed) is None
    one_minute = walk_bars(pd.date_range("2026-01-05 00:01", periods=200, freq="1min", tz="UTC"), SYMBOLS)
    frames = request_frames_of(one_minute, pd.Timestamp("2026-01-05 00:03", tz="UTC"),
                               pd.Timestamp("2026-01-05 03:00", tz="UTC"))
    assert clean_panel(frames, SYMBOLS, clock, needed) is None


def test_bars_at_or_outside_the_calendars_ends_go_the_full_way_which_refuses_what_it_cannot_place():
    xnys = BarSpec(interval="1D", calendar="XNYS")
    first_sessions = walk_bars(pd.date_range("1990-01-02 21:00", periods=50, freq="B", tz="UTC"), SYMBOLS)
    assert clean_panel(first_sessions, SYMBOLS, xnys.clock, 20) is None  # no bar before the first to start from
    no_news = pd.DataFrame(columns=["id", "published_at", "title", "body", "symbols"])
    check_request_against_model(RequestFrames(first_sessions, no_news), SYMBOLS, 20, xnys.clock)
    for start in ("1975-01-02 21:00", "2199-01-02 21:00"):
        outside = walk_bars(pd.date_range(start, periods=50, freq="B", tz="UTC"), SYMBOLS)
        assert clean_panel(outside, SYMBOLS, xnys.clock, 20) is None
        with pytest.raises(RequestError, match=r"outside the model's 24h XNYS calendar: calendar XNYS covers"):
            check_request_against_model(RequestFrames(outside, no_news), SYMBOLS, 20, xnys.clock)
