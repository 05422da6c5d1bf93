"""The HTTP API's pydantic models: what a caller sends and gets back, with the per-item rules.

The models check types, sizes and the rules pydantic checks in its compiled core (finite, positive prices, volume
>= 0, string and list sizes, news with text, aware news times inside [EARLIEST_TIME, LATEST_TIME)) and answer with
the field at fault. A bar's close time (offset and range) and high/low bounding open/close are checked with the
columnar bodies' rules over the whole request's arrays (serving/column_checks.py), which every body format and
the gRPC requests pass: one rule set, naming the row and its symbol. The rules that need the whole request or the
model (frames, window, as-of) are in serving/request_checks.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from neuralfusion.data.news import article_text
from serving.store import MAX_HISTORY_LIMIT, MAX_KEY_CHARS, PredictionRecord

__all__ = [
    "EARLIEST_TIME",
    "EXAMPLE_INPUT",
    "LATEST_TIME",
    "MAX_ID_CHARS",
    "MAX_SYMBOLS_PER_ITEM",
    "MAX_SYMBOL_CHARS",
    "MAX_TIME_CHARS",
    "AwareTime",
    "BarIn",
    "HistoryOut",
    "HistoryQuery",
    "LatestQuery",
    "ModelInfo",
    "ModelVersion",
    "NewsIn",
    "PredictAtRequest",
    "PredictRequest",
    "PredictionOut",
    "RequestLimits",
]

# the times a request may carry: pandas' nanosecond timestamps end in 2262, BSON dates and Python's datetime
# arithmetic overflow near year 1 and 9999; a market model has no use for either end
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2200, 1, 1, tzinfo=UTC)
MAX_SYMBOLS_PER_ITEM = 64
MAX_SYMBOL_CHARS = 32
MAX_ID_CHARS = 128  # of a news item's id
MAX_TIME_CHARS = 64  # of an RFC 3339 time string: the longest, with nanoseconds and an offset, has 35

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


@dataclass(frozen=True)
class RequestLimits:
    """Size limits of one predict request.

    Validation reads them from the environment unless its context holds "limits"; the service should call
    `from_env()` at startup, so a bad value fails there rather than as a refused request.
    """

    max_bars: int = 20_000  # NFC_MAX_BARS
    max_news: int = 512  # NFC_MAX_NEWS
    max_text_chars: int = 20_000  # NFC_MAX_TEXT_CHARS, per news item (title and body)

    @property
    def max_body_bytes(self) -> int:
        """The largest JSON body these limits allow: 256 bytes per bar, and per news item 4 bytes per character
        (UTF-8) plus 2 KiB for its other fields, plus 64 KiB; ~46 MB with the defaults."""
        return self.max_bars * 256 + self.max_news * (4 * self.max_text_chars + 2048) + 65_536

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
    if not EARLIEST_TIME <= value < LATEST_TIME:  # compared before converting: 9999-12-31T23:59-01:00 overflows
        raise ValueError(f"{value.isoformat()} is outside {EARLIEST_TIME.isoformat()} .. {LATEST_TIME.isoformat()}")
    return value.astimezone(UTC)


AwareTime = Annotated[datetime, AfterValidator(_aware_utc)]
ModelVersion = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS, description="A model version.",
                                    examples=["cga-20260105-1"])]
Price = Annotated[float, Field(gt=0, allow_inf_nan=False, description="Price, finite and > 0.", examples=[100.12])]


class BarIn(TypedDict):
    """One OHLCV bar, labelled by its close time.

    A TypedDict, not a model: a request carries ~2,000 bars, and pydantic checks these fields in its compiled core
    without building an object (or calling Python) per bar. The rules that need Python, the close time's offset and
    range and high/low bounding open/close, are checked over the whole request's arrays (serving/column_checks.py),
    naming the row and its symbol.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    timestamp: Annotated[str, Field(max_length=MAX_TIME_CHARS, description="Close time of the bar, RFC 3339 with "
                                    "an offset.", examples=["2026-01-05T00:03:00Z"], json_schema_extra={
                                        "format": "date-time"})]
    symbol: Annotated[str, Field(min_length=1, max_length=MAX_SYMBOL_CHARS, description="Ticker of the asset.",
                                 examples=["AURX"])]
    open: Price
    high: Annotated[float, Field(gt=0, allow_inf_nan=False, description="High price, finite, >= open and close.",
                                 examples=[100.21])]
    low: Annotated[float, Field(gt=0, allow_inf_nan=False, description="Low price, finite, > 0, <= open and close.",
                                examples=[99.93])]
    close: Price
    volume: Annotated[float, Field(ge=0, allow_inf_nan=False, description="Traded volume, finite and >= 0.",
                                   examples=[5123.0])]


