"""`nfc backtest`: the model, its ablations and baselines walked forward over the test split, as a report.

    nfc backtest --model runs/demo/model --data runs/demo/data --embeddings runs/demo/embeddings.parquet \\
        --out runs/demo/report
    nfc backtest ... --ablation runs/demo/concat --ablation runs/demo/market --ablation runs/demo/news \\
        --rebalance-every 1 --cost-bps 5 --force
    nfc backtest --package runs/demo/package --data runs/demo/data --out runs/demo/report-package

`--package` walks the exported ONNX package forward (no checkpoint, no embeddings file: its own encoder
embeds the news), the same graphs `nfc predict` serves, so the two can be compared weight for weight.

See training/backtest.py for what is evaluated and training/report.py for what the report holds.
"""

from __future__ import annotations

from pathlib import Path

import click

from training.backtest import run_backtest, run_package_backtest
from training.cli_train import cli_errors, data_option, split_option
from training.report import REPORT_FILES, write_report
from training.runs import load_run, staged_folder

__all__ = ["backtest"]

run_path = click.Path(exists=True, file_okay=False, path_type=Path)


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
@click.option("--force", is_flag=True, help="Replace an existing report folder (only once the new one is whole).")
@cli_errors
def backtest(model_dir: Path | None, package_dir: Path | None, data_dir: Path, embeddings: Path | None, out: Path,
             ablation_dirs: tuple[Path, ...], rebalance_every: int | None, cost_bps: float | None,
             split: tuple[str, str] | None, force: bool) -> None:
    """Walk-forward backtest with costs, baselines, ablations and the oracle.

    \b
    nfc backtest --model runs/demo/model --data runs/demo/data --embeddings runs/demo/embeddings.parquet \\
        --out runs/demo/report --ablation runs/demo/news --rebalance-every 1
    """
    if (model_dir is None) == (package_dir is None):
        raise click.UsageError("give exactly one of --model RUN or --package PKG")
    if package_dir is not None and (embeddings or ablation_dirs):
        raise click.UsageError("--package embeds the news with its own encoder and has no ablations: "
                               "drop --embeddings and --ablation")
    if model_dir is not None and embeddings is None:
        raise click.UsageError("--model needs --embeddings (the `nfc embed` output the run was trained with)")
    ablations = [load_run(path) for path in ablation_dirs]
    with staged_folder(out, force, REPORT_FILES) as folder:
        if package_dir is not None:
            result = run_package_backtest(package_dir, data_dir, rebalance_every, cost_bps, split=split)
        else:
            result = run_backtest(load_run(model_dir), data_dir, embeddings, ablations, rebalance_every, cost_bps,
                                  split=split)
        metrics = write_report(result, folder)
    for name, values in metrics["strategies"].items():
        click.echo(f"{name:<14} Sharpe {values['sharpe']:>7.2f}  return {values['cumulative_return']:>+8.2%}  "
                   f"max drawdown {values['max_drawdown']:>7.2%}")
    if metrics["oracle"] is not None:
        ratio = metrics["model_to_oracle_sharpe"]
        click.echo(f"{'oracle':<14} Sharpe {metrics['oracle']['sharpe']:>7.2f}  model/oracle "
                   f"{'n/a' if ratio is None else f'{ratio:.2f}'}"
                   f"{'' if metrics['oracle']['same_bars'] else '  (scored on other bars)'}")
    click.echo(metrics["statistics"]["model"]["words"])
    click.echo(f"wrote {out}")
