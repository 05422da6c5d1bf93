"""The CGA model: news stream + TimesNet market stream, fused by cross-gated attention, to portfolio weights.

Read top to bottom: the portfolio rule, leaf modules (Inception conv, TimesNet block, the two stream
encoders), the fusion block, the head, then the top model `CgaModel`. The ONNX wrapper lives with the
exporter (`export.onnx_export`). docs/MODEL.md describes the model and how its choices were measured.

Shapes: B batch, L lookback bars, N assets, F market features per asset, D news embedding width,
H horizon bars, C channels (d_model), P TimesNet periods.

How assets enter. Every asset is its own sequence through both streams, the fusion and the head, with
weights shared by all assets: a news item or a flow shock is the same kind of event whichever asset it
hits, so each is learned from N times the examples, and an asset's logit depends on its own news and
bars (plus the universe mean of each market feature), not on its slot in the universe. `CgaModel.forward`
is the one place that turns the (B, L, N, ·) windows into B·N sequences and the B·N logits back into
(B, N): each stream encoder's `asset_inputs` builds the per-asset input of every bar, and everything
after the reshape (stream encoders, fusion, head) sees (B·N, L, ·) sequences.

Periods. TimesNet's periods are fixed model constants (`CgaConfig.periods`, fit once on the training
set by `neuralfusion.model_config.dominant_periods`), never chosen from a batch: a sample's output
does not depend on its batch-mates and the exported graph is the PyTorch computation. The period
branches are weighted per sample by the DFT amplitude at each period's frequency, computed in the
graph by a fixed matrix product (the reference TimesNet's weighting, without the batch mean).

Initialisation and head, chosen so the fused model learns what the news stream alone learns. The CGA
gates start nearly closed (bias `GATE_BIAS`, g ≈ 0.12): each stream starts as itself and takes in the
other stream's attention only as far as that helps, instead of swapping half of the news state for
attention over a still-random market sequence. The news LSTM's forget gates start open (bias
`LSTM_FORGET_BIAS`), so the state carries an item across the bars its drift lasts from the first step.
The head has no LayerNorm: normalised jointly, the pooled vector's scale was set by the larger, noisier
market features, and early logits were market noise. With the dense training book (`surrogate_mix`
1.0, CgaConfig) these let the fused model learn the news signal in the demo's step budget.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from neuralfusion.model_config import CgaConfig
from training.loss import cga_loss, sharpe_loss

__all__ = [
    "CgaCrossGate",
    "CgaFusion",
    "CgaHead",
    "CgaInception",
    "CgaMarketEncoder",
    "CgaModel",
    "CgaNewsEncoder",
    "CgaOutput",
    "CgaTimesBlock",
    "cga_example_inputs",
    "surrogate_weights",
    "topk_weights",
]

logger = logging.getLogger(__name__)

CONFIG_METADATA_KEY = "cga_config"  # safetensors metadata entry holding the config JSON
# initial LSTM forget-gate bias: sigmoid(3) = 0.95, a memory of ~20 bars, so the news state holds an item over
# the drift it moves from the first step (PyTorch's ~0 bias, sigmoid 0.5, forgets within ~2 bars)
LSTM_FORGET_BIAS = 3.0
# initial bias of the CGA gates: sigmoid(-2) = 0.12, so each stream starts as (mostly) itself and the
# cross-attention is let in as it proves useful, instead of half of each stream being swapped for noise
GATE_BIAS = -2.0
STREAM_NAMES = ("news", "market")  # the streams' own training heads, in the order forward() builds the streams


def topk_weights(logits: Tensor, k: int) -> Tensor:
    """Top-k long/short weights (..., N) from logits, gross 1: `neuralfusion.portfolio.topk_weights` in torch.

    The rank of asset i counts the assets ahead of it (larger |logit|, or equal |logit| and a lower
    index), so ties go to the lower index exactly as the numpy rule's stable sort; the pairwise
    comparison (N² per sample, N is small) exports to ONNX where `torch.topk` would not promise that
    tie order. Differentiable with respect to the kept logits; all-zero logits give all-zero weights.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    magnitude = logits.abs()  # (..., N)
    index = torch.arange(logits.shape[-1], device=logits.device)
    lower_index = index.unsqueeze(0) < index.unsqueeze(1)  # (N, N): [i, j] is j < i
    ahead = (magnitude.unsqueeze(-2) > magnitude.unsqueeze(-1)) | (
        (magnitude.unsqueeze(-2) == magnitude.unsqueeze(-1)) & lower_index
    )  # (..., N, N): j is ahead of i
    rank = ahead.to(logits.dtype).sum(dim=-1)  # (..., N)
    kept = torch.where(rank < k, logits, torch.zeros_like(logits))  # (..., N)
    gross = kept.abs().sum(dim=-1, keepdim=True)  # (..., 1)
    return kept / torch.where(gross > 0, gross, torch.ones_like(gross))


