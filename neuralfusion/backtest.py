"""Walk-forward evaluation in numpy: weights decided at anchor bars, held until the next anchor.

Shared by the synthetic oracle, validation during training and `nfc backtest`, so every Sharpe in
the project is computed over the same bars with the same cost rule. A backtest (`Backtest`) is every
strategy's weight rows at the same rebalance anchors walked forward by `walk_forward`: the model's
(from a run, training.backtest, or a package's ONNX graphs, serving.package_backtest), its ablations,
and the equal-weight and momentum baselines made here, so all hold positions over the same bars, pay the
same costs and are scored by the same `WalkForward.metrics`. The synthetic oracle is not re-run: its
recorded metrics are read from the data folder's `oracle.json`, with a note on whether its bars are ours.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuralfusion.artifacts import git_commit
from neuralfusion.dataset import MarketData
from neuralfusion.errors import DataError
from neuralfusion.portfolio import (
    annual_return,
    annualised_sharpe,
    compounded_pnl,
    max_drawdown,
    portfolio_returns,
    topk_weights,
    turnover,
)
from neuralfusion.stats import independent_periods, interval_words, sharpe_statistics

__all__ = [
    "BASELINES",
    "METRIC_KEYS",
    "PREDICT_CHUNK",
    "Backtest",
    "Strategy",
    "WalkForward",
    "equal_weights",
    "momentum_weights",
    "offset_rebalance_anchors",
    "oracle_comparison",
    "rebalance_anchors",
    "rebalance_and_costs",
    "split_rebalance_anchors",
    "walk_forward",
    "walk_with_baselines",
    "with_oracle",
]

log = logging.getLogger(__name__)

# what WalkForward.metrics reports, in table order; the oracle records the same keys
METRIC_KEYS = ("sharpe", "cumulative_return", "annual_return", "max_drawdown", "annual_turnover", "hit_rate",
               "gross_exposure", "net_exposure", "bars")
BASELINES = ("equal_weight", "momentum")
# anchors per model call when a backtest predicts: one progress-bar step
PREDICT_CHUNK = 256


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


@dataclass(frozen=True)
class Strategy:
    """One strategy's book: the weights it chose at each anchor and the walk-forward they produce."""

    name: str
    kind: str  # "model", "ablation" or "baseline"
    label: str
    anchor_weights: np.ndarray  # (R, N) at Backtest.anchors
    result: WalkForward


@dataclass(frozen=True)
class Backtest:
    """Every strategy walked forward from the same anchors, plus what the report needs to label it."""

    anchors: np.ndarray  # (R,) rebalance bars, ascending
    strategies: dict[str, Strategy]  # the model first, then ablations, then baselines
    times: pd.DatetimeIndex  # (T,) bar close times of the whole grid
    symbols: tuple[str, ...]
    bars_per_year: float
    settings: dict[str, Any]
    oracle: dict[str, Any] | None  # oracle_comparison(...) when the data folder has an oracle.json

    @property
    def model(self) -> Strategy:
        return self.strategies["model"]

    def evaluation(self) -> dict[str, Any]:
        """The anchors and the bars whose returns were scored (identical for every strategy)."""
        walk = self.model.result
        last = walk.first_bar + len(walk.returns) - 1
        return {"first_anchor": int(self.anchors[0]), "last_anchor": int(self.anchors[-1]),
                "rebalances": len(self.anchors), "first_return_bar": walk.first_bar, "last_return_bar": last,
                "bars": len(walk.returns), "start": str(self.times[walk.first_bar]), "end": str(self.times[last]),
                "independent_rebalances": independent_periods(len(walk.returns), self.settings["rebalance_every"],
                                                              self.settings["horizon"])}

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Per strategy: the Sharpe's standard error and 95% interval, the probabilistic Sharpe ratio against 0
        and against equal weight over the same bars, and a sentence on whether the interval includes 0."""
        benchmark = self.strategies["equal_weight"].result.returns
        out = {}
        for name, strategy in self.strategies.items():
            returns = strategy.result.returns
            stats = sharpe_statistics(returns, self.bars_per_year, None if name == "equal_weight" else benchmark)
            sharpe = annualised_sharpe(returns, self.bars_per_year)
            out[name] = {**stats, "words": interval_words(strategy.label, sharpe, stats["sharpe_ci95"])}
        return out

    def returns_frame(self) -> pd.DataFrame:
        """Per-bar returns (after costs) of every strategy over the evaluated bars, by bar close time."""
        walk = self.model.result
        bars = np.arange(walk.first_bar, walk.first_bar + len(walk.returns))
        return pd.DataFrame({"bar": bars, "close_time": self.times[bars].astype(str),
                             **{name: s.result.returns for name, s in self.strategies.items()}})

    def metrics(self) -> dict[str, Any]:
        """The content of REPORT/metrics.json."""
        model_sharpe = self.model.result.metrics(self.bars_per_year)["sharpe"]
        oracle_sharpe = self.oracle["sharpe"] if self.oracle else 0.0
        return {
            "strategies": {name: {"kind": s.kind, "label": s.label, **s.result.metrics(self.bars_per_year)}
                           for name, s in self.strategies.items()},
            "oracle": self.oracle,
            "model_to_oracle_sharpe": model_sharpe / oracle_sharpe if oracle_sharpe else None,
            "evaluation": self.evaluation(),
            "statistics": self.statistics(),
            "costs": {"cost_bps": self.settings["cost_bps"], "source": self.settings["cost_source"],
                      "rule": "cost_bps/1e4 * sum|w_t - w_(t-1)| on every bar the book changes; "
                              "the book starts flat, so the first rebalance pays too"},
            "settings": self.settings,
        }


def split_rebalance_anchors(test_anchors: np.ndarray, every: int, n_bars: int) -> np.ndarray:
    """The test split's rebalance anchors; none at all is an error naming the fix."""
    anchors = rebalance_anchors(test_anchors, every, n_bars)
    if len(anchors) == 0:
        raise DataError(f"no test anchor leaves room to hold for {every} bars; choose a smaller --rebalance-every")
    return anchors


