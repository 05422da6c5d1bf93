"""Exchange-calendar grids: only sessions, labelled at their (early) closes in UTC, counted in trading bars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import make_news, session_times, walk_bars

from neuralfusion.calendar import grid_bars_per_year
from neuralfusion.data.bars import resample_bars
from neuralfusion.dataset import market_data
from neuralfusion.errors import DataError
from neuralfusion.specs import BarSpec, Universe

UNIVERSE = Universe(symbols=("AAA", "BBB", "CCC"))
XNYS_DAILY = BarSpec(interval="1D", calendar="XNYS")
XNYS_30MIN = BarSpec(interval="30min", calendar="XNYS")


def test_complete_xnys_daily_data_has_one_bar_per_session_and_no_stale_bar():
    times = session_times("XNYS", "1D", "2024-01-01", "2025-12-31")
    panel = resample_bars(walk_bars(times), UNIVERSE, XNYS_DAILY)
    assert panel.n_bars == len(times) == 502  # 252 sessions in 2024, 250 in 2025
    assert not panel.stale.any()
    new_york = panel.times.tz_convert("America/New_York")
    assert (new_york.day_of_week < 5).all()
    assert pd.Timestamp("2024-07-04 16:00", tz="America/New_York") not in new_york  # Independence Day
    assert pd.Timestamp("2024-11-29 13:00", tz="America/New_York") in new_york  # day after Thanksgiving: early close
    assert pd.Timestamp("2024-07-03 13:00", tz="America/New_York") in new_york
    assert panel.times[0] == pd.Timestamp("2024-01-02 21:00", tz="UTC")  # 16:00 EST
    assert pd.Timestamp("2024-07-01 20:00", tz="UTC") in panel.times  # 16:00 EDT


def test_complete_xnys_30min_data_has_no_stale_bar_and_bars_only_inside_sessions():
    times = session_times("XNYS", "30min", "2024-03-01", "2024-03-29")
    panel = resample_bars(walk_bars(times), UNIVERSE, XNYS_30MIN)
    assert panel.n_bars == len(times) == 20 * 13  # 20 sessions of 13 half-hours
    assert not panel.stale.any()
    local = panel.times.tz_convert("America/New_York")
    minutes = local.hour * 60 + local.minute
    assert minutes.min() == 10 * 60 and minutes.max() == 16 * 60  # first bar closes 10:00, last at the close
    # the DST change of 2024-03-10 moves the UTC labels by an hour, not the local ones
    assert pd.Timestamp("2024-03-08 21:00", tz="UTC") in panel.times
    assert pd.Timestamp("2024-03-11 20:00", tz="UTC") in panel.times


def test_a_missing_session_is_one_stale_trading_bar():
    times = session_times("XNYS", "1D", "2024-01-01", "2024-12-31")
    bars = walk_bars(times)
    gone = bars["timestamp"].eq(times[100]) & bars["symbol"].eq("BBB")
    panel = resample_bars(bars[~gone], UNIVERSE, BarSpec(interval="1D", calendar="XNYS", max_missing_fraction=0.01))
    assert panel.n_bars == 252
    assert panel.stale.sum() == 1 and panel.stale[100, 1]
    with pytest.raises(DataError, match=r"BBB \(0\.4% of 252 bars missing\)"):
        resample_bars(bars[~gone], UNIVERSE, BarSpec(interval="1D", calendar="XNYS", max_missing_fraction=0.001))


def test_daily_bars_dated_at_midnight_new_york_land_on_their_session():
    times = session_times("XNYS", "1D", "2024-01-01", "2024-03-31")
    bars = walk_bars(times)
    dated = bars.assign(timestamp=bars["timestamp"].dt.tz_convert("America/New_York").dt.normalize())
    by_date = resample_bars(dated, UNIVERSE, XNYS_DAILY)
    by_close = resample_bars(bars, UNIVERSE, XNYS_DAILY)
    pd.testing.assert_index_equal(by_date.times, by_close.times)
    np.testing.assert_array_equal(by_date.close, by_close.close)


def test_intraday_bars_outside_the_session_are_dropped_not_merged():
    times = session_times("XNYS", "30min", "2024-01-02", "2024-01-31")
    bars = walk_bars(times)
    extended = pd.concat([bars, walk_bars(times[:3] + pd.Timedelta("7h"), seed=5)])  # 17:00-18:00 New York
    panel = resample_bars(extended, UNIVERSE, XNYS_30MIN)
    reference = resample_bars(bars, UNIVERSE, XNYS_30MIN)
    np.testing.assert_array_equal(panel.close, reference.close)
    np.testing.assert_array_equal(panel.volume, reference.volume)


def test_bars_per_year_come_from_the_calendar_used():
    daily = session_times("XNYS", "1D", "2024-01-01", "2025-12-31")
    assert grid_bars_per_year("XNYS", pd.Timedelta("1D"), daily) == 251.0  # (252 + 250) / 2
    half_hours = session_times("XNYS", "30min", "2024-01-01", "2024-12-31")
    assert grid_bars_per_year("XNYS", pd.Timedelta("30min"), half_hours) == len(half_hours)
    assert len(half_hours) == 252 * 13 - 3 * 6  # three early closes at 13:00 lose 6 half-hours each
    assert grid_bars_per_year("24/7", pd.Timedelta("3min"), half_hours) == 365 * 480


def test_market_data_annualises_with_the_grid():
    times = session_times("XNYS", "1D", "2024-01-01", "2024-12-31")
    news = make_news(n_items=30, start=times[0] - pd.Timedelta("2D"), span=times[-1] - times[0])
    data = market_data(walk_bars(times), news, UNIVERSE, XNYS_DAILY)
    assert data.bars_per_year == 252.0


@pytest.mark.parametrize(("calendar", "interval", "message"), [
    ("NOPE", "1D", "neither '24/7' nor an exchange code"),
    ("09:30-16:00", "30min", "neither '24/7' nor an exchange code"),
    ("XNYS", "2D", "longer than a day"),
    ("XNYS", "7min", "divide one day evenly"),
])
def test_bad_calendars_are_refused_with_the_fix(calendar, interval, message):
    with pytest.raises(ValueError, match=message):
        BarSpec(interval=interval, calendar=calendar)
