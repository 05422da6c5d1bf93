"""Walk-forward evaluation in numpy: weights decided at anchor bars, held until the next anchor.

Shared by the synthetic oracle, validation during training and `nfc backtest`, so every Sharpe in
the project is computed over the same bars with the same cost rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralfusion.portfolio import (
    annual_return,
    annualised_sharpe,
    compounded_pnl,
    max_drawdown,
    portfolio_returns,
    turnover,
)

__all__ = ["WalkForward", "rebalance_anchors", "walk_forward"]


@dataclass(frozen=True)
class WalkForward:
    """Per-bar book and returns of a walk-forward run over bars first_bar..first_bar+len(returns)-1."""

    first_bar: int
    weights: np.ndarray  # (T, N) weights held during each bar
    returns: np.ndarray  # (T,) portfolio returns after costs
    turnover: np.ndarray  # (T,) Σ|Δw| charged at each bar

    def metrics(self, bars_per_year: float) -> dict[str, float]:
        """Annualised Sharpe, compounded and annual return, max drawdown, turnover per year, hit rate and exposure,
        annualised with the grid's `bars_per_year` (MarketData.bars_per_year)."""
        years = len(self.returns) / bars_per_year
        return {
            "sharpe": annualised_sharpe(self.returns, bars_per_year),
            "cumulative_return": float(compounded_pnl(self.returns)[-1] - 1.0),
            "annual_return": annual_return(self.returns, bars_per_year),
            "max_drawdown": max_drawdown(self.returns),
            "annual_turnover": float(self.turnover.sum() / years) if years > 0 else 0.0,
            "hit_rate": float((self.returns > 0).mean()),
            "gross_exposure": float(np.abs(self.weights).sum(axis=1).mean()),
            "net_exposure": float(self.weights.sum(axis=1).mean()),
            "bars": len(self.returns),
        }


def walk_forward(anchors: np.ndarray, anchor_weights: np.ndarray, asset_returns: np.ndarray, hold: int,
                 cost_bps: float) -> WalkForward:
    """Hold weights decided at each anchor t over bars t+1.. until the next anchor (the last one for `hold` bars).

    anchors (R,) ascending bar indices; anchor_weights (R, N); asset_returns (T, N) simple per-bar returns.
    The book starts flat, so the first rebalance pays costs too.
    """
    anchors = np.asarray(anchors)
    if len(anchors) == 0 or len(anchors) != len(anchor_weights):
        raise ValueError(f"need one weight row per anchor, got {len(anchors)} anchors and {len(anchor_weights)} rows")
    if np.any(np.diff(anchors) <= 0):
        raise ValueError("anchors must be strictly ascending")
    ends = np.append(anchors[1:], anchors[-1] + hold)
    if ends[-1] >= len(asset_returns):
        raise ValueError(f"the last anchor {anchors[-1]} + hold {hold} runs past the {len(asset_returns)} bars")
    per_bar = np.repeat(np.asarray(anchor_weights, dtype=np.float64), ends - anchors, axis=0)
    first, last = int(anchors[0]) + 1, int(ends[-1])
    returns = portfolio_returns(per_bar, asset_returns[first:last + 1], cost_bps)
    return WalkForward(first_bar=first, weights=per_bar, returns=returns, turnover=turnover(per_bar))


def rebalance_anchors(anchors: np.ndarray, every: int, n_bars: int) -> np.ndarray:
    """Every `every`-th anchor whose holding period of `every` bars ends inside the data (may be empty)."""
    chosen = np.asarray(anchors)[::every]
    return chosen[chosen + every < n_bars]


def offset_rebalance_anchors(anchors: np.ndarray, every: int, n_bars: int, starts: int) -> list[np.ndarray]:
    """`rebalance_anchors` of walks starting at `starts` evenly spaced anchors inside the first period.

    One walk's Sharpe moves with its start bar alone; averaging walks from several starts removes that luck.
    """
    anchors = np.asarray(anchors)
    return [rebalance_anchors(anchors[start:], every, n_bars)
            for start in np.linspace(0, every, starts, endpoint=False).astype(int)]
