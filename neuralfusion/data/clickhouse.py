"""OHLCV bars from a ClickHouse table (optional extra `live`: clickhouse-driver, the native TCP protocol).

The seed's table holds 1-minute candles `symbol, candle_time, open, high, low, close, volume`; the table
and column names are configuration (`BarColumnMap`), checked as identifiers and back-quoted, while values
(symbols, the time range) travel as query parameters, escaped by the driver, never pasted into the SQL.
Rows come back in the bar contract of `BarFileSource` (close-time labels, UTC, validated), so resampling
onto the model's grid is `resample_bars`, the same code as for files.

clickhouse-driver is used because it speaks the native protocol of every server release, including the
18.16 that Debian 12 ships (clickhouse-connect needs the HTTP interface of much newer servers).

    source = ClickHouseBarSource.from_url(os.environ["NFC_CLICKHOUSE_URL"], table="market.candles")
    bars = source.load(["BTC", "ETH"], start, end)  # start < close time <= end
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import pandas as pd

from neuralfusion.data.bars import BAR_COLUMNS, validate_bars
from neuralfusion.errors import DataError, SourceUnavailable
from neuralfusion.redact import encode_userinfo, redact_uri, scrub, uri_secrets

__all__ = ["BarColumnMap", "ClickHouseBarSource", "field_map_from_text", "quote_identifier"]

_Map = TypeVar("_Map")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_identifier(name: str) -> str:
    """`name` back-quoted for ClickHouse; `db.table` quotes each part. Anything but letters, digits and
    underscores is refused, so configuration can never inject SQL."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ValueError(f"{name!r} is not a valid ClickHouse identifier: use letters, digits and underscores "
                         "(and one dot between database and table)")
    return ".".join(f"`{p}`" for p in parts)


@dataclass(frozen=True)
class BarColumnMap:
    """Which table column holds each field of the bar contract (defaults: the seed's candle table)."""

    timestamp: str = "candle_time"
    symbol: str = "symbol"
    open: str = "open"
    high: str = "high"
    low: str = "low"
    close: str = "close"
    volume: str = "volume"

    @classmethod
    def parse(cls, text: str) -> BarColumnMap:
        """`timestamp=ts,volume=vol` -> a map with those two changed; unknown fields are an error."""
        return field_map_from_text(cls, text)


