"""Small hand-made markets for unit tests: fast, explicit, independent of the synthetic generator."""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2026-01-05 00:00", tz="UTC")
STEP = pd.Timedelta("3min")


def make_bars(symbols: tuple[str, ...] = ("AAA", "BBB", "CCC"), n_bars: int = 400, seed: int = 0) -> pd.DataFrame:
    """A random walk per symbol in the long bar format, one row per 3-minute bar close."""
    rng = np.random.default_rng(seed)
    rows = []
    times = START + STEP * np.arange(1, n_bars + 1)
    for j, symbol in enumerate(symbols):
        close = 100.0 * (j + 1) * np.exp(np.cumsum(rng.normal(0, 0.002, n_bars)))
        open_ = np.concatenate([[close[0]], close[:-1]])
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.001, n_bars))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.001, n_bars))
        volume = rng.uniform(100, 1000, n_bars)
        rows.append(pd.DataFrame({"timestamp": times, "symbol": symbol, "open": open_, "high": high,
                                  "low": low, "close": close, "volume": volume}))
    return pd.concat(rows).sort_values(["timestamp", "symbol"]).reset_index(drop=True)


def make_news(symbols: tuple[str, ...] = ("AAA", "BBB", "CCC"), n_items: int = 60, n_bars: int = 400,
              seed: int = 0) -> pd.DataFrame:
    """News at random seconds across the bar range, each naming one symbol."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.uniform(0, n_bars * STEP.total_seconds(), n_items)).round()
    named = rng.choice(symbols, n_items)
    return pd.DataFrame({
        "id": [f"n{i:04d}" for i in range(n_items)],
        "published_at": START + pd.to_timedelta(seconds, unit="s"),
        "title": [f"{s} headline {i}" for i, s in enumerate(named)],
        "body": [f"Body text about {s}." for s in named],
        "symbols": [[s] for s in named],
    })

