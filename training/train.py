"""`nfc train`: fit the CGA model on a data folder with precomputed news embeddings.

    nfc train --data runs/demo/data --embeddings runs/demo/embeddings.parquet --out runs/demo/model
    nfc train ... --set epochs=20 --set lr=1e-3 --model-set d_model=96 --variant concat
    torchrun --standalone --nproc_per_node=4 -m nfc.cli train --data DIR --embeddings FILE --out RUN

Seeds everything, AdamW with gradient clipping, early stopping on the validation walk-forward Sharpe
(after costs, exact top-k weights), the best weights saved as safetensors with every config beside them.
Under torchrun each rank trains on its shard of the windows (DDP), all shards of one size so every rank
takes the same number of steps (`rank_shard`); only rank 0 logs and writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from neuralfusion.artifacts import git_commit, write_json
from neuralfusion.backtest import offset_rebalance_anchors, walk_forward
from neuralfusion.dataset import MarketData
from neuralfusion.embeddings import read_embeddings
from neuralfusion.encoder_text import check_encoder_text, record_from_metadata
from neuralfusion.errors import DataError
from neuralfusion.features import FEATURE_NAMES, WARMUP_BARS, FeatureNormalizer
from neuralfusion.inputs import GridInputs, grid_inputs
from neuralfusion.model_config import CgaConfig, dominant_periods
from neuralfusion.overrides import apply_overrides
from neuralfusion.specs import PortfolioSpec, WindowSpec
from neuralfusion.staging import staged_folder
from neuralfusion.train_config import LR_FLOOR, TrainConfig
from neuralfusion.windows import Splits, chronological_split, target_windows, usable_anchors
from training.checkpoints import (
    TrainState,
    gather_rng_states,
    latest_epoch_folder,
    load_best_weights,
    restore_epoch,
    save_epoch,
)
from training.model import CgaModel, surrogate_weights
from training.runs import RUN_FILES

__all__ = [
    "VARIANTS",
    "Prepared",
    "TrainResult",
    "end_distributed",
    "flush_subnormals_on_cpu",
    "model_overrides",
    "predict",
    "prepare",
    "previous_books",
    "rank_shard",
    "run_settings",
    "train_model",
    "validation_sharpe",
    "write_run",
]

log = logging.getLogger(__name__)

# the main model and its ablations: same code path, one switch each
VARIANTS: dict[str, dict[str, str]] = {
    "cga": {"fusion": "cga", "streams": "both"},
    "concat": {"fusion": "concat", "streams": "both"},
    "market": {"streams": "market"},
    "news": {"streams": "news"},
}


@dataclass(frozen=True)
class Prepared:
    """A data folder turned into model inputs, with its split and the normaliser fitted on its train part."""

    data: MarketData
    grid: GridInputs
    splits: Splits
    normaliser: FeatureNormalizer
    encoder: dict[str, Any]


def article_vectors(data: MarketData, embeddings_path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """One embedding per news item of `data`, in its row order, from an `nfc embed` file."""
    ids, vectors, meta = read_embeddings(embeddings_path)
    position = {item_id: row for row, item_id in enumerate(ids)}
    missing = [item_id for item_id in data.news["id"] if item_id not in position]
    if missing:
        raise DataError(f"{len(missing)} news items have no embedding (first: {missing[0]!r}); "
                        "run `nfc embed` on this data folder's news file", source=str(embeddings_path))
    rows = np.fromiter((position[i] for i in data.news["id"]), dtype=np.int64, count=len(data.news))
    return vectors[rows], meta


def prepare(data: MarketData, embeddings_path: Path, window: WindowSpec,
            normaliser: FeatureNormalizer | None = None, allow_encoder_leak: bool = False,
            normaliser_settings: Mapping[str, Any] | None = None) -> Prepared:
    """Split the anchors, fit the normaliser on the training bars (unless given; with `normaliser_settings`, the
    training config's `normaliser_settings`: clip and derived channels), build the inputs.

    Embeddings whose encoder read news published after the training end (validation or test text), or
    whose encoder has no record of its text, are refused (EncoderLeakError) unless `allow_encoder_leak`;
    the verdict is kept in `Prepared.encoder["text_check"]` (neuralfusion/encoder_text.py).
    """
    splits = chronological_split(usable_anchors(data.n_bars, WARMUP_BARS, window), window, data.panel.times)
    vectors, meta = article_vectors(data, embeddings_path)
    record = record_from_metadata(meta)
    end = data.panel.times[int(splits.train[-1])]
    text_check = check_encoder_text(record, end, allow_encoder_leak, source=str(embeddings_path))
    if text_check.status != "clean":
        log.warning("using embeddings whose encoder %s (--allow-encoder-leak): %s",
                    "read news after the training end" if text_check.status == "leak" else "has no text record",
                    text_check.to_dict())
    if normaliser is None:
        normaliser = FeatureNormalizer.fit(data.features, WARMUP_BARS, int(splits.train[-1]),
                                           **(normaliser_settings or {}))
    encoder = {"fingerprint": meta.get("nfc.encoder_fingerprint"), "embeddings": str(Path(embeddings_path).resolve()),
               "embed_dim": int(vectors.shape[1]), "text": record, "text_check": text_check.to_dict()}
    return Prepared(data=data, grid=grid_inputs(data, vectors, normaliser), splits=splits,
                    normaliser=normaliser, encoder=encoder)


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(values, dtype=torch.float32, device=device) for name, values in batch.items()}


@torch.no_grad()
def predict(model: CgaModel, grid: GridInputs, anchors: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, ...]:
    """Logits and exact top-k weights (R, N) for the windows ending at `anchors` (eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, weights = [], []
    for start in range(0, len(anchors), batch_size):
        batch = grid.windows(anchors[start:start + batch_size], model.config.lookback)
        out = model(**to_tensors(batch, device))
        logits.append(out.logits.cpu().numpy())
        weights.append(out.weights.cpu().numpy())
    model.train(was_training)
    return np.concatenate(logits), np.concatenate(weights)


def validation_sharpe(model: CgaModel, prepared: Prepared, anchors: np.ndarray, window: WindowSpec,
                      portfolio: PortfolioSpec, offsets: int) -> float:
    """Mean annualised walk-forward Sharpe after costs, rebalancing every H bars from `offsets` start bars."""
    horizon = window.horizon
    sharpes = []
    for rebalance in offset_rebalance_anchors(anchors, horizon, prepared.data.n_bars, offsets):
        if len(rebalance) < 2:
            continue
        _, weights = predict(model, prepared.grid, rebalance)
        run = walk_forward(rebalance, weights, prepared.data.returns, horizon, portfolio.cost_bps)
        sharpes.append(run.metrics(prepared.data.bars_per_year)["sharpe"])
    if not sharpes:
        raise DataError(f"validation split of {len(anchors)} windows is too short to rebalance twice")
    return float(np.mean(sharpes))


def previous_books(model: CgaModel, grid: GridInputs, anchors: np.ndarray, horizon: int,
                   first_anchor: int) -> torch.Tensor:
    """The book held before each window (the one `horizon` bars earlier, clipped to the first training anchor),
    for the turnover term: in the form the loss takes the current book (`surrogate_weights` of the logits, the
    dense book at the default surrogate_mix 1.0), from the model in eval mode, without gradient.

    Against the exact top-k book, the dense training book differed even where the ranking stayed the same, so
    the term rewarded concentrating the book rather than trading less.
    """
    logits, _ = predict(model, grid, np.maximum(anchors - horizon, first_anchor))
    device = next(model.parameters()).device
    return surrogate_weights(torch.as_tensor(logits, dtype=torch.float32, device=device), model.config.top_k,
                             model.config.surrogate_mix)


@dataclass
class TrainResult:
    model: CgaModel
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_sharpe: float
    seconds: float  # over every session of a resumed run
    windows_per_second: float
    resumed_from: int | None = None  # the epochs done when a resumed run started again


def distributed_context() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def end_distributed() -> None:
    """Every rank waits for the others (rank 0 writes the run), then the process group is torn down before the
    process exits: a gloo group left alive aborted a finished rank at exit ("terminate called without an active
    exception", SIGABRT) about one run in ten."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def model_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """CgaConfig fields named in `key=value` pairs (`nfc train --model-set`), parsed and type-checked."""
    parsed = apply_overrides(CgaConfig(n_assets=1), pairs)
    return {key: getattr(parsed, key) for key in (pair.partition("=")[0].strip() for pair in pairs)}


def model_config_for(prepared: Prepared, window: WindowSpec, portfolio: PortfolioSpec, train: TrainConfig,
                     variant: str, overrides: dict[str, Any]) -> CgaConfig:
    """The architecture for this data: universe size, embedding width, periods from the training spectrum."""
    train_bars = prepared.grid.market[WARMUP_BARS: int(prepared.splits.train[-1]) + 1]
    periods = dominant_periods(train_bars, train.n_periods, window.lookback)
    config = CgaConfig(n_assets=prepared.data.universe.n_assets, n_features=prepared.grid.market.shape[-1],
                       embed_dim=prepared.grid.embed_dim, lookback=window.lookback, periods=periods,
                       top_k=portfolio.top_k, **VARIANTS[variant])
    return replace(config, **overrides)


def rank_shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's windows of an epoch's shuffled `order`: every rank gets exactly len(order) // world of them,
    so all ranks run the same number of steps (DDP all-reduces gradients at every step; a rank with one batch
    more waited for a peer that had finished and crashed the run). The up to world - 1 windows left over are
    dropped for this epoch only: the next epoch's shuffle leaves out others."""
    per_rank = len(order) // world
    return order[: per_rank * world][rank::world]


def flush_subnormals_on_cpu(device: torch.device) -> None:
    """On CPU, compute subnormal floats as 0 (process-wide): they arise in the backward pass and made the
    default model's training step 1.8x slower on 2 cores (600 vs 331 ms); values that small change nothing.
    `train_model` turns it off again when training ends."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def lr_multiplier(train: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The schedule as a function of the step (0-based) -> factor on `train.lr`, for `LambdaLR`."""
    warmup = int(train.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if train.lr_schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def run_settings(prepared: Prepared, config: CgaConfig, train: TrainConfig, window: WindowSpec,
                 portfolio: PortfolioSpec, world: int, init_state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (JSON): configs, data, embeddings, processes,
    the weights it started from."""
    data = prepared.data
    init = None
    if init_state is not None:
        digest = hashlib.sha256()
        for key in sorted(init_state):
            digest.update(key.encode() + init_state[key].detach().cpu().contiguous().numpy().tobytes())
        init = digest.hexdigest()
    return json.loads(json.dumps({
        "model": config.to_dict(), "train": train.to_dict(), "window": window.to_dict(),
        "portfolio": {"top_k": portfolio.top_k, "cost_bps": portfolio.cost_bps}, "world_size": world,
        "data": {"start": str(data.panel.times[0]), "end": str(data.panel.times[-1]), "bars": data.n_bars,
                 "universe": data.universe.to_dict()},
        "encoder": prepared.encoder["fingerprint"], "init_weights": init,
    }))


def train_model(prepared: Prepared, config: CgaConfig, train: TrainConfig, window: WindowSpec,
                portfolio: PortfolioSpec, init_state: dict[str, torch.Tensor] | None = None,
                progress: bool = True, checkpoints: Path | None = None, resume: bool = False,
                on_epoch: Callable[[TrainState], None] | None = None) -> TrainResult:
    """Train with early stopping on validation Sharpe; returns the best model (eval mode) and the history.

    checkpoints: a folder for the last and the best state after every epoch (training/checkpoints.py); with
    `resume`, training continues from its last state and ends with the weights an uninterrupted run ends with.
    on_epoch(state) is called after every epoch (and its checkpoint).
    """
    rank, world = distributed_context()
    torch.manual_seed(train.seed)  # identical initial weights on every rank
    if train.threads:
        torch.set_num_threads(train.threads)
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    flush_subnormals_on_cpu(device)
    raw_model = CgaModel(config).to(device)
    if init_state is not None:
        raw_model.load_checked_state_dict(init_state)
    torch.manual_seed(train.seed + rank)  # dropout differs per rank
    optimizer = raw_model.configure_optimizers(train.weight_decay, train.lr, (train.beta1, train.beta2),
                                               train.market_lr_scale)
    train_anchors = prepared.splits.train[:: train.train_stride]
    if len(train_anchors) < world:
        raise DataError(f"{len(train_anchors)} training windows cannot be shared by {world} processes; lower "
                        "train_stride or the number of processes")
    steps_per_epoch = math.ceil(len(train_anchors) // world / train.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(train, train.epochs * steps_per_epoch))
    settings = run_settings(prepared, config, train, window, portfolio, world, init_state)
    state = TrainState(epoch=0, best_epoch=0, best_val_sharpe=-math.inf, history=[], windows_seen=0, seconds=0.0,
                       stopped=False, settings=settings)
    best_weights = copy.deepcopy(raw_model.state_dict())
    resumed_from = None
    if resume:
        latest = latest_epoch_folder(checkpoints) if checkpoints is not None else None
        if latest is None:
            raise FileNotFoundError(f"nothing to resume: no epoch state in {checkpoints}")
        state = restore_epoch(latest, raw_model, optimizer, scheduler, settings, rank, device)
        best_weights = load_best_weights(checkpoints, state, device)
        resumed_from = state.epoch
        if rank == 0:
            log.info("resumed from %s: %d of %d epochs done, best val Sharpe %.2f at epoch %d", latest, state.epoch,
                     train.epochs, state.best_val_sharpe, state.best_epoch)
    model = DistributedDataParallel(raw_model) if world > 1 else raw_model
    first_anchor = int(prepared.splits.train[0])
    returns = prepared.data.returns
    session_start, seconds_before = time.perf_counter(), state.seconds
    for epoch in range(state.epoch, state.epoch if state.stopped else train.epochs):
        epoch_start = time.perf_counter()
        shuffle = np.random.default_rng(train.seed + epoch)
        order = rank_shard(shuffle.permutation(train_anchors), rank, world)
        batches = range(0, len(order), train.batch_size)
        losses, term_sums = [], {}
        raw_model.train()
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{train.epochs}", disable=not progress or rank != 0,
                          leave=False):
            anchors = order[start:start + train.batch_size]
            inputs = to_tensors(prepared.grid.windows(anchors, window.lookback), device)
            targets = torch.as_tensor(target_windows(returns, anchors, window.horizon), dtype=torch.float32,
                                      device=device)
            prev = previous_books(raw_model, prepared.grid, anchors, window.horizon, first_anchor) \
                if config.lambda_turnover > 0 else None
            out = model(**inputs, targets=targets, prev_weights=prev)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), train.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(out.loss.detach().item())
            for name, value in out.loss_terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.item()
            state.windows_seen += len(anchors)
        val = validation_sharpe(raw_model, prepared, prepared.splits.val, window, portfolio, train.val_offsets)
        seconds = time.perf_counter() - epoch_start
        state.epoch = epoch + 1
        terms = {name: total / len(losses) for name, total in term_sums.items()}  # unweighted, as cga_loss gives them
        state.history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_sharpe": val,
                              "seconds": seconds, "train_terms": terms})
        if rank == 0:
            log.info("epoch %d: train loss %.4f, val Sharpe %.2f (%.1f s); terms %s", epoch + 1, np.mean(losses), val,
                     seconds, ", ".join(f"{name} {value:.4g}" for name, value in terms.items()))
        if val > state.best_val_sharpe:
            state.best_val_sharpe, state.best_epoch = val, epoch + 1
            best_weights = copy.deepcopy(raw_model.state_dict())
        elif epoch + 1 - state.best_epoch >= train.patience:
            if rank == 0:
                log.info("early stop: no better validation Sharpe for %d epochs", train.patience)
            state.stopped = True
        state.stopped = state.stopped or epoch + 1 == train.epochs
        state.seconds = seconds_before + time.perf_counter() - session_start
        if checkpoints is not None:
            rng_states = gather_rng_states(world)
            if rank == 0:
                save_epoch(checkpoints, raw_model, optimizer, scheduler, state, rng_states)
        if on_epoch is not None:
            on_epoch(state)
        if state.stopped:
            break
    if device.type == "cpu":  # process-wide: leave it off for what runs next in this process (e.g. hypothesis's floats)
        torch.set_flush_denormal(False)
    raw_model.load_checked_state_dict(best_weights)
    raw_model.eval()
    return TrainResult(model=raw_model, history=state.history, best_epoch=state.best_epoch,
                       best_val_sharpe=float(state.best_val_sharpe), seconds=state.seconds,
                       windows_per_second=state.windows_seen * world / max(state.seconds, 1e-9),
                       resumed_from=resumed_from)


def write_run(out: Path, result: TrainResult, prepared: Prepared, train: TrainConfig, window: WindowSpec,
              portfolio: PortfolioSpec, extra_meta: dict[str, Any] | None = None, force: bool = False,
              extra_files: dict[str, Any] | None = None, checkpointed: bool = False) -> Path:
    """Write the run folder atomically (see training/runs.py for its layout); `extra_files` are JSON files
    (name -> data) written into it before it is published, e.g. finetune's decision.json. checkpointed: the
    run kept its epoch states in OUT.partial/checkpoints (`checkpoint_folder`); they are published with it."""
    with staged_folder(out, force, (*RUN_FILES, *(extra_files or {})), keep_partial=checkpointed) as partial:
        for name, content in (extra_files or {}).items():
            write_json(partial / name, content)
        result.model.save_checkpoint(partial / "model.safetensors")
        data = prepared.data
        write_json(partial / "run.json", {
            "model": result.model.config.to_dict(),
            "train": train.to_dict(),
            "window": window.to_dict(),
            "portfolio": {"top_k": portfolio.top_k, "cost_bps": portfolio.cost_bps},
            "universe": data.universe.to_dict(),
            "bar_spec": {"interval": data.bar_spec.interval, "calendar": data.bar_spec.calendar,
                         "max_missing_fraction": data.bar_spec.max_missing_fraction},
            "feature_names": list(FEATURE_NAMES),
            "warmup_bars": WARMUP_BARS,
            "normaliser": prepared.normaliser.to_dict(),
            "encoder": prepared.encoder,
            "splits": prepared.splits.to_dict(),
            "split_times": {name: [str(data.panel.times[a]) for a in bounds]
                            for name, bounds in prepared.splits.to_dict().items()},
            "data": {"start": str(data.panel.times[0]), "end": str(data.panel.times[-1]), "bars": data.n_bars},
            "git_commit": git_commit(),
            **(extra_meta or {}),
        })
        epoch_seconds = [h["seconds"] for h in result.history]
        write_json(partial / "metrics.json", {
            "best_epoch": result.best_epoch, "best_val_sharpe": result.best_val_sharpe, "history": result.history,
            "epochs_run": len(result.history), "mean_epoch_seconds": float(np.mean(epoch_seconds)),
            "train_seconds": result.seconds, "windows_per_second": result.windows_per_second,
            "train_windows_per_epoch": len(prepared.splits.train[:: train.train_stride]),
        })
    return out

