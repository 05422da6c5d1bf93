"""Nothing after bar t changes anything the model sees up to bar t; news lands in the right bar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import STEP, make_bars, make_news, session_times, walk_bars

from neuralfusion.align import align_news, bar_index
from neuralfusion.dataset import market_data
from neuralfusion.features import WARMUP_BARS, FeatureNormalizer
from neuralfusion.specs import BarSpec, Universe, WindowSpec
from neuralfusion.windows import input_windows, usable_anchors

UNIVERSE = Universe(symbols=("AAA", "BBB", "CCC"))
SPEC = WindowSpec(lookback=20, horizon=10)


def perturb_after(bars: pd.DataFrame, news: pd.DataFrame, cutoff: pd.Timestamp, seed: int = 1):
    """Rewrite every bar and news item after `cutoff`: new prices, volumes, texts, symbols, times."""
    rng = np.random.default_rng(seed)
    bars, news = bars.copy(), news.copy()
    later = bars["timestamp"] > cutoff
    scale = rng.uniform(0.5, 2.0, later.sum())
    for column in ("open", "high", "low", "close"):
        bars.loc[later, column] *= scale
    bars.loc[later, "volume"] = rng.uniform(1, 1e6, later.sum())
    future = news["published_at"] > cutoff
    news.loc[future, "title"] = "Completely different story"
    news.loc[future, "symbols"] = pd.Series([["CCC", "AAA"]] * int(future.sum()), index=news.index[future])
    news.loc[future, "published_at"] = news.loc[future, "published_at"] + pd.Timedelta("7min")
    extra = news.iloc[:3].assign(id=["x1", "x2", "x3"], published_at=cutoff + pd.Timedelta("1s"))
    return bars, pd.concat([news, extra], ignore_index=True)


def three_grids():
    """The 24/7 3-minute grid and XNYS daily and 30-minute grids, each with news round the clock."""
    daily = session_times("XNYS", "1D", "2024-01-01", "2025-06-30")
    half_hours = session_times("XNYS", "30min", "2024-02-01", "2024-04-30")
    return [
        pytest.param(make_bars(n_bars=400), make_news(n_items=120, n_bars=400), BarSpec(), 250, id="24/7-3min"),
        pytest.param(walk_bars(daily), make_news(n_items=300, start=daily[0] - pd.Timedelta("3D"),
                                                 span=daily[-1] - daily[0]),
                     BarSpec(interval="1D", calendar="XNYS"), 250, id="XNYS-1D"),
        pytest.param(walk_bars(half_hours), make_news(n_items=300, start=half_hours[0] - pd.Timedelta("1D"),
                                                      span=half_hours[-1] - half_hours[0]),
                     BarSpec(interval="30min", calendar="XNYS"), 500, id="XNYS-30min"),
    ]


@pytest.mark.parametrize(("bars", "news", "bar_spec", "t"), three_grids())
def test_future_bars_and_news_change_nothing_up_to_t(bars, news, bar_spec, t):
    before = market_data(bars, news, UNIVERSE, bar_spec)
    cutoff = before.panel.times[t]
    after = market_data(*perturb_after(bars, news, cutoff), UNIVERSE, bar_spec)

    pd.testing.assert_index_equal(before.panel.times[: t + 1], after.panel.times[: t + 1])
    np.testing.assert_array_equal(before.features[: t + 1], after.features[: t + 1])
    np.testing.assert_array_equal(before.returns[: t + 1], after.returns[: t + 1])
    np.testing.assert_array_equal(before.aligned.coverage[: t + 1], after.aligned.coverage[: t + 1])
    assert not np.array_equal(before.features[t + 1:], after.features[t + 1:])  # the perturbation is real
    assert before.aligned.coverage[t + 1:].any()  # and there is later news to perturb

    anchors = usable_anchors(before.n_bars, WARMUP_BARS, SPEC)
    past = anchors[anchors <= t]
    np.testing.assert_array_equal(input_windows(before.features, past, SPEC.lookback),
                                  input_windows(after.features, past, SPEC.lookback))
    fit_before = FeatureNormalizer.fit(before.features, WARMUP_BARS, t)
    fit_after = FeatureNormalizer.fit(after.features, WARMUP_BARS, t)
    assert fit_before == fit_after


def test_news_one_second_after_a_close_lands_in_the_next_bar():
    times = pd.date_range("2026-01-05 00:03", periods=10, freq=STEP, tz="UTC")
    close = times[4]
    stamps = pd.Series([close - pd.Timedelta("1s"), close, close + pd.Timedelta("1s")])
    np.testing.assert_array_equal(bar_index(stamps, times, times[0] - STEP), [4, 4, 5])


def test_news_outside_the_grid_belongs_to_no_bar():
    times = pd.date_range("2026-01-05 00:03", periods=10, freq=STEP, tz="UTC")
    stamps = pd.Series([times[0] - STEP, times[0] - STEP + pd.Timedelta("1s"), times[-1] + pd.Timedelta("1s")])
    np.testing.assert_array_equal(bar_index(stamps, times, times[0] - STEP), [-1, 0, -1])


def test_coverage_uses_symbols_else_aliases():
    universe = Universe(symbols=("AURA", "BOLT"), aliases={"AURA": ("Aurora Mining",)})
    times = pd.date_range("2026-01-05 00:03", periods=4, freq=STEP, tz="UTC")
    news = pd.DataFrame({
        "id": ["1", "2", "3", "4"],
        "published_at": [times[0], times[1], times[2], times[3]],
        "title": ["aurora mining soars", "BOLT slides", "Boltzmann physics prize", "Markets"],
        "body": ["", "", "", ""],
        "symbols": [None, None, None, ["BOLT", "XYZ"]],
    })
    aligned = align_news(news, times, times[0] - STEP, universe)
    assert aligned.symbols == [["AURA"], ["BOLT"], [], ["BOLT"]]
    np.testing.assert_array_equal(aligned.coverage, [[1, 0], [0, 1], [0, 0], [0, 1]])


def new_york(*stamps: str) -> pd.Series:
    return pd.Series([pd.Timestamp(s, tz="America/New_York").tz_convert("UTC") for s in stamps])


def xnys_grid(interval: str, start: str, end: str):
    bars = walk_bars(session_times("XNYS", interval, start, end))
    return market_data(bars, make_news(n_items=1, start=pd.Timestamp(start, tz="UTC") + pd.Timedelta("1D"),
                                       span=pd.Timedelta("1h")),
                       UNIVERSE, BarSpec(interval=interval, calendar="XNYS")).panel


def close_of(panel, index: np.ndarray) -> list[str]:
    return [str(panel.times[i].tz_convert("America/New_York")) for i in index]


def test_news_on_xnys_daily_belongs_to_the_next_session_close():
    panel = xnys_grid("1D", "2024-02-26", "2024-07-31")
    stamps = new_york(
        "2024-03-01 15:59", "2024-03-01 16:00", "2024-03-01 16:01", "2024-03-01 18:27",  # a Friday
        "2024-03-02 11:00",  # Saturday
        "2024-03-10 03:30",  # Sunday of the DST change (clocks jump 02:00 -> 03:00)
        "2024-03-08 16:01",  # Friday before it, EST: Monday's close is EDT
        "2024-07-03 13:00", "2024-07-03 13:01",  # early close at 13:00
        "2024-07-04 12:00",  # Independence Day
    )
    index = bar_index(stamps, panel.times, panel.previous_close)
    assert close_of(panel, index) == [
        "2024-03-01 16:00:00-05:00", "2024-03-01 16:00:00-05:00", "2024-03-04 16:00:00-05:00",
        "2024-03-04 16:00:00-05:00", "2024-03-04 16:00:00-05:00",
        "2024-03-11 16:00:00-04:00", "2024-03-11 16:00:00-04:00",
        "2024-07-03 13:00:00-04:00", "2024-07-05 16:00:00-04:00", "2024-07-05 16:00:00-04:00",
    ]


def test_news_on_xnys_30min_after_the_close_belongs_to_the_next_sessions_first_bar():
    panel = xnys_grid("30min", "2024-02-26", "2024-03-29")
    stamps = new_york("2024-03-08 15:59", "2024-03-08 16:00", "2024-03-08 16:01", "2024-03-08 18:27",
                      "2024-03-10 12:00", "2024-03-11 09:30", "2024-03-11 09:31", "2024-03-11 10:00")
    index = bar_index(stamps, panel.times, panel.previous_close)
    assert close_of(panel, index) == [
        "2024-03-08 16:00:00-05:00", "2024-03-08 16:00:00-05:00", "2024-03-11 10:00:00-04:00",
        "2024-03-11 10:00:00-04:00", "2024-03-11 10:00:00-04:00", "2024-03-11 10:00:00-04:00",
        "2024-03-11 10:00:00-04:00", "2024-03-11 10:00:00-04:00",
    ]


def test_news_before_an_xnys_grid_starts_belongs_to_no_bar():
    panel = xnys_grid("1D", "2024-03-04", "2024-06-28")  # first session Monday 2024-03-04 (Friday's close before)
    stamps = new_york("2024-03-01 16:00", "2024-03-01 16:01", "2024-03-03 12:00")
    np.testing.assert_array_equal(bar_index(stamps, panel.times, panel.previous_close), [-1, 0, 0])
