"""Lookback/horizon windows over the bar grid and the chronological train/val/test split.

A window is named by its anchor bar t (the as-of bar): inputs are bars t-L+1..t, targets are the
per-bar asset returns of bars t+1..t+H. Nothing at or after bar t+1 enters the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def chronological_split(anchors: np.ndarray, spec: WindowSpec, times: pd.DatetimeIndex | None = None) -> Splits:
    """Split ascending anchors into train/val/test by time, dropping `spec.embargo` bars between splits.

    By fractions of the anchors (the default), or by dates when `spec` has val_start/test_start: an anchor
    belongs to the split whose start its bar's close time (`times[anchor]`) has reached. The embargo makes
    the first anchor of a split more than H bars after the last anchor of the previous one, so no target
    return is shared across splits.
    """
    anchors = np.asarray(anchors)
    n = len(anchors)
    gap = spec.embargo
    if spec.val_start is not None:
        if times is None:
            raise ValueError("a date split needs the grid's bar times")
        val_start, test_start = spec.split_times
        closes = times[anchors]
        n_train = int((closes < val_start).sum())
        n_val = int((closes < test_start).sum()) - n_train
        what = f"the date split {spec.val_start} / {spec.test_start} ({times[0]} .. {times[-1]})"
    else:
        n_train = int(n * spec.train_fraction)
        n_val = int(n * spec.val_fraction)
        what = f"{spec.train_fraction:.0%}/{spec.val_fraction:.0%}/rest"
    train = anchors[:n_train]
    val = anchors[n_train + gap: n_train + n_val]
    test = anchors[n_train + n_val + gap:]
    if len(train) == 0 or len(test) == 0 or ((spec.val_fraction > 0 or spec.val_start) and len(val) == 0):
        raise DataError(
            f"{n} usable windows are too few to split {what} with an embargo of {gap} bars between splits "
            f"(train {len(train)}, val {len(val)}, test {len(test)}); supply more bars, a shorter horizon or other "
            "split dates"
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
