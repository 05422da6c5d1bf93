"""Request and response models of the HTTP API, their protobuf conversions, and the model-dependent checks.

HTTP (pydantic, validated by BentoML) and gRPC (`predict_request_from_proto`) share one validation path:
a protobuf request becomes a `PredictRequest` through the same validators. The per-item rules here
(finite, positive prices, high/low bounding open/close, aware timestamps, non-empty text, size limits)
answer with the field at fault; frame-level rules come from `neuralfusion.data` (`validate_bars`,
`validate_news`) and the model's manifest (`check_request_against_model`), so nothing is re-implemented.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from neuralfusion.data.bars import BAR_COLUMNS, validate_bars
from neuralfusion.data.news import NEWS_COLUMNS, article_text, validate_news
from neuralfusion.errors import DataError
from serving.proto import neuralfusion_pb2 as pb
from serving.store import MAX_HISTORY_LIMIT, PredictionRecord

__all__ = [
    "EXAMPLE_INPUT",
    "AwareTime",
    "BarIn",
    "HistoryOut",
    "HistoryQuery",
    "NewsIn",
    "PredictRequest",
    "PredictionOut",
    "RequestError",
    "RequestLimits",
    "check_request_against_model",
    "describe_validation_error",
    "history_query_from_proto",
    "history_to_proto",
    "predict_request_from_proto",
    "prediction_from_proto",
    "prediction_to_proto",
    "request_frames",
]


# a complete request for a two-symbol model whose window is two bars: shown in the OpenAPI docs, used by tests
EXAMPLE_INPUT: dict[str, Any] = {
    "bars": [
        {"timestamp": "2026-01-05T00:03:00Z", "symbol": "AURX", "open": 100.0, "high": 100.21, "low": 99.93,
         "close": 100.12, "volume": 5123.0},
        {"timestamp": "2026-01-05T00:03:00Z", "symbol": "BLTQ", "open": 50.0, "high": 50.08, "low": 49.9,
         "close": 49.95, "volume": 2210.0},
        {"timestamp": "2026-01-05T00:06:00Z", "symbol": "AURX", "open": 100.12, "high": 100.3, "low": 100.02,
         "close": 100.27, "volume": 4810.0},
        {"timestamp": "2026-01-05T00:06:00Z", "symbol": "BLTQ", "open": 49.95, "high": 50.01, "low": 49.88,
         "close": 49.97, "volume": 1984.0},
    ],
    "news": [
        {"id": "n000001", "published_at": "2026-01-05T00:04:41Z", "title": "Aurexa Mining beats forecasts",
         "body": "Analysts said the quarter was strong.", "symbols": ["AURX"]},
        {"id": "n000002", "published_at": "2026-01-05T01:05:10+01:00", "title": "Boltara Energy delays a plant",
         "body": "", "symbols": None},
    ],
    "request_id": "example-1",
}


class RequestError(ValueError):
    """The request cannot be served as sent; the message says what to fix (answered with a 4xx)."""


@dataclass(frozen=True)
class RequestLimits:
    """Size limits of one predict request.

    Validation reads them from the environment unless its context holds "limits"; the service should call
    `from_env()` at startup, so a bad value fails there rather than as a refused request.
    """

    max_bars: int = 20_000  # NFC_MAX_BARS
    max_news: int = 512  # NFC_MAX_NEWS
    max_text_chars: int = 20_000  # NFC_MAX_TEXT_CHARS, per news item (title and body)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RequestLimits:
        """Limits from `NFC_MAX_*` variables, defaults for unset ones; a value that is not a positive integer
        is an error naming the variable."""
        values = {}
        for f in fields(cls):
            name = f"NFC_{f.name.upper()}"
            if name in environ:
                raw = environ[name]
                if not raw.strip().isdigit() or int(raw) < 1:
                    raise ValueError(f"{name}={raw!r} must be a positive integer")
                values[f.name] = int(raw)
        return cls(**values)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{value.isoformat()} has no time zone; write ISO 8601 with an offset, "
                         "e.g. 2026-01-05T14:03:00Z")
    return value.astimezone(UTC)


AwareTime = Annotated[datetime, AfterValidator(_aware_utc)]
Price = Annotated[float, Field(gt=0, allow_inf_nan=False, description="Price, finite and > 0.", examples=[100.12])]


class BarIn(BaseModel):
    """One OHLCV bar, labelled by its close time."""

    model_config = ConfigDict(extra="forbid")

    timestamp: AwareTime = Field(description="Close time of the bar, ISO 8601 with an offset.",
                                 examples=["2026-01-05T00:03:00Z"])
    symbol: str = Field(min_length=1, max_length=32, description="Ticker of the asset.", examples=["AURX"])
    open: Price
    high: Price
    low: Price
    close: Price
    volume: float = Field(ge=0, allow_inf_nan=False, description="Traded volume, finite and >= 0.",
                          examples=[5123.0])

    @model_validator(mode="after")
    def _high_low_bound_the_body(self) -> BarIn:
        if self.high < max(self.open, self.close) or self.low > min(self.open, self.close):
            raise ValueError(f"high {self.high} and low {self.low} must bound open {self.open} and close "
                             f"{self.close} ({self.symbol} at {self.timestamp.isoformat()})")
        return self


class NewsIn(BaseModel):
    """One news item; without `symbols` the service matches the text against the universe's aliases."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="Unique id of the item.", examples=["n000001"])
    published_at: AwareTime = Field(description="Publication time, ISO 8601 with an offset.",
                                    examples=["2026-01-05T00:04:41Z"])
    title: str = Field(default="", description="Headline.", examples=["Aurexa Mining beats forecasts"])
    body: str = Field(default="", description="Article text; title and body must not both be blank.",
                      examples=["Analysts said the quarter was strong."])
    symbols: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, description="Tickers the item is about; null: match company names in the text.",
        examples=[["AURX"]])

    @model_validator(mode="after")
    def _has_text(self) -> NewsIn:
        if not article_text(self.title, self.body):
            raise ValueError(f"news item {self.id!r} has no text: title and body are both blank")
        return self