def surrogate_weights(logits: Tensor, k: int, mix: float) -> Tensor:
    """Training weights (..., N): (1 - mix)·top-k + mix·(all assets, gross-normalised); gross stays 1.

    Exact top-k sends no gradient to assets outside the top k, so an asset that should enter the book
    could only get there by others shrinking. The dense share gives every logit a gradient of the
    right sign; both parts share each logit's sign, so the gross exposure is still 1.
    """
    return (1.0 - mix) * topk_weights(logits, k) + mix * topk_weights(logits, logits.shape[-1])


def _asset_sequences(x: Tensor) -> Tensor:
    """(B, L, N, C) -> (B·N, L, C): every asset becomes its own sequence (used by `CgaModel.forward` only)."""
    batch, length, n_assets, channels = x.shape
    return x.permute(0, 2, 1, 3).reshape(batch * n_assets, length, channels)


class CgaInception(nn.Module):
    """TimesNet's Inception block (mean of parallel odd-size 2D convs) run as one conv.

    Zero-padding each kernel to the largest size and averaging gives the same output as averaging the
    parallel convs (convolution is linear), with one conv instead of len(kernels).
    """

    def __init__(self, in_channels: int, out_channels: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.kernels = kernels
        self.size = max(kernels)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(out_channels, in_channels, k, k)) for k in kernels)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(out_channels)) for _ in kernels)
        for weight in self.weights:  # the reference initialisation
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")

    def merged_kernel(self) -> tuple[Tensor, Tensor]:
        """The single (out, in, K, K) kernel and (out,) bias equal to the mean of the parallel convs."""
        weight = sum(F.pad(w, [(self.size - k) // 2] * 4) for w, k in zip(self.weights, self.kernels, strict=True))
        bias = sum(self.biases)
        return weight / len(self.kernels), bias / len(self.kernels)

    def forward(self, x: Tensor) -> Tensor:  # (B·N, C_in, rows, cols) -> (B·N, C_out, rows, cols)
        weight, bias = self.merged_kernel()
        return F.conv2d(x, weight, bias, padding=self.size // 2)


class CgaTimesBlock(nn.Module):
    """One TimesNet block with fixed periods: fold time into (L/p, p) grids, 2D conv, unfold, mix.

    The series is zero-padded at the start (the oldest bars), so the as-of bar is always the last cell
    of every grid and the columns line up with the phase relative to the as-of bar. Branches are mixed
    by a per-sample softmax over the DFT amplitudes of the block input at each period's frequency.
    """

    def __init__(self, d_model: int, lookback: int, periods: tuple[int, ...], kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.periods = periods
        self.conv = nn.Sequential(
            CgaInception(d_model, d_model, kernels), nn.GELU(), CgaInception(d_model, d_model, kernels)
        )
        # rfft bin of each period (period = lookback // bin in dominant_periods), as fixed DFT rows
        bins = torch.tensor([max(1, round(lookback / p)) for p in periods], dtype=torch.float64)
        angle = 2 * math.pi * bins[:, None] * torch.arange(lookback, dtype=torch.float64) / lookback  # (P, L)
        self.register_buffer("dft_cos", torch.cos(angle).float(), persistent=False)
        self.register_buffer("dft_sin", torch.sin(angle).float(), persistent=False)

    def period_weights(self, x: Tensor) -> Tensor:  # (B·N, L, C) -> (B·N, P)
        real = torch.einsum("blc,pl->bpc", x, self.dft_cos)  # (B·N, P, C)
        imag = torch.einsum("blc,pl->bpc", x, self.dft_sin)  # (B·N, P, C)
        amplitude = torch.sqrt(real.square() + imag.square() + 1e-12).mean(dim=-1)  # (B·N, P); eps: finite grad
        return torch.softmax(amplitude, dim=-1)

    def forward(self, x: Tensor) -> Tensor:  # (B·N, L, C) -> (B·N, L, C)
        length, channels = x.shape[1], x.shape[2]
        branches = []
        for period in self.periods:
            rows = -(-length // period)
            pad = rows * period - length
            grid = F.pad(x, (0, 0, pad, 0)).reshape(-1, rows, period, channels).permute(0, 3, 1, 2)  # (B·N, C, rows, p)
            out = self.conv(grid).permute(0, 2, 3, 1).reshape(-1, rows * period, channels)  # (B·N, rows·p, C)
            branches.append(out[:, pad:])  # (B·N, L, C)
        stacked = torch.stack(branches, dim=-1)  # (B·N, L, C, P)
        mixed = (stacked * self.period_weights(x)[:, None, None, :]).sum(dim=-1)  # (B·N, L, C)
        return x + mixed


class CgaMarketEncoder(nn.Module):
    """Market stream, one sequence per asset with shared weights: features + universe mean, TimesNet -> M.

    `asset_inputs` embeds every asset's bars beside the universe mean, (B, L, N, F) -> (B, L, N, C_market);
    `forward` runs one asset's sequence, (B·N, L, C_market) -> (B·N, L, C), C_market = `market_channels` or C.
    """

    def __init__(self, config: CgaConfig) -> None:
        super().__init__()
        width = config.market_channels or config.d_model
        # each asset's features beside the universe mean of each feature (the common move it is measured against)
        self.embed = nn.Sequential(nn.Linear(2 * config.n_features, width), nn.GELU(), nn.Linear(width, width))
        # the TimesNet grids see order, but the cross-attention over time needs each bar's position
        self.position = nn.Parameter(torch.randn(config.lookback, width) * 0.02)
        self.blocks = nn.ModuleList(
            CgaTimesBlock(width, config.lookback, config.periods, config.conv_kernels)
            for _ in range(config.times_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(config.times_layers))
        self.dropout = nn.Dropout(config.dropout)
        # a narrower stream (`market_channels`) is widened to d_model for the fusion and the head
        self.out = nn.Linear(width, config.d_model) if width != config.d_model else nn.Identity()

    def asset_inputs(self, market: Tensor) -> Tensor:  # (B, L, N, F) -> (B, L, N, C_market)
        context = market.mean(dim=2, keepdim=True).expand_as(market)  # (B, L, N, F)
        return self.embed(torch.cat([market, context], dim=-1))

    def forward(self, x: Tensor) -> Tensor:  # (B·N, L, C_market) -> (B·N, L, C)
        h = self.dropout(x + self.position)
        for block, norm in zip(self.blocks, self.norms, strict=True):
            h = norm(block(h))  # (B·N, L, C_market)
        return self.out(h)  # (B·N, L, C)


class CgaNewsEncoder(nn.Module):
    """News stream, one sequence per asset with shared weights: the asset's own news, the market's, LSTM -> N.

    Per bar, asset n reads the mean of the items that name n (or the learned `[NO_NEWS]` vector where none does)
    and the market-wide channel: the mean of the items that name no asset (or its own learned no-news vector) with
    the number of assets the bar's news names. Each asset's stream reads only its own headlines: pooled over all
    assets, a bar naming several stocks gave each the mean of everyone's news. `asset_inputs` builds that input for
    every asset, (B, L, N, C); `forward` runs one asset's sequence, (B·N, L, C) -> (B·N, L, C).
    """

    def __init__(self, config: CgaConfig) -> None:
        super().__init__()
        self.no_news = nn.Parameter(torch.randn(config.embed_dim) * 0.02)  # [NO_NEWS]: no item names this asset
        self.no_market_news = nn.Parameter(torch.randn(config.embed_dim) * 0.02)  # no item naming no asset
        # `news_rank` learned directions shared by both channels' embeddings (or none: the whole embedding)
        self.reduce = nn.Linear(config.embed_dim, config.news_rank, bias=False) if config.news_rank else nn.Identity()
        width = config.news_rank or config.embed_dim
        self.asset_news = nn.Linear(width, config.d_model)  # the news naming this asset
        self.market_news = nn.Linear(width + 1, config.d_model)  # news naming none, how many are named
        self.lstm = nn.LSTM(
            config.d_model,
            config.d_model,
            num_layers=config.lstm_layers,
            batch_first=True,
            dropout=config.dropout if config.lstm_layers > 1 else 0.0,
        )  # dropout sits between layers
        for name, bias in self.lstm.named_parameters():  # gate order i, f, g, o; the two biases add up
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    bias[config.d_model : 2 * config.d_model].fill_(LSTM_FORGET_BIAS)
        self.dropout = nn.Dropout(config.dropout)

    def asset_inputs(
        self, news_emb: Tensor, coverage: Tensor, market_news_emb: Tensor, market_news_mask: Tensor
    ) -> Tensor:  # (B, L, N, D), (B, L, N), (B, L, D), (B, L) -> (B, L, N, C)
        # where(), not a blend: whatever sits in the embeddings where there is no news never reaches the output
        own = torch.where(coverage.unsqueeze(-1) > 0.5, news_emb, self.no_news)  # (B, L, N, D)
        market = torch.where(market_news_mask.unsqueeze(-1) > 0.5, market_news_emb, self.no_market_news)  # (B, L, D)
        named = coverage.sum(dim=-1, keepdim=True)  # (B, L, 1)
        shared = self.market_news(torch.cat([self.reduce(market), named], dim=-1))  # (B, L, C)
        return self.asset_news(self.reduce(own)) + shared.unsqueeze(2)  # (B, L, N, C)

    def forward(self, x: Tensor) -> Tensor:  # (B·N, L, C) -> (B·N, L, C)
        out, _ = self.lstm(self.dropout(F.gelu(x)))
        return out


class CgaCrossGate(nn.Module):
    """One direction of CGA: x̃ = g ⊙ Attn(x -> other) + (1 - g) ⊙ x, g = σ(W[x, Attn(x -> other)] + b)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        # dropout on what is attended, not on the attention weights: over B·N sequences of L bars, dropping
        # attention weights made the two CGA directions most of a training step on CPU (docs/MODEL.md)
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.gate = nn.Linear(2 * d_model, d_model)
        nn.init.constant_(self.gate.bias, GATE_BIAS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, other: Tensor) -> Tensor:  # (B·N, L, C), (B·N, L, C) -> (B·N, L, C)
        return self.blend(x, other)[0]

    def blend(self, x: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:
        """x̃ and the gate g it was blended with, both (B·N, L, C)."""
        attended = self.dropout(self.attn(x, other, other, need_weights=False)[0])  # (B·N, L, C)
        gate = torch.sigmoid(self.gate(torch.cat([x, attended], dim=-1)))  # (B·N, L, C)
        return gate * attended + (1.0 - gate) * x, gate


class CgaFusion(nn.Module):
    """Fuse the available streams into one sequence: CGA both ways then concat, plain concat, or one stream."""

    def __init__(self, config: CgaConfig) -> None:
        super().__init__()
        both = config.streams == "both"
        self.cross = both and config.fusion == "cga"
        self.news_gate = CgaCrossGate(config.d_model, config.n_heads, config.dropout) if self.cross else None
        self.market_gate = CgaCrossGate(config.d_model, config.n_heads, config.dropout) if self.cross else None
        self.out_dim = config.d_model * (2 if both else 1)

    def forward(self, news_seq: Tensor | None, market_seq: Tensor | None) -> Tensor:  # -> (B·N, L, out_dim)
        return self.fuse(news_seq, market_seq)[0]

    def fuse(self, news_seq: Tensor | None, market_seq: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The fused sequence (B·N, L, out_dim) and the news side's gate (B·N, L, C), None without cross-attention."""
        if news_seq is None or market_seq is None:
            return (market_seq if news_seq is None else news_seq), None
        news_gate = None
        if self.news_gate is not None and self.market_gate is not None:
            fused_news, news_gate = self.news_gate.blend(news_seq, market_seq)
            news_seq, market_seq = fused_news, self.market_gate(market_seq, news_seq)
        return torch.cat([news_seq, market_seq], dim=-1), news_gate  # (B·N, L, 2C)


class CgaHead(nn.Module):
    """Pool each asset's sequence over time (mean and last bar: the whole window and the as-of state) -> its logit.

    One linear layer shared by all assets, so an asset's score depends on its own fused sequence, not on its
    slot in the universe. No LayerNorm before it: normalising the pooled vector jointly rescales the news
    features by the spread of the (larger, noisier) market features, so early on the logits are market noise.
    """

    def __init__(self, in_dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * in_dim, 1)

    def forward(self, fused: Tensor) -> Tensor:  # (B·N, L, C') -> (B·N, 1)
        pooled = torch.cat([fused.mean(dim=1), fused[:, -1]], dim=-1)  # (B·N, 2C')
        return self.out(self.dropout(pooled))

    def columns_of(self, channels: range) -> Tensor:
        """Indices of `out`'s inputs that read the fused channels `channels`: once through the mean over time,
        once through the last bar."""
        width = self.out.in_features // 2
        return torch.cat([torch.arange(channels.start, channels.stop),
                          torch.arange(width + channels.start, width + channels.stop)])


@dataclass
class CgaOutput:
    """What `CgaModel.forward` returns."""

    logits: Tensor  # (B, N) per-asset scores
    weights: Tensor  # (B, N) exact top-k long/short weights, gross 1 (0 where all logits are 0)
    loss: Tensor | None = None  # () only when targets were given
    loss_terms: dict[str, Tensor] | None = None  # unweighted terms, detached scalars (training/loss.py)


class CgaModel(nn.Module):
    """News + market windows -> per-asset logits and top-k portfolio weights (docs/MODEL.md)."""

    def __init__(self, config: CgaConfig) -> None:
        super().__init__()
        self.config = config
        self.news: CgaNewsEncoder | None = CgaNewsEncoder(config) if config.streams != "market" else None
        self.market: CgaMarketEncoder | None = CgaMarketEncoder(config) if config.streams != "news" else None
        self.fusion = CgaFusion(config)
        self.head = CgaHead(self.fusion.out_dim, config.dropout)
        if config.streams == "both" and config.lambda_market_head > 0:
            with torch.no_grad():
                self.head.out.weight[:, self.market_head_columns()] = 0.0
        # training-only heads on each stream alone (CgaConfig.lambda_streams); the inference graph never uses them
        self.stream_heads = (
            nn.ModuleDict({name: CgaHead(config.d_model, config.dropout) for name in STREAM_NAMES})
            if config.streams == "both" and config.lambda_streams > 0
            else None
        )

    def forward(
        self,
        news_emb: Tensor,
        coverage: Tensor,
        market_news_emb: Tensor,
        market_news_mask: Tensor,
        market: Tensor,
        targets: Tensor | None = None,
        prev_weights: Tensor | None = None,
    ) -> CgaOutput:
        """news_emb (B, L, N, D), coverage (B, L, N), market_news_emb (B, L, D), market_news_mask (B, L), market
        (B, L, N, F) -> CgaOutput (the inputs of `neuralfusion.inputs.INPUT_NAMES`).

        With targets (B, H, N) (per-bar simple returns after the window) the loss is computed; in
        training mode it is taken on `surrogate_weights`, in eval mode on the exact top-k weights.
        prev_weights (B, N) are the books of the preceding windows, for the turnover term.
        """
        self._check_inputs(news_emb, coverage, market_news_emb, market_news_mask, market)
        news_seq = market_seq = None
        if self.news is not None:
            news_in = self.news.asset_inputs(news_emb, coverage, market_news_emb, market_news_mask)  # (B, L, N, C)
            news_seq = self.news(_asset_sequences(news_in))  # (B·N, L, C)
        if self.market is not None:
            market_seq = self.market(_asset_sequences(self.market.asset_inputs(market)))  # (B·N, L, C)
        fused, news_gate = self.fusion.fuse(news_seq, market_seq)
        logits = self._scores(self.head(fused))  # (B·N, 1) -> (B, N)
        weights = topk_weights(logits, self.config.top_k)  # (B, N)
        if targets is None:
            return CgaOutput(logits=logits, weights=weights)
        mix = self.config.surrogate_mix
        train_weights = surrogate_weights(logits, self.config.top_k, mix) if self.training and mix > 0 else weights
        loss, terms = cga_loss(
            train_weights,
            targets,
            prev_weights,
            lambda_div=self.config.lambda_div,
            lambda_net=self.config.lambda_net,
            lambda_turnover=self.config.lambda_turnover,
            lambda_tilt=self.config.lambda_tilt,
            sharpe_eps=self.config.sharpe_eps,
        )
        if self.training and self.config.lambda_market_head > 0 and self.config.streams == "both":
            market_weights = self.head.out.weight[:, self.market_head_columns()]
            loss = loss + self.config.lambda_market_head * market_weights.square().sum()
            terms["market_head_norm"] = market_weights.detach().square().sum()
        if self.training and self.config.lambda_news_gate > 0 and news_gate is not None:
            loss = loss + self.config.lambda_news_gate * news_gate.mean()
            terms["news_gate"] = news_gate.detach().mean()
        if self.training and self.stream_heads is not None:
            for name, seq in zip(STREAM_NAMES, (news_seq, market_seq), strict=True):
                stream_logits = self._scores(self.stream_heads[name](seq))  # (B·N, 1) -> (B, N)
                stream_weights = surrogate_weights(stream_logits, self.config.top_k, mix)
                own = sharpe_loss(stream_weights, targets, self.config.sharpe_eps)
                loss = loss + self.config.lambda_streams * own
                terms[f"{name}_stream_sharpe"] = own.detach()
        return CgaOutput(logits=logits, weights=weights, loss=loss, loss_terms=terms)

    def market_head_columns(self) -> Tensor:
        """Indices of the head's inputs that read the market half of the fused sequence ([news C, market C])."""
        c = self.config.d_model
        return self.head.columns_of(range(c, 2 * c))

    def _scores(self, per_asset: Tensor) -> Tensor:
        """(B·N, 1) head outputs -> (B, N) logits, less each window's universe mean when `centre_logits`."""
        logits = per_asset.reshape(-1, self.config.n_assets)
        return logits - logits.mean(dim=-1, keepdim=True) if self.config.centre_logits else logits

    def _check_inputs(
        self, news_emb: Tensor, coverage: Tensor, market_news_emb: Tensor, market_news_mask: Tensor, market: Tensor
    ) -> None:
        """Static trailing shapes only, so the check is free under torch.export."""
        c = self.config
        expected = {
            "news_emb": (news_emb, (c.lookback, c.n_assets, c.embed_dim)),
            "coverage": (coverage, (c.lookback, c.n_assets)),
            "market_news_emb": (market_news_emb, (c.lookback, c.embed_dim)),
            "market_news_mask": (market_news_mask, (c.lookback,)),
            "market": (market, (c.lookback, c.n_assets, c.n_features)),
        }
        for name, (tensor, trailing) in expected.items():
            if tuple(tensor.shape[1:]) != trailing:
                raise ValueError(
                    f"{name} must have shape (B, {', '.join(map(str, trailing))}), got {tuple(tensor.shape)}"
                )

    def market_parameters(self) -> list[nn.Parameter]:
        """The market side: its stream encoder, the gate that lets news into it and its own training head."""
        parts = [self.market, self.fusion.market_gate, self.stream_heads["market"] if self.stream_heads else None]
        return [p for part in parts if part is not None for p in part.parameters()]

    def configure_optimizers(
        self, weight_decay: float, lr: float, betas: tuple[float, float], market_lr_scale: float = 1.0
    ) -> torch.optim.AdamW:
        """AdamW decaying only matrices and kernels (>= 2-D); biases, norms and [NO_NEWS] are not decayed. With
        `market_lr_scale` != 1 the market side (`market_parameters`) has its own two groups at lr x that scale."""
        params = [p for p in self.parameters() if p.requires_grad]
        market = {id(p) for p in self.market_parameters()} if market_lr_scale != 1.0 else set()
        sides = [(1.0, [p for p in params if id(p) not in market])]
        if market:
            sides.append((market_lr_scale, [p for p in params if id(p) in market]))
        groups = [{"params": [p for p in chosen if (p.dim() >= 2) == decayed], "lr": lr * scale,
                   "weight_decay": weight_decay if decayed else 0.0}
                  for scale, chosen in sides for decayed in (True, False)]
        logger.debug("AdamW groups (lr, weight decay, values): %s",
                     [(g["lr"], g["weight_decay"], sum(p.numel() for p in g["params"])) for g in groups])
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    def load_checked_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Copy weights after checking that key count, names and every shape match this model."""
        own = self.state_dict()
        if len(state) != len(own):
            raise ValueError(f"checkpoint has {len(state)} tensors, the model has {len(own)}")
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"checkpoint keys differ: missing {missing}, unexpected {unexpected}")
        wrong = [
            f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape
        ]
        if wrong:
            raise ValueError(f"checkpoint shapes differ: {wrong}")
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)

    def save_checkpoint(self, path: Path | str) -> None:
        """Weights as safetensors, with the config JSON in the file's metadata."""
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: json.dumps(self.config.to_dict())})

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str = "cpu") -> CgaModel:
        """Rebuild the model from a `save_checkpoint` file (config from its metadata), in eval mode."""
        with safe_open(str(path), framework="pt", device=device) as handle:
            metadata = handle.metadata() or {}
        if CONFIG_METADATA_KEY not in metadata:
            raise ValueError(f"{path}: no {CONFIG_METADATA_KEY!r} metadata; not written by CgaModel.save_checkpoint")
        model = cls(CgaConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))).to(device)
        model.load_checked_state_dict(load_file(str(path), device=device))
        return model.eval()


def cga_example_inputs(
    config: CgaConfig, batch_size: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Random float32 inputs of the right shapes, in `neuralfusion.inputs.INPUT_NAMES` order: each asset named on
    ~15% of bars, market-wide news on ~30%, zeros where there is none. For tests and export tracing."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, config.lookback)
    coverage = (torch.rand(*shape, config.n_assets, generator=gen) < 0.15).float()  # (B, L, N)
    news_emb = torch.randn(*shape, config.n_assets, config.embed_dim, generator=gen) * coverage.unsqueeze(-1)
    market_news_mask = (torch.rand(shape, generator=gen) < 0.3).float()  # (B, L)
    market_news_emb = torch.randn(*shape, config.embed_dim, generator=gen) * market_news_mask.unsqueeze(-1)
    market = torch.randn(*shape, config.n_assets, config.n_features, generator=gen)  # (B, L, N, F)
    return news_emb, coverage, market_news_emb, market_news_mask, market
