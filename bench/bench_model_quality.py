"""Out-of-sample quality of trained runs: test Sharpe per variant, mean and 95% interval over training seeds.

Score existing run folders (all trained on one data folder):

    python bench/bench_model_quality.py --data runs/demo/data --embeddings runs/demo/embeddings.parquet \\
        runs/demo/model runs/demo/ablations/concat runs/demo/ablations/news runs/demo/ablations/market

Or build each preset's market, encoder and embeddings as `nfc demo` does, train every variant for every seed,
then score them (stages whose output exists are kept, so an interrupted bench continues where it stopped):

    python bench/bench_model_quality.py --train --preset interaction --seeds 0 1 2 \\
        --variants cga concat news market --workdir runs/quality --set epochs=6 --json quality.json

Every Sharpe is `nfc backtest`'s: the test split walked forward from its first anchor, rebalancing every
horizon H bars, the run's costs (offset 0, the oracle's walk). Besides it, the mean over --offsets walks that
start at evenly spaced bars inside the first horizon (one walk moves with its start bar alone). Per variant
the table gives the mean over training seeds and its 95% confidence interval from Student's t distribution
with n-1 degrees of freedom (mean ± t_0.975,n-1 · sd / sqrt(n)): it measures how much training seeds disagree
on these test bars, not the sampling noise of the test period (which every variant shares). The oracle
(oracle.json), equal weight and momentum (top-k on the L-bar return) are scored on the same walks. Each run's
mean test book per asset (offset 0) is logged and kept in --json: a weight far from 0 there is a bet the model holds
on that asset whatever the news.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine, machine_line, markdown_table, t_interval

from neuralfusion.backtest import equal_weights, momentum_weights, offset_rebalance_anchors, walk_forward
from neuralfusion.dataset import load_data_dir
from training.backtest import prepare_run, run_weights
from training.runs import RUN_FILES, load_run

log = logging.getLogger("bench_model_quality")

VARIANT_ORDER = ("cga", "concat", "news", "market")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (nfc train --out) to score")
    parser.add_argument("--data", type=Path, help="the data folder the runs were trained on (scoring runs)")
    parser.add_argument("--embeddings", type=Path, help="`nfc embed` output for its news (scoring runs)")
    parser.add_argument("--train", action="store_true", help="build each --preset and train its runs first")
    parser.add_argument("--preset", nargs="+", default=["default"], help="synthetic presets (with --train)")
    parser.add_argument("--market-seed", type=int, default=0, help="seed of each preset's market (with --train)")
    parser.add_argument("--days", type=int, help="calendar days of each preset's market instead of the preset's own "
                        "(with --train; its splits keep their fractions, so a longer market has a longer test split)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (with --train)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANT_ORDER), choices=VARIANT_ORDER,
                        help="variants to train (with --train)")
    parser.add_argument("--encoder", type=Path,
                        help="embed with this encoder folder instead of building one per preset (with --train; its "
                             "text record must end before each market's training end, as nfc train checks)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/quality"),
                        help="folder for WORKDIR/PRESET/{data,encoder,embeddings.parquet,runs/VARIANT-seedK}")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="TrainConfig override passed to every `nfc train` (repeatable)")
    parser.add_argument("--model-set", dest="model_sets", action="append", default=[], metavar="KEY=VALUE",
                        help="CgaConfig override passed to every `nfc train` (repeatable)")
    parser.add_argument("--run-suffix", default="", help="appended to each trained run's folder name, e.g. "
                        "'-long' for runs with other --set values beside the default ones (with --train)")
    parser.add_argument("--offsets", type=int, default=4, help="walk-forward starts inside the first horizon")
    parser.add_argument("--cost-bps", type=float, help="costs on turnover [default: each run's portfolio cost]")
    parser.add_argument("--json", type=Path, help="also write everything here")
    args = parser.parse_args()
    if args.offsets < 1:
        parser.error("--offsets must be >= 1")
    if not args.train and not (args.runs and args.data and args.embeddings):
        parser.error("give run folders with --data and --embeddings, or --train")
    if args.train and args.runs:
        parser.error("--train trains its own runs; score other run folders in a separate call")
    return args


def build_preset(preset: str, market_seed: int, seeds: list[int], variants: list[str], workdir: Path,
                 sets: list[str], model_sets: list[str], encoder: Path | None,
                 suffix: str, days: int | None = None) -> tuple[Path, Path, list[Path]]:
    """The demo's stages for one preset (synth, encoder init + sentiment train, embed), then `nfc train` of every
    variant and seed; returns the data folder, the embeddings and the run folders. Existing outputs are kept."""
    from nfc.demo import run_nfc

    root = workdir / preset
    data, embeddings = root / "data", root / "embeddings.parquet"
    if not (data / "oracle.json").is_file():
        run_nfc(["synth", "--preset", preset, "--seed", str(market_seed), "--out", str(data),
                 *(["--days", str(days)] if days is not None else [])])
    news = str(data / "news.jsonl")
    if encoder is None:
        encoder = root / "encoder"
        if not (root / "encoder-init" / "config.json").is_file():
            run_nfc(["encoder", "init", "--news", news, "--data", str(data), "--out", str(root / "encoder-init")])
        if not (encoder / "config.json").is_file():
            run_nfc(["encoder", "train", "--news", news, "--data", str(data), "--encoder",
                     str(root / "encoder-init"), "--out", str(encoder), "--set", "epochs=1"])
    if not embeddings.is_file():
        run_nfc(["embed", "--news", news, "--encoder", str(encoder), "--out", str(embeddings)])
    runs = []
    extra = [arg for value in sets for arg in ("--set", value)] + \
        [arg for value in model_sets for arg in ("--model-set", value)]
    for seed in seeds:
        for variant in variants:
            out = root / "runs" / f"{variant}{suffix}-seed{seed}"
            if not all((out / name).is_file() for name in RUN_FILES):
                run_nfc(["train", "--data", str(data), "--embeddings", str(embeddings), "--variant", variant,
                         "--set", f"seed={seed}", *extra, "--out", str(out), "--force"])
            runs.append(out)
    return data, embeddings, runs


def walk_sharpes(books: list[np.ndarray], anchors_by_offset: list[np.ndarray],
                 returns: np.ndarray, hold: int, cost_bps: float, bars_per_year: float) -> list[float]:
    """Test Sharpe of one strategy's books (R, N) for each walk-forward start."""
    return [walk_forward(anchors, weights, returns, hold, cost_bps).metrics(bars_per_year)["sharpe"]
            for anchors, weights in zip(anchors_by_offset, books, strict=True)]


