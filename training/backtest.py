"""Walk-forward backtest of a trained run on its test split, beside its ablations and simple baselines.

Every strategy is one weight row per rebalance anchor handed to `neuralfusion.backtest.walk_forward`,
so the model, the ablations and the baselines hold positions over the same bars, pay the same costs
and are scored by the same `WalkForward.metrics`. The synthetic oracle is not re-run: its recorded
metrics are read from the data folder's `oracle.json`, with a note on whether its bars are ours.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from neuralfusion.backtest import WalkForward, rebalance_anchors, walk_forward
from neuralfusion.data.news import article_text
from neuralfusion.dataset import MarketData, load_data_dir
from neuralfusion.errors import DataError
from neuralfusion.inputs import GridInputs, grid_inputs
from neuralfusion.portfolio import annualised_sharpe, topk_weights
from neuralfusion.stats import independent_periods, interval_words, sharpe_statistics
from neuralfusion.windows import chronological_split, usable_anchors
from training.model import CgaModel
from training.runs import Run, git_commit
from training.train import Prepared, predict, prepare

__all__ = [
    "METRIC_KEYS",
    "Backtest",
    "Strategy",
    "equal_weights",
    "momentum_weights",
    "oracle_comparison",
    "package_weights",
    "rebalance_and_costs",
    "run_backtest",
    "run_package_backtest",
    "run_weights",
    "split_rebalance_anchors",
    "walk_with_baselines",
]

log = logging.getLogger(__name__)

# what WalkForward.metrics reports, in table order; the oracle records the same keys
METRIC_KEYS = ("sharpe", "cumulative_return", "annual_return", "max_drawdown", "annual_turnover", "hit_rate",
               "gross_exposure", "net_exposure", "bars")
# display names of training.train.VARIANTS
VARIANT_LABELS = {"cga": "CGA", "concat": "concat fusion", "market": "OHLCV-only", "news": "news-only"}
BASELINES = ("equal_weight", "momentum")
# anchors per predict call: one progress-bar step
PREDICT_CHUNK = 256


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


def run_weights(run: Run, grid: GridInputs, anchors: np.ndarray, progress: bool = True) -> np.ndarray:
    """Exact top-k weights (R, N) of a trained run at each anchor, predicted in chunks behind a progress bar."""
    model = CgaModel.from_checkpoint(run.weights_path, device="cuda" if torch.cuda.is_available() else "cpu")
    starts = range(0, len(anchors), PREDICT_CHUNK)
    rows = [predict(model, grid, anchors[start:start + PREDICT_CHUNK])[1]
            for start in tqdm(starts, desc=f"predict {run.path.name}", disable=not progress or len(starts) < 2,
                              leave=False)]
    return np.concatenate(rows).astype(np.float64)


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


def with_split(run: Run, split: tuple[str, str]) -> Run:
    """The run with its window's split replaced by the dates (VAL_START, TEST_START)."""
    return replace(run, window=replace(run.window, val_start=split[0], test_start=split[1]))


def check_run(run: Run, model_run: Run, data: MarketData, role: str) -> None:
    """A run must trade the model's universe on the data's bar interval, or its numbers mean nothing here."""
    if run.bar_spec.interval != data.bar_spec.interval:
        raise DataError(f"data bars are {data.bar_spec.interval}, the {role} {run.path} was trained on "
                        f"{run.bar_spec.interval} bars; backtest on data of the model's interval")
    if run.universe.symbols != model_run.universe.symbols:
        raise DataError(f"the {role} {run.path} trades {list(run.universe.symbols)}, the model "
                        f"{list(model_run.universe.symbols)}; ablations must share the model's universe")