class PredictRequest(BaseModel):
    """Bars (the model's window, all symbols) and the news published in it; size limits: RequestLimits."""

    # OpenAPI's "example": BentoML's OpenAPI generator refuses JSON Schema's model-level "examples"
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_INPUT})

    bars: list[BarIn] = Field(min_length=1, description="OHLCV bars of every symbol the model trades.")
    news: list[NewsIn] = Field(default_factory=list, description="News items, any order.")
    request_id: str | None = Field(default=None, max_length=128,
                                   description="Caller's id, stored with the prediction; null: one is assigned.",
                                   examples=["example-1"])

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> PredictRequest:
        limits = (info.context or {}).get("limits") or RequestLimits.from_env()
        if len(self.bars) > limits.max_bars:
            raise ValueError(f"{len(self.bars)} bars are over the limit of {limits.max_bars} (NFC_MAX_BARS): "
                             "send only the model's window")
        if len(self.news) > limits.max_news:
            raise ValueError(f"{len(self.news)} news items are over the limit of {limits.max_news} (NFC_MAX_NEWS): "
                             "send only the news of the model's window")
        for i, item in enumerate(self.news):
            size = len(article_text(item.title, item.body))
            if size > limits.max_text_chars:
                raise ValueError(f"news[{i}] (id {item.id!r}) has {size} characters of text, over the limit of "
                                 f"{limits.max_text_chars} (NFC_MAX_TEXT_CHARS): shorten its body")
        return self


class PredictionOut(BaseModel):
    """Portfolio weights for the bars after `as_of`, and whether MongoDB holds them."""

    model_version: str = Field(description="Version of the model that answered.", examples=["cga-20260105-1"])
    as_of: datetime = Field(description="UTC close time of the last bar the prediction saw.",
                            examples=["2026-01-05T00:06:00Z"])
    symbols: list[str] = Field(description="The model's universe, in model order.", examples=[["AURX", "BLTQ"]])
    weights: dict[str, float] = Field(description="Target portfolio weight per symbol.",
                                      examples=[{"AURX": 0.6, "BLTQ": 0.4}])
    logits: dict[str, float] = Field(description="Raw model score per symbol.", examples=[{"AURX": 0.3, "BLTQ": -0.1}])
    horizon_bars: int = Field(description="Bars the weights are meant to be held.", examples=[80])
    request_id: str = Field(description="The caller's request id, or the one assigned.", examples=["example-1"])
    stored: bool = Field(description="True once MongoDB acknowledged the write or already held this prediction.")

    @classmethod
    def from_record(cls, record: PredictionRecord, stored: bool) -> PredictionOut:
        return cls(model_version=record.model_version, as_of=record.as_of, symbols=list(record.symbols),
                   weights=record.weights, logits=record.logits, horizon_bars=record.horizon_bars,
                   request_id=record.request_id, stored=stored)


