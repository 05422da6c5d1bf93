"""Lookback/horizon windows over the bar grid and the chronological train/val/test split.

A window is named by its anchor bar t (the as-of bar): inputs are bars t-L+1..t, targets are the
per-bar asset returns of bars t+1..t+H. Nothing at or after bar t+1 enters the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralfusion.errors import DataError
from neuralfusion.specs import WindowSpec

__all__ = ["Splits", "chronological_split", "input_windows", "target_windows", "usable_anchors"]


@dataclass(frozen=True)
class Splits:
    """Anchor bar indices of each split, ascending; consecutive splits are `embargo` bars apart."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        """First and last anchor of each split, for run metadata."""
        return {name: [int(a[0]), int(a[-1])] if len(a) else []
                for name, a in (("train", self.train), ("val", self.val), ("test", self.test))}


def usable_anchors(n_bars: int, first_valid: int, spec: WindowSpec) -> np.ndarray:
    """Anchors whose whole lookback is at or after `first_valid` (feature warm-up) and whose horizon fits."""
    first = first_valid + spec.lookback - 1
    last = n_bars - 1 - spec.horizon
    if last < first:
        raise DataError(
            f"data too short for one window: {n_bars} bars, features valid from bar {first_valid}, "
            f"lookback {spec.lookback} + horizon {spec.horizon} needs at least "
            f"{first_valid + spec.lookback + spec.horizon} bars"
        )
    return np.arange(first, last + 1)


def chronological_split(anchors: np.ndarray, spec: WindowSpec) -> Splits:
    """Split ascending anchors into train/val/test by time, dropping `spec.embargo` bars between splits.

    The embargo makes the first anchor of a split more than H bars after the last anchor of the
    previous one, so no target return is shared across splits.
    """
    anchors = np.asarray(anchors)
    n = len(anchors)
    gap = spec.embargo
    n_train = int(n * spec.train_fraction)
    n_val = int(n * spec.val_fraction)
    train = anchors[:n_train]
    val = anchors[n_train + gap: n_train + n_val]
    test = anchors[n_train + n_val + gap:]
    if len(train) == 0 or len(test) == 0 or (spec.val_fraction > 0 and len(val) == 0):
        raise DataError(
            f"{n} usable windows are too few to split {spec.train_fraction:.0%}/{spec.val_fraction:.0%}/rest "
            f"with an embargo of {gap} bars between splits; supply more bars or a shorter horizon"
        )
    return Splits(train=train, val=val, test=test)


def input_windows(values: np.ndarray, anchors: np.ndarray, lookback: int) -> np.ndarray:
    """Stack values[t-L+1 : t+1] for each anchor t: (T, ...) -> (B, L, ...)."""
    offsets = np.arange(-lookback + 1, 1)
    return values[np.asarray(anchors)[:, None] + offsets]


def target_windows(returns: np.ndarray, anchors: np.ndarray, horizon: int) -> np.ndarray:
    """Stack returns[t+1 : t+H+1] for each anchor t: (T, N) -> (B, H, N)."""
    offsets = np.arange(1, horizon + 1)
    return returns[np.asarray(anchors)[:, None] + offsets]
