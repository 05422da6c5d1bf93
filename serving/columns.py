"""The columnar predict bodies: JSON arrays (POST /predict/columns) and an Arrow IPC stream (POST /predict/arrow).

Both carry what a /predict JSON body carries, one array per field instead of one object per bar, so the server
reads ~2,000 bars without building an object for each. Every format is read into `RequestColumns` and checked by
the same rules (serving/column_checks.py); the same inputs give the same weights and the same inputs hash in any
format.

JSON (`PredictColumnsRequest`): `{"bars": {"timestamp": [...], "symbol": [...], "open": [...], "high": [...],
"low": [...], "close": [...], "volume": [...]}, "news": {"id": [...], "published_at": [...], "title": [...],
"body": [...], "symbols": [[...] or null, ...]}, "request_id": "..."}`. Times are RFC 3339 strings with an offset
or integer nanoseconds since the epoch (UTC); `news`, `title`, `body` and `symbols` may be left out.

Arrow (`application/vnd.apache.arrow.stream`, ARROW_SCHEMA): one IPC stream holding one record batch of one row,
the request, whose columns are the JSON body's fields: `bars` a list of structs (timestamp[ns, UTC], symbol,
open, high, low, close, volume), `news` a list of structs (id, published_at timestamp[ns, UTC], title, body,
symbols list<string>, null: match aliases) and `request_id` (string, null: one is assigned). A list of structs
keeps each field contiguous, so the server reads the bars as arrays without a copy. Any timestamp unit with a
time zone, any numeric price type and dictionary-encoded strings are accepted; `arrow_body` writes one. The
layout and its writer live in the core (neuralfusion/request_body.py), for the Python client.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from neuralfusion.data.bars import BAR_COLUMNS, PRICE_COLUMNS
from neuralfusion.data.news import NEWS_COLUMNS
from neuralfusion.request_body import ARROW_MEDIA_TYPE, ARROW_SCHEMA, arrow_body
from serving.column_checks import RequestColumns
from serving.errors import RequestError
from serving.schemas import EXAMPLE_INPUT, PredictRequest
from serving.store import MAX_KEY_CHARS

__all__ = [
    "ARROW_MEDIA_TYPE",
    "ARROW_SCHEMA",
    "EXAMPLE_COLUMNS",
    "BarColumns",
    "NewsColumns",
    "PredictColumnsRequest",
    "arrow_body",
    "columns_body",
    "columns_from_arrow",
    "columns_from_json",
    "columns_from_rows",
]

_TIMES_DOC = "RFC 3339 strings with an offset, or integer nanoseconds since the epoch (UTC)."


def _rows_to_columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    return {name: [row.get(name) for row in rows] for name in names}


# EXAMPLE_INPUT's request as columns: shown in the OpenAPI docs, used by tests
EXAMPLE_COLUMNS: dict[str, Any] = {"bars": _rows_to_columns(EXAMPLE_INPUT["bars"], BAR_COLUMNS),
                                   "news": _rows_to_columns(EXAMPLE_INPUT["news"], NEWS_COLUMNS),
                                   "request_id": EXAMPLE_INPUT["request_id"]}


class BarColumns(BaseModel):
    """OHLCV bars, one array per field and one value per bar (bars labelled by their close time)."""

    model_config = ConfigDict(extra="forbid")

    timestamp: list[str] | list[int] = Field(description=f"Close time of each bar: {_TIMES_DOC}",
                                             examples=[["2026-01-05T00:03:00Z"]], union_mode="left_to_right")
    symbol: list[str] = Field(description="Ticker of each bar's asset.", examples=[["AURX"]])
    open: list[float] = Field(description="Open prices, finite and > 0.", examples=[[100.0]])
    high: list[float] = Field(description="High prices, >= open and close.", examples=[[100.21]])
    low: list[float] = Field(description="Low prices, <= open and close, > 0.", examples=[[99.93]])
    close: list[float] = Field(description="Close prices, finite and > 0.", examples=[[100.12]])
    volume: list[float] = Field(description="Traded volumes, finite and >= 0.", examples=[[5123.0]])


class NewsColumns(BaseModel):
    """News items, one array per field and one value per item."""

    model_config = ConfigDict(extra="forbid")

    id: list[str] = Field(description="Unique id of each item.", examples=[["n000001"]])
    published_at: list[str] | list[int] = Field(description=f"Publication times: {_TIMES_DOC}",
                                                 examples=[["2026-01-05T00:04:41Z"]], union_mode="left_to_right")
    title: list[str] | None = Field(default=None, description="Headlines; null: all blank.",
                                    examples=[["Aurexa Mining beats forecasts"]])
    body: list[str] | None = Field(default=None, description="Article texts; null: all blank. An item's title and "
                                                             "body must not both be blank.",
                                   examples=[["Analysts said the quarter was strong."]])
    symbols: list[list[str] | None] | None = Field(
        default=None, description="Tickers each item is about; a null item (or a null array): match company "
                                  "names in the text.", examples=[[["AURX"]]])


class PredictColumnsRequest(BaseModel):
    """The request of /predict with its bars and news as arrays (one per field); size limits: RequestLimits."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_COLUMNS})

    bars: BarColumns = Field(description="OHLCV bars of every symbol the model trades.")
    news: NewsColumns | None = Field(default=None, description="News items, any order; null: none.")
    request_id: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_CHARS,
                                   description="Caller's id, stored with the prediction; null: one is assigned.",
                                   examples=["example-1"])


