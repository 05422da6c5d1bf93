"""The model's inputs on the bar grid, and windows of them: one definition for training, export validation and
serving, so there is no train/serve skew.

Per bar t and asset n: `news_emb` (N, D) the mean embedding of the items that name n at t, `coverage` (N,) 1.0
where an item names n at t (elsewhere news_emb is zero and the model reads its learned [NO_NEWS] vector);
`market_news_emb` (D,) the mean embedding of the items at t that name no asset (the market-wide channel) and
`market_news_mask` 1.0 where there is one; `market` (N, F) normalised features. An item naming two assets
counts in both assets' means; an item naming none counts only in the market channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralfusion.dataset import MarketData
from neuralfusion.embeddings import mean_embeddings
from neuralfusion.errors import DataError
from neuralfusion.features import FeatureNormalizer
from neuralfusion.windows import input_windows

__all__ = ["BAR_POOLED_INPUT_NAMES", "INPUT_LAYOUT", "INPUT_NAMES", "GridInputs", "PooledNews", "grid_inputs",
           "pool_news"]

# the fusion graph's inputs, in order, and their shapes in words (error messages)
INPUT_NAMES = ("news_emb", "coverage", "market_news_emb", "market_news_mask", "market")
INPUT_LAYOUT = ("per-asset news: news_emb (B, L, N, D), coverage (B, L, N), market_news_emb (B, L, D), "
                "market_news_mask (B, L), market (B, L, N, F)")
# the inputs of models from before per-asset news: one vector pooled over all of a bar's news, news_emb (B, L, D),
# news_mask (B, L), coverage (B, L, N), market (B, L, N, F); serving names this layout when it refuses one
BAR_POOLED_INPUT_NAMES = ("news_emb", "news_mask", "coverage", "market")


@dataclass(frozen=True)
class PooledNews:
    """News pooled per (bar, asset) and per bar for the market channel, over T bars.

    The per-asset means are stored once per (bar, asset) pair that has news, not as a dense (T, N, D) array:
    most pairs have none, and the dense grid of a 3-minute market would be hundreds of MB. Windows gather them.
    """

    asset_rows: np.ndarray  # (T, N) int64: the row of asset_means for asset n at bar t, -1 where no item names n
    asset_means: np.ndarray  # (K, D) float32: the mean embedding of the items naming the asset at that bar
    market_emb: np.ndarray  # (T, D) float32: mean of the items naming no asset, zeros where market_mask is 0
    market_mask: np.ndarray  # (T,) float32


def pool_news(item_bar: np.ndarray, item_assets: np.ndarray, vectors: np.ndarray, n_bars: int) -> PooledNews:
    """Pool article `vectors` (M, D) by bar (item_bar (M,), -1 = off the grid, ignored) and by the assets each item
    names (item_assets (M, N) bool): per (bar, asset) the mean of the items naming that asset, and per bar the
    mean of the items naming none."""
    item_bar = np.asarray(item_bar)
    if len(item_bar) and not np.issubdtype(item_bar.dtype, np.integer):
        raise ValueError(f"item_bar must be integers, got dtype {item_bar.dtype}")
    item_bar = item_bar.astype(np.int64, copy=False)
    item_assets = np.asarray(item_assets, dtype=bool)
    vectors = np.asarray(vectors, dtype=np.float32)
    if item_assets.ndim != 2 or len(item_assets) != len(item_bar) or len(vectors) != len(item_bar):
        raise ValueError(f"item_bar (M,), item_assets (M, N) and vectors (M, D) must match, got {item_bar.shape}, "
                         f"{item_assets.shape} and {vectors.shape}")
    outside = (item_bar < -1) | (item_bar >= n_bars)
    if outside.any():
        raise ValueError(f"item_bar {int(item_bar[outside][0])} outside [-1, {n_bars}) "
                         f"({int(outside.sum())} such items)")
    n_assets = item_assets.shape[1]
    market_bar = np.where(item_assets.any(axis=1), -1, item_bar)
    market_emb, market_mask = mean_embeddings(market_bar, vectors, n_bars)
    items, assets = np.nonzero(item_assets & (item_bar >= 0)[:, None])  # one row per (item, asset it names)
    pairs, group = np.unique(item_bar[items] * n_assets + assets, return_inverse=True)
    asset_means, _ = mean_embeddings(group.reshape(-1), vectors[items], len(pairs))
    asset_rows = np.full(n_bars * n_assets, -1, dtype=np.int64)
    asset_rows[pairs] = np.arange(len(pairs))
    return PooledNews(asset_rows=asset_rows.reshape(n_bars, n_assets), asset_means=asset_means,
                      market_emb=market_emb, market_mask=market_mask)


@dataclass(frozen=True)
class GridInputs:
    """Model inputs for every bar of a grid (T bars, N assets, F features, D embedding size)."""

    news: PooledNews
    market: np.ndarray  # (T, N, F) float32, normalised

    def __post_init__(self) -> None:
        shapes = {"news.asset_rows": self.news.asset_rows.shape, "news.market_emb": self.news.market_emb.shape,
                  "market": self.market.shape}
        if len({shape[0] for shape in shapes.values()}) != 1 or self.news.asset_rows.shape[1] != self.market.shape[1]:
            raise DataError(f"model inputs disagree on the number of bars or assets: {shapes}")

    @property
    def embed_dim(self) -> int:
        return int(self.news.market_emb.shape[1])

    def windows(self, anchors: np.ndarray, lookback: int) -> dict[str, np.ndarray]:
        """Inputs of the windows ending at `anchors` (INPUT_NAMES): news_emb (B, L, N, D), coverage (B, L, N),
        market_news_emb (B, L, D), market_news_mask (B, L), market (B, L, N, F). NaN or inf in the windows is an
        error naming the first bad bar."""
        rows = input_windows(self.news.asset_rows, anchors, lookback)  # (B, L, N)
        means = np.concatenate([self.news.asset_means, np.zeros((1, self.embed_dim), np.float32)])  # -1: zeros
        batch = {"news_emb": means[rows], "coverage": (rows >= 0).astype(np.float32),
                 "market_news_emb": input_windows(self.news.market_emb, anchors, lookback),
                 "market_news_mask": input_windows(self.news.market_mask, anchors, lookback),
                 "market": input_windows(self.market, anchors, lookback)}
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
    news = pool_news(data.aligned.bar, data.aligned.assets, item_vectors, data.n_bars)
    return GridInputs(news=news, market=normaliser.transform(data.features))