def prepare_run(run: Run, data: MarketData, embeddings: Path, role: str) -> Prepared:
    """The run's inputs on this data: its own normaliser, and the news embeddings it was trained with."""
    prepared = prepare(data, embeddings, run.window, normaliser=run.normaliser)
    trained_with, given = run.encoder.get("fingerprint"), prepared.encoder["fingerprint"]
    if trained_with != given:
        raise DataError(f"embeddings come from encoder {given!r}, the {role} {run.path} was trained on "
                        f"{trained_with!r}; embed the news with the run's encoder", source=str(embeddings))
    return prepared


def same_data_as_training(run: Run, data: MarketData) -> bool:
    """Whether the run was trained on these bars, so its test split is unseen by construction."""
    seen = {"start": str(data.panel.times[0]), "end": str(data.panel.times[-1]), "bars": data.n_bars}
    return run.meta.get("data") == seen


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


def run_backtest(model_run: Run, data_dir: Path, embeddings: Path, ablations: Sequence[Run] = (),
                 rebalance_every: int | None = None, cost_bps: float | None = None,
                 progress: bool = True, split: tuple[str, str] | None = None) -> Backtest:
    """Walk the model, its ablations and the baselines forward over the test split of `data_dir`.

    Rebalances every `rebalance_every` bars (default: the run's horizon H) and charges `cost_bps`
    (default: the run's PortfolioSpec) on turnover; annualises with the data's calendar. The test split is
    the run's own (fractions or dates) unless `split` gives (VAL_START, TEST_START) dates.
    """
    if split is not None:
        model_run = with_split(model_run, split)
        ablations = [with_split(run, split) for run in ablations]
    data_dir = Path(data_dir)
    data = load_data_dir(data_dir, universe=model_run.universe)
    for role, run in (("model", model_run), *(("ablation", run) for run in ablations)):
        check_run(run, model_run, data, role)
    names = [run.meta.get("variant", "cga") for run in ablations]
    if len(set(names)) != len(names):
        raise ValueError(f"ablations need distinct variants, got {names}")
    every, costs = rebalance_and_costs(model_run.window.horizon, model_run.portfolio.cost_bps, rebalance_every,
                                       cost_bps)
    seen_in_training = same_data_as_training(model_run, data)
    if not seen_in_training:
        log.warning("%s was trained on other bars (%s); its test split here may overlap its training data",
                    model_run.path, model_run.meta.get("data"))

    prepared = prepare_run(model_run, data, Path(embeddings), "model")
    anchors = split_rebalance_anchors(prepared.splits.test, every, data.n_bars)
    log.info("backtest: %d rebalances every %d bars from bar %d, %.1f bps costs", len(anchors), every,
             anchors[0], costs)
    books: list[tuple[str, str, str, np.ndarray]] = [
        ("model", "model", f"model ({model_run.meta.get('variant', 'cga')})",
         run_weights(model_run, prepared.grid, anchors, progress))]
    for name, run in zip(names, ablations, strict=True):
        ablation = prepare_run(run, data, Path(embeddings), "ablation")
        if ablation.splits.to_dict() != prepared.splits.to_dict():
            raise DataError(f"the ablation {run.path} splits the data as {ablation.splits.to_dict()}, the model as "
                            f"{prepared.splits.to_dict()}; train ablations with the model's lookback and horizon")
        books.append((name, "ablation", VARIANT_LABELS.get(name, name),
                      run_weights(run, ablation.grid, anchors, progress)))
    settings = {
        "model_run": str(model_run.path), "variant": model_run.meta.get("variant", "cga"),
        "ablation_runs": {name: str(run.path) for name, run in zip(names, ablations, strict=True)},
        "data_dir": str(data_dir), "embeddings": str(embeddings),
        "encoder_fingerprint": prepared.encoder["fingerprint"], "same_data_as_training": seen_in_training,
        "horizon": model_run.window.horizon, "cost_source": "run" if cost_bps is None else "--cost-bps",
        "test_split": prepared.splits.to_dict()["test"],
        "split_dates": [model_run.window.val_start, model_run.window.test_start],
    }
    backtest = walk_with_baselines(books, data, anchors, every, costs, model_run.window.lookback,
                                   model_run.portfolio.top_k, settings)
    oracle_path = data_dir / "oracle.json"
    if not oracle_path.exists():
        return backtest
    evaluation = backtest.evaluation()
    oracle = oracle_comparison(json.loads(oracle_path.read_text()), evaluation, every, costs)
    if not oracle["same_bars"]:
        log.warning("the oracle was scored on bars %d..%d, this backtest on %d..%d: its Sharpe is not a like-for-like "
                    "ceiling", oracle["first_return_bar"], oracle["last_return_bar"],
                    evaluation["first_return_bar"], evaluation["last_return_bar"])
    return replace(backtest, oracle=oracle)


