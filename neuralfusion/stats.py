"""How much a backtest's Sharpe ratio can be trusted: its standard error, interval and probabilistic Sharpe.

A Sharpe ratio from a few weeks of bars is mostly noise; these numbers say how much. All of them are
computed on per-bar returns and annualised with the grid's bars per year, like the Sharpe itself.

- Standard error (Lo 2002, i.i.d. returns): SE(SR) = sqrt((1 + SR^2 / 2) / T) per bar, times sqrt(bars per
  year) annualised; the 95% interval is SR +- 1.96 SE.
- Probabilistic Sharpe ratio (Bailey and Lopez de Prado 2012): the probability that the true Sharpe exceeds
  a benchmark SR*, given T bars with skewness g3 and kurtosis g4 of the returns:
  PSR = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)), SR per bar.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Z_95", "independent_periods", "interval_words", "probabilistic_sharpe", "sharpe_statistics"]

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def _per_bar_sharpe(returns: np.ndarray) -> float:
    std = returns.std(ddof=1) if returns.size > 1 else 0.0
    return float(returns.mean() / std) if std > 0 else 0.0


def probabilistic_sharpe(returns: np.ndarray, benchmark_per_bar: float = 0.0) -> float:
    """P(true per-bar Sharpe > `benchmark_per_bar`) from the returns' Sharpe, skewness and kurtosis."""
    returns = np.asarray(returns, dtype=np.float64)
    n = returns.size
    if n < 3 or returns.std() == 0:
        return 0.5
    sharpe = _per_bar_sharpe(returns)
    centred = returns - returns.mean()
    sigma = centred.std()
    skew = float((centred ** 3).mean() / sigma ** 3)
    kurtosis = float((centred ** 4).mean() / sigma ** 4)
    variance = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe ** 2
    z = (sharpe - benchmark_per_bar) * math.sqrt(n - 1) / math.sqrt(max(variance, 1e-12))
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def sharpe_statistics(returns: np.ndarray, bars_per_year: float,
                      benchmark: np.ndarray | None = None) -> dict[str, float | list[float] | None]:
    """Annualised Sharpe with its standard error (Lo 2002) and 95% interval, and the probabilistic Sharpe
    ratio against 0 and against `benchmark` (per-bar returns over the same bars, e.g. equal weight)."""
    returns = np.asarray(returns, dtype=np.float64)
    n = max(returns.size, 1)
    per_bar = _per_bar_sharpe(returns)
    scale = math.sqrt(bars_per_year)
    se = math.sqrt((1.0 + per_bar ** 2 / 2.0) / n) * scale
    sharpe = per_bar * scale
    against = None if benchmark is None else probabilistic_sharpe(returns, _per_bar_sharpe(np.asarray(benchmark)))
    return {"sharpe_se": se, "sharpe_ci95": [sharpe - Z_95 * se, sharpe + Z_95 * se],
            "psr_vs_zero": probabilistic_sharpe(returns), "psr_vs_equal_weight": against}


def independent_periods(bars: int, rebalance_every: int, horizon: int) -> int:
    """Non-overlapping decisions in `bars`: one per holding period, and no more than one per forecast horizon
    (rebalancing faster than the horizon re-trades the same forecast)."""
    return bars // max(rebalance_every, horizon, 1)


def interval_words(label: str, sharpe: float, interval: list[float]) -> str:
    """One sentence on whether the 95% interval of a Sharpe ratio excludes 0."""
    low, high = interval
    span = f"{label}: Sharpe {sharpe:.2f}, 95% interval [{low:.2f}, {high:.2f}]"
    if low <= 0.0 <= high:
        return f"{span} includes 0: this test cannot tell it from no skill."
    side = "above" if low > 0 else "below"
    return f"{span} lies {side} 0."
