"""Standardised pooled vectors, folded into the encoder's weights (the last step of `nfc encoder pretrain`).

An MLM-pretrained encoder's pooled vectors share a large common part and vary little per dimension (on the
default synthetic news: std 0.08-0.38 per dimension around means of about 0.3), so the CGA model's linear news
inputs see small differences it learns slowly; on the default market its test Sharpe was 0.24x the oracle's
with the raw vectors (docs/MODEL.md). Standardising every dimension over the encoder's own training texts
fixes that, and it costs nothing at inference: the last hidden state is the output of a LayerNorm,
γ·norm(x) + β, and mean or [CLS] pooling is a convex combination of its rows, so the pooled vector is
γ·(pooled norm) + β. Replacing γ by γ/σ and β by (β - μ)/σ makes every pooled vector (v - μ)/σ exactly, with
μ and σ the per-dimension mean and std of the training texts' vectors. The folder stays an ordinary encoder:
`nfc embed`, `nfc export` and serving read the standardised vectors without knowing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from training.encoder import NfcEncoder

__all__ = ["NotFoldableError", "final_layer_norm", "fold_standardisation"]

_MIN_STD = 1e-6


class NotFoldableError(ValueError):
    """The encoder's last hidden state is not the output of a LayerNorm with a bias (e.g. ModernBERT's final
    norm has none), so there is nowhere to fold the shift into."""


def final_layer_norm(encoder: NfcEncoder, text: str) -> nn.LayerNorm:
    """The LayerNorm whose output is the encoder's last hidden state (found by running `text` through it)."""
    norms = [m for m in encoder.model.modules() if isinstance(m, nn.LayerNorm)]
    outputs: dict[int, torch.Tensor] = {}
    hooks = [norm.register_forward_hook(lambda _m, _i, out, index=index: outputs.__setitem__(index, out))
             for index, norm in enumerate(norms)]
    try:
        ids, _ = encoder.tokenize([text])
        input_ids, mask = encoder.pad_batch(ids)
        with torch.inference_mode():
            hidden = encoder.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    found = [norms[i] for i, out in outputs.items() if out.shape == hidden.shape and torch.equal(out, hidden)]
    if not found or found[-1].bias is None or found[-1].weight is None:
        raise NotFoldableError(f"the last hidden state of this {type(encoder.model).__name__} is not the output of "
                               "a LayerNorm with weight and bias, so standardisation cannot be folded into it")
    return found[-1]


def fold_standardisation(encoder: NfcEncoder, texts: Sequence[str], batch_size: int = 16) -> dict[str, Any]:
    """Make `encoder`'s pooled vectors of `texts` mean 0, std 1 per dimension, in its weights (module docstring).

    Returns what was done (for the folder's metadata). Checked: the vectors after folding equal the
    standardised vectors from before (RuntimeError otherwise), so a family whose output is not that LayerNorm's
    cannot slip through.
    """
    norm = final_layer_norm(encoder, texts[0])
    before = encoder.encode(texts, batch_size=batch_size).astype(np.float64)
    mean, std = before.mean(axis=0), np.maximum(before.std(axis=0), _MIN_STD)
    with torch.no_grad():
        scale = torch.as_tensor(1.0 / std, dtype=norm.weight.dtype, device=norm.weight.device)
        shift = torch.as_tensor(mean, dtype=norm.bias.dtype, device=norm.bias.device)
        norm.weight.mul_(scale)
        norm.bias.sub_(shift).mul_(scale)
    probe = slice(0, min(len(texts), 64))
    after = encoder.encode(list(texts[probe]), batch_size=batch_size)
    error = float(np.abs(after - (before[probe] - mean) / std).max())
    if error > 1e-3:
        raise RuntimeError(f"folding the standardisation into {type(encoder.model).__name__} changed its vectors "
                           f"by up to {error:.2g} more than expected")
    return {"texts": len(texts), "std_before": [float(std.min()), float(std.max())], "max_error": error}
