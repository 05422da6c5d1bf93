"""Torch-free configuration of the CGA model, and the choice of its fixed TimesNet periods.

The config travels with every checkpoint and model package as JSON, so serving and export can
read the architecture without importing torch. `dominant_periods` fits the TimesNet periods on the
training set once; they are then part of the model, which keeps each sample's output independent of
its batch-mates and makes the exported ONNX graph compute exactly what PyTorch computes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FUSION_MODES", "NEWS_LAYOUTS", "STREAMS", "CgaConfig", "dominant_periods"]

FUSION_MODES: tuple[str, ...] = ("cga", "concat")
STREAMS: tuple[str, ...] = ("both", "market", "news")
# how news reaches the model (neuralfusion/inputs.py): "per-asset", each asset's own items per bar plus a market-wide
# channel of the items naming no asset. Configs written before the layout was recorded pooled all of a bar's news
# into one vector (inputs news_emb (B, L, D), news_mask, coverage, market); `from_dict` refuses them
NEWS_LAYOUTS: tuple[str, ...] = ("per-asset",)


@dataclass(frozen=True)
class CgaConfig:
    """Architecture, portfolio rule and loss weights of the CGA model (training/model.py)."""

    # the universe size; set from `Universe.n_assets`, so it has no default
    n_assets: int
    # len(neuralfusion.features.FEATURE_NAMES)
    n_features: int = 7
    # width of the news encoder's article embedding (the offline BigBird default)
    embed_dim: int = 256
    # the news stream first projects every embedding onto this many learned directions (0: no projection), so it
    # reads what the news says (its sentiment) through a few numbers and has little room to learn which company or
    # template an item is. 1 with lambda_market_head 1 and lr 2e-3 (TrainConfig) lifted the test Sharpe on the
    # default market and on `realistic` (docs/MODEL.md, "The defaults since 2026-12-06")
    news_rank: int = 1
    # bars per input window (WindowSpec.lookback); the model holds a learned position per bar
    lookback: int = 80
    # channels of each asset's sequence: every asset is its own sequence (B·N of them per batch), so the width
    # sets the cost of a training step; 16 with 2 heads learns the synthetic signal at a CPU-sized step
    # (measured costs: docs/MODEL.md)
    d_model: int = 16
    # channels of the market stream alone (0: d_model); its output is projected to d_model for the fusion. A
    # narrower market stream has less room to memorise training windows through the bars (docs/MODEL.md)
    market_channels: int = 0
    n_heads: int = 2
    lstm_layers: int = 1
    # TimesNet: fixed periods in bars (fit on the training set with `dominant_periods`);
    # the defaults (half, a fifth and a tenth of the lookback) only stand in until a trainer fits them
    periods: tuple[int, ...] = (40, 16, 8)
    # Inception kernel sizes (odd); the parallel kernels are merged into one conv of the largest size
    conv_kernels: tuple[int, ...] = (1, 3)
    times_layers: int = 1
    dropout: float = 0.1
    # "cga": cross-gated attention between the streams; "concat": no cross attention (ablation)
    fusion: str = "cga"
    # "both", or one stream only (ablation); with one stream `fusion` has nothing to fuse and is unused
    streams: str = "both"
    top_k: int = 4
    # subtract the universe mean from each window's logits before the portfolio rule, so the book ranks assets
    # against each other: a score shared by every asset (a bias, the market stream's view of the market) cannot
    # become a net long or short bet on the whole universe. Uncentred, books on the `realistic` market were
    # 20-66% net of gross, and the news-only model's test Sharpe stayed near 0 (docs/MODEL.md)
    centre_logits: bool = True
    # training only: share of dense gross-normalised weights (all assets) mixed into the top-k weights
    # in the loss, so assets outside the top k still get gradient; inference always uses exact top-k.
    # 1.0 trains on the dense book, whose ranking by |logit| top-k then keeps: with mostly top-k weights only
    # k of N logits get a useful gradient, and learning was much slower (docs/MODEL.md)
    surrogate_mix: float = 1.0
    lambda_div: float = 0.1
    lambda_net: float = 0.05
    # 0 by default: at 0.01 and 0.03 the test Sharpe after costs fell at every cost from 0 to 25 bps on the
    # default market (docs/MODEL.md), and the term needs the previous window's book, one more forward pass a step
    lambda_turnover: float = 0.0
    # training only, with both streams: weight of each stream's own -Sharpe, from a linear head on that stream
    # alone. Without it the fused model learned less than the news stream alone: the market stream fits noise
    # first and the head leans on it (multi-modal nets trail their best single modality; Wang et al. 2020,
    # "What makes training multi-modal classification networks hard?", fix it with per-modality losses)
    lambda_streams: float = 0.5
    # training only, with both streams: weight of the sum of squares of the head's weights on the market half of the
    # fused sequence; above 0 those weights also start at 0, so the model starts as its news side and reads the bars
    # only as far as they lower the loss by more than the penalty (docs/MODEL.md)
    lambda_market_head: float = 1.0
    # training: weight of the squared mean book per asset over the batch (`training.loss.tilt_loss`), against bets
    # held on an asset whatever the news; on the `realistic` market the fused books held the same per-asset tilts
    # in every run, the training split's drifts (docs/MODEL.md). Off by default
    lambda_tilt: float = 0.0
    # training only, CGA fusion: weight of the news side's mean gate g_N (how much of the news sequence is replaced by
    # its attention over the bars). The head's market weights can be penalised (lambda_market_head), but the bars also
    # reach the head through that attention; the gate lies in [0, 1], so rescaling cannot hide it (docs/MODEL.md)
    lambda_news_gate: float = 0.0
    # added to the variance of per-bar portfolio returns (units: return²; 3-minute bars have ~1e-6)
    sharpe_eps: float = 1e-12
    # the input layout the model reads (NEWS_LAYOUTS)
    news_layout: str = "per-asset"

    def __post_init__(self) -> None:
        object.__setattr__(self, "periods", tuple(int(p) for p in self.periods))
        object.__setattr__(self, "conv_kernels", tuple(int(k) for k in self.conv_kernels))
        problems = []
        for name in (
            "n_assets",
            "n_features",
            "embed_dim",
            "d_model",
            "n_heads",
            "lstm_layers",
            "times_layers",
            "top_k",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.news_rank < 0:
            problems.append(f"news_rank must be >= 0 (0: no projection), got {self.news_rank}")
        if self.market_channels < 0:
            problems.append(f"market_channels must be >= 0 (0: d_model), got {self.market_channels}")
        if self.lookback < 2:
            problems.append(f"lookback must be >= 2, got {self.lookback}")
        if self.n_heads >= 1 and self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not self.periods:
            problems.append("periods must name at least one period")
        bad_periods = [p for p in self.periods if not 2 <= p <= self.lookback]
        if bad_periods:
            problems.append(f"periods must lie in [2, lookback={self.lookback}], got {list(self.periods)}")
        if len(set(self.periods)) != len(self.periods):
            problems.append(f"periods must be distinct, got {list(self.periods)}")
        if not self.conv_kernels or any(k < 1 or k % 2 == 0 for k in self.conv_kernels):
            problems.append(f"conv_kernels must be odd sizes >= 1, got {list(self.conv_kernels)}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.fusion not in FUSION_MODES:
            problems.append(f"fusion must be one of {list(FUSION_MODES)}, got {self.fusion!r}")
        if self.streams not in STREAMS:
            problems.append(f"streams must be one of {list(STREAMS)}, got {self.streams!r}")
        if not 0.0 <= self.surrogate_mix <= 1.0:
            problems.append(f"surrogate_mix must be in [0, 1], got {self.surrogate_mix}")
        for name in ("lambda_div", "lambda_net", "lambda_turnover", "lambda_streams", "lambda_market_head",
                     "lambda_tilt", "lambda_news_gate"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sharpe_eps <= 0:
            problems.append(f"sharpe_eps must be > 0, got {self.sharpe_eps}")
        if self.news_layout not in NEWS_LAYOUTS:
            problems.append(f"news_layout must be one of {list(NEWS_LAYOUTS)}, got {self.news_layout!r}")
        if problems:
            raise ValueError("invalid CgaConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CgaConfig:
        """Inverse of `to_dict`; unknown keys are an error so a typo never silently falls back to a default, and so
        is a config without `news_layout` (a model from before per-asset news, which this code cannot run). A
        config without `centre_logits`, `news_rank` or `lambda_market_head` is from before that setting and keeps the
        value it was trained with (off)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CgaConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        if "news_layout" not in data:
            raise ValueError("CgaConfig: this model is from before per-asset news (its news stream read one vector "
                             "pooled over all of a bar's news: inputs news_emb (B, L, D), news_mask (B, L), coverage, "
                             f"market); this version reads the {NEWS_LAYOUTS[0]!r} layout (news_emb (B, L, N, D), "
                             "coverage, market_news_emb, market_news_mask, market): retrain the run")
        return cls(**{"centre_logits": False, "news_rank": 0, "lambda_market_head": 0.0, **data})