def score(data_dir: Path, embeddings: Path, run_dirs: list[Path], offsets: int,
          cost_override: float | None) -> dict[str, Any]:
    """Every run's and baseline's test Sharpe (offset 0 and mean of `offsets` starts), grouped by variant."""
    oracle_path = data_dir / "oracle.json"
    oracle = json.loads(oracle_path.read_text()) if oracle_path.exists() else None
    rows, baselines = [], {}
    for path in run_dirs:
        run = load_run(path)
        data = load_data_dir(data_dir, universe=run.universe)
        prepared = prepare_run(run, data, embeddings, "model")
        horizon = run.window.horizon
        cost = cost_override if cost_override is not None else run.portfolio.cost_bps
        anchors = offset_rebalance_anchors(prepared.splits.test, horizon, data.n_bars, offsets)
        walk = {"anchors_by_offset": anchors, "returns": data.returns, "hold": horizon, "cost_bps": cost,
                "bars_per_year": data.bars_per_year}
        books = [run_weights(run, prepared.grid, a, progress=False) for a in anchors]
        model = walk_sharpes(books, **walk)
        if not baselines:  # the same walks for every run of one data folder
            n = data.universe.n_assets
            baselines = {
                "equal weight": walk_sharpes([equal_weights(len(a), n) for a in anchors], **walk),
                "momentum": walk_sharpes([momentum_weights(data.panel.close, a, run.window.lookback,
                                                           run.portfolio.top_k) for a in anchors], **walk),
            }
        config = run.model_config
        variant = config.fusion if config.streams == "both" else config.streams
        # a book that holds the same sign on an asset whatever the news is a bet on that asset's drift
        mean_book = books[0].mean(axis=0).round(4).tolist()
        rows.append({"run": str(path), "variant": variant, "seed": run.train_config.seed, "offset0": model[0],
                     "mean_of_offsets": float(np.mean(model)), "per_offset": model, "mean_book": mean_book})
        log.info("%s: offset 0 %.2f, mean of %d %.2f; mean test book (offset 0) per asset %s", path, model[0],
                 offsets, np.mean(model), mean_book)
    variants = {}
    for variant in sorted({r["variant"] for r in rows}, key=VARIANT_ORDER.index):
        chosen = [r for r in rows if r["variant"] == variant]
        first, mean_all = ([r[key] for r in chosen] for key in ("offset0", "mean_of_offsets"))
        variants[variant] = {"seeds": [r["seed"] for r in chosen], "offset0": first,
                             "offset0_mean_ci95": t_interval(first), "mean_of_offsets": mean_all,
                             "mean_of_offsets_mean_ci95": t_interval(mean_all),
                             "to_oracle": (float(np.mean(first)) / oracle["sharpe"]) if oracle else None}
    return {"data": str(data_dir), "embeddings": str(embeddings), "offsets": offsets,
            "oracle_sharpe": oracle and oracle["sharpe"],
            "oracle_partial_sharpe": oracle and oracle.get("partial_sharpe"),
            "baselines": {name: {"offset0": s[0], "mean_of_offsets": float(np.mean(s)), "per_offset": s}
                          for name, s in baselines.items()},
            "variants": variants, "runs": rows}


