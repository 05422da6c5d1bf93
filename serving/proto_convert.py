"""Protobuf <-> API models for the gRPC front (serving/proto/neuralfusion.proto).

A Predict or PredictColumns request becomes the arrays every HTTP body becomes (serving/column_checks.py), the
other requests the HTTP API's pydantic models, so both fronts refuse the same inputs with the same reasons; a
Prediction has the shape of HTTP's PredictionOut (weights and logits keyed by symbol). Times are
google.protobuf.Timestamp (UTC). proto3 has no "unset" for strings and numbers: an empty string or a zero means
"not given"; an unset Timestamp is a missing time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from neuralfusion.data.bars import PRICE_COLUMNS
from serving.column_checks import RequestColumns
from serving.errors import RequestError
from serving.proto import neuralfusion_pb2 as pb
from serving.request_checks import describe_validation_error
from serving.schemas import HistoryOut, HistoryQuery, PredictAtRequest, PredictionOut

__all__ = ["columns_from_proto", "columns_from_request_proto", "history_query_from_proto", "history_to_proto",
           "predict_at_from_proto", "prediction_from_proto", "prediction_to_proto", "timestamp"]

_SECONDS_CLAMP = 2**33  # +-272 years around the epoch: inside int64 nanoseconds


def timestamp(value: datetime) -> Timestamp:
    """An aware datetime as a Timestamp."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _time(message: object, field: str, where: str) -> datetime | None:
    """`message.field` as an aware UTC datetime; None when unset. A Timestamp outside 0001..9999 is a RequestError."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    try:
        return getattr(message, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as err:
        raise RequestError(f"{where}.{field}: {err}") from None


def columns_from_request_proto(message: pb.PredictRequest) -> RequestColumns:
    """A Predict request (one message per bar) as arrays for the array checks (serving/column_checks.py), so it is
    refused for the same reasons, in the same words, as /predict. An unset Timestamp is a missing time; empty
    strings are proto3's "unset": an empty request_id means none, `has_symbols=false` means match aliases."""
    bars, news = message.bars, message.news
    symbol = [b.symbol for b in bars]
    ids = [n.id for n in news]
    numbers = {name: np.fromiter(map(attrgetter(name), bars), np.float64, len(bars))
               for name in (*PRICE_COLUMNS, "volume")}
    return RequestColumns(
        {"timestamp": _nanoseconds(bars, "timestamp", lambda row: f"bars row {row} ({symbol[row]})"), "symbol": symbol,
         **numbers},
        {"id": ids, "published_at": _nanoseconds(news, "published_at", lambda row: f"news row {row} (id {ids[row]!r})"),
         "title": [n.title for n in news], "body": [n.body for n in news],
         "symbols": [list(n.symbols) if n.has_symbols else None for n in news]},
        message.request_id or None)


def _nanoseconds(messages: Sequence[Any], field: str, where: Callable[[int], str]) -> np.ndarray:
    """Epoch nanoseconds of each message's Timestamp `field`, its seconds clamped to +-_SECONDS_CLAMP (outside the
    accepted range anyway, so the array checks refuse it); an unset one is a RequestError naming the row."""
    stamps = [getattr(item, field) for item in messages]
    for row, item in enumerate(messages):
        if not item.HasField(field):
            raise RequestError(f"{where(row)}: {field} is missing")
    return np.fromiter((min(max(t.seconds, -_SECONDS_CLAMP), _SECONDS_CLAMP) * 1_000_000_000 + t.nanos
                        for t in stamps), np.int64, len(stamps))


def columns_from_proto(message: pb.PredictColumnsRequest) -> RequestColumns:
    """A PredictColumns request as arrays for the array checks (serving/column_checks.py); proto3's empty
    arrays mean "left out" (blank titles or bodies, alias matching for every item)."""
    bars, news = message.bars, message.news
    n_news = len(news.id)
    columns: dict[str, Any] = {"id": list(news.id), "published_at": np.array(news.published_at, dtype=np.int64)}
    for name in ("title", "body"):
        if len(getattr(news, name)):
            columns[name] = list(getattr(news, name))
    if len(news.symbols):
        columns["symbols"] = [list(s.symbols) if s.has_symbols else None for s in news.symbols]
    return RequestColumns(
        {"timestamp": np.array(bars.timestamp, dtype=np.int64), "symbol": list(bars.symbol),
         **{name: np.array(getattr(bars, name), dtype=np.float64) for name in (*PRICE_COLUMNS, "volume")}},
        columns if n_news or len(news.published_at) else {}, message.request_id or None)


def predict_at_from_proto(message: pb.PredictAtRequest) -> PredictAtRequest:
    """The by-reference request through the HTTP model's validators; empty fields are "not given"."""
    given = {"as_of": _time(message, "as_of", "request"), "symbols": list(message.symbols),
             "request_id": message.request_id}
    try:
        return PredictAtRequest.model_validate({name: value for name, value in given.items() if value})
    except ValidationError as err:
        raise RequestError(describe_validation_error(err)) from None


def history_query_from_proto(message: pb.HistoryRequest) -> HistoryQuery:
    """The gRPC query through the HTTP model's validators; unset times, an empty model version and a zero limit
    mean "not given"."""
    given = {"start": _time(message, "start", "request"), "end": _time(message, "end", "request"),
             "model_version": message.model_version, "limit": message.limit,
             "before": _time(message, "before", "request")}
    try:
        return HistoryQuery.model_validate({name: value for name, value in given.items() if value})
    except ValidationError as err:
        raise RequestError(describe_validation_error(err)) from None


def prediction_to_proto(prediction: PredictionOut) -> pb.Prediction:
    """HTTP's PredictionOut field for field."""
    return pb.Prediction(
        model_version=prediction.model_version, as_of=timestamp(prediction.as_of), symbols=prediction.symbols,
        weights=prediction.weights, logits=prediction.logits, horizon_bars=prediction.horizon_bars,
        request_id=prediction.request_id, stored=prediction.stored, duplicate=prediction.duplicate)


def prediction_from_proto(message: pb.Prediction) -> PredictionOut:
    """The inverse of `prediction_to_proto`, for gRPC clients."""
    return PredictionOut(
        model_version=message.model_version, as_of=message.as_of.ToDatetime(tzinfo=UTC),
        symbols=list(message.symbols), weights=dict(message.weights), logits=dict(message.logits),
        horizon_bars=message.horizon_bars, request_id=message.request_id, stored=message.stored,
        duplicate=message.duplicate)


def history_to_proto(history: HistoryOut) -> pb.HistoryResponse:
    """An unset `next_before` means no more pages."""
    return pb.HistoryResponse(items=[prediction_to_proto(p) for p in history.items],
                              next_before=None if history.next_before is None else timestamp(history.next_before))
