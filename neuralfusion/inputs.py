"""The model's four inputs on the bar grid, and windows of them: one definition for training,
export validation and serving, so there is no train/serve skew.

Per bar t: `market` (N, F) normalised features, `news_emb` (D,) mean article embedding, `news_mask`
1.0 where the bar has news, `coverage` (N,) 1.0 where the bar's news name the asset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralfusion.dataset import MarketData
from neuralfusion.embeddings import bar_embeddings
from neuralfusion.errors import DataError
from neuralfusion.features import FeatureNormalizer
from neuralfusion.windows import input_windows

__all__ = ["INPUT_NAMES", "GridInputs", "grid_inputs"]

INPUT_NAMES = ("news_emb", "news_mask", "coverage", "market")


@dataclass(frozen=True)
class GridInputs:
    """Model inputs for every bar of a grid (T bars, N assets, F features, D embedding size)."""

    news_emb: np.ndarray  # (T, D) float32, zeros where news_mask is 0
    news_mask: np.ndarray  # (T,) float32
    coverage: np.ndarray  # (T, N) float32
    market: np.ndarray  # (T, N, F) float32, normalised

    def __post_init__(self) -> None:
        n_bars = self.market.shape[0]
        shapes = {name: getattr(self, name).shape for name in INPUT_NAMES}
        if any(shape[0] != n_bars for shape in shapes.values()):
            raise DataError(f"model inputs disagree on the number of bars: {shapes}")

    def windows(self, anchors: np.ndarray, lookback: int) -> dict[str, np.ndarray]:
        """Inputs of the windows ending at `anchors`: news_emb (B, L, D), news_mask (B, L), coverage
        (B, L, N), market (B, L, N, F). NaN or inf in the windows is an error naming the first bad bar."""
        batch = {name: input_windows(getattr(self, name), anchors, lookback) for name in INPUT_NAMES}
        for name, values in batch.items():
            finite = np.isfinite(values.reshape(len(anchors), -1)).all(axis=1)
            if not finite.all():
                raise DataError(f"{name} has NaN/inf in the window ending at bar {int(anchors[~finite][0])}; "
                                "windows must start after the feature warm-up and the data must be complete")
        return batch


def grid_inputs(data: MarketData, item_vectors: np.ndarray, normaliser: FeatureNormalizer) -> GridInputs:
    """Model inputs for every bar of `data`, given one embedding per news item (rows of `data.news`).

    Warm-up bars keep NaN market features, so a window that reads them is refused by `windows`.
    """
    if len(item_vectors) != len(data.news):
        raise DataError(f"{len(item_vectors)} embeddings for {len(data.news)} news items; embed the same news file")
    news_emb, news_mask = bar_embeddings(data.aligned.bar, item_vectors, data.n_bars)
    market = normaliser.transform(data.features)
    return GridInputs(news_emb=news_emb, news_mask=news_mask, coverage=data.aligned.coverage, market=market)
