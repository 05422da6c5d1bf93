"""Run folders: what `nfc train` writes and every later step reads.

RUN/
  model.safetensors   weights, with the model config in the file's metadata
  run.json            model/train/window/portfolio configs, universe, bar spec, feature names,
                      normalisation stats, encoder fingerprint, splits, data folder, git commit
  metrics.json        per-epoch history, best validation Sharpe, timings
  checkpoints/         the last and the best epoch state (weights, optimizer, schedule, RNG, progress), each in an
                      epoch-NNNN/ folder (training/checkpoints.py); `--resume` continues from the last
  decision.json       `nfc finetune` only: challenger vs incumbent on the same validation windows, "promoted"
A run trains in `RUN.partial/` (its checkpoints are written there after every epoch) and is renamed to `RUN/`
only when complete, so a failed or interrupted run never leaves a folder that looks finished, and
`nfc train ... --resume` finds its states there. Paths in run.json (data folder, embeddings file) are absolute; runs
written before that hold them as given, and `Run.resolve` looks for those beside the run too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuralfusion.features import FeatureNormalizer
from neuralfusion.model_config import CgaConfig
from neuralfusion.specs import BarSpec, PortfolioSpec, Universe, WindowSpec
from neuralfusion.train_config import TrainConfig

__all__ = ["DECISION_FILE", "RUN_FILES", "Run", "load_run", "promotion"]

RUN_FILES = ("model.safetensors", "run.json", "metrics.json")
DECISION_FILE = "decision.json"


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

    def resolve(self, recorded: str | None, what: str) -> Path:
        """A path run.json recorded (`what` names it): absolute as it is; a relative one (older runs stored
        it as given to `nfc train`) from the working directory, else beside the run folder. FileNotFoundError
        names every place looked at."""
        if not recorded:
            raise FileNotFoundError(f"{self.path / 'run.json'} records no {what}")
        path = Path(recorded)
        places = [path] if path.is_absolute() else [path, self.path / path, self.path.parent / path]
        for place in places:
            if place.exists():
                return place
        raise FileNotFoundError(f"the {what} of run {self.path} ({recorded!r} in run.json) is missing: looked at "
                                f"{', '.join(str(p) for p in places)}; pass it explicitly")


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


def promotion(run: Run) -> dict[str, Any]:
    """Whether `run` may replace the served model: `nfc finetune`'s decision ({"promoted": bool, ...}, from
    decision.json, else run.json's "finetune"), or promoted for a run `nfc train` made (no incumbent)."""
    path = run.path / DECISION_FILE
    decision = json.loads(path.read_text()) if path.is_file() else run.meta.get("finetune")
    if decision is None:
        return {"promoted": True, "reason": "trained by `nfc train`: no incumbent to beat"}
    if not isinstance(decision.get("promoted"), bool):
        raise ValueError(f"{path} does not say whether the run was promoted (no boolean 'promoted')")
    return {**decision, "reason": "won against its incumbent" if decision["promoted"] else
            f"lost to its incumbent {decision.get('incumbent')} (val Sharpe {decision.get('challenger_val_sharpe')} "
            f"vs {decision.get('incumbent_val_sharpe')})"}
