"""`nfc backtest`: the model, its ablations and baselines walked forward over the test split, as a report.

    nfc backtest --model runs/demo/model --data runs/demo/data --embeddings runs/demo/embeddings.parquet \\
        --out runs/demo/report
    nfc backtest ... --ablation runs/demo/concat --ablation runs/demo/market --ablation runs/demo/news \\
        --rebalance-every 1 --cost-bps 5 --force

See training/backtest.py for what is evaluated and training/report.py for what the report holds.
"""

from __future__ import annotations

from pathlib import Path

import click

from training.backtest import run_backtest
from training.cli_train import cli_errors, data_option, embeddings_option
from training.report import REPORT_FILES, write_report
from training.runs import load_run, staged_folder

__all__ = ["backtest"]

run_path = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.option("--model", "model_dir", required=True, type=run_path, help="The run folder to evaluate.")
@data_option
@embeddings_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder to write (metrics.json, PNG plots, report.html).")
@click.option("--ablation", "ablation_dirs", multiple=True, type=run_path,
              help="An ablation run (nfc train --variant concat|market|news); repeat for several.")
@click.option("--rebalance-every", type=click.IntRange(min=1),
              help="Bars between rebalances.  [default: the run's horizon H]")
@click.option("--cost-bps", type=click.FloatRange(min=0.0),
              help="Costs in basis points on turnover.  [default: the run's portfolio cost_bps]")
@click.option("--force", is_flag=True, help="Replace an existing report folder (only once the new one is whole).")
@cli_errors
def backtest(model_dir: Path, data_dir: Path, embeddings: Path, out: Path, ablation_dirs: tuple[Path, ...],
             rebalance_every: int | None, cost_bps: float | None, force: bool) -> None:
    """Walk-forward backtest with costs, baselines, ablations and the oracle.

    \b
    nfc backtest --model runs/demo/model --data runs/demo/data --embeddings runs/demo/embeddings.parquet \\
        --out runs/demo/report --ablation runs/demo/news --rebalance-every 1
    """
    model_run = load_run(model_dir)
    ablations = [load_run(path) for path in ablation_dirs]
    with staged_folder(out, force, REPORT_FILES) as folder:
        result = run_backtest(model_run, data_dir, embeddings, ablations, rebalance_every, cost_bps)
        metrics = write_report(result, folder)
    for name, values in metrics["strategies"].items():
        click.echo(f"{name:<14} Sharpe {values['sharpe']:>7.2f}  return {values['cumulative_return']:>+8.2%}  "
                   f"max drawdown {values['max_drawdown']:>7.2%}")
    if metrics["oracle"] is not None:
        ratio = metrics["model_to_oracle_sharpe"]
        click.echo(f"{'oracle':<14} Sharpe {metrics['oracle']['sharpe']:>7.2f}  model/oracle "
                   f"{'n/a' if ratio is None else f'{ratio:.2f}'}"
                   f"{'' if metrics['oracle']['same_bars'] else '  (scored on other bars)'}")
    click.echo(f"wrote {out}")