def package_weights(runtime: Any, data: MarketData, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and top-k weights (R, N) of a model package's ONNX graphs (a `serving.runtime.PortfolioRuntime`)
    at `anchors`, computed offline on the whole grid: every news item embedded by the package's encoder, the
    package's normaliser, one fusion run per chunk of windows. `nfc predict` must reproduce these exactly."""
    from serving.runtime import FUSION_OUTPUTS

    texts = [article_text(title, body) for title, body in zip(data.news["title"], data.news["body"], strict=True)]
    vectors = runtime.encoder.encode(texts).vectors if texts else np.zeros((0, runtime.embed_dim), np.float32)
    grid = grid_inputs(data, vectors, runtime.normaliser)
    logits, weights = [], []
    for start in range(0, len(anchors), PREDICT_CHUNK):
        batch = grid.windows(np.asarray(anchors[start:start + PREDICT_CHUNK]), runtime.lookback)
        feed = {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in batch.items()}
        chunk_logits, chunk_weights = runtime.session.run(list(FUSION_OUTPUTS), feed)
        logits.append(chunk_logits)
        weights.append(chunk_weights)
    return np.concatenate(logits).astype(np.float64), np.concatenate(weights).astype(np.float64)


def run_package_backtest(package: Path, data_dir: Path, rebalance_every: int | None = None,
                         cost_bps: float | None = None, split: tuple[str, str] | None = None) -> Backtest:
    """The walk-forward of a model package (ONNX, as served) over the test split of `data_dir`, beside the
    baselines: the same anchors and scoring as `run_backtest`, with the package's graphs instead of a run."""
    from serving.runtime import PortfolioRuntime

    runtime = PortfolioRuntime.load(package)
    manifest = runtime.manifest
    data = load_data_dir(Path(data_dir), universe=runtime.universe)
    if data.bar_spec.interval != runtime.bar_spec.interval:
        raise DataError(f"data bars are {data.bar_spec.interval}, the package {package} predicts "
                        f"{runtime.bar_spec.interval} bars; backtest on data of the model's interval")
    window = manifest.window if split is None else replace(manifest.window, val_start=split[0], test_start=split[1])
    splits = chronological_split(usable_anchors(data.n_bars, int(manifest.data["features"]["warmup_bars"]), window),
                                 window, data.panel.times)
    portfolio = manifest.portfolio
    every, costs = rebalance_and_costs(runtime.horizon, portfolio.cost_bps, rebalance_every, cost_bps)
    anchors = split_rebalance_anchors(splits.test, every, data.n_bars)
    _, model_weights = package_weights(runtime, data, anchors)
    settings = {
        "model_run": f"package {package}", "model_version": runtime.version, "variant": "package",
        "ablation_runs": {}, "data_dir": str(data_dir), "embeddings": "package encoder (ONNX)",
        "encoder_fingerprint": manifest.data["encoder"]["fingerprint"], "same_data_as_training": None,
        "horizon": window.horizon, "cost_source": "package" if cost_bps is None else "--cost-bps",
        "test_split": splits.to_dict()["test"],
        "split_dates": [window.val_start, window.test_start],
    }
    return walk_with_baselines([("model", "model", f"package {runtime.version}", model_weights)], data, anchors,
                               every, costs, window.lookback, portfolio.top_k, settings)
