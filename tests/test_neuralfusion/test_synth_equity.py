"""The synthetic equity market: exchange sessions, news round the clock, and a planted leak that a correct
pipeline cannot trade (its news belongs to the bar that already moved)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuralfusion.calendar import calendar_bars
from neuralfusion.dataset import load_data_dir
from neuralfusion.portfolio import annualised_sharpe, portfolio_returns, topk_weights
from neuralfusion.stats import sharpe_statistics
from neuralfusion.synth import SynthConfig, generate_market, write_market


@pytest.fixture(scope="module", params=[("1D", 1100), ("30min", 150)], ids=["XNYS-1D", "XNYS-30min"])
def equity(request, tmp_path_factory):
    interval, days = request.param
    config = SynthConfig(n_assets=4, days=days, calendar="XNYS", interval=interval, seed=3)
    out = tmp_path_factory.mktemp("equity")
    market = generate_market(config)
    write_market(market, out)
    return config, market, load_data_dir(out)


def test_the_grid_is_the_sessions_with_no_stale_bar(equity):
    config, _, data = equity
    start = config.start_time
    closes = calendar_bars("XNYS", pd.Timedelta(config.interval), start, start + pd.Timedelta(days=config.days)).closes
    expected = closes[(closes > start) & (closes <= start + pd.Timedelta(days=config.days))]
    pd.testing.assert_index_equal(data.panel.times, expected, check_names=False)
    assert not data.panel.stale.any()
    assert data.bars_per_year == pytest.approx(252 if config.interval == "1D" else 252 * 13 - 18, abs=30)


def test_news_arrives_round_the_clock_including_after_the_close_and_on_weekends(equity):
    _, _, data = equity
    local = data.news["published_at"].dt.tz_convert("America/New_York")
    minutes = local.dt.hour * 60 + local.dt.minute
    assert (local.dt.day_of_week >= 5).mean() > 0.2  # weekends: 2/7 of the days
    assert ((minutes >= 16 * 60) | (minutes < 9 * 60 + 30)).mean() > 0.5  # outside the session
    assert (data.aligned.bar >= 0).all()


def test_the_planted_news_effect_is_there(equity):
    _, market, _ = equity
    assert market.oracle["sharpe"] > 2.0


def leak_strategies(market, data) -> dict[str, np.ndarray]:
    """Per-bar returns of trading each asset's leak news: as the pipeline aligns it (known at the close of the bar
    it belongs to, traded from the next bar) and one bar early (the look-ahead a wrong alignment gives)."""
    signal = np.zeros_like(data.returns)
    for k, planted in enumerate(data.news["planted"]):
        if planted.get("leak"):
            signal[data.aligned.bar[k], data.universe.index(data.aligned.symbols[k][0])] += planted["sign"]
    weights = topk_weights(signal, 2)
    return {"aligned": portfolio_returns(weights[:-1], data.returns[1:]),  # decided at bar t, held over t+1
            "look_ahead": portfolio_returns(weights[1:], data.returns[1:])}  # decided at bar t-1: the bug


def test_a_correct_pipeline_cannot_profit_from_the_leak_but_look_ahead_would(equity):
    config, market, data = equity
    assert sum(1 for item in market.news if item.get("planted", {}).get("leak")) > 0.5 * config.days
    returns = leak_strategies(market, data)
    honest = sharpe_statistics(returns["aligned"], data.bars_per_year)
    sharpe = annualised_sharpe(returns["aligned"], data.bars_per_year)
    assert abs(sharpe) < 3 * honest["sharpe_se"], (sharpe, honest)
    cheat = annualised_sharpe(returns["look_ahead"], data.bars_per_year)
    assert cheat > 5 * honest["sharpe_se"], cheat  # the plant is real: one bar early it is worth many SEs
