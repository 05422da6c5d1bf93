"""Per-epoch training states of `nfc train` and `nfc finetune`: the last one and the best one, resumable.

While a run trains they are in RUN.partial/checkpoints/ (RUN/checkpoints/ once the run is published):

  epoch-NNNN/
    model.safetensors  the weights after epoch NNNN (CgaModel.save_checkpoint: config in the metadata)
    trainer.pt         optimizer and learning-rate schedule (torch.save; read back with weights_only=True)
    state.json         epoch, best epoch and validation Sharpe, history, counters, whether training stopped,
                       and the settings a resume must match
    rng.json           the RNG states of torch (CPU and CUDA), numpy's global generator and python's `random`,
                       one entry per DDP rank (each rank's dropout draws from its own generator)

Each epoch folder is written under a temporary name and renamed, so it is complete or absent. After every
epoch only the newest folder (the last state) and the best epoch's folder (the best state) are kept.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from neuralfusion.staging import partial_folder
from training.model import CgaModel

__all__ = [
    "CHECKPOINTS_DIR",
    "TrainState",
    "checkpoint_folder",
    "differing_settings",
    "epoch_folder",
    "gather_rng_states",
    "latest_epoch_folder",
    "load_best_weights",
    "numbered_folders",
    "restore_epoch",
    "rng_state",
    "save_epoch",
    "set_rng_state",
    "written_whole",
]

CHECKPOINTS_DIR = "checkpoints"  # of a run (`nfc train`) and of a pretrained encoder (`nfc encoder pretrain`)
_WEIGHTS, _TRAINER, _STATE, _RNG = "model.safetensors", "trainer.pt", "state.json", "rng.json"


@dataclass
class TrainState:
    """What the training loop carries from one epoch to the next, besides weights, optimizer and RNG."""

    epoch: int  # epochs finished
    best_epoch: int
    best_val_sharpe: float
    history: list[dict[str, Any]]
    windows_seen: int
    seconds: float  # training time so far, over every session of the run
    stopped: bool  # early stop or last epoch reached: a resume has nothing left to train
    settings: dict[str, Any]


def epoch_folder(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:04d}"


def numbered_folders(folder: Path, prefix: str) -> list[Path]:
    """`folder`'s PREFIX-NNNN state folders in numeric order (none when `folder` does not exist)."""
    return sorted(folder.glob(f"{prefix}-[0-9]*"), key=lambda p: int(p.name.removeprefix(f"{prefix}-")))


@contextmanager
def written_whole(final: Path) -> Iterator[Path]:
    """A temporary folder beside `final` to write a state into, renamed to `final` when the block succeeds and
    removed when it fails: a state folder is complete or absent."""
    tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def latest_epoch_folder(folder: Path) -> Path | None:
    """The last state in `folder` (None when there is none)."""
    epochs = numbered_folders(folder, "epoch")
    return epochs[-1] if epochs else None


def rng_state() -> dict[str, Any]:
    """This process's generators as JSON: torch CPU and CUDA, numpy's global one, python's `random`."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    return {"torch": torch.get_rng_state().tolist(),
            "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            "numpy": numpy_state, "python": [version, list(internal), gauss]}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"]:
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {**numpy_state["state"], "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(numpy_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def gather_rng_states(world: int) -> list[dict[str, Any]]:
    """Every rank's `rng_state`, in rank order (a collective under DDP: every rank must call it)."""
    if world == 1:
        return [rng_state()]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def save_epoch(folder: Path, model: CgaModel, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, state: TrainState,
               rng_states: list[dict[str, Any]]) -> Path:
    """Write the state after `state.epoch` as one epoch folder (atomically), then drop all but it and the best."""
    final = epoch_folder(folder, state.epoch)
    with written_whole(final) as tmp:
        model.save_checkpoint(tmp / _WEIGHTS)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / _TRAINER)
        (tmp / _STATE).write_text(json.dumps(asdict(state), indent=1) + "\n")
        (tmp / _RNG).write_text(json.dumps(rng_states) + "\n")
    keep = {final.name, epoch_folder(folder, state.best_epoch).name}
    for old in numbered_folders(folder, "epoch"):
        if old.name not in keep:
            shutil.rmtree(old)
    return final


def differing_settings(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested settings dicts (present in only one counts)."""
    keys = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            keys += differing_settings(old, new, f"{name}.")
        elif old != new or (key in saved) != (key in current):
            keys.append(name)
    return keys


def restore_epoch(path: Path, model: CgaModel, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler, settings: dict[str, Any], rank: int,
                  device: torch.device) -> TrainState:
    """Load an epoch folder into the model, optimizer, schedule and this rank's RNGs; returns its TrainState.

    A checkpoint made with other settings is refused (ValueError naming every differing key), before
    anything is loaded.
    """
    state = TrainState(**json.loads((path / _STATE).read_text()))
    differing = differing_settings(state.settings, settings)
    if differing:
        raise ValueError(f"cannot resume from {path}: it was trained with other settings ({', '.join(differing)}); "
                         "resume with the same ones, or start again with --force")
    model.load_checked_state_dict(load_file(str(path / _WEIGHTS), device=str(device)))
    trainer = torch.load(path / _TRAINER, map_location=device, weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(json.loads((path / _RNG).read_text())[rank])
    return state


def load_best_weights(folder: Path, state: TrainState, device: torch.device) -> dict[str, torch.Tensor]:
    """The weights of the best epoch named by `state` (its folder is kept beside the last one)."""
    path = epoch_folder(folder, state.best_epoch) / _WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"the best state (epoch {state.best_epoch}) is missing: {path}")
    return load_file(str(path), device=str(device))


def checkpoint_folder(out: Path, force: bool, resume: bool) -> Path:
    """The folder run OUT keeps its epoch states in while it trains (OUT.partial/checkpoints), emptied for a fresh
    start or checked for a resume (call it on one process only).

    Refused, before any training: a finished OUT without `force`; `resume` with no state to resume; a fresh start
    over an interrupted run's states without `force` (they would be lost).
    """
    folder = partial_folder(out) / CHECKPOINTS_DIR
    latest = latest_epoch_folder(folder)
    if resume and latest is None:
        finished = f"; {out} is a finished run" if out.exists() else ""
        raise FileNotFoundError(f"--resume: no epoch state in {folder}{finished}; start without --resume")
    if not resume and latest is not None and not force:
        raise FileExistsError(f"{folder} holds the states of an interrupted run (last: {latest.name}); pass --resume "
                              "to continue it, or --force to start again")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    if not resume:
        shutil.rmtree(partial_folder(out), ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