class NewsIn(BaseModel):
    """One news item; without `symbols` the service matches the text against the universe's aliases."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="Unique id of the item.", examples=["n000001"])
    published_at: AwareTime = Field(description="Publication time, ISO 8601 with an offset.",
                                    examples=["2026-01-05T00:04:41Z"])
    title: str = Field(default="", description="Headline.", examples=["Aurexa Mining beats forecasts"])
    body: str = Field(default="", description="Article text; title and body must not both be blank.",
                      examples=["Analysts said the quarter was strong."])
    symbols: list[Annotated[str, Field(min_length=1, max_length=MAX_SYMBOL_CHARS)]] | None = Field(
        default=None, max_length=MAX_SYMBOLS_PER_ITEM,
        description="Tickers the item is about; null: match company names in the text.",
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
    request_id: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_CHARS,
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


class PredictAtRequest(BaseModel):
    """A prediction by reference: the service reads the bars and news of the as-of bar from its own sources."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "as_of": "2026-01-05T12:00:00Z", "symbols": ["AURX", "BLTQ"], "request_id": "job-2026-01-05T12:00Z"}})

    as_of: AwareTime | None = Field(default=None, description="Close time of the as-of bar: a bar close of the "
                                    "model's calendar, not in the future; null: the newest complete bar of the "
                                    "service's bar source.", examples=["2026-01-05T12:00:00Z"])
    symbols: list[Annotated[str, Field(min_length=1, max_length=32)]] | None = Field(
        default=None, max_length=4096, description="The universe the caller expects, in any order; it must be the "
                                                   "model's; null: the model's.", examples=[["AURX", "BLTQ"]])
    request_id: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_CHARS,
                                   description="Caller's id, stored with the prediction; null: one is assigned.",
                                   examples=["job-2026-01-05T12:00Z"])


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
    duplicate: bool = Field(default=False, description="True when MongoDB already held the prediction for these "
                                                       "same inputs (sent before, under `request_id`).")

    @classmethod
    def from_record(cls, record: PredictionRecord, duplicate: bool = False) -> PredictionOut:
        """The answer for a prediction MongoDB holds, as it holds it."""
        return cls(model_version=record.model_version, as_of=record.as_of, symbols=list(record.symbols),
                   weights=record.weights, logits=record.logits, horizon_bars=record.horizon_bars,
                   request_id=record.request_id, stored=True, duplicate=duplicate)


class LatestQuery(BaseModel):
    """The newest stored prediction, of one model version or of any."""

    model_config = ConfigDict(extra="forbid")

    model_version: ModelVersion | None = Field(default=None, description="Only this model version; null: any.")


class HistoryQuery(BaseModel):
    """A page of stored predictions: start <= as_of < end (and < before), newest first."""

    model_config = ConfigDict(extra="forbid")

    start: AwareTime | None = Field(default=None, description="Earliest as_of, inclusive; null: unbounded.",
                                    examples=["2026-01-05T00:00:00Z"])
    end: AwareTime | None = Field(default=None, description="Latest as_of, exclusive; null: unbounded.",
                                  examples=["2026-01-06T00:00:00Z"])
    model_version: ModelVersion | None = Field(default=None, description="Only this model version; null: any.")
    limit: int = Field(default=100, ge=1, le=MAX_HISTORY_LIMIT, description="Page size.", examples=[100])
    before: AwareTime | None = Field(default=None, description="`next_before` of the previous page; null: newest.",
                                     examples=["2026-01-05T00:03:00Z"])


class HistoryOut(BaseModel):
    """One page of stored predictions, newest first."""

    items: list[PredictionOut] = Field(description="Predictions, newest as_of first.")
    next_before: datetime | None = Field(description="Pass as `before` for the next page; null: no more pages.",
                                         examples=["2026-01-05T00:03:00Z"])


class ModelInfo(BaseModel):
    """The model this server answers with, and how it runs."""

    version: str = Field(description="Model package version; every stored prediction carries it.")
    created: str = Field(description="When the package was exported (UTC).")
    symbols: list[str] = Field(description="The universe, in the order of weights and logits.")
    interval: str = Field(description="Bar interval, e.g. 3min.")
    calendar: str = Field(description="The bars' calendar: 24/7 or an exchange code such as XNYS.")
    lookback: int = Field(description="Bars the model reads.")
    horizon: int = Field(description="Bars the weights are meant to be held.")
    bars_needed: int = Field(description="Bars per symbol a request must cover: feature warm-up + lookback.")
    top_k: int = Field(description="Assets held long or short.")
    features: list[str] = Field(description="Per-asset market features, computed by the server from the bars.")
    encoder_max_length: int = Field(description="Tokens per article read by the encoder; longer ones are cut.")
    parity_passed: bool = Field(description="Whether every ONNX-vs-PyTorch parity check passed at export.")
    providers: dict[str, str] = Field(description="ONNX Runtime execution provider in use per graph.")
    execution: dict[str, dict[str, str]] = Field(
        description="Per graph: the provider in use, the graph variant (fp32, cpu, fp16) and why that device, "
                    "e.g. 'cuda unavailable, fell back to the CPU: ...'.")
    batches: dict[str, dict[str, Any]] = Field(description="Batches run per graph by the inner services, by size.")
    truncated_texts: int = Field(description="Articles cut to encoder_max_length in the encoder's worker.")
    refused_model: str | None = Field(None, description="The last model swap refused in this worker, and why.")
    vector_cache: dict[str, Any] = Field(
        default_factory=dict, description="The encoder worker's article vector cache: capacity, size (vectors "
                                          "held), hits and misses (distinct texts), mongo (backed by MongoDB).")
