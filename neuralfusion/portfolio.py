"""Portfolio math in numpy: scores -> target weights, and the metrics a backtest reports.

Pure functions, so training, export validation, serving and the synthetic oracle all share one
definition of "top-k long/short" and of "Sharpe".
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "annual_return",
    "annualised_sharpe",
    "compounded_pnl",
    "max_drawdown",
    "portfolio_returns",
    "topk_weights",
    "turnover",
]


def topk_weights(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-k long/short weights from scores (..., N), normalised to gross exposure 1.

    The k assets with the largest |score| get weight sign(score)·|score| / Σ|score| over those k.
    Ties at the k-th place are broken by asset order (the lower index wins), so the rule is
    deterministic. k >= N uses every asset; all-zero scores give all-zero weights (no position).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf; weights would be undefined")
    n = scores.shape[-1]
    k = min(k, n)
    magnitude = np.abs(scores)
    # stable sort on -|s| keeps the lower index first among equal magnitudes
    order = np.argsort(-magnitude, axis=-1, kind="stable")[..., :k]
    mask = np.zeros_like(scores, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    kept = np.where(mask, scores, 0.0)
    gross = np.abs(kept).sum(axis=-1, keepdims=True)
    return np.divide(kept, gross, out=np.zeros_like(kept), where=gross > 0)


def portfolio_returns(weights: np.ndarray, asset_returns: np.ndarray, cost_bps: float = 0.0,
                      prev_weights: np.ndarray | None = None) -> np.ndarray:
    """Per-bar returns of holding `weights` (T, N) against simple `asset_returns` (T, N).

    Costs are charged on the bar a weight changes: cost_bps/1e4 · Σ|w_t - w_{t-1}|, with
    `prev_weights` (N,) as the book before the first bar (flat when None).
    """
    weights = np.asarray(weights, dtype=np.float64)
    gross = (weights * asset_returns).sum(axis=-1)
    return gross - cost_bps / 1e4 * turnover(weights, prev_weights)


def turnover(weights: np.ndarray, prev_weights: np.ndarray | None = None) -> np.ndarray:
    """Σ|w_t - w_{t-1}| per bar (T,), starting from `prev_weights` (flat when None)."""
    weights = np.asarray(weights, dtype=np.float64)
    start = np.zeros(weights.shape[-1]) if prev_weights is None else np.asarray(prev_weights, dtype=np.float64)
    previous = np.vstack([start[None, :], weights[:-1]])
    return np.abs(weights - previous).sum(axis=-1)


def annualised_sharpe(returns: np.ndarray, bars_per_year: float) -> float:
    """Mean over standard deviation of per-bar returns, times sqrt(bars per year); 0 for a flat path."""
    returns = np.asarray(returns, dtype=np.float64)
    if returns.size < 2:
        return 0.0
    std = returns.std(ddof=1)
    if std == 0.0:
        return 0.0
    return float(returns.mean() / std * np.sqrt(bars_per_year))


def annual_return(returns: np.ndarray, bars_per_year: float) -> float:
    """Compound annual growth of the equity curve: final equity ** (bars_per_year / bars) - 1; 0 for no bars."""
    returns = np.asarray(returns, dtype=np.float64)
    if returns.size == 0:
        return 0.0
    return float(compounded_pnl(returns)[-1] ** (bars_per_year / returns.size) - 1.0)


def compounded_pnl(returns: np.ndarray) -> np.ndarray:
    """Equity curve (T,) starting from 1, compounding per-bar returns."""
    return np.cumprod(1.0 + np.asarray(returns, dtype=np.float64))


def max_drawdown(returns: np.ndarray) -> float:
    """Largest peak-to-trough loss of the compounded equity curve, as a positive fraction."""
    equity = np.concatenate([[1.0], compounded_pnl(returns)])
    peak = np.maximum.accumulate(equity)
    return float(np.max(1.0 - equity / peak))
