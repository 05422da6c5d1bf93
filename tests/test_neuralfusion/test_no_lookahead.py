"""Nothing after bar t changes anything the model sees up to bar t; news lands in the right bar."""

from __future__ import annotations

import numpy as np
import pandas as pd
from builders import STEP, make_bars, make_news

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


def test_future_bars_and_news_change_nothing_up_to_t():
    bars, news = make_bars(n_bars=400), make_news(n_items=120, n_bars=400)
    before = market_data(bars, news, UNIVERSE, BarSpec())
    t = 250
    cutoff = before.panel.times[t]
    after = market_data(*perturb_after(bars, news, cutoff), UNIVERSE, BarSpec())

    np.testing.assert_array_equal(before.features[: t + 1], after.features[: t + 1])
    np.testing.assert_array_equal(before.returns[: t + 1], after.returns[: t + 1])
    np.testing.assert_array_equal(before.aligned.coverage[: t + 1], after.aligned.coverage[: t + 1])
    assert not np.array_equal(before.features[t + 1:], after.features[t + 1:])  # the perturbation is real

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