def _interval(summary: tuple[float, float, float]) -> str:
    mean, low, high = summary
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]" if not math.isnan(low) else f"{mean:.2f}"


def table(result: dict[str, Any], label: str) -> str:
    """One markdown table: each variant's mean [95% t-interval] over seeds, then the oracle and the baselines."""
    offsets = result["offsets"]
    rows = [[label, variant, len(v["seeds"]), _interval(v["offset0_mean_ci95"]),
             " / ".join(f"{x:.2f}" for x in v["offset0"]), _interval(v["mean_of_offsets_mean_ci95"]),
             "n/a" if v["to_oracle"] is None else f"{v['to_oracle']:.2f}x"]
            for variant, v in result["variants"].items()]
    if result["oracle_sharpe"] is not None:
        rows.append([label, "oracle", "", f"{result['oracle_sharpe']:.2f}", "", "", "1.00x"])
    for name, b in result["baselines"].items():
        ratio = f"{b['offset0'] / result['oracle_sharpe']:.2f}x" if result["oracle_sharpe"] else "n/a"
        rows.append([label, name, "", f"{b['offset0']:.2f}", "", f"{b['mean_of_offsets']:.2f}", ratio])
    return markdown_table(["market", "variant", "seeds", "test Sharpe, mean [95% t-interval]", "per seed",
                           f"mean of {offsets} starts, mean [95% t-interval]", "mean / oracle"], rows)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args()
    jobs: list[tuple[str, Path, Path, list[Path]]] = []
    if args.train:
        for preset in args.preset:
            data, embeddings, runs = build_preset(preset, args.market_seed, args.seeds, args.variants, args.workdir,
                                                  args.sets, args.model_sets, args.encoder, args.run_suffix, args.days)
            span = "" if args.days is None else f", {args.days} days"
            jobs.append((f"{preset} (market seed {args.market_seed}{span})", data, embeddings, runs))
    else:
        jobs.append((str(args.data), args.data, args.embeddings, args.runs))
    results = {label: score(data, embeddings, runs, args.offsets, args.cost_bps)
               for label, data, embeddings, runs in jobs}
    info = machine()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine_line(info)}")
    print("Test Sharpe at offset 0 (nfc backtest's walk); intervals: 95% Student-t over training seeds.")
    for label, result in results.items():
        print(table(result, label))
        partial = result["oracle_partial_sharpe"]
        if partial:
            print("partial oracles: " + ", ".join(f"{name} {value:.2f}" for name, value in partial.items()))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "train_sets": args.sets, "model_sets": args.model_sets,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