def columns_from_rows(request: PredictRequest) -> RequestColumns:
    """A validated /predict body as arrays: bar times as the strings it sent (the array checks parse each distinct
    time once), news times (aware UTC datetimes) as epoch nanoseconds."""
    bars = {c: [bar[c] for bar in request.bars] for c in BAR_COLUMNS}
    news = {c: [getattr(item, c) for item in request.news] for c in NEWS_COLUMNS}
    news["published_at"] = pd.DatetimeIndex(news["published_at"]).as_unit("ns").asi8
    return RequestColumns(bars, news, request.request_id)


def columns_from_json(request: PredictColumnsRequest) -> RequestColumns:
    """A /predict/columns body as arrays; integer times are epoch nanoseconds."""
    bars = {**dict(request.bars), "timestamp": _json_times(request.bars.timestamp, "bars.timestamp")}
    news = {} if request.news is None else {
        name: value for name, value in request.news if value is not None}
    if "published_at" in news:
        news["published_at"] = _json_times(news["published_at"], "news.published_at")
    return RequestColumns(bars, news, request.request_id)


def _json_times(values: list[str] | list[int], name: str) -> list[str] | np.ndarray:
    if not values or isinstance(values[0], str):
        return values
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise RequestError(f"{name} holds integers beyond int64: send nanoseconds since the epoch") from None


def columns_from_arrow(body: bytes) -> RequestColumns:
    """A /predict/arrow body (the module docstring's layout) as arrays; anything else is a RequestError saying
    what the body should be."""
    try:
        with pa.ipc.open_stream(body) as reader:
            table = reader.read_all()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise RequestError(f"the body is not an Arrow IPC stream ({err}); send one record batch in the layout of "
                           "serving.columns.ARROW_SCHEMA, e.g. as serving.columns.arrow_body writes it") from None
    unknown = sorted(set(table.column_names) - set(ARROW_SCHEMA.names))
    if unknown or "bars" not in table.column_names or table.num_rows != 1:
        raise RequestError(f"the Arrow body has columns {table.column_names} and {table.num_rows} rows; it needs "
                           f"one row (the request) with the columns {ARROW_SCHEMA.names} (news and request_id "
                           "optional)")
    bars = _arrow_table(table, "bars", required=True)
    news = _arrow_table(table, "news", required=False)
    request_id = table.column("request_id")[0].as_py() if "request_id" in table.column_names else None
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"the Arrow column request_id is {table.schema.field('request_id').type}; it must be a "
                           "string")
    return RequestColumns(bars, news, request_id)


def _arrow_table(table: pa.Table, name: str, required: bool) -> dict[str, Any]:
    """The fields of the list-of-structs column `name` of a one-row table, as arrays (numbers and times as
    numpy, strings as Arrow arrays, news fields as Python values: news are few)."""
    if name not in table.column_names:
        return {}
    column = table.column(name).combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        raise RequestError(f"the Arrow column {name} is {kind}; it must be a list of structs "
                           f"({ARROW_SCHEMA.field(name).type})")
    if column.null_count:
        if required:
            raise RequestError(f"the Arrow column {name} is null; send the {name}")
        return {}
    items = column.flatten()  # the one row's structs, contiguous
    fields = {kind.value_type.field(i).name: array for i, array in enumerate(items.flatten())}
    return {field: _arrow_values(array, f"{name}.{field}", name == "bars") for field, array in fields.items()}


def _arrow_values(array: pa.Array, name: str, bars: bool) -> Any:
    """One field as the checks read it; a field of the wrong kind is a RequestError naming the layout."""
    kind = array.type
    field = name.split(".")[1]
    if field in ("timestamp", "published_at") and pa.types.is_timestamp(kind):
        if kind.tz is None:
            raise RequestError(f"the Arrow field {name} is {kind}, without a time zone; write it as "
                               "timestamp[ns, tz=UTC] (or with the zone the times were recorded in)")
        return array.to_numpy(zero_copy_only=False)  # UTC datetime64 of the field's unit, NaT for nulls
    if field in (*PRICE_COLUMNS, "volume") and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return array.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls are NaN: refused as not finite
    if pa.types.is_dictionary(kind):
        array = array.cast(kind.value_type)
    if field in ("symbol", "id", "title", "body") and (pa.types.is_string(array.type)
                                                        or pa.types.is_large_string(array.type)):
        return pd.Series(array, dtype="str") if bars else array.to_pylist()
    if field == "symbols" and (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return array.to_pylist()
    raise RequestError(f"the Arrow field {name} is {kind}; the layout is {ARROW_SCHEMA}")


def columns_body(bars: pd.DataFrame, news: pd.DataFrame, request_id: str | None = None) -> dict[str, Any]:
    """A /predict/columns body from long bar and news frames (the data contracts' columns, UTC times)."""
    times = pd.DatetimeIndex(bars["timestamp"])
    codes, distinct = pd.factorize(times)
    text = np.array([t.isoformat() for t in distinct], dtype=object)  # each bar time once, not once per symbol
    return {
        "bars": {"timestamp": text[codes].tolist(), "symbol": bars["symbol"].astype(str).tolist(),
                 **{c: bars[c].astype(np.float64).tolist() for c in (*PRICE_COLUMNS, "volume")}},
        "news": {"id": news["id"].astype(str).tolist(),
                 "published_at": [t.isoformat() for t in pd.DatetimeIndex(news["published_at"])],
                 "title": news["title"].fillna("").tolist(), "body": news["body"].fillna("").tolist(),
                 "symbols": [None if s is None else list(s) for s in news["symbols"]]},
        "request_id": request_id,
    }
