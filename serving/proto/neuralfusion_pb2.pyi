import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Bar(_message.Message):
    __slots__ = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    symbol: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., symbol: _Optional[str] = ..., open: _Optional[float] = ..., high: _Optional[float] = ..., low: _Optional[float] = ..., close: _Optional[float] = ..., volume: _Optional[float] = ...) -> None: ...

class NewsItem(_message.Message):
    __slots__ = ("id", "published_at", "title", "body", "symbols", "has_symbols")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    HAS_SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    id: str
    published_at: _timestamp_pb2.Timestamp
    title: str
    body: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    has_symbols: bool
    def __init__(self, id: _Optional[str] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., title: _Optional[str] = ..., body: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., has_symbols: _Optional[bool] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("bars", "news", "request_id")
    BARS_FIELD_NUMBER: _ClassVar[int]
    NEWS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    bars: _containers.RepeatedCompositeFieldContainer[Bar]
    news: _containers.RepeatedCompositeFieldContainer[NewsItem]
    request_id: str
    def __init__(self, bars: _Optional[_Iterable[_Union[Bar, _Mapping]]] = ..., news: _Optional[_Iterable[_Union[NewsItem, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BarColumns(_message.Message):
    __slots__ = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    timestamp: _containers.RepeatedScalarFieldContainer[int]
    symbol: _containers.RepeatedScalarFieldContainer[str]
    open: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    low: _containers.RepeatedScalarFieldContainer[float]
    close: _containers.RepeatedScalarFieldContainer[float]
    volume: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, timestamp: _Optional[_Iterable[int]] = ..., symbol: _Optional[_Iterable[str]] = ..., open: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ..., low: _Optional[_Iterable[float]] = ..., close: _Optional[_Iterable[float]] = ..., volume: _Optional[_Iterable[float]] = ...) -> None: ...

class SymbolList(_message.Message):
    __slots__ = ("symbols", "has_symbols")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    HAS_SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    has_symbols: bool
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., has_symbols: _Optional[bool] = ...) -> None: ...

class NewsColumns(_message.Message):
    __slots__ = ("id", "published_at", "title", "body", "symbols")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    id: _containers.RepeatedScalarFieldContainer[str]
    published_at: _containers.RepeatedScalarFieldContainer[int]
    title: _containers.RepeatedScalarFieldContainer[str]
    body: _containers.RepeatedScalarFieldContainer[str]
    symbols: _containers.RepeatedCompositeFieldContainer[SymbolList]
    def __init__(self, id: _Optional[_Iterable[str]] = ..., published_at: _Optional[_Iterable[int]] = ..., title: _Optional[_Iterable[str]] = ..., body: _Optional[_Iterable[str]] = ..., symbols: _Optional[_Iterable[_Union[SymbolList, _Mapping]]] = ...) -> None: ...

class PredictColumnsRequest(_message.Message):
    __slots__ = ("bars", "news", "request_id")
    BARS_FIELD_NUMBER: _ClassVar[int]
    NEWS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    bars: BarColumns
    news: NewsColumns
    request_id: str
    def __init__(self, bars: _Optional[_Union[BarColumns, _Mapping]] = ..., news: _Optional[_Union[NewsColumns, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictAtRequest(_message.Message):
    __slots__ = ("as_of", "symbols", "request_id")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    as_of: _timestamp_pb2.Timestamp
    symbols: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., symbols: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("model_version", "as_of", "symbols", "weights", "logits", "horizon_bars", "request_id", "stored", "duplicate")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LogitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    HORIZON_BARS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    as_of: _timestamp_pb2.Timestamp
    symbols: _containers.RepeatedScalarFieldContainer[str]
    weights: _containers.ScalarMap[str, float]
    logits: _containers.ScalarMap[str, float]
    horizon_bars: int
    request_id: str
    stored: bool
    duplicate: bool
    def __init__(self, model_version: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., symbols: _Optional[_Iterable[str]] = ..., weights: _Optional[_Mapping[str, float]] = ..., logits: _Optional[_Mapping[str, float]] = ..., horizon_bars: _Optional[int] = ..., request_id: _Optional[str] = ..., stored: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class LatestRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    def __init__(self, model_version: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("start", "end", "model_version", "limit", "before")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    model_version: str
    limit: int
    before: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_version: _Optional[str] = ..., limit: _Optional[int] = ..., before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("items", "next_before")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Prediction]
    next_before: _timestamp_pb2.Timestamp
    def __init__(self, items: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., next_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