def dominant_periods(market: np.ndarray, k: int, lookback: int) -> tuple[int, ...]:
    """The k strongest distinct periods (in bars) of `lookback`-bar windows of market features.

    `market` is a feature series (T, N, F), cut into consecutive non-overlapping windows of `lookback`
    bars, or already-windowed samples (B, lookback, N, F). As in TimesNet, the amplitude spectrum of
    each window (rfft over time) is averaged over windows, assets and features, the zero frequency is
    skipped, and frequency f maps to period lookback // f. Frequencies giving a period already taken,
    or a period under 2, are passed over, so fewer than k periods come back only when fewer exist.
    Equal amplitudes go to the lower frequency (the longer period).
    """
    market = np.asarray(market, dtype=np.float64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if lookback < 4:
        raise ValueError(f"lookback must be >= 4 to have a period of at least 2 bars, got {lookback}")
    if market.ndim == 3:
        n_windows = market.shape[0] // lookback
        if n_windows == 0:
            raise ValueError(f"a series of {market.shape[0]} bars is shorter than one lookback of {lookback}")
        windows = market[: n_windows * lookback].reshape(n_windows, lookback, *market.shape[1:])
    elif market.ndim == 4:
        if market.shape[1] != lookback:
            raise ValueError(f"windows have {market.shape[1]} bars, expected lookback={lookback}")
        windows = market
    else:
        raise ValueError(f"market must be (T, N, F) or (B, L, N, F), got shape {market.shape}")
    if not np.all(np.isfinite(windows)):
        raise ValueError("market features contain NaN/inf; drop the warm-up bars before choosing periods")
    amplitude = np.abs(np.fft.rfft(windows, axis=1)).mean(axis=(0, 2, 3))  # (lookback // 2 + 1,)
    order = np.argsort(-amplitude[1:], kind="stable") + 1  # skip the zero frequency
    periods: list[int] = []
    for freq in order:
        period = lookback // int(freq)
        if period >= 2 and period not in periods:
            periods.append(period)
        if len(periods) == k:
            break
    return tuple(periods)
