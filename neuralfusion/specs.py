"""Typed, torch-free configuration shared by every package: universe, bar grid, windows.

Defaults describe the embedded synthetic market. Configs load from JSON so a run folder or model
package can carry them without pickle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from neuralfusion.calendar import BarClock, check_calendar

__all__ = ["BarSpec", "PortfolioSpec", "Universe", "WindowSpec"]


@dataclass(frozen=True)
class Universe:
    """The tradable assets, in model order, with the names news may use for them."""

    symbols: tuple[str, ...]
    # symbol -> extra names matched (case-insensitive, whole words) in news without a `symbols` field
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        symbols = tuple(str(s) for s in self.symbols)
        if not symbols:
            raise ValueError("universe needs at least one symbol")
        dupes = sorted({s for s in symbols if symbols.count(s) > 1})
        if dupes:
            raise ValueError(f"universe lists symbols more than once: {dupes}")
        unknown = sorted(set(self.aliases) - set(symbols))
        if unknown:
            raise ValueError(f"aliases given for symbols not in the universe: {unknown}")
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "aliases", {k: tuple(v) for k, v in self.aliases.items()})

    @property
    def n_assets(self) -> int:
        return len(self.symbols)

    def index(self, symbol: str) -> int:
        """Column of `symbol` in every (T, N) array; unknown symbols are an error."""
        try:
            return self.symbols.index(symbol)
        except ValueError:
            raise ValueError(f"unknown symbol {symbol!r}; the universe is {list(self.symbols)}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols), "aliases": {k: list(v) for k, v in self.aliases.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Universe:
        return cls(symbols=tuple(data["symbols"]), aliases=dict(data.get("aliases", {})))


@dataclass(frozen=True)
class BarSpec:
    """The bar grid: interval, calendar and how much missing data an asset may have."""

    interval: str = "3min"
    # fraction of an asset's bars that may be missing (forward-filled, marked stale) before it is refused
    max_missing_fraction: float = 0.05
    # "24/7" (round the clock, crypto) or an exchange code of exchange_calendars (XNYS, XLON, XTKS, ...): the grid
    # then holds that exchange's sessions only (neuralfusion.calendar)
    calendar: str = "24/7"

    def __post_init__(self) -> None:
        if self.timedelta <= pd.Timedelta(0):
            raise ValueError(f"bar interval must be positive, got {self.interval!r}")
        if not 0.0 <= self.max_missing_fraction < 1.0:
            raise ValueError(f"max_missing_fraction must be in [0, 1), got {self.max_missing_fraction}")
        check_calendar(self.calendar, self.timedelta)

    @property
    def timedelta(self) -> pd.Timedelta:
        try:
            return pd.Timedelta(self.interval)
        except ValueError:
            raise ValueError(f"bar interval {self.interval!r} is not a pandas offset like '3min'") from None

    @property
    def clock(self) -> BarClock:
        """The grid's bar closes as a clock (live runs and served requests step it)."""
        return BarClock(self.calendar, self.timedelta)


@dataclass(frozen=True)
class WindowSpec:
    """Lookback L and horizon H in bars, and the chronological split with its embargo."""

    lookback: int = 80
    horizon: int = 80
    # fractions of the usable anchors in train / val; test gets the rest
    train_fraction: float = 0.6
    val_fraction: float = 0.2
    # bars between consecutive training anchors (1 = every bar)
    stride: int = 1
    # a date split instead of the fractions: anchors whose bar closes at/after val_start are validation, at/after
    # test_start test (ISO dates or times; without an offset, UTC)
    val_start: str | None = None
    test_start: str | None = None

    def __post_init__(self) -> None:
        if self.lookback < 2 or self.horizon < 1:
            raise ValueError(f"lookback must be >= 2 and horizon >= 1, got L={self.lookback}, H={self.horizon}")
        if not (self.train_fraction > 0 and self.val_fraction >= 0 and self.train_fraction + self.val_fraction < 1):
            raise ValueError(
                f"train_fraction={self.train_fraction} and val_fraction={self.val_fraction} must be positive "
                "and leave room for a test split"
            )
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if (self.val_start is None) != (self.test_start is None):
            raise ValueError("a date split needs both val_start and test_start (--split VAL_START,TEST_START)")
        if self.val_start is not None and not self.split_times[0] < self.split_times[1]:
            raise ValueError(f"val_start {self.val_start} must come before test_start {self.test_start}")

    @property
    def split_times(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """val_start and test_start as UTC timestamps (a date split only)."""
        if self.val_start is None or self.test_start is None:
            raise ValueError("this window spec splits by fractions, not dates")
        stamps = []
        for name, value in (("val_start", self.val_start), ("test_start", self.test_start)):
            try:
                stamp = pd.Timestamp(value)
            except ValueError:
                raise ValueError(f"{name} {value!r} is not a date like 2025-01-02") from None
            stamps.append(stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC"))
        return stamps[0], stamps[1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def embargo(self) -> int:
        """Bars left out between splits so no target of one split overlaps the next split's inputs."""
        return self.horizon


@dataclass(frozen=True)
class PortfolioSpec:
    """How scores become positions and what trading them costs."""

    top_k: int = 4
    # charged on turnover Σ|Δw| each time the book changes
    cost_bps: float = 2.0

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.cost_bps < 0:
            raise ValueError(f"cost_bps must be >= 0, got {self.cost_bps}")