def equal_weights(n_anchors: int, n_assets: int) -> np.ndarray:
    """Long-only 1/N at every anchor (R, N): the buy-and-hold benchmark, rebalanced back to equal."""
    return np.full((n_anchors, n_assets), 1.0 / n_assets)


def momentum_weights(close: np.ndarray, anchors: np.ndarray, lookback: int, top_k: int) -> np.ndarray:
    """Top-k long/short on each asset's trailing `lookback`-bar return known at the anchor's close (R, N)."""
    anchors = np.asarray(anchors)
    if anchors.min() < lookback:
        raise DataError(f"anchor {int(anchors.min())} has fewer than {lookback} bars of history for momentum")
    return topk_weights(close[anchors] / close[anchors - lookback] - 1.0, top_k)


def oracle_comparison(oracle: dict[str, Any], evaluation: dict[str, Any], rebalance_every: int,
                      cost_bps: float) -> dict[str, Any]:
    """The oracle's recorded metrics and whether it was scored on our bars, rebalance and costs."""
    same_bars = (oracle["first_return_bar"], oracle["last_return_bar"]) == (evaluation["first_return_bar"],
                                                                           evaluation["last_return_bar"])
    return {
        **{key: oracle[key] for key in METRIC_KEYS},
        "first_return_bar": oracle["first_return_bar"],
        "last_return_bar": oracle["last_return_bar"],
        "rebalance_every": oracle["rebalance_every"],
        "cost_bps": oracle["cost_bps"],
        "same_bars": same_bars,
        "same_rebalance": oracle["rebalance_every"] == rebalance_every,
        "same_costs": oracle["cost_bps"] == cost_bps,
        "description": oracle.get("description", ""),
    }


def rebalance_and_costs(horizon: int, cost_bps: float, rebalance_every: int | None,
                        cost_override: float | None) -> tuple[int, float]:
    """Bars between rebalances (default: the horizon) and costs (default: the model's), checked."""
    every = horizon if rebalance_every is None else rebalance_every
    costs = cost_bps if cost_override is None else cost_override
    if every < 1 or costs < 0:
        raise ValueError(f"rebalance_every must be >= 1 and cost_bps >= 0, got {every} and {costs}")
    return every, costs


def walk_with_baselines(books: list[tuple[str, str, str, np.ndarray]], data: MarketData, anchors: np.ndarray,
                        every: int, costs: float, lookback: int, top_k: int, settings: dict[str, Any]) -> Backtest:
    """`books` (name, kind, label, anchor weights) and the equal-weight and momentum baselines, each walked
    forward over the same anchors with the same costs; `settings` gains the fields every backtest records."""
    books = [*books,
             ("equal_weight", "baseline", "equal weight (long-only 1/N)",
              equal_weights(len(anchors), data.universe.n_assets)),
             ("momentum", "baseline", f"momentum (top-{top_k} on {lookback}-bar return)",
              momentum_weights(data.panel.close, anchors, lookback, top_k))]
    strategies = {name: Strategy(name=name, kind=kind, label=label, anchor_weights=weights,
                                 result=walk_forward(anchors, weights, data.returns, every, costs))
                  for name, kind, label, weights in books}
    settings = {
        **settings, "universe": list(data.universe.symbols), "interval": data.bar_spec.interval,
        "calendar": data.bar_spec.calendar, "bars_per_year": data.bars_per_year,
        "lookback": lookback, "rebalance_every": every, "top_k": top_k, "momentum_lookback": lookback,
        "cost_bps": costs, "git_commit": git_commit(),
    }
    return Backtest(anchors=anchors, strategies=strategies, times=data.panel.times, symbols=data.universe.symbols,
                    bars_per_year=data.bars_per_year, settings=settings, oracle=None)


def with_oracle(backtest: Backtest, data_dir: Path) -> Backtest:
    """`backtest` with the oracle of `data_dir/oracle.json` when there is one, warning when it scored other bars."""
    oracle_path = Path(data_dir) / "oracle.json"
    if not oracle_path.exists():
        return backtest
    evaluation = backtest.evaluation()
    settings = backtest.settings
    oracle = oracle_comparison(json.loads(oracle_path.read_text()), evaluation, settings["rebalance_every"],
                               settings["cost_bps"])
    if not oracle["same_bars"]:
        log.warning("the oracle was scored on bars %d..%d, this backtest on %d..%d: its Sharpe is not a like-for-like "
                    "ceiling", oracle["first_return_bar"], oracle["last_return_bar"],
                    evaluation["first_return_bar"], evaluation["last_return_bar"])
    return replace(backtest, oracle=oracle)
