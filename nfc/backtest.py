"""`nfc backtest`: a run (PyTorch) or a model package (ONNX, no torch) walked forward over the test split, as a report.

    nfc backtest --model runs/demo/model --data runs/demo/data --embeddings runs/demo/embeddings.parquet \\
        --out runs/demo/report
    nfc backtest ... --ablation runs/demo/concat --ablation runs/demo/market --ablation runs/demo/news \\
        --rebalance-every 1 --cost-bps 5 --force
    nfc backtest --package runs/demo/package --data runs/demo/data --out runs/demo/report-package

`--package` walks the exported ONNX package forward (no checkpoint, no embeddings file: its own encoder
embeds the news), the same graphs `nfc predict` serves, so the two can be compared weight for weight. It
imports serving, never training or torch; `--model` imports training. Only the app may import both, so the
one command lives here. What is evaluated: neuralfusion/backtest.py; what the report holds: neuralfusion/report.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from neuralfusion.backtest import Backtest
from neuralfusion.cli_common import (
    cli_errors,
    data_option,
    force_option,
    json_result,
    leak_option,
    log_level_option,
    needs_extra,
    split_option,
)
from neuralfusion.report import REPORT_FILES, write_report
from neuralfusion.staging import staged_folder

__all__ = ["backtest"]

run_path = click.Path(exists=True, file_okay=False, path_type=Path)


def _model_backtest(model_dir: Path, data_dir: Path, embeddings: Path, ablation_dirs: tuple[Path, ...],
                    rebalance_every: int | None, cost_bps: float | None, split: tuple[str, str] | None,
                    allow_encoder_leak: bool) -> Backtest:
    with needs_extra("train", "'nfc backtest --model'"):
        from training.backtest import run_backtest
        from training.runs import load_run

    ablations = [load_run(path) for path in ablation_dirs]
    return run_backtest(load_run(model_dir), data_dir, embeddings, ablations, rebalance_every, cost_bps,
                        split=split, allow_encoder_leak=allow_encoder_leak)


def _package_backtest(package_dir: Path, data_dir: Path, rebalance_every: int | None, cost_bps: float | None,
                      split: tuple[str, str] | None, allow_encoder_leak: bool) -> Backtest:
    with needs_extra("serve", "'nfc backtest --package'"):
        from serving.package_backtest import run_package_backtest

    return run_package_backtest(package_dir, data_dir, rebalance_every, cost_bps, split=split,
                                allow_encoder_leak=allow_encoder_leak)


def _report_lines(result: dict[str, Any]) -> Iterator[str]:
    metrics = result["metrics"]
    for name, values in metrics["strategies"].items():
        yield (f"{name:<14} Sharpe {values['sharpe']:>7.2f}  return {values['cumulative_return']:>+8.2%}  "
               f"max drawdown {values['max_drawdown']:>7.2%}")
    if metrics["oracle"] is not None:
        ratio = metrics["model_to_oracle_sharpe"]
        yield (f"{'oracle':<14} Sharpe {metrics['oracle']['sharpe']:>7.2f}  model/oracle "
               f"{'n/a' if ratio is None else f'{ratio:.2f}'}"
               f"{'' if metrics['oracle']['same_bars'] else '  (scored on other bars)'}")
    yield metrics["statistics"]["model"]["words"]
    yield f"wrote {result['out']}"


@click.command()
@click.option("--model", "model_dir", type=run_path, help="The run folder to evaluate.")
@click.option("--package", "package_dir", type=run_path,
              help="Evaluate this exported model package (ONNX) instead of a run; no --embeddings or --ablation.")
@data_option
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="`nfc embed` output for the folder's news (with --model).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder to write (metrics.json, PNG plots, report.html).")
@click.option("--ablation", "ablation_dirs", multiple=True, type=run_path,
              help="An ablation run (nfc train --variant concat|market|news); repeat for several.")
@click.option("--rebalance-every", type=click.IntRange(min=1),
              help="Bars between rebalances.  [default: the run's horizon H]")
@click.option("--cost-bps", type=click.FloatRange(min=0.0),
              help="Costs in basis points on turnover.  [default: the run's portfolio cost_bps]")
@split_option
@force_option
@leak_option
@log_level_option
@json_result(_report_lines)
@cli_errors
def backtest(model_dir: Path | None, package_dir: Path | None, data_dir: Path, embeddings: Path | None, out: Path,
             ablation_dirs: tuple[Path, ...], rebalance_every: int | None, cost_bps: float | None,
             split: tuple[str, str] | None, force: bool, allow_encoder_leak: bool) -> dict[str, Any]:
    """Walk-forward backtest with costs, baselines, ablations and the oracle.

    \b
    nfc backtest --model runs/demo/model --data runs/demo/data --embeddings runs/demo/embeddings.parquet \\
        --out runs/demo/report --ablation runs/demo/news --rebalance-every 1
    nfc backtest --package runs/demo/package --data runs/demo/data --out runs/demo/report-package
    """
    if (model_dir is None) == (package_dir is None):
        raise click.UsageError("give exactly one of --model RUN or --package PKG")
    if package_dir is not None and (embeddings or ablation_dirs):
        raise click.UsageError("--package embeds the news with its own encoder and has no ablations: "
                               "drop --embeddings and --ablation")
    if model_dir is not None and embeddings is None:
        raise click.UsageError("--model needs --embeddings (the `nfc embed` output the run was trained with)")
    with staged_folder(out, force, REPORT_FILES) as folder:
        if package_dir is not None:
            result = _package_backtest(package_dir, data_dir, rebalance_every, cost_bps, split, allow_encoder_leak)
        else:
            result = _model_backtest(model_dir, data_dir, embeddings, ablation_dirs, rebalance_every,  # type: ignore[arg-type]
                                     cost_bps, split, allow_encoder_leak)
        metrics = write_report(result, folder)
    return {"out": str(out), "metrics": metrics}
