"""Walk-forward backtest of a trained run (PyTorch) on its test split, beside its ablations and the baselines.

The run's weights at each rebalance anchor join the baselines in `neuralfusion.backtest.walk_with_baselines`,
which walks every strategy over the same bars with the same costs (see there for what is scored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neuralfusion.backtest import (
    PREDICT_CHUNK,
    Backtest,
    rebalance_and_costs,
    split_rebalance_anchors,
    walk_with_baselines,
    with_oracle,
)
from neuralfusion.dataset import MarketData, load_data_dir
from neuralfusion.errors import DataError
from neuralfusion.inputs import GridInputs
from training.model import CgaModel
from training.runs import Run
from training.train import Prepared, predict, prepare

__all__ = ["VARIANT_LABELS", "check_run", "prepare_run", "run_backtest", "run_weights", "same_data_as_training",
           "with_split"]

log = logging.getLogger(__name__)

# display names of training.train.VARIANTS
VARIANT_LABELS = {"cga": "CGA", "concat": "concat fusion", "market": "OHLCV-only", "news": "news-only"}


def run_weights(run: Run, grid: GridInputs, anchors: np.ndarray, progress: bool = True) -> np.ndarray:
    """Exact top-k weights (R, N) of a trained run at each anchor, predicted in chunks behind a progress bar."""
    model = CgaModel.from_checkpoint(run.weights_path, device="cuda" if torch.cuda.is_available() else "cpu")
    starts = range(0, len(anchors), PREDICT_CHUNK)
    rows = [predict(model, grid, anchors[start:start + PREDICT_CHUNK])[1]
            for start in tqdm(starts, desc=f"predict {run.path.name}", disable=not progress or len(starts) < 2,
                              leave=False)]
    return np.concatenate(rows).astype(np.float64)


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


def prepare_run(run: Run, data: MarketData, embeddings: Path, role: str, allow_encoder_leak: bool = False) -> Prepared:
    """The run's inputs on this data: its own normaliser, and the news embeddings it was trained with (refused
    when their encoder read validation or test text, unless `allow_encoder_leak`)."""
    prepared = prepare(data, embeddings, run.window, normaliser=run.normaliser, allow_encoder_leak=allow_encoder_leak)
    trained_with, given = run.encoder.get("fingerprint"), prepared.encoder["fingerprint"]
    if trained_with != given:
        raise DataError(f"embeddings come from encoder {given!r}, the {role} {run.path} was trained on "
                        f"{trained_with!r}; embed the news with the run's encoder", source=str(embeddings))
    return prepared


def same_data_as_training(run: Run, data: MarketData) -> bool:
    """Whether the run was trained on these bars, so its test split is unseen by construction."""
    seen = {"start": str(data.panel.times[0]), "end": str(data.panel.times[-1]), "bars": data.n_bars}
    return run.meta.get("data") == seen


def run_backtest(model_run: Run, data_dir: Path, embeddings: Path, ablations: Sequence[Run] = (),
                 rebalance_every: int | None = None, cost_bps: float | None = None,
                 progress: bool = True, split: tuple[str, str] | None = None,
                 allow_encoder_leak: bool = False) -> Backtest:
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

    prepared = prepare_run(model_run, data, Path(embeddings), "model", allow_encoder_leak)
    anchors = split_rebalance_anchors(prepared.splits.test, every, data.n_bars)
    log.info("backtest: %d rebalances every %d bars from bar %d, %.1f bps costs", len(anchors), every,
             anchors[0], costs)
    books: list[tuple[str, str, str, np.ndarray]] = [
        ("model", "model", f"model ({model_run.meta.get('variant', 'cga')})",
         run_weights(model_run, prepared.grid, anchors, progress))]
    for name, run in zip(names, ablations, strict=True):
        ablation = prepare_run(run, data, Path(embeddings), "ablation", allow_encoder_leak)
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
        "encoder_text": prepared.encoder["text_check"],
        "encoder_text_at_training": (model_run.encoder.get("text_check") or {}).get("status", "not recorded"),
        "horizon": model_run.window.horizon, "cost_source": "run" if cost_bps is None else "--cost-bps",
        "test_split": prepared.splits.to_dict()["test"],
        "split_dates": [model_run.window.val_start, model_run.window.test_start],
    }
    backtest = walk_with_baselines(books, data, anchors, every, costs, model_run.window.lookback,
                                   model_run.portfolio.top_k, settings)
    return with_oracle(backtest, data_dir)
