"""`nfc data summary`: what a data folder holds, per asset, before anyone trains on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from neuralfusion.dataset import MarketData

__all__ = ["summarise"]


def summarise(data: MarketData) -> dict[str, Any]:
    """Grid, news and per-asset counts: bars, stale (forward-filled) bars, longest gap, news per symbol (an
    outlier count is how a ticker that is also a word shows), repairs made while reading."""
    panel, aligned = data.panel, data.aligned
    on_grid = aligned.bar >= 0
    per_asset = []
    for j, symbol in enumerate(panel.symbols):
        stale = panel.stale[:, j]
        per_asset.append({
            "symbol": symbol,
            "bars": int(panel.n_bars),
            "stale_bars": int(stale.sum()),
            "stale_fraction": float(stale.mean()),
            "longest_gap_bars": _longest_run(stale),
            "news_items": int(sum(symbol in s for s, ok in zip(aligned.symbols, on_grid, strict=True) if ok)),
            "bars_with_news": int(aligned.coverage[:, j].sum()),
            "first_close": float(panel.close[0, j]),
            "last_close": float(panel.close[-1, j]),
        })
    return {
        "grid": {"start": str(panel.times[0]), "end": str(panel.times[-1]), "bars": int(panel.n_bars),
                 "interval": data.bar_spec.interval, "calendar": data.bar_spec.calendar,
                 "bars_per_year": data.bars_per_year, "assets": len(panel.symbols),
                 "stale_fraction": float(panel.stale.mean()), "widened_bars": data.widened_bars,
                 "bars_outside_sessions": panel.outside_sessions},
        "news": {"items": len(data.news), "on_grid": int(on_grid.sum()),
                 "before_grid": aligned.n_before, "after_grid": aligned.n_after,
                 "matched_by_alias": int(data.news["symbols"].isna().sum()),
                 "naming_no_asset": int(sum(not s for s in aligned.symbols)),
                 "bars_with_news": int((aligned.coverage.sum(axis=1) > 0).sum()),
                 "bare_word_refused": aligned.bare_word_refused},
        "assets": per_asset,
    }


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True values."""
    if not flags.any():
        return 0
    runs = pd.Series(flags).ne(pd.Series(flags).shift()).cumsum()[flags]
    return int(runs.value_counts().max())
