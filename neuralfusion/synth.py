"""The embedded synthetic market: seeded OHLCV bars plus news whose text moves the named asset's drift,
and flow shocks that only the prices and volumes show.

It exists so the whole pipeline (embed -> train -> backtest -> export -> serve) runs offline on data
with a known, planted signal, and so model quality can be reported as a ratio to the oracle: the
out-of-sample Sharpe of a portfolio that trades on that signal with the same splits, horizon, top-k
and costs as the model.

Planted signal (the rule every consumer may rely on):
    A sentiment item published at time p is aligned to bar a, the first bar whose close time is
    >= p (the alignment rule). It adds ``sentiment * impact_bps_per_bar`` basis points to the
    named asset's per-bar log-return drift on bars a+1 .. a+impact_bars (clipped at the last bar),
    never on bar a itself or earlier, so a model that reads the news at bar a can trade it from a+1.
    Overlapping items add up. Neutral items naming an asset and distractor items move nothing.

    A flow shock (informed trading without news) at bar s moves its asset's log return on bar s by
    ``sign * shock_jump_bps`` with a volume burst, then adds ``sign * shock_drift_bps_per_bar`` to the
    drift on bars s+1 .. s+shock_bars. Only the bars show it: it is the market stream's own signal, so
    a model fusing news and prices can beat either alone. The oracle knows both kinds of event from
    the bar they are observable at (a's close for news, s's close for shocks).

Bar i closes at ``start + (i + 1) * interval``; bar 0 opens at the asset's initial price.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuralfusion.backtest import WalkForward, walk_forward
from neuralfusion.calendar import CALENDAR_END, calendar_bars, grid_bars_per_year, is_continuous
from neuralfusion.datafolder import json_bytes, write_bars, write_files_atomic, write_news
from neuralfusion.errors import DataError
from neuralfusion.features import WARMUP_BARS, simple_returns
from neuralfusion.portfolio import topk_weights
from neuralfusion.specs import BarSpec, PortfolioSpec, Universe, WindowSpec
from neuralfusion.windows import chronological_split, usable_anchors

__all__ = [
    "COMPANIES",
    "SYNTH_PRESETS",
    "SynthConfig",
    "SyntheticMarket",
    "generate_market",
    "planted_drift",
    "preset_config",
    "synthetic_universe",
    "write_market",
]

# Fictional tickers (4 uppercase letters, alphabetical so long-format rows come out sorted) and the
# company names news uses for them. Coined names never occur in ordinary words or in other templates.
COMPANIES: tuple[tuple[str, str], ...] = (
    ("AURX", "Aurexa Mining"),
    ("BLTQ", "Boltara Energy"),
    ("CRXN", "Cruxton Biotech"),
    ("DYNQ", "Dynaquil Logistics"),
    ("ELVR", "Elvarion Foods"),
    ("FRNX", "Fernix Semiconductors"),
    ("GLMZ", "Glimzor Retail"),
    ("HXLN", "Hexalon Pharma"),
    ("IVRK", "Ivorka Telecom"),
    ("JNTX", "Jentrix Software"),
    ("KRVO", "Karvona Shipping"),
    ("LMNQ", "Lumenqa Solar"),
    ("MRDX", "Meridox Steel"),
    ("NVLT", "Novalto Motors"),
    ("OPXR", "Opraxa Insurance"),
    ("PYRN", "Pyrenta Chemicals"),
    ("QNTL", "Quantela Robotics"),
    ("RVNX", "Ravenox Airlines"),
    ("STRQ", "Stratiq Cloud"),
    ("TLVX", "Tolvex Materials"),
    ("UMBR", "Umbrion Water"),
    ("VXTA", "Vextara Gaming"),
    ("WNDL", "Wyndale Agritech"),
    ("XYLQ", "Xylomar Paper"),
    ("YRDN", "Yardena Hotels"),
    ("ZNTH", "Zenthos Batteries"),
)

_DAY = pd.Timedelta("1D")
_MAX_VOL_BPS = 200.0  # per-bar vol above 2% is not a minutes-scale market and risks exp() overflow


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes the synthetic market; the defaults are the embedded demo data set.

    Vols are per bar in the calm regime, in basis points of log return. With the defaults an asset's
    idiosyncratic vol is 11-19 bps per 3-minute bar and a sentiment item moves its asset by
    3 bps/bar for 60 bars (180 bps in all, about 1.5 idiosyncratic sigma over those bars). The
    signal is strong on purpose: a 12-day test split has a Sharpe sampling noise of about 5.5, so
    the oracle must sit far above that for "model Sharpe / oracle Sharpe" to mean something.
    """

    n_assets: int = 12
    days: int = 60
    interval: str = "3min"
    # "24/7" (bars round the clock) or an exchange code (XNYS, ...): the exchange's session bars; news is
    # published round the clock either way, so on an exchange much of it arrives after the close or on weekends
    calendar: str = "24/7"
    start: str = "2026-01-05T00:00:00Z"  # open of bar 0; must carry a time zone
    seed: int = 0
    # common factors: per-bar vol of each; asset loadings are drawn (market beta 0.7-1.3, second factor -1..1)
    factor_vol_bps: tuple[float, ...] = (8.0, 5.0)
    idio_vol_bps: float = 15.0  # scaled per asset by 0.75-1.25
    # hidden two-state Markov regime (calm/stressed) multiplying every vol; mean spell lengths in bars
    stress_vol_multiplier: float = 2.0
    mean_calm_bars: float = 960.0  # two days of 3-minute bars
    mean_stress_bars: float = 240.0  # twelve hours
    # news: Poisson rates; asset news per asset per day, distractors per day for the whole market
    asset_news_per_day: float = 3.5
    distractor_news_per_day: float = 8.0
    neutral_fraction: float = 0.25  # of asset news: names the asset, moves nothing
    negation_fraction: float = 0.3  # of sentiment news: meaning carried by a negation ("fails to beat")
    omit_symbols_fraction: float = 0.2  # of asset news: no "symbols" key, the text names the company
    impact_bps_per_bar: float = 3.0
    impact_bars: int = 60
    # flow shocks (no news): Poisson rate per asset per day, the jump on the shock bar, then a drift the same
    # way; about as much planted drift as the news carries, so each stream holds a real share of the signal
    shocks_per_day: float = 1.5
    shock_jump_bps: float = 40.0
    shock_drift_bps_per_bar: float = 3.0
    shock_bars: int = 60
    # leak items (exchange calendars only): published between a session's close and the next open, each tells the
    # next session bar's return (a jump of leak_jump_bps on that bar). Aligned correctly (to that next bar) the news
    # comes with the move, too late to trade; a pipeline that puts it on an earlier bar profits from look-ahead
    leak_news_per_day: float = 1.0
    leak_jump_bps: float = 60.0
    # volume multiplier added by sentiment news, decaying with this time constant in bars
    news_volume_boost: float = 1.5
    news_volume_decay_bars: float = 5.0
    # volume multiplier added by a flow shock, with the same decay
    shock_volume_boost: float = 6.0
    # Student-t degrees of freedom of every factor and idiosyncratic shock, scaled to the same variance (heavy
    # tails: 4 has a kurtosis of ~9 beside the normal's 3 when finite); inf: normal shocks
    tail_df: float = math.inf
    # per-asset activity regimes (quiet / active, alternating spells of geometric length with this mean, in bars,
    # each asset starting in a random state); 0: none. An active asset trades active_volume_multiplier times its
    # volume at active_vol_multiplier times its idiosyncratic vol, so the state shows in the bars
    activity_mean_bars: float = 0.0
    active_volume_multiplier: float = 3.0
    active_vol_multiplier: float = 2.0
    # what a sentiment item does when its asset is quiet at the item's bar, as a multiple of its drift (the
    # active state always moves with the headline): 1 the same, 0 nothing, -1 against the headline
    quiet_news_sign: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.n_assets <= len(COMPANIES):
            raise ValueError(f"n_assets must be in 1..{len(COMPANIES)}, got {self.n_assets}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        step = BarSpec(interval=self.interval, calendar=self.calendar).timedelta
        if _DAY % step != pd.Timedelta(0):
            raise ValueError(f"interval {self.interval!r} must divide one day evenly")
        try:
            start = pd.Timestamp(self.start)
        except ValueError:
            raise ValueError(f"start {self.start!r} is not an ISO 8601 timestamp") from None
        if start.tzinfo is None:
            raise ValueError(f"start {self.start!r} has no time zone; write it like 2026-01-05T00:00:00Z")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        vols = {"idio_vol_bps": self.idio_vol_bps,
                **{f"factor_vol_bps[{i}]": v for i, v in enumerate(self.factor_vol_bps)}}
        for name, value in vols.items():
            if not 0.0 <= value <= _MAX_VOL_BPS:  # also refuses NaN
                raise ValueError(f"{name} must be in [0, {_MAX_VOL_BPS}] bps per bar, got {value}")
        if not 1.0 <= self.stress_vol_multiplier <= 10.0:
            raise ValueError(f"stress_vol_multiplier must be in [1, 10], got {self.stress_vol_multiplier}")
        for name in ("mean_calm_bars", "mean_stress_bars", "news_volume_decay_bars"):
            if not getattr(self, name) >= 1.0:
                raise ValueError(f"{name} must be >= 1 bar, got {getattr(self, name)}")
        for name in ("asset_news_per_day", "distractor_news_per_day", "news_volume_boost", "shocks_per_day",
                     "shock_volume_boost", "leak_news_per_day"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        for name in ("neutral_fraction", "negation_fraction", "omit_symbols_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("impact_bps_per_bar", "shock_jump_bps", "shock_drift_bps_per_bar", "leak_jump_bps"):
            if not 0.0 <= getattr(self, name) <= _MAX_VOL_BPS:
                raise ValueError(f"{name} must be in [0, {_MAX_VOL_BPS}], got {getattr(self, name)}")
        for name in ("impact_bars", "shock_bars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tail_df > 2.0:  # also refuses NaN
            raise ValueError(f"tail_df must be > 2 (finite variance) or inf, got {self.tail_df}")
        if not (self.activity_mean_bars == 0.0 or 1.0 <= self.activity_mean_bars < math.inf):
            raise ValueError(f"activity_mean_bars must be 0 (no activity regimes) or >= 1 bar, "
                             f"got {self.activity_mean_bars}")
        for name in ("active_volume_multiplier", "active_vol_multiplier"):
            if not 1.0 <= getattr(self, name) <= 10.0:
                raise ValueError(f"{name} must be in [1, 10], got {getattr(self, name)}")
        if not -1.0 <= self.quiet_news_sign <= 1.0:
            raise ValueError(f"quiet_news_sign must be in [-1, 1], got {self.quiet_news_sign}")
        end = pd.Timestamp(self.start) + self.days * _DAY
        if not is_continuous(self.calendar) and end > pd.Timestamp(CALENDAR_END, tz="UTC"):
            # the calendar's sessions stop there: the bars would end early while news and shocks fill every day
            last = (pd.Timestamp(CALENDAR_END, tz="UTC") - pd.Timestamp(self.start)) // _DAY
            raise ValueError(f"days={self.days} from {self.start} runs to {end.date()}, past {CALENDAR_END}, the "
                             f"last day the {self.calendar} calendar is built for: use at most {last} days or an "
                             "earlier start")
        try:  # the oracle needs a test split under the default windows; say so before generating
            chronological_split(usable_anchors(self.n_bars, WARMUP_BARS, WindowSpec()), WindowSpec())
        except DataError as exc:
            raise ValueError(f"days={self.days} at interval {self.interval!r} gives {self.n_bars} bars, "
                             f"too few for the oracle's splits: {exc}") from None

    @property
    def activity_regimes(self) -> bool:
        return self.activity_mean_bars > 0

    @property
    def bar_spec(self) -> BarSpec:
        return BarSpec(interval=self.interval, calendar=self.calendar)

    @property
    def n_bars(self) -> int:
        if is_continuous(self.calendar):
            return int(self.days * (_DAY // self.bar_spec.timedelta))
        return len(self.session_closes())

    def session_closes(self) -> pd.DatetimeIndex:
        """Close times of the exchange calendar's bars in (start, start + days]."""
        start = self.start_time
        end = start + self.days * _DAY
        closes = calendar_bars(self.calendar, self.bar_spec.timedelta, start, end).closes
        return closes[(closes > start) & (closes <= end)].as_unit("ns")

    def close_times(self) -> pd.DatetimeIndex:
        """Every bar's close time: start + (i + 1) * interval round the clock, or the exchange's session bars."""
        if is_continuous(self.calendar):
            return pd.date_range(self.start_time + self.bar_spec.timedelta, periods=self.n_bars,
                                 freq=self.bar_spec.timedelta).as_unit("ns")
        return self.session_closes()

    @property
    def start_time(self) -> pd.Timestamp:
        return pd.Timestamp(self.start).tz_convert("UTC")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["factor_vol_bps"] = list(self.factor_vol_bps)
        return data


# Named configurations of `nfc synth --preset` (docs/SYNTHETIC.md: what each is for, its oracle, how it was tuned).
SYNTH_PRESETS: dict[str, dict[str, Any]] = {
    # the embedded demo market: strong planted signals on 3-minute bars round the clock
    "default": {},
    # weak effects, half the news uninformative, Student-t shocks and volatility regimes, on 30-minute exchange
    # bars: 12 years, so the test split is 2.4 years (7,680 bars, 96 books of 80 bars). Daily-scale vols (market 1%,
    # idiosyncratic 1.5% a day); about one item per asset a week, half of them neutral; a sentiment item moves its
    # asset by 2.3 bps a bar for 80 bars (184 bps, under half the idiosyncratic sigma over those bars), a flow shock
    # by 1.5. Oracle on seeds 0-4: 3.84 / 3.54 / 4.21 / 4.49 / 3.64 (impact 2.5: 4.04 on seed 0). It spanned 5.3
    # years at impact 2.5 before: a one-year test walk moved the oracle over 1.92-4.64 across seeds 0-4, and three
    # years of training bars were too few for the CGA model (docs/MODEL.md, docs/SYNTHETIC.md)
    "realistic": {
        "n_assets": 6, "days": 4380, "calendar": "XNYS", "interval": "30min", "start": "2024-01-02T00:00:00Z",
        "factor_vol_bps": (28.0, 14.0), "idio_vol_bps": 42.0, "tail_df": 4.0,
        "stress_vol_multiplier": 2.0, "mean_calm_bars": 780.0, "mean_stress_bars": 195.0,
        "asset_news_per_day": 0.15, "distractor_news_per_day": 0.5, "neutral_fraction": 0.5, "leak_news_per_day": 0.1,
        "impact_bps_per_bar": 2.3, "impact_bars": 80,
        "shocks_per_day": 0.3, "shock_jump_bps": 80.0, "shock_drift_bps_per_bar": 1.5, "shock_bars": 80,
    },
    # the news effect depends on the market state: each asset alternates quiet and active spells (~400 bars);
    # active, a headline moves its asset its own way, quiet, against it. Reading the news alone averages to
    # nothing; the state shows only in the bars (volume x3, idiosyncratic vol x2)
    "interaction": {
        "n_assets": 8, "days": 40, "activity_mean_bars": 400.0, "active_volume_multiplier": 3.0,
        "active_vol_multiplier": 2.0, "quiet_news_sign": -1.0, "shocks_per_day": 0.75,
    },
}


def preset_config(name: str, **overrides: Any) -> SynthConfig:
    """The SynthConfig of preset `name` with `overrides` (SynthConfig fields) on top; an unknown name is an error."""
    if name not in SYNTH_PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {sorted(SYNTH_PRESETS)}")
    return SynthConfig(**{**SYNTH_PRESETS[name], **overrides})


@dataclass(frozen=True)
class SyntheticMarket:
    """One generated market.

    bars: long format, columns timestamp (datetime64[ns, UTC], bar close), symbol (str), open, high,
        low, close, volume (float64); sorted by (timestamp, symbol), one row per bar and asset.
    news: records of the news contract plus "planted" (ground truth), sorted by published_at.
    oracle: what write_market stores as oracle.json.
    """

    config: SynthConfig
    universe: Universe
    bars: pd.DataFrame
    news: list[dict[str, Any]]
    oracle: dict[str, Any]


def synthetic_universe(n_assets: int) -> Universe:
    """The first `n_assets` fictional companies, each with its company name as alias."""
    if not 1 <= n_assets <= len(COMPANIES):
        raise ValueError(f"n_assets must be in 1..{len(COMPANIES)}, got {n_assets}")
    chosen = COMPANIES[:n_assets]
    return Universe(symbols=tuple(t for t, _ in chosen), aliases={t: (name,) for t, name in chosen})


def planted_drift(bar: np.ndarray, asset: np.ndarray, drift_bps: np.ndarray, n_bars: int, n_assets: int,
                  impact_bars: int) -> np.ndarray:
    """Per-bar planted log-return drift (T, N), as a fraction, of items aligned to bars `bar`.

    Item k adds drift_bps[k]/1e4 to asset[k] on bars bar[k]+1 .. bar[k]+impact_bars (clipped at T-1).
    """
    delta = np.zeros((n_bars + 1, n_assets))
    first = np.minimum(bar + 1, n_bars)
    stop = np.minimum(bar + 1 + impact_bars, n_bars)
    np.add.at(delta, (first, asset), drift_bps / 1e4)
    np.add.at(delta, (stop, asset), -drift_bps / 1e4)
    return np.cumsum(delta, axis=0)[:n_bars]


# ----------------------------------------------------------------------------------------------
# News text. {name} is the asset (ticker or company name); other fields are filled from _FILL.
# Negated templates carry their sentiment through negation, so bag-of-words alone misreads them.

_POSITIVE = (
    ("{name} beats quarterly estimates as {driver} lifts revenue",
     "{name} said {driver} drove the {quarter} results and expects momentum to continue."),
    ("{name} raises full-year guidance after a strong {quarter}",
     "Management at {name} lifted its outlook, pointing to {driver}."),
    ("{name} shares surge on record {metric}",
     "{name} reported record {metric}, well ahead of what analysts had pencilled in."),
    ("Analysts upgrade {name} to buy, citing {driver}",
     "Several brokers turned bullish on {name}, saying {driver} should lift earnings."),
    ("{name} wins multi-year contract in {region}",
     "The award is the largest in the history of {name} and adds to a growing order book."),
    ("{name} reports robust demand and expanding margins",
     "Orders at {name} rose strongly in {region}, and costs grew more slowly than sales."),
)
_POSITIVE_NEGATED = (
    ("{name} does not expect a downturn in {region}",
     "Executives at {name} said they see no sign of weakening orders."),
    ("{name} rules out layoffs despite {macro}",
     "{name} said it has no plans to cut jobs and that demand remains firm."),
    ("Regulator closes probe into {name} without penalties",
     "The inquiry found no wrongdoing at {name}, removing a long-standing overhang."),
    ("{name} denies reports of {problem}",
     "{name} said the reports were untrue and that operations are running normally."),
    ("{name} says slowdown in {region} will not hurt earnings",
     "{name} does not see {macro} denting its profit this year."),
    ("No recall needed, {name} says after safety review",
     "The review cleared the products of {name}, and no charges are expected."),
)
_NEGATIVE = (
    ("{name} misses quarterly estimates as {driver} weakens",
     "{name} said {driver} fell short during the {quarter}, hurting revenue."),
    ("{name} cuts full-year guidance, blaming {macro}",
     "Management at {name} lowered its outlook and warned of a difficult year."),
    ("{name} shares plunge after {problem}",
     "{name} disclosed {problem}, and analysts expect a hit to earnings."),
    ("Analysts downgrade {name} to sell on {concern}",
     "Several brokers turned bearish on {name}, citing {concern}."),
    ("{name} loses key contract in {region}",
     "The customer moved the work to a rival, a blow to the order book of {name}."),
    ("{name} warns of falling demand and shrinking margins",
     "Orders at {name} dropped in {region} while costs kept rising."),
)
_NEGATIVE_NEGATED = (
    ("{name} fails to beat quarterly estimates",
     "{name} came in below expectations, as {driver} did not deliver."),
    ("{name} does not expect growth in {region} this year",
     "Executives at {name} said sales there will not recover soon."),
    ("{name} will not raise its dividend, ending a long streak",
     "{name} said cash is needed elsewhere and gave no date for any increase."),
    ("{name} unable to secure financing for expansion in {region}",
     "Lenders declined to back the plan, and {name} has no alternative lined up."),
    ("{name} says recovery is not in sight",
     "{name} does not see demand improving before next year."),
    ("Investors no longer see {name} as a buy, survey finds",
     "Fewer fund managers hold {name}, and none plan to add to positions."),
)
_NEUTRAL = (
    ("{name} to hold annual shareholder meeting on {weekday}",
     "The agenda for {name} includes the election of directors and routine resolutions."),
    ("{name} schedules {quarter} earnings call",
     "{name} will publish its results before the call and take questions afterwards."),
    ("{name} appoints new head of investor relations",
     "The appointment at {name} takes effect next month."),
    ("{name} to present at {conference}",
     "A spokesperson for {name} confirmed the date of the presentation."),
    ("{name} publishes annual sustainability report",
     "The report from {name} describes energy use and staff training across its sites."),
    ("{name} moves regional office within {region}",
     "{name} said the move is administrative and will not change its operations."),
)
# Naming no asset; some carry sentiment words on purpose, so that words alone are not the signal.
_DISTRACTOR = (
    ("Weather service warns of heavy storms across {region}",
     "Forecasters expect strong winds and rain through the weekend."),
    ("Local football club wins the cup after extra time",
     "Fans celebrated in the streets late into the night."),
    ("Museum opens new exhibition on {topic}",
     "Curators spent three years assembling the collection."),
    ("Stocks in {region} rally as investors cheer {macro_good}",
     "Broad market gains were led by large companies in several sectors."),
    ("Central bank leaves rates unchanged and signals patience",
     "Policy makers said they will watch incoming data closely."),
    ("Commodity prices slump on oversupply fears",
     "Traders pointed to rising inventories and softer demand."),
    ("City council approves new cycling lanes",
     "Construction is due to start in the spring."),
    ("Film festival announces record attendance",
     "Organisers credited a strong line-up and good weather."),
    ("Analysts see mixed outlook for the {sector} sector",
     "Some firms may beat forecasts while others miss, a survey found."),
)
_FILL = {
    "driver": ("cloud sales", "cost cuts", "new products", "pricing", "export demand", "service revenue"),
    "quarter": ("first quarter", "second quarter", "third quarter", "fourth quarter"),
    "metric": ("profit", "orders", "sales", "cash flow"),
    "region": ("Europe", "Asia", "North America", "Latin America", "the Middle East", "Africa"),
    "macro": ("higher interest rates", "weak consumer spending", "supply-chain strain", "a strong currency"),
    "macro_good": ("cooling inflation", "strong jobs data", "a trade deal", "lower energy prices"),
    "problem": ("a product recall", "an accounting review", "a plant outage", "a data breach"),
    "concern": ("stretched valuation", "slowing orders", "rising debt", "margin pressure"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "conference": ("an industry conference", "an investor day", "a trade fair", "a technology summit"),
    "topic": ("ancient maps", "modern sculpture", "early photography", "textile design"),
    "sector": ("industrial", "consumer", "technology", "energy"),
}
_FILLER = (
    "The company has operations in {count} countries.",
    "It employs about {staff} people.",
    "A spokesperson declined to comment further.",
    "The statement was released during the trading session.",
)


def _template_table(sentiment: int, negated: bool) -> tuple[tuple[str, str], ...]:
    if sentiment > 0:
        return _POSITIVE_NEGATED if negated else _POSITIVE
    if sentiment < 0:
        return _NEGATIVE_NEGATED if negated else _NEGATIVE
    return _NEUTRAL


def _render(template: tuple[str, str], name: str, rng: np.random.Generator) -> tuple[str, str]:
    """Fill a (title, body) template; the body gets a neutral filler sentence half the time."""
    fields = {key: values[rng.integers(len(values))] for key, values in _FILL.items()}
    title, body = (part.format(name=name, **fields) for part in template)
    if rng.random() < 0.5:
        filler = _FILLER[rng.integers(len(_FILLER))]
        body = f"{body} {filler.format(count=int(rng.integers(3, 40)), staff=int(rng.integers(2, 90)) * 500)}"
    return title[0].upper() + title[1:], body


# ----------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class _NewsPlan:
    """The drawn news events before text: one row per item, sorted by publication time."""

    seconds: np.ndarray  # seconds after start, >= 1
    asset: np.ndarray  # asset column, -1 for distractors
    sentiment: np.ndarray  # -1, 0, 1
    negated: np.ndarray
    omit_symbols: np.ndarray
    bar: np.ndarray  # aligned bar: first bar whose close time >= published_at


def _plan_news(config: SynthConfig, rng: np.random.Generator) -> _NewsPlan:
    n_asset = int(rng.poisson(config.asset_news_per_day * config.days * config.n_assets))
    n_distractor = int(rng.poisson(config.distractor_news_per_day * config.days))
    n = n_asset + n_distractor
    closes = None if is_continuous(config.calendar) else config.session_closes()
    # (start, end of last bar], not on the bar grid
    span = config.days * 86_400 if closes is None else int((closes[-1] - config.start_time).total_seconds())
    seconds = rng.integers(1, span + 1, size=n)
    asset = np.concatenate([rng.integers(0, config.n_assets, size=n_asset), np.full(n_distractor, -1)])
    is_sentiment = np.concatenate([rng.random(n_asset) >= config.neutral_fraction, np.zeros(n_distractor, bool)])
    sentiment = np.where(is_sentiment, rng.choice(np.array([-1, 1]), size=n), 0)
    negated = is_sentiment & (rng.random(n) < config.negation_fraction)
    omit = (asset >= 0) & (rng.random(n) < config.omit_symbols_fraction)
    order = np.argsort(seconds, kind="stable")
    step = int(config.bar_spec.timedelta.total_seconds())
    seconds = seconds[order]
    bar = -(-seconds // step) - 1 if closes is None else closes.searchsorted(
        config.start_time + pd.to_timedelta(seconds, unit="s"), side="left")
    return _NewsPlan(seconds=seconds, asset=asset[order], sentiment=sentiment[order], negated=negated[order],
                     omit_symbols=omit[order], bar=bar)


def _news_records(plan: _NewsPlan, config: SynthConfig, universe: Universe, drift_bps: np.ndarray,
                  activity: np.ndarray | None, rng: np.random.Generator) -> list[dict[str, Any]]:
    published = (config.start_time + pd.to_timedelta(plan.seconds, unit="s")).strftime("%Y-%m-%dT%H:%M:%SZ")
    records = []
    for k in range(len(plan.seconds)):
        j, sentiment = int(plan.asset[k]), int(plan.sentiment[k])
        if j < 0:
            table, name, symbol = _DISTRACTOR, "", None
        else:
            symbol = universe.symbols[j]
            company = universe.aliases[symbol][0]
            # without a "symbols" key the pipeline finds the asset by alias, so name the company then
            by_ticker = not plan.omit_symbols[k] and rng.random() < 0.5
            table, name = _template_table(sentiment, bool(plan.negated[k])), symbol if by_ticker else company
        title, body = _render(table[rng.integers(len(table))], name, rng)
        record: dict[str, Any] = {
            "id": f"syn{config.seed}-{k:05d}",
            "published_at": published[k],
            "title": title,
            "body": body,
            "planted": {
                "sentiment": sentiment,
                "symbol": symbol,
                "drift_bps_per_bar": float(drift_bps[k]),
                "bars": config.impact_bars if sentiment else 0,
            },
        }
        if activity is not None and j >= 0:  # the state the item met, which set its drift
            record["planted"]["active"] = bool(activity[plan.bar[k], j])
        if j < 0:
            record["symbols"] = []
        elif not plan.omit_symbols[k]:
            record["symbols"] = [symbol]
        records.append(record)
    return records


def _spells(n: int, mean_first: float, mean_second: float, rng: np.random.Generator) -> np.ndarray:
    """State 0/1 per bar, alternating spells of geometric length (means in bars); starts in state 0."""
    # enough spells to cover n bars with overwhelming probability; topped up below if not
    n_pairs = int(n / (mean_first + mean_second) * 2) + 8
    lengths: list[np.ndarray] = []
    while sum(int(x.sum()) for x in lengths) < n:
        first = rng.geometric(1.0 / mean_first, size=n_pairs)
        second = rng.geometric(1.0 / mean_second, size=n_pairs)
        lengths.append(np.column_stack([first, second]).ravel())
    spells = np.concatenate(lengths)
    states = np.resize(np.array([0, 1]), len(spells))
    return np.repeat(states, spells)[:n]


def _regimes(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Hidden market-wide calm(0)/stressed(1) state per bar; starts calm."""
    return _spells(config.n_bars, config.mean_calm_bars, config.mean_stress_bars, rng)


def _activity(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Each asset's quiet(False)/active(True) state per bar (T, N), each asset starting in a random state."""
    start = rng.integers(0, 2, size=config.n_assets)
    return np.column_stack([
        _spells(config.n_bars, config.activity_mean_bars, config.activity_mean_bars, rng) ^ first for first in start
    ]).astype(bool)


def _noise(shape: tuple[int, ...], tail_df: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance shocks: standard normal, or Student-t with `tail_df` degrees of freedom scaled to variance 1."""
    if math.isinf(tail_df):
        return rng.standard_normal(shape)
    return rng.standard_t(tail_df, size=shape) * math.sqrt((tail_df - 2.0) / tail_df)


def _simulate_bars(config: SynthConfig, drift: np.ndarray, burst: np.ndarray, activity: np.ndarray | None,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """OHLCV arrays (T, N): factor + idiosyncratic log returns scaled by the regime, plus the planted log
    returns `drift`; `burst` (T, N) is the volume multiplier each event adds at its bar, decaying after it;
    `activity` (T, N), when given, raises an active asset's idiosyncratic vol and volume."""
    n, m = drift.shape
    n_factors = len(config.factor_vol_bps)
    # the first factor is the market (every beta positive), the others split assets both ways
    loadings = np.array([rng.uniform(0.7, 1.3, size=m) if k == 0 else rng.uniform(-1.0, 1.0, size=m)
                         for k in range(n_factors)]).reshape(n_factors, m)  # (K, N)
    factor_vol = np.asarray(config.factor_vol_bps, dtype=np.float64) / 1e4  # (K,)
    idio_vol = config.idio_vol_bps / 1e4 * rng.uniform(0.75, 1.25, size=m)  # (N,)
    scale = np.where(_regimes(config, rng) == 1, config.stress_vol_multiplier, 1.0)[:, None]  # (T, 1)
    if activity is not None:
        idio_vol = idio_vol * np.where(activity, config.active_vol_multiplier, 1.0)  # (T, N)
    factors = _noise((n, n_factors), config.tail_df, rng) * factor_vol  # (T, K)
    noise = (factors @ loadings + _noise((n, m), config.tail_df, rng) * idio_vol) * scale  # (T, N)
    log_ret = drift + noise
    calm_vol = np.sqrt((factor_vol[:, None] ** 2 * loadings**2).sum(axis=0) + idio_vol**2)  # (N,) or (T, N)

    first_price = np.exp(rng.uniform(np.log(10.0), np.log(500.0), size=m))
    close = first_price * np.exp(np.cumsum(log_ret, axis=0))
    open_ = np.vstack([first_price[None, :], close[:-1]])
    bar_vol = np.maximum(scale * calm_vol, 1e-6)  # wicks scale with the regime's vol
    high = np.maximum(open_, close) * np.exp(0.5 * bar_vol * np.abs(rng.standard_normal((n, m))))
    low = np.minimum(open_, close) * np.exp(-0.5 * bar_vol * np.abs(rng.standard_normal((n, m))))

    decay = np.exp(-np.arange(int(5 * config.news_volume_decay_bars) + 1) / config.news_volume_decay_bars)
    burst_level = np.column_stack([np.convolve(burst[:, j], decay)[:n] for j in range(m)])
    base_volume = np.exp(rng.uniform(np.log(2e3), np.log(5e4), size=m))
    # rises with |return|, more so when stressed; capped so a zero-vol test market keeps finite volume
    surprise = np.minimum(np.abs(log_ret) / np.maximum(calm_vol, 1e-6), 10.0)
    volume = base_volume * np.exp(0.4 * surprise + 0.3 * rng.standard_normal((n, m)))
    volume *= 1.0 + burst_level
    if activity is not None:
        volume *= np.where(activity, config.active_volume_multiplier, 1.0)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": np.maximum(np.round(volume), 1.0)}


@dataclass(frozen=True)
class _DriftEvents:
    """Planted drift events: event k adds drift_bps[k] to asset[k] on bars bar[k]+1 .. bar[k]+bars[k]."""

    bar: np.ndarray  # the bar whose close first shows the event (news: aligned bar; shock: shock bar)
    asset: np.ndarray
    drift_bps: np.ndarray
    bars: np.ndarray

    @staticmethod
    def concat(*parts: _DriftEvents) -> _DriftEvents:
        return _DriftEvents(*(np.concatenate([getattr(p, f.name) for p in parts])
                              for f in dataclasses.fields(_DriftEvents)))

    def drift(self, n_bars: int, n_assets: int) -> np.ndarray:
        """Per-bar log-return drift (T, N), as a fraction (`planted_drift` of every event)."""
        total = np.zeros((n_bars, n_assets))
        for length in np.unique(self.bars):
            chosen = self.bars == length
            total += planted_drift(self.bar[chosen], self.asset[chosen], self.drift_bps[chosen], n_bars, n_assets,
                                   int(length))
        return total

    def expected_bps(self, t: int, horizon: int, n_assets: int) -> np.ndarray:
        """Per asset, the planted drift over bars t+1..t+horizon of the events observable by bar t's close."""
        overlap = np.minimum(self.bar + self.bars, t + horizon) - np.maximum(self.bar + 1, t + 1) + 1
        known = (self.bar <= t) & (overlap > 0)
        expected = np.zeros(n_assets)
        np.add.at(expected, self.asset[known], self.drift_bps[known] * overlap[known])
        return expected


def _news_drift_bps(config: SynthConfig, plan: _NewsPlan, activity: np.ndarray | None) -> np.ndarray:
    """Each item's planted drift per bar: sentiment * impact, times quiet_news_sign where its asset is quiet at
    its bar (activity regimes only); 0 for neutral items and distractors."""
    drift = plan.sentiment * config.impact_bps_per_bar
    if activity is None:
        return drift.astype(np.float64)
    named = plan.asset >= 0
    active = np.ones(len(plan.bar), dtype=bool)
    active[named] = activity[plan.bar[named], plan.asset[named]]
    return np.where(active, 1.0, config.quiet_news_sign) * drift + 0.0  # + 0.0: no -0.0 in the records


def _news_events(config: SynthConfig, plan: _NewsPlan, drift_bps: np.ndarray) -> _DriftEvents:
    live = plan.sentiment != 0
    return _DriftEvents(bar=plan.bar[live], asset=plan.asset[live], drift_bps=drift_bps[live],
                        bars=np.full(int(live.sum()), config.impact_bars))


@dataclass(frozen=True)
class _Shocks:
    """Flow shocks: the bar they happen on, the asset and the sign of the move."""

    bar: np.ndarray
    asset: np.ndarray
    sign: np.ndarray

    def events(self, config: SynthConfig) -> _DriftEvents:
        return _DriftEvents(bar=self.bar, asset=self.asset, drift_bps=self.sign * config.shock_drift_bps_per_bar,
                            bars=np.full(len(self.bar), config.shock_bars))

    def to_records(self, universe: Universe) -> list[dict[str, Any]]:
        return [{"bar": int(b), "symbol": universe.symbols[int(a)], "sign": int(g)}
                for b, a, g in zip(self.bar, self.asset, self.sign, strict=True)]


@dataclass(frozen=True)
class _Leaks:
    """Leak items: published after session a-1's close (before bar a opens), telling bar a's move."""

    bar: np.ndarray
    asset: np.ndarray
    sign: np.ndarray
    published: pd.DatetimeIndex
    seed: int
    jump_bps: float

    def records(self, universe: Universe) -> list[dict[str, Any]]:
        records = []
        for k, (bar, asset, sign, stamp) in enumerate(zip(self.bar, self.asset, self.sign, self.published,
                                                          strict=True)):
            symbol = universe.symbols[int(asset)]
            company = universe.aliases[symbol][0]
            way = "jump" if sign > 0 else "slump"
            records.append({
                "id": f"syn{self.seed}-leak-{k:05d}",
                "published_at": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "title": f"{company} shares set to {way} at the next open",
                "body": f"After the close, people familiar with {company} said its shares will {way} when trading "
                        "resumes.",
                "symbols": [symbol],
                "planted": {"leak": True, "sign": int(sign), "symbol": symbol, "jump_bps": float(self.jump_bps),
                            "bar": int(bar), "sentiment": 0, "drift_bps_per_bar": 0.0, "bars": 0},
            })
        return records


def _with_leaks(news: list[dict[str, Any]], leaks: _Leaks, universe: Universe) -> list[dict[str, Any]]:
    """The news records with the leak items merged in by publication time (unchanged when there are none)."""
    if not len(leaks.bar):
        return news
    return sorted(news + leaks.records(universe), key=lambda item: (item["published_at"], item["id"]))


def _plan_leaks(config: SynthConfig, close_times: pd.DatetimeIndex, rng: np.random.Generator) -> _Leaks:
    """Leak items of an exchange calendar: a bar a whose session opens after a gap (overnight, weekend), a time
    in that gap after the previous close, an asset and a sign; none on "24/7" (no close to publish after)."""
    empty = np.zeros(0, dtype=np.int64)
    if is_continuous(config.calendar) or config.leak_news_per_day == 0:
        return _Leaks(bar=empty, asset=empty, sign=empty, published=pd.DatetimeIndex([], tz="UTC"),
                      seed=config.seed, jump_bps=config.leak_jump_bps)
    opens = calendar_bars(config.calendar, config.bar_spec.timedelta, close_times[0], close_times[-1])
    open_ns = opens.opens.as_unit("ns").asi8[opens.closes.as_unit("ns").get_indexer(close_times)]
    close_ns = close_times.as_unit("ns").asi8
    after_gap = np.flatnonzero(open_ns[1:] > close_ns[:-1]) + 1  # bars opening after a closed gap
    count = int(rng.poisson(config.leak_news_per_day * config.days))
    bar = np.sort(rng.choice(after_gap, size=count))
    gap = (open_ns[bar] - close_ns[bar - 1]) / 1e9
    offset = rng.uniform(1.0, np.maximum(gap - 1.0, 1.0)).round()
    published = close_times[bar - 1] + pd.to_timedelta(offset, unit="s")
    return _Leaks(bar=bar, asset=rng.integers(0, config.n_assets, size=count), sign=rng.choice(np.array([-1, 1]),
                  size=count), published=published, seed=config.seed, jump_bps=config.leak_jump_bps)


def _plan_shocks(config: SynthConfig, rng: np.random.Generator) -> _Shocks:
    count = int(rng.poisson(config.shocks_per_day * config.days * config.n_assets))
    bar = rng.integers(0, config.n_bars, size=count)
    asset = rng.integers(0, config.n_assets, size=count)
    sign = rng.choice(np.array([-1, 1]), size=count)
    order = np.lexsort((asset, bar))
    return _Shocks(bar=bar[order], asset=asset[order], sign=sign[order])


def _active_spells(activity: np.ndarray, universe: Universe) -> list[dict[str, Any]]:
    """Each asset's active spells as {symbol, first_bar, last_bar}, by asset then bar."""
    spells = []
    for j, symbol in enumerate(universe.symbols):
        edges = np.diff(np.concatenate([[0], activity[:, j].astype(np.int8), [0]]))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
        spells.extend({"symbol": symbol, "first_bar": int(a), "last_bar": int(b)}
                      for a, b in zip(starts, stops, strict=True))
    return spells


def _oracle(config: SynthConfig, universe: Universe, signals: dict[str, _DriftEvents], shocks: _Shocks,
            activity: np.ndarray | None, close: np.ndarray, close_times: pd.DatetimeIndex) -> dict[str, Any]:
    """Sharpe of trading the planted signal on the test split, rebalanced every horizon bars.

    At anchor t the oracle knows the events observable by bar t's close (news aligned to bars <= t,
    shocks on bars <= t), sums each asset's planted drift over bars t+1..t+H, and holds topk_weights
    of it for H bars. `signals` maps "all" (the oracle) and partial knowledge ("news_only", "shocks_only",
    "news_ignoring_state") to their events; the partial oracles' Sharpes are recorded beside it.
    """
    window, book = WindowSpec(), PortfolioSpec()
    per_year = grid_bars_per_year(config.calendar, config.bar_spec.timedelta, close_times)
    n_bars, n_assets = close.shape
    splits = chronological_split(usable_anchors(n_bars, WARMUP_BARS, window), window)
    horizon = window.horizon
    anchors = splits.test[::horizon]
    returns = simple_returns(close)

    def walk(events: _DriftEvents) -> WalkForward:
        weights = np.stack([topk_weights(events.expected_bps(int(t), horizon, n_assets), book.top_k)
                            for t in anchors])
        return walk_forward(anchors, weights, returns, horizon, book.cost_bps)

    run = walk(signals["all"])
    planted: dict[str, Any] = {
        "impact_bps_per_bar": config.impact_bps_per_bar,
        "impact_bars": config.impact_bars,
        "rule": "an item aligned to bar a (first bar whose close >= published_at) adds "
                "sentiment*impact_bps_per_bar to its asset's log-return drift on bars a+1..a+impact_bars",
        "shock_jump_bps": config.shock_jump_bps,
        "shock_drift_bps_per_bar": config.shock_drift_bps_per_bar,
        "shock_bars": config.shock_bars,
        "shock_rule": "a flow shock on bar s adds sign*shock_jump_bps to its asset's log return on bar s "
                      "(with a volume burst) and sign*shock_drift_bps_per_bar to the drift on bars "
                      "s+1..s+shock_bars",
        "shocks": shocks.to_records(universe),
    }
    if activity is not None:
        planted.update({
            "activity_rule": "each asset alternates quiet and active spells (mean activity_mean_bars bars); active, "
                             "its volume is active_volume_multiplier and its idiosyncratic vol active_vol_multiplier "
                             "times higher; an item whose asset is quiet at its bar a moves the drift by "
                             "quiet_news_sign*sentiment*impact_bps_per_bar instead",
            "quiet_news_sign": config.quiet_news_sign,
            "active_volume_multiplier": config.active_volume_multiplier,
            "active_vol_multiplier": config.active_vol_multiplier,
            "active_spells": _active_spells(activity, universe),
        })
    return {
        "description": "out-of-sample Sharpe of top-k long/short weights on the planted drift (news and flow "
                       "shocks) known at each anchor, rebalanced every horizon bars on the test split, after costs",
        **run.metrics(per_year),  # sharpe, cumulative_return, max_drawdown, ...
        "partial_sharpe": {name: walk(events).metrics(per_year)["sharpe"]
                           for name, events in signals.items() if name != "all"},
        "splits": splits.to_dict(),
        "first_return_bar": run.first_bar,
        "last_return_bar": run.first_bar + len(run.returns) - 1,
        "n_rebalances": len(anchors),
        "lookback": window.lookback,
        "horizon": horizon,
        "rebalance_every": horizon,
        "warmup_bars": WARMUP_BARS,
        "top_k": book.top_k,
        "cost_bps": book.cost_bps,
        "bars_per_year": per_year,
        "planted": planted,
        "seed": config.seed,
        "config": config.to_dict(),
    }


def generate_market(config: SynthConfig | None = None) -> SyntheticMarket:
    """Draw news and flow shocks first, plant their drift, then simulate bars around it; same config, same market."""
    config = config or SynthConfig()
    universe = synthetic_universe(config.n_assets)
    # one stream per part, so adding a part never changes the draws of the others
    news_rng, text_rng, bar_rng, shock_rng, leak_rng, activity_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(6))
    plan = _plan_news(config, news_rng)
    shocks = _plan_shocks(config, shock_rng)
    activity = _activity(config, activity_rng) if config.activity_regimes else None
    n, m = config.n_bars, config.n_assets
    news_drift = _news_drift_bps(config, plan, activity)
    news = _news_events(config, plan, news_drift)
    events = _DriftEvents.concat(news, shocks.events(config))
    signals = {"all": events, "news_only": news, "shocks_only": shocks.events(config)}
    if activity is not None:  # what a reader of the news alone would trade: every item at its headline's sign
        signals["news_ignoring_state"] = _news_events(config, plan, _news_drift_bps(config, plan, None))
    log_drift = events.drift(n, m)
    np.add.at(log_drift, (shocks.bar, shocks.asset), shocks.sign * config.shock_jump_bps / 1e4)
    burst = np.zeros((n, m))
    np.add.at(burst, (news.bar, news.asset), config.news_volume_boost)
    np.add.at(burst, (shocks.bar, shocks.asset), config.shock_volume_boost)

    close_times = config.close_times()
    leaks = _plan_leaks(config, close_times, leak_rng)
    np.add.at(log_drift, (leaks.bar, leaks.asset), leaks.sign * config.leak_jump_bps / 1e4)
    arrays = _simulate_bars(config, log_drift, burst, activity, bar_rng)
    bars = pd.DataFrame({
        "timestamp": close_times.repeat(m),
        "symbol": np.tile(np.array(universe.symbols, dtype=object), n),  # symbols are alphabetical: sorted
        **{name: values.ravel() for name, values in arrays.items()},
    })
    return SyntheticMarket(config=config, universe=universe, bars=bars,
                           news=_with_leaks(_news_records(plan, config, universe, news_drift, activity, text_rng),
                                            leaks, universe),
                           oracle=_oracle(config, universe, signals, shocks, activity, arrays["close"], close_times))


# ----------------------------------------------------------------------------------------------
# Writing

def write_market(market: SyntheticMarket, out_dir: Path | str) -> Path:
    """Write bars.parquet, news.jsonl, oracle.json and universe.json into `out_dir`; returns its path.

    Every file is first written under a temporary name in `out_dir` and only then renamed into place,
    all renames after all writes succeeded, so a crash never leaves a half-written file. The same
    market always gives byte-identical files (fixed parquet writer options, sorted JSON keys).
    """
    universe = {**market.universe.to_dict(), "interval": market.config.interval,
                "calendar": market.config.calendar}
    return write_files_atomic(Path(out_dir), {
        "bars.parquet": lambda path: write_bars(market.bars, path),
        "news.jsonl": lambda path: write_news(market.news, path),
        "oracle.json": lambda path: path.write_bytes(json_bytes(market.oracle)),
        "universe.json": lambda path: path.write_bytes(json_bytes(universe)),
    })