def field_map_from_text(cls: type[_Map], text: str) -> _Map:
    """A field-map dataclass (BarColumnMap, NewsFieldMap) from `field=name,...` overrides of its defaults,
    as configuration gives them; an unknown field or an item without `=` is a ValueError naming the fields."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in known or not value.strip():
            raise ValueError(f"{cls.__name__} mapping {item!r}: write field=name with field one of {sorted(known)}")
        values[key.strip()] = value.strip()
    return cls(**values)


class ClickHouseBarSource:
    """Bars of a ClickHouse table, one time-ranged parameterised query per load.

    `label="open"`: a row's time is its candle's open time (exchange candles), shifted here by `candle`
    (the candle length) to the close-time label of the contract. The client is injected (a
    `clickhouse_driver.Client`), so callers choose host, credentials and settings; `from_url` builds one.

    >>> ClickHouseBarSource(client, "market.candles").load(["BTC"], start, end).head(2)
                      timestamp symbol     open     high      low    close  volume
    0 2026-01-05 00:01:00+00:00    BTC  42000.0  42010.5  41990.0  42005.0    12.5
    1 2026-01-05 00:02:00+00:00    BTC  42005.0  42020.0  42001.0  42018.0     8.0
    dtypes: timestamp datetime64[ns, UTC], symbol str, prices and volume float64.
    """

    def __init__(self, client: Any, table: str, columns: BarColumnMap | None = None, label: str = "open",
                 candle: str | pd.Timedelta = "1min") -> None:
        if label not in ("open", "close"):
            raise ValueError(f"label must be 'open' or 'close', got {label!r}")
        self.client = client
        self.columns = columns or BarColumnMap()
        self.table = table
        self.label = label
        self.candle = pd.Timedelta(candle)
        self._query = self._select()
        self._secrets: set[str] = set()  # the URL's password, hidden in error messages (from_url sets it)

    @classmethod
    def from_url(cls, url: str, table: str, **options: Any) -> ClickHouseBarSource:
        """A source on a new client for `clickhouse://user:password@host:9000/database` (native protocol)."""
        try:
            from clickhouse_driver import Client
        except ImportError:
            raise RuntimeError("the ClickHouse bar source needs the live extra: "
                               "pip install 'neuralfusioncore[live]'") from None
        try:  # the driver splits the URL at the first "/", so the user info is percent-encoded first
            client = Client.from_url(encode_userinfo(url))
        except Exception as err:  # ValueError for a bad port or option; no error text may carry the password
            raise ValueError(f"invalid ClickHouse URL {redact_uri(url)}: {scrub(err, uri_secrets(url))}") from None
        source = cls(client, table, **options)
        source._secrets = uri_secrets(url)
        return source

    def close(self) -> None:
        """Close the client's connection (it reconnects on the next query)."""
        self.client.disconnect()

    def __enter__(self) -> ClickHouseBarSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def source(self) -> str:
        """How errors name this source (the table, never the connection or its password)."""
        return f"clickhouse table {self.table}"

    def _select(self) -> str:
        cols = self.columns
        select = ", ".join(f"{quote_identifier(getattr(cols, name))} AS {quote_identifier(name)}"
                           for name in BAR_COLUMNS)
        time_col, symbol_col = quote_identifier(cols.timestamp), quote_identifier(cols.symbol)
        return (f"SELECT {select} FROM {quote_identifier(self.table)} "  # noqa: S608 - identifiers checked above
                f"WHERE {symbol_col} IN %(symbols)s AND {time_col} > %(start)s AND {time_col} <= %(end)s "
                f"ORDER BY {time_col}, {symbol_col}")

    def load(self, symbols: list[str] | tuple[str, ...], start: pd.Timestamp, end: pd.Timestamp,
             every_symbol: bool = True) -> pd.DataFrame:
        """Validated bars of `symbols` whose close time t satisfies start < t <= end.

        A symbol without a single bar in the range is an error naming it (unless `every_symbol` is False: an
        incremental read of the newest bars may find none yet); a query that fails is a SourceUnavailable.
        """
        start, end = _aware(start, "start"), _aware(end, "end")
        if end <= start:
            raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")
        if not symbols:
            raise ValueError("no symbols to load")
        params = {"symbols": tuple(symbols), "start": (start - self._shift).to_pydatetime(),
                  "end": (end - self._shift).to_pydatetime()}
        frame = pd.DataFrame.from_records(self._execute(self._query, params), columns=list(BAR_COLUMNS))
        if not every_symbol:
            frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True) + self._shift
            return validate_bars(frame, source=self.source) if len(frame) else frame
        if frame.empty:
            raise DataError(f"no bars for {list(symbols)} in ({start.isoformat()}, {end.isoformat()}]",
                            source=self.source)
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True) + self._shift
        absent = sorted(set(symbols) - set(frame["symbol"]))
        if absent:
            raise DataError(f"symbols {absent} have no bars in ({start.isoformat()}, {end.isoformat()}]",
                            source=self.source)
        return validate_bars(frame, source=self.source)

    def latest(self, symbols: list[str] | tuple[str, ...]) -> pd.Timestamp:
        """Close time of the newest bar of any of `symbols` (NaT when the table has none): one aggregate query."""
        cols = self.columns
        table, time_col, symbol_col = (quote_identifier(name) for name in (self.table, cols.timestamp, cols.symbol))
        query = f"SELECT max({time_col}), count() FROM {table} WHERE {symbol_col} IN %(symbols)s"  # noqa: S608
        [(newest, count)] = self._execute(query, {"symbols": tuple(symbols)})
        return pd.to_datetime(newest, utc=True) + self._shift if count else pd.NaT

    @property
    def _shift(self) -> pd.Timedelta:
        """What moves a row's time to its candle's close time."""
        return self.candle if self.label == "open" else pd.Timedelta(0)

    def _execute(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            return self.client.execute(query, params)
        except Exception as err:  # the driver's network and server errors share no base class
            first_line = scrub(str(err).splitlines()[0][:300], self._secrets)
            raise SourceUnavailable(f"query failed ({type(err).__name__}: {first_line})",
                                    source=self.source) from None


def _aware(value: pd.Timestamp, name: str) -> pd.Timestamp:
    value = pd.Timestamp(value)
    if value.tzinfo is None:
        raise ValueError(f"{name} {value} has no time zone; pass a UTC timestamp")
    return value.tz_convert("UTC")
