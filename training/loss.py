"""The CGA training objective as pure functions, one per term, so each can be tested and logged alone.

loss = -Sharpe(per-bar portfolio returns over the horizon) + λ_div·mean(w²) + λ_net·(Σw)²
       + λ_turnover·Σ|w - w_prev|, each term averaged over the batch, + λ_tilt·Σ_n (mean over the batch of w_n)².

Weights are held constant over the horizon: the path is r_p[t] = Σ_n w_n r[t, n] for the H bars after
the window's as-of bar, the same book `neuralfusion.portfolio.portfolio_returns` would hold.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "cga_loss",
    "diversification_loss",
    "net_exposure_loss",
    "per_sample_sharpe",
    "portfolio_path",
    "sharpe_loss",
    "tilt_loss",
    "turnover_loss",
]


def portfolio_path(weights: Tensor, targets: Tensor) -> Tensor:
    """Per-bar portfolio returns (B, H) of weights (B, N) held over simple asset returns (B, H, N)."""
    if (
        targets.dim() != 3
        or weights.dim() != 2
        or targets.shape[0] != weights.shape[0]
        or targets.shape[2] != weights.shape[1]
    ):
        raise ValueError(
            f"expected weights (B, N) and targets (B, H, N), got {tuple(weights.shape)} and {tuple(targets.shape)}"
        )
    return torch.einsum("bn,bhn->bh", weights, targets)  # (B, H)


def per_sample_sharpe(weights: Tensor, targets: Tensor, eps: float) -> Tensor:
    """Per-bar Sharpe (B,) of each sample's path: mean / sqrt(var + eps), var with ddof=1.

    ddof=1 matches `neuralfusion.portfolio.annualised_sharpe` (before annualising). `eps` goes under
    the square root so a flat path (all-zero weights) has Sharpe 0 and a finite gradient.
    """
    path = portfolio_path(weights, targets)  # (B, H)
    if path.shape[1] < 2:
        raise ValueError(f"a Sharpe ratio needs a horizon of at least 2 bars, got {path.shape[1]}")
    return path.mean(dim=1) / torch.sqrt(path.var(dim=1, correction=1) + eps)  # (B,)


def sharpe_loss(weights: Tensor, targets: Tensor, eps: float) -> Tensor:
    """-mean over the batch of the per-sample Sharpe (scalar): lower is better."""
    return -per_sample_sharpe(weights, targets, eps).mean()


def diversification_loss(weights: Tensor) -> Tensor:
    """mean(w²) over assets, averaged over the batch: penalises putting the gross on few assets."""
    return weights.pow(2).mean()


def net_exposure_loss(weights: Tensor) -> Tensor:
    """(Σ_n w_n)² averaged over the batch: pulls the book towards market neutral."""
    return weights.sum(dim=-1).pow(2).mean()


def tilt_loss(weights: Tensor) -> Tensor:
    """Σ_n (mean over the batch of w_n)²: the squared mean book per asset, a penalty on persistent per-asset bets.

    A book whose sign on an asset changes with the news averages out over a batch of windows drawn from across
    the training period (training shuffles them); a bet the model holds on an asset whatever the news (a drift
    of the training split it learned to tell that asset by) does not. Unlike `net_exposure_loss`, which looks
    at each book alone, this looks across the batch, so it leaves every single book free.
    """
    return weights.mean(dim=0).pow(2).sum()


def turnover_loss(weights: Tensor, prev_weights: Tensor | None) -> Tensor:
    """Σ_n |w_n - w_prev_n| averaged over the batch; 0 without a previous book.

    `prev_weights` (B, N) are the weights of each sample's preceding window in time order, given by
    the caller (detached: the previous book is a fact, not something to optimise).
    """
    if prev_weights is None:
        return weights.new_zeros(())
    if prev_weights.shape != weights.shape:
        raise ValueError(f"prev_weights {tuple(prev_weights.shape)} must match weights {tuple(weights.shape)}")
    return (weights - prev_weights).abs().sum(dim=-1).mean()


def cga_loss(
    weights: Tensor,
    targets: Tensor,
    prev_weights: Tensor | None = None,
    *,
    lambda_div: float,
    lambda_net: float,
    lambda_turnover: float,
    lambda_tilt: float,
    sharpe_eps: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss (scalar) and its unweighted terms (detached scalars, for logging)."""
    terms = {
        "sharpe": sharpe_loss(weights, targets, sharpe_eps),
        "diversification": diversification_loss(weights),
        "net_exposure": net_exposure_loss(weights),
        "turnover": turnover_loss(weights, prev_weights),
        "tilt": tilt_loss(weights),
    }
    total = (
        terms["sharpe"]
        + lambda_div * terms["diversification"]
        + lambda_net * terms["net_exposure"]
        + lambda_turnover * terms["turnover"]
        + lambda_tilt * terms["tilt"]
    )
    return total, {name: value.detach() for name, value in terms.items()}
