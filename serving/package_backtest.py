"""`nfc backtest --package`: a model package's ONNX graphs walked forward over a test split, as served (no torch).

The same anchors, baselines and scoring as the backtest of a run (neuralfusion.backtest), with the weights
the package's graphs give offline on the whole grid; `nfc predict` back-fills reproduce them exactly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from neuralfusion.backtest import (
    PREDICT_CHUNK,
    Backtest,
    rebalance_and_costs,
    split_rebalance_anchors,
    walk_with_baselines,
)
from neuralfusion.data.news import article_text
from neuralfusion.dataset import MarketData, load_data_dir
from neuralfusion.encoder_text import check_encoder_text
from neuralfusion.errors import DataError
from neuralfusion.inputs import grid_inputs
from neuralfusion.windows import chronological_split, usable_anchors
from serving.runtime import FUSION_OUTPUTS, PortfolioRuntime

__all__ = ["package_weights", "run_package_backtest"]


def package_weights(runtime: PortfolioRuntime, data: MarketData, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and top-k weights (R, N) of a model package's ONNX graphs at `anchors`, computed offline on the
    whole grid: every news item embedded by the package's encoder, the package's normaliser, one fusion run per
    chunk of windows. `nfc predict` must reproduce these exactly."""
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
                         cost_bps: float | None = None, split: tuple[str, str] | None = None,
                         allow_encoder_leak: bool = False) -> Backtest:
    """The walk-forward of a model package (ONNX, as served) over the test split of `data_dir`, beside the
    baselines: the anchors and scoring of `training.backtest.run_backtest`, with the package's graphs for a run.
    The package's encoder must not have read news after this split's training end (its manifest's text record,
    neuralfusion/encoder_text.py), unless `allow_encoder_leak`."""
    runtime = PortfolioRuntime.load(package)
    manifest = runtime.manifest
    data = load_data_dir(Path(data_dir), universe=runtime.universe)
    if data.bar_spec.interval != runtime.bar_spec.interval:
        raise DataError(f"data bars are {data.bar_spec.interval}, the package {package} predicts "
                        f"{runtime.bar_spec.interval} bars; backtest on data of the model's interval")
    window = manifest.window if split is None else replace(manifest.window, val_start=split[0], test_start=split[1])
    splits = chronological_split(usable_anchors(data.n_bars, int(manifest.data["features"]["warmup_bars"]), window),
                                 window, data.panel.times)
    text_check = check_encoder_text(manifest.data["encoder"].get("text"), data.panel.times[int(splits.train[-1])],
                                    allow_encoder_leak, source=f"package {package}")
    portfolio = manifest.portfolio
    every, costs = rebalance_and_costs(runtime.horizon, portfolio.cost_bps, rebalance_every, cost_bps)
    anchors = split_rebalance_anchors(splits.test, every, data.n_bars)
    _, model_weights = package_weights(runtime, data, anchors)
    settings = {
        "model_run": f"package {package}", "model_version": runtime.version, "variant": "package",
        "ablation_runs": {}, "data_dir": str(data_dir), "embeddings": "package encoder (ONNX)",
        "encoder_fingerprint": manifest.data["encoder"]["fingerprint"], "same_data_as_training": None,
        "encoder_text": text_check.to_dict(),
        "horizon": window.horizon, "cost_source": "package" if cost_bps is None else "--cost-bps",
        "test_split": splits.to_dict()["test"],
        "split_dates": [window.val_start, window.test_start],
    }
    return walk_with_baselines([("model", "model", f"package {runtime.version}", model_weights)], data, anchors,
                               every, costs, window.lookback, portfolio.top_k, settings)
