"""Run folders: what `nfc train` writes and every later step reads.

RUN/
  model.safetensors   weights, with the model config in the file's metadata
  run.json            model/train/window/portfolio configs, universe, bar spec, feature names,
                      normalisation stats, encoder fingerprint, splits, data folder, git commit
  metrics.json        per-epoch history, best validation Sharpe, timings
  checkpoint.pt       optimizer state, step, best metric (torch.load(weights_only=True))
A run is written into `RUN.partial/` and renamed to `RUN/` only when complete, so a failed run never
leaves a folder that looks finished.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuralfusion.features import FeatureNormalizer
from neuralfusion.model_config import CgaConfig
from neuralfusion.specs import BarSpec, PortfolioSpec, Universe, WindowSpec
from neuralfusion.train_config import TrainConfig

__all__ = ["RUN_FILES", "Run", "git_commit", "load_run", "staged_folder", "write_json"]

RUN_FILES = ("model.safetensors", "run.json", "metrics.json")


@dataclass(frozen=True)
class Run:
    """A finished run folder, read back (the weights stay on disk until a model is built)."""

    path: Path
    model_config: CgaConfig
    train_config: TrainConfig
    window: WindowSpec
    portfolio: PortfolioSpec
    universe: Universe
    bar_spec: BarSpec
    normaliser: FeatureNormalizer
    encoder: dict[str, Any]
    meta: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        return self.path / "model.safetensors"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def git_commit() -> str | None:
    """The commit of the code that made an artifact, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,  # noqa: S607
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@contextmanager
def staged_folder(out: Path, force: bool, required: tuple[str, ...]) -> Iterator[Path]:
    """A fresh `OUT.partial/` to write into, renamed to `OUT/` only when the block succeeds with every
    `required` file; on any error the partial folder is removed, so nothing half-written looks finished
    (an old `OUT/` is replaced only by a complete new one, and only with `force`)."""
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        missing = [name for name in required if not (partial / name).exists()]
        if missing:
            raise RuntimeError(f"{partial} is missing {missing}; not publishing an incomplete folder")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def load_run(path: Path | str) -> Run:
    """Read a run folder; a partial or foreign folder is refused with what is missing."""
    path = Path(path)
    missing = [name for name in RUN_FILES if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a finished run folder (missing {missing}); run `nfc train` first")
    meta = json.loads((path / "run.json").read_text())
    try:  # a run from another version of the model or trainer names settings this one does not have
        model_config, train_config = CgaConfig.from_dict(meta["model"]), TrainConfig(**meta["train"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path / 'run.json'} does not fit this version of nfc ({error}); train it again with "
                         "`nfc train`") from error
    return Run(
        path=path,
        model_config=model_config,
        train_config=train_config,
        window=WindowSpec(**meta["window"]),
        portfolio=PortfolioSpec(**meta["portfolio"]),
        universe=Universe.from_dict(meta["universe"]),
        bar_spec=BarSpec(**meta["bar_spec"]),
        normaliser=FeatureNormalizer.from_dict(meta["normaliser"]),
        encoder=meta["encoder"],
        meta=meta,
        metrics=json.loads((path / "metrics.json").read_text()),
    )
