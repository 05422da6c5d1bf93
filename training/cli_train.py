"""`nfc train` and `nfc finetune` (see training/train.py for the training loop itself)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from neuralfusion.dataset import load_data_dir
from neuralfusion.errors import DataError
from neuralfusion.model_config import CgaConfig
from neuralfusion.overrides import apply_overrides
from neuralfusion.specs import PortfolioSpec, WindowSpec
from neuralfusion.train_config import TrainConfig
from training.model import CgaModel
from training.runs import DECISION_FILE, load_run
from training.train import (
    VARIANTS,
    distributed_context,
    model_config_for,
    prepare,
    train_model,
    validation_sharpe,
    write_run,
)

__all__ = ["finetune", "train"]

log = logging.getLogger(__name__)

data_option = click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False,
                           path_type=Path), help="Data folder with bars.parquet and news.jsonl.")
embeddings_option = click.option("--embeddings", required=True, type=click.Path(exists=True, dir_okay=False,
                                 path_type=Path), help="`nfc embed` output for the folder's news.")
out_option = click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                          help="Run folder to write.")
config_option = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                             help="TrainConfig JSON; --set overrides it.")
set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a TrainConfig field.")
force_option = click.option("--force", is_flag=True, help="Replace an existing run folder.")


def parse_split(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, str] | None:
    """--split VAL_START,TEST_START -> two date strings (checked by WindowSpec)."""
    if value is None:
        return None
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise click.BadParameter(f"{value!r} is not VAL_START,TEST_START (e.g. 2025-01-02,2025-07-01)")
    return parts[0], parts[1]


split_option = click.option("--split", callback=parse_split, metavar="VAL_START,TEST_START",
                            help="Split by dates: anchors closing from VAL_START are validation, from TEST_START "
                                 "test (UTC unless an offset is given).  [default: 60/20/20 of the anchors]")


def cli_errors(func):
    """Bad input becomes one clear line (click's error), never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (DataError, ValueError, FileNotFoundError, FileExistsError) as err:
            raise click.ClickException(str(err)) from None
    return wrapper


def model_overrides(pairs: tuple[str, ...]) -> dict:
    """CgaConfig fields named in `key=value` pairs, parsed and type-checked against the config."""
    parsed = apply_overrides(CgaConfig(n_assets=1), pairs)
    return {key: getattr(parsed, key) for key in (pair.partition("=")[0].strip() for pair in pairs)}


@click.command()
@data_option
@embeddings_option
@out_option
@config_option
@set_option
@click.option("--model-set", "model_sets", multiple=True, metavar="KEY=VALUE", help="Override a CgaConfig field.")
@click.option("--variant", type=click.Choice(sorted(VARIANTS)), default="cga", show_default=True,
              help="cga = the model; concat / market / news = ablations.")
@click.option("--lookback", default=WindowSpec.lookback, show_default=True, help="L: bars per input window.")
@click.option("--horizon", default=WindowSpec.horizon, show_default=True, help="H: bars the weights are held.")
@split_option
@force_option
@cli_errors
def train(data_dir: Path, embeddings: Path, out: Path, config_path: Path | None, sets: tuple[str, ...],
          model_sets: tuple[str, ...], variant: str, lookback: int, horizon: int, split: tuple[str, str] | None,
          force: bool) -> None:
    """Train the CGA model.

    \b
    nfc train --data runs/demo/data --embeddings runs/demo/embeddings.parquet --out runs/demo/model
    torchrun --standalone --nproc_per_node=2 -m nfc.cli train --data ... --out ...
    """
    train_config = apply_overrides(TrainConfig(), sets, config_path)
    val_start, test_start = split or (None, None)
    window = WindowSpec(lookback=lookback, horizon=horizon, val_start=val_start, test_start=test_start)
    portfolio = PortfolioSpec()
    log.info("train config: %s", train_config.to_dict())
    prepared = prepare(load_data_dir(data_dir), embeddings, window)
    config = model_config_for(prepared, window, portfolio, train_config, variant, model_overrides(model_sets))
    log.info("model config: %s", config.to_dict())
    result = train_model(prepared, config, train_config, window, portfolio)
    rank, _ = distributed_context()
    if rank == 0:
        write_run(out, result, prepared, train_config, window, portfolio,
                  extra_meta={"variant": variant, "data_dir": str(data_dir.resolve())}, force=force)
        click.echo(f"wrote {out}: best val Sharpe {result.best_val_sharpe:.2f} at epoch {result.best_epoch}, "
                   f"{len(result.history)} epochs in {result.seconds:.0f} s")


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The incumbent run folder.")
@data_option
@embeddings_option
@out_option
@config_option
@set_option
@force_option
@cli_errors
def finetune(model_dir: Path, data_dir: Path, embeddings: Path, out: Path, config_path: Path | None,
             sets: tuple[str, ...], force: bool) -> None:
    """Continue training on newer data; the challenger replaces the incumbent only if it wins on the
    same validation windows.

    \b
    nfc finetune --model runs/demo/model --data data/newer --embeddings newer.parquet --out runs/demo/model-2
    """
    incumbent_run = load_run(model_dir)
    train_config = apply_overrides(incumbent_run.train_config, sets, config_path)
    data = load_data_dir(data_dir, universe=incumbent_run.universe)
    if data.bar_spec.interval != incumbent_run.bar_spec.interval:
        raise DataError(f"data bars are {data.bar_spec.interval}, the model was trained on "
                        f"{incumbent_run.bar_spec.interval}", source=str(data_dir))
    prepared = prepare(data, embeddings, incumbent_run.window, normaliser=incumbent_run.normaliser)
    incumbent = CgaModel.from_checkpoint(incumbent_run.weights_path)
    incumbent_sharpe = validation_sharpe(incumbent, prepared, prepared.splits.val, incumbent_run.window,
                                         incumbent_run.portfolio, train_config.val_offsets)
    result = train_model(prepared, incumbent.config, train_config, incumbent_run.window, incumbent_run.portfolio,
                         init_state={k: v.clone() for k, v in incumbent.state_dict().items()})
    promoted = result.best_val_sharpe > incumbent_sharpe
    decision = {"incumbent": str(model_dir), "incumbent_val_sharpe": incumbent_sharpe,
                "challenger_val_sharpe": result.best_val_sharpe, "promoted": promoted,
                "validation_bars": prepared.splits.to_dict()["val"]}
    write_run(out, result, prepared, train_config, incumbent_run.window, incumbent_run.portfolio,
              extra_meta={"variant": incumbent_run.meta.get("variant", "cga"), "data_dir": str(data_dir.resolve()),
                          "parent": str(model_dir.resolve()), "finetune": decision}, force=force,
              extra_files={DECISION_FILE: decision})
    verdict = "challenger promoted" if promoted else f"kept the incumbent {model_dir}"
    click.echo(f"{verdict}: val Sharpe challenger {result.best_val_sharpe:.2f} vs incumbent {incumbent_sharpe:.2f} "
               f"(both versions kept with their metrics; challenger in {out})")
