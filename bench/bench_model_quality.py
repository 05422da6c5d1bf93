"""Out-of-sample quality of trained runs on one data folder: test Sharpe from several walk-forward starts.

    python bench/bench_model_quality.py --data runs/demo/data --embeddings runs/demo/embeddings.parquet \\
        runs/demo/model runs/demo/ablations/news runs/demo/ablations/market
    python bench/bench_model_quality.py --data D --embeddings E --offsets 8 RUN [RUN ...]

`nfc backtest` walks the test split from its first anchor, rebalancing every horizon H bars: one start,
the oracle's. With a 12-day test split that one walk's Sharpe moves by several units with the start bar
alone, so besides it (offset 0) this prints the mean over --offsets walks starting at evenly spaced bars
inside the first horizon, for every run and for equal weight, and each run's offset-0 Sharpe as a share of
the oracle's (oracle.json, offset 0). Same data path, weights and costs as `nfc backtest`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from machine import machine, machine_line, markdown_table

from neuralfusion.backtest import equal_weights, offset_rebalance_anchors, walk_forward
from neuralfusion.dataset import load_data_dir
from training.backtest import prepare_run, run_weights
from training.runs import load_run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (nfc train --out)")
    parser.add_argument("--data", type=Path, required=True, help="the data folder the runs are scored on")
    parser.add_argument("--embeddings", type=Path, required=True, help="`nfc embed` output for its news")
    parser.add_argument("--offsets", type=int, default=4, help="walk-forward starts inside the first horizon")
    parser.add_argument("--cost-bps", type=float, help="costs on turnover [default: each run's portfolio cost]")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args()


def sharpes(weights_at, anchors_by_offset: list[np.ndarray], returns: np.ndarray, horizon: int, cost_bps: float,
            bars_per_year: float) -> list[float]:
    """Test Sharpe of one strategy (weights_at(anchors) -> (R, N)) for each walk-forward start."""
    return [walk_forward(anchors, weights_at(anchors), returns, horizon, cost_bps).metrics(bars_per_year)["sharpe"]
            for anchors in anchors_by_offset]


def main() -> None:
    args = parse_args()
    if args.offsets < 1:
        sys.exit("--offsets must be >= 1")
    oracle_path = args.data / "oracle.json"
    oracle = json.loads(oracle_path.read_text()) if oracle_path.exists() else None
    rows = []
    for path in args.runs:
        run = load_run(path)
        data = load_data_dir(args.data, universe=run.universe)
        prepared = prepare_run(run, data, args.embeddings, "model")
        horizon, cost = run.window.horizon, args.cost_bps if args.cost_bps is not None else run.portfolio.cost_bps
        anchors = offset_rebalance_anchors(prepared.splits.test, horizon, data.n_bars, args.offsets)
        per_year = data.bars_per_year
        model = sharpes(lambda a, r=run, p=prepared: run_weights(r, p.grid, a, progress=False), anchors,
                        data.returns, horizon, cost, per_year)
        equal = sharpes(lambda a, n=data.universe.n_assets: equal_weights(len(a), n), anchors, data.returns, horizon,
                        cost, per_year)
        ratio = model[0] / oracle["sharpe"] if oracle else None
        config = run.model_config
        variant = config.fusion if config.streams == "both" else f"{config.streams} only"
        rows.append({"run": str(path), "variant": variant, "seed": run.train_config.seed, "offset0": model[0],
                     f"mean{args.offsets}": float(np.mean(model)), "per_offset": model,
                     "equal_weight_offset0": equal[0], f"equal_weight_mean{args.offsets}": float(np.mean(equal)),
                     "to_oracle_offset0": ratio})
        print(f"{path}: offset 0 {model[0]:.2f}, mean of {args.offsets} {np.mean(model):.2f}", flush=True)
    print(machine_line(machine()))
    if oracle:
        print(f"oracle (oracle.json, offset 0): Sharpe {oracle['sharpe']:.2f}")
    mean_key = f"mean{args.offsets}"
    print(markdown_table(
        ["run", "variant", "train seed", "Sharpe offset 0", f"mean of {args.offsets} starts", "offset 0 / oracle",
         f"equal weight offset 0 (mean of {args.offsets})"],
        [[r["run"], r["variant"], r["seed"], f"{r['offset0']:.2f}", f"{r[mean_key]:.2f}",
          "n/a" if r["to_oracle_offset0"] is None else f"{r['to_oracle_offset0']:.2f}x",
          f"{r['equal_weight_offset0']:.2f} ({r['equal_weight_' + mean_key]:.2f})"] for r in rows]))
    if args.json:
        args.json.write_text(json.dumps({"oracle_sharpe": oracle and oracle["sharpe"], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