class HistoryQuery(BaseModel):
    """A page of stored predictions: start <= as_of < end (and < before), newest first."""

    model_config = ConfigDict(extra="forbid")

    start: AwareTime | None = Field(default=None, description="Earliest as_of, inclusive; null: unbounded.",
                                    examples=["2026-01-05T00:00:00Z"])
    end: AwareTime | None = Field(default=None, description="Latest as_of, exclusive; null: unbounded.",
                                  examples=["2026-01-06T00:00:00Z"])
    model_version: str | None = Field(default=None, description="Only this model version; null: any.",
                                      examples=["cga-20260105-1"])
    limit: int = Field(default=100, ge=1, le=MAX_HISTORY_LIMIT, description="Page size.", examples=[100])
    before: AwareTime | None = Field(default=None, description="`next_before` of the previous page; null: newest.",
                                     examples=["2026-01-05T00:03:00Z"])


class HistoryOut(BaseModel):
    """One page of stored predictions, newest first."""

    items: list[PredictionOut] = Field(description="Predictions, newest as_of first.")
    next_before: datetime | None = Field(description="Pass as `before` for the next page; null: no more pages.",
                                         examples=["2026-01-05T00:03:00Z"])




def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, `bars[3].high: Input should be greater than 0`, for gRPC status details."""
    def place(loc: tuple[int | str, ...]) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "request"
    return "; ".join(f"{place(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors())


def request_frames(request: PredictRequest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The request as the long bar and news frames of the data contracts (docs/DESIGN.md), checked by
    `validate_bars` and `validate_news` (duplicates, ordering); a violated rule is a RequestError."""
    # column by column from the validated models (their timestamps are aware UTC datetimes): a frame built
    # row-wise infers every column's type from Python objects, several times slower for ~2,000 bars
    rows = request.bars
    bars = pd.DataFrame({"timestamp": pd.DatetimeIndex([bar.timestamp for bar in rows], tz="UTC"),
                         "symbol": [bar.symbol for bar in rows],
                         **{c: np.fromiter([getattr(bar, c) for bar in rows], np.float64, len(rows))
                            for c in BAR_COLUMNS[2:]}})
    news = pd.DataFrame({c: [getattr(item, c) for item in request.news] for c in NEWS_COLUMNS})
    news["published_at"] = pd.to_datetime(news["published_at"], utc=True)
    try:
        return validate_bars(bars, source="request bars"), validate_news(news, source="request news")
    except DataError as err:
        raise RequestError(str(err)) from None


