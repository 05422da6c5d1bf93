"""Portfolio math against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuralfusion.portfolio import (
    annualised_sharpe,
    compounded_pnl,
    max_drawdown,
    portfolio_returns,
    topk_weights,
    turnover,
)


def test_topk_keeps_largest_magnitudes_with_their_signs():
    weights = topk_weights(np.array([0.1, -3.0, 2.0, 0.5]), k=2)
    np.testing.assert_allclose(weights, [0.0, -0.6, 0.4, 0.0])
    assert np.abs(weights).sum() == pytest.approx(1.0)


def test_topk_breaks_ties_by_lower_asset_index():
    np.testing.assert_allclose(topk_weights(np.array([1.0, -1.0, 1.0, 0.2]), k=2), [0.5, -0.5, 0.0, 0.0])


def test_topk_with_k_at_least_n_uses_every_asset():
    np.testing.assert_allclose(topk_weights(np.array([1.0, -3.0]), k=5), [0.25, -0.75])


def test_topk_of_all_zero_scores_is_flat_and_bad_inputs_raise():
    np.testing.assert_array_equal(topk_weights(np.zeros((2, 3)), k=2), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_weights(np.ones(3), k=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        topk_weights(np.array([1.0, np.nan]), k=1)


def test_returns_charge_costs_on_turnover():
    weights = np.array([[0.5, -0.5], [0.5, -0.5], [-0.5, 0.5]])
    asset_returns = np.array([[0.01, -0.02], [0.0, 0.01], [0.02, 0.0]])
    np.testing.assert_allclose(turnover(weights), [1.0, 0.0, 2.0])
    got = portfolio_returns(weights, asset_returns, cost_bps=10.0)
    np.testing.assert_allclose(got, [0.015 - 0.001, -0.005, -0.01 - 0.002])


def test_sharpe_drawdown_and_pnl_by_hand():
    returns = np.array([0.01, -0.02, 0.03])
    mean, std = 0.02 / 3, np.std(returns, ddof=1)
    assert annualised_sharpe(returns, bars_per_year=4) == pytest.approx(mean / std * 2)
    assert annualised_sharpe(np.zeros(5), 100) == 0.0
    np.testing.assert_allclose(compounded_pnl(returns), [1.01, 1.01 * 0.98, 1.01 * 0.98 * 1.03])
    assert max_drawdown(returns) == pytest.approx(0.02)


def test_walk_forward_holds_each_book_until_the_next_anchor():
    from neuralfusion.backtest import walk_forward

    asset_returns = np.arange(20, dtype=float)[:, None] * np.array([[0.001, -0.001]])
    run = walk_forward(np.array([3, 6]), np.array([[1.0, 0.0], [0.0, -1.0]]), asset_returns, hold=4, cost_bps=0)
    assert run.first_bar == 4 and len(run.returns) == 7  # bars 4..10
    np.testing.assert_allclose(run.returns, [0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.010])
    np.testing.assert_allclose(run.turnover, [1, 0, 0, 2, 0, 0, 0])
    with pytest.raises(ValueError, match="runs past"):
        walk_forward(np.array([17]), np.array([[1.0, 0.0]]), asset_returns, hold=4, cost_bps=0)


@pytest.mark.parametrize(("interval", "start", "end"), [("1D", "2024-01-01", "2025-12-31"),
                                                        ("30min", "2024-01-01", "2024-06-28")])
def test_metrics_agree_with_empyrical_on_an_xnys_walk_forward(interval, start, end):
    """Sharpe, max drawdown and annual return of a momentum walk-forward on an XNYS grid, annualised with the
    grid's own bars per year, equal empyrical's on the same per-bar returns."""
    import empyrical
    from builders import make_news, session_times, walk_bars

    from neuralfusion.backtest import rebalance_anchors, walk_forward
    from neuralfusion.dataset import market_data
    from neuralfusion.specs import BarSpec, Universe

    times = session_times("XNYS", interval, start, end)
    symbols = ("AAA", "BBB", "CCC", "DDD")
    data = market_data(walk_bars(times, symbols, seed=3), make_news(symbols, n_items=5, start=times[0],
                                                                  span=pd.Timedelta("1D")),
                       Universe(symbols=symbols), BarSpec(interval=interval, calendar="XNYS"))
    assert data.bars_per_year == pytest.approx(252.0 if interval == "1D" else 252 * 13 - 3 * 6, abs=7)
    anchors = rebalance_anchors(np.arange(20, data.n_bars), 5, data.n_bars)
    close = data.panel.close
    walk = walk_forward(anchors, topk_weights(close[anchors] / close[anchors - 20] - 1.0, 2), data.returns, 5, 2.0)
    metrics = walk.metrics(data.bars_per_year)
    per_year = data.bars_per_year
    assert metrics["sharpe"] == pytest.approx(empyrical.sharpe_ratio(walk.returns, annualization=per_year),
                                              rel=1e-9, abs=1e-12)
    assert metrics["max_drawdown"] == pytest.approx(-empyrical.max_drawdown(walk.returns), rel=1e-9)
    assert metrics["annual_return"] == pytest.approx(empyrical.annual_return(walk.returns, annualization=per_year),
                                                     rel=1e-9)
    assert metrics["annual_turnover"] == pytest.approx(walk.turnover.sum() / (len(walk.returns) / per_year))
