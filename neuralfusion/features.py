"""Causal per-asset market features and their train-only normalisation (stored as JSON).

Every feature at bar t is a function of bars <= t only; rolling statistics use trailing windows.
The first WARMUP_BARS bars have undefined features and no window may read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuralfusion.data.bars import BarPanel
from neuralfusion.errors import DataError

__all__ = ["FEATURE_NAMES", "WARMUP_BARS", "FeatureNormalizer", "market_features", "simple_returns"]

VOL_WINDOW = 20  # bars in the realised-volatility window (one hour of 3-minute bars)
MOMENTUM_WINDOW = 10
VOLUME_WINDOW = 80  # bars in the volume z-score baseline
WARMUP_BARS = VOLUME_WINDOW

FEATURE_NAMES: tuple[str, ...] = (
    "log_return",  # log(c_t / c_{t-1})
    "realised_vol",  # std of log returns over VOL_WINDOW bars
    "hl_range",  # log(high / low) of the bar
    "close_open",  # log(close / open) of the bar: intrabar direction
    "momentum",  # log(c_t / c_{t-MOMENTUM_WINDOW})
    "volume_z",  # z-score of log1p(volume) against its trailing VOLUME_WINDOW bars
    "stale",  # 1 where the bar was forward-filled
)


def simple_returns(close: np.ndarray) -> np.ndarray:
    """Per-bar simple returns (T, N); row 0 is 0 (no previous bar). These are the model's targets."""
    out = np.zeros_like(close, dtype=np.float64)
    out[1:] = close[1:] / close[:-1] - 1.0
    return out


def market_features(panel: BarPanel) -> np.ndarray:
    """Features (T, N, F) in FEATURE_NAMES order; rows before WARMUP_BARS are NaN."""
    close = pd.DataFrame(panel.close)
    log_close = np.log(close)
    log_ret = log_close.diff()
    log_volume = pd.DataFrame(np.log1p(panel.volume))
    vol_mean = log_volume.rolling(VOLUME_WINDOW, min_periods=VOLUME_WINDOW).mean()
    vol_std = log_volume.rolling(VOLUME_WINDOW, min_periods=VOLUME_WINDOW).std()
    columns = [
        log_ret,
        log_ret.rolling(VOL_WINDOW, min_periods=VOL_WINDOW).std(),
        pd.DataFrame(np.log(panel.high / panel.low)),
        pd.DataFrame(np.log(panel.close / panel.open)),
        log_close.diff(MOMENTUM_WINDOW),
        (log_volume - vol_mean) / vol_std.where(vol_std > 0, np.nan).fillna(1.0),
        pd.DataFrame(panel.stale.astype(np.float64)),
    ]
    features = np.stack([c.to_numpy(dtype=np.float64) for c in columns], axis=-1)
    features[:WARMUP_BARS] = np.nan
    return features


@dataclass(frozen=True)
class FeatureNormalizer:
    """Per-feature mean and std pooled over assets, fitted on the training bars only, and the bound the standardised
    values are clipped to (0: none). It travels with the run and the package, so serving clips as training did."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fit_start: int
    fit_end: int
    clip: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip >= 0):
            raise ValueError(f"clip must be a finite number >= 0 (0: no clipping), got {self.clip}")

    @classmethod
    def fit(cls, features: np.ndarray, fit_start: int, fit_end: int,
            names: tuple[str, ...] = FEATURE_NAMES, clip: float = 0.0) -> FeatureNormalizer:
        """Fit on bars fit_start..fit_end inclusive (the training split's input bars); `clip` as the field."""
        window = features[fit_start: fit_end + 1]
        bad = ~np.isfinite(window)
        if bad.any():
            bar, asset, feature = np.argwhere(bad)[0]
            raise DataError(f"features contain NaN/inf in bars {fit_start}..{fit_end} (first: bar {fit_start + bar}, "
                            f"asset column {asset}, feature {names[feature]!r}); fit after the warm-up")
        block = window.reshape(-1, features.shape[-1])
        std = block.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)  # a constant feature (e.g. never stale) passes through centred
        return cls(names=tuple(names), mean=tuple(block.mean(axis=0).tolist()), std=tuple(std.tolist()),
                   fit_start=fit_start, fit_end=fit_end, clip=float(clip))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Standardise (…, F) features, then clip them to ±clip when clip > 0 (NaN stays NaN); returns float32 and
        never mutates the input."""
        if features.shape[-1] != len(self.names):
            raise DataError(f"expected {len(self.names)} features {list(self.names)}, got {features.shape[-1]}")
        standard = (features - np.asarray(self.mean)) / np.asarray(self.std)
        if self.clip > 0:
            standard = np.clip(standard, -self.clip, self.clip)
        return standard.astype(np.float32)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std),
                "fit_start": self.fit_start, "fit_end": self.fit_end, "clip": self.clip}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureNormalizer:
        return cls(names=tuple(data["names"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
                   fit_start=int(data["fit_start"]), fit_end=int(data["fit_end"]),
                   clip=float(data.get("clip", 0.0)))  # runs from before clipping: none

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path | str) -> FeatureNormalizer:
        return cls.from_dict(json.loads(Path(path).read_text()))