def check_request_against_model(request: PredictRequest, symbols: tuple[str, ...], bars_needed: int,
                                interval: pd.Timedelta) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refuse a request the model cannot answer, naming the problem; return its validated frames.

    The model trades exactly `symbols` and reads the `bars_needed` grid bars of `interval` that end with
    the request's last bar (its as-of bar), so every symbol needs bars from the window's first bar on and
    the last bar must close on the grid (else the as-of bar would be incomplete).
    """
    bars, news = request_frames(request)
    sent = set(bars["symbol"])
    unknown = sorted(sent - set(symbols))
    if unknown:
        raise RequestError(f"bars for symbols {unknown} that this model does not trade; it trades {list(symbols)}: "
                           "drop them")
    missing = [s for s in symbols if s not in sent]
    if missing:
        raise RequestError(f"no bars for symbols {missing}; this model needs bars for every one of {list(symbols)}")
    last = bars["timestamp"].max()
    if last.ceil(interval) != last:
        raise RequestError(f"the last bar closes at {last.isoformat()}, not on the {_interval_text(interval)} bar "
                           "grid, so the as-of bar would be incomplete: end the bars at "
                           f"{last.floor(interval).isoformat()}")
    window_start = last - (bars_needed - 1) * interval
    slot = bars["timestamp"].dt.ceil(interval)
    column = pd.Index(symbols).get_indexer(bars["symbol"])
    first = np.full(len(symbols), np.iinfo(np.int64).max)
    np.minimum.at(first, column, slot.array.asi8)  # each symbol's first grid bar, without a groupby
    first_slot = pd.DatetimeIndex(first.astype(f"datetime64[{slot.dt.unit}]")).tz_localize("UTC")
    short = {s: int(slot[column == i].nunique()) for i, s in enumerate(symbols) if first_slot[i] > window_start}
    if short:
        detail = ", ".join(f"{s} has {n} from {first_slot[symbols.index(s)].isoformat()}" for s, n in short.items())
        raise RequestError(f"too few bars: the model reads {bars_needed} bars of {_interval_text(interval)} per "
                           f"symbol, from {window_start.isoformat()} to {last.isoformat()}; {detail}: "
                           f"send bars from {window_start.isoformat()} on")
    return bars, news


def predict_request_from_proto(message: pb.PredictRequest, limits: RequestLimits | None = None) -> PredictRequest:
    """The gRPC request through the HTTP model's validators; a violated rule is a RequestError.

    Empty strings are proto3's "unset": an empty request_id means none, `has_symbols=false` means match aliases.
    """
    payload = {
        "bars": [{"timestamp": b.timestamp, "symbol": b.symbol, "open": b.open, "high": b.high, "low": b.low,
                  "close": b.close, "volume": b.volume} for b in message.bars],
        "news": [{"id": n.id, "published_at": n.published_at, "title": n.title, "body": n.body,
                  "symbols": list(n.symbols) if n.has_symbols else None} for n in message.news],
        "request_id": message.request_id or None,
    }
    try:
        return PredictRequest.model_validate(payload, context={"limits": limits} if limits else None)
    except ValidationError as err:
        raise RequestError(describe_validation_error(err)) from None


def history_query_from_proto(message: pb.HistoryRequest) -> HistoryQuery:
    """The gRPC query through the HTTP model's validators; proto3's empty strings and zero limit mean "not given"."""
    given = {"start": message.start, "end": message.end, "model_version": message.model_version,
             "limit": message.limit, "before": message.before}
    try:
        return HistoryQuery.model_validate({name: value for name, value in given.items() if value})
    except ValidationError as err:
        raise RequestError(describe_validation_error(err)) from None


def prediction_to_proto(prediction: PredictionOut) -> pb.Prediction:
    """Weights and logits as lists in `symbols` order."""
    return pb.Prediction(
        model_version=prediction.model_version, as_of=prediction.as_of.isoformat(), symbols=prediction.symbols,
        weights=[prediction.weights[s] for s in prediction.symbols],
        logits=[prediction.logits[s] for s in prediction.symbols], horizon_bars=prediction.horizon_bars,
        request_id=prediction.request_id, stored=prediction.stored)


def prediction_from_proto(message: pb.Prediction) -> PredictionOut:
    """The inverse of `prediction_to_proto`, for gRPC clients."""
    symbols = list(message.symbols)
    return PredictionOut(
        model_version=message.model_version, as_of=datetime.fromisoformat(message.as_of), symbols=symbols,
        weights=dict(zip(symbols, message.weights, strict=True)),
        logits=dict(zip(symbols, message.logits, strict=True)), horizon_bars=message.horizon_bars,
        request_id=message.request_id, stored=message.stored)


def history_to_proto(history: HistoryOut) -> pb.HistoryResponse:
    """An empty `next_before` means no more pages."""
    return pb.HistoryResponse(items=[prediction_to_proto(p) for p in history.items],
                              next_before="" if history.next_before is None else history.next_before.isoformat())


def _interval_text(interval: pd.Timedelta) -> str:
    """'3min' rather than pandas' '0 days 00:03:00' in messages."""
    return to_offset(interval).freqstr
