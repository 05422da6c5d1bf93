"""The per-item rules of a predict request, checked over whole arrays: one rule set for every body format.

Each body (/predict's JSON rows, /predict/columns' JSON arrays, /predict/arrow's Arrow stream) is read into
`RequestColumns`, one array per field, and `check_columns` applies the rules of the row models in
serving/schemas.py to the arrays at once (numpy and pandas, no object per bar): the request limits (NFC_MAX_BARS,
NFC_MAX_NEWS, NFC_MAX_TEXT_CHARS), aware times inside [EARLIEST_TIME, LATEST_TIME), symbol and id sizes, finite
positive prices, high/low bounding open/close, finite volume >= 0, news with text and at most
MAX_SYMBOLS_PER_ITEM tickers. A violated rule is a RequestError naming the row and its symbol (or news id), e.g.
`bars row 17 (AURX at 2026-01-05T00:06:00Z): high 99.0 and low 98.5 must bound open 99.2 and close 99.1`.
The checked arrays then go through the data contracts' `validate_bars` and `validate_news` (duplicates, order),
giving the `RequestFrames` that the model checks, the preparation and the inputs hash read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from neuralfusion.data.bars import BAR_COLUMNS, PRICE_COLUMNS, validate_bars
from neuralfusion.data.news import NEWS_COLUMNS, article_text, validate_news
from neuralfusion.errors import DataError
from serving.errors import RequestError
from serving.memo import BoundedMemo
from serving.schemas import (
    EARLIEST_TIME,
    LATEST_TIME,
    MAX_ID_CHARS,
    MAX_SYMBOL_CHARS,
    MAX_SYMBOLS_PER_ITEM,
    RequestLimits,
)
from serving.store import MAX_KEY_CHARS

__all__ = ["BAR_VALUES", "NEWS_MEMO_SIZE", "RequestColumns", "RequestFrames", "bar_rule_breaks", "check_columns",
           "check_news_count", "checked_news", "request_bars", "utc_text"]

EARLIEST_NS = pd.Timestamp(EARLIEST_TIME).value
LATEST_NS = pd.Timestamp(LATEST_TIME).value
# an RFC 3339 time ends with its offset: Z, +01:00 (or +0100); anything else is naive
_OFFSET = r"(?:[Zz]|[+-]\d\d:?\d\d)$"
_RANGE = f"{EARLIEST_TIME.isoformat()} .. {LATEST_TIME.isoformat()}"
BAR_VALUES = (*PRICE_COLUMNS, "volume")  # the numeric columns of a bar, in the contract's order
TIME_MEMO_SIZE = 16_384  # time strings a process remembers (`_utc_ns`): a hundred windows' bar times
NEWS_MEMO_SIZE = 256  # checked news sets a process remembers (`checked_news`): a window's few items each
_TIME_MEMO: BoundedMemo[str, int] = BoundedMemo(TIME_MEMO_SIZE)
_NEWS_MEMO: BoundedMemo[tuple[Any, ...], pd.DataFrame] = BoundedMemo(NEWS_MEMO_SIZE)


@dataclass(frozen=True)
class RequestColumns:
    """A predict request as one array per field, as its body carried it, before any check.

    `bars` maps each of BAR_COLUMNS to an array of one value per bar, `news` each of NEWS_COLUMNS to one value per
    item. Times are int64 nanoseconds since the epoch (UTC) or RFC 3339 strings; news `symbols` values are lists
    of tickers or None (match the text against the universe's aliases).
    """

    bars: Mapping[str, Any]
    news: Mapping[str, Any]
    request_id: str | None = None


@dataclass(frozen=True)
class RequestFrames:
    """A checked request in the long frames of the data contracts (docs/DESIGN.md): bars sorted by (timestamp,
    symbol), news by (published_at, id), UTC times; what the model checks and the inputs hash read."""

    bars: pd.DataFrame
    news: pd.DataFrame
    request_id: str | None = None


def utc_text(ns: int) -> str:
    """2026-01-05T00:06:00Z: a time as messages show it."""
    return pd.Timestamp(ns, tz="UTC").isoformat().replace("+00:00", "Z")


def check_columns(columns: RequestColumns, limits: RequestLimits) -> RequestFrames:
    """The request's frames once every per-item rule holds; the first violated rule is a RequestError naming the
    row. Counts are checked first, so an oversize request costs no more than reading its body."""
    n_bars = _length(columns.bars, BAR_COLUMNS, BAR_COLUMNS, "bars")
    n_news = _length(columns.news, NEWS_COLUMNS, ("id", "published_at"), "news")
    if n_bars == 0:
        raise RequestError("no bars: send the bars of the model's window, one value per bar in each column")
    if n_bars > limits.max_bars:
        raise RequestError(f"{n_bars} bars are over the limit of {limits.max_bars} (NFC_MAX_BARS): send only the "
                           "model's window")
    check_news_count(n_news, limits)
    if columns.request_id is not None and not 0 < len(columns.request_id) <= MAX_KEY_CHARS:
        raise RequestError(f"request_id must have 1 to {MAX_KEY_CHARS} characters, got {len(columns.request_id)}")
    return RequestFrames(_checked_bars(columns.bars, n_bars), checked_news(columns.news, n_news, limits),
                         columns.request_id)


def check_news_count(n: int, limits: RequestLimits) -> None:
    """At most NFC_MAX_NEWS items a request."""
    if n > limits.max_news:
        raise RequestError(f"{n} news items are over the limit of {limits.max_news} (NFC_MAX_NEWS): send only "
                           "the news of the model's window")


def checked_news(news: Mapping[str, Any], n: int, limits: RequestLimits) -> pd.DataFrame:
    """The news columns of a request (`n` items, counted within NFC_MAX_NEWS) as the contract's validated frame;
    the first violated rule is a RequestError naming the item.

    Consecutive windows carry mostly the same few items, and checking a handful costs ~2 ms of pandas whatever
    their number, so a process remembers the last NEWS_MEMO_SIZE checked sets by their content: a set seen before
    (the same values in every column, the same text limit) is one dictionary lookup. Only checked sets are
    remembered; the frame handed out is shared, and read only (pandas copies on write)."""
    key = _news_key(news, n, limits)
    held = _NEWS_MEMO.get(key) if key is not None else None
    if held is not None:
        return held
    try:
        frame = validate_news(_checked_news(news, n, limits), source="request news")
    except DataError as err:
        raise RequestError(str(err)) from None
    if key is not None:
        _NEWS_MEMO.put(key, frame)
    return frame


def _news_key(news: Mapping[str, Any], n: int, limits: RequestLimits) -> tuple[Any, ...] | None:
    """Every value of the news columns that the checks read, as a dictionary key; None when one is not hashable
    (then the set is checked without the memo)."""
    try:
        key = (limits.max_text_chars, n, *(None if name not in news else tuple(
            tuple(v) if isinstance(v, list | np.ndarray) else v for v in news[name]) for name in NEWS_COLUMNS))
        hash(key)
    except TypeError:
        return None
    return key


def request_bars(ns: np.ndarray, symbol: pd.Series, values: Mapping[str, np.ndarray],
                 in_order: bool = False) -> pd.DataFrame:
    """Bars whose per-bar rules hold (`bar_rule_breaks` marks none) as the contract's validated frame: int64 UTC
    nanoseconds, symbols, and the PRICE_COLUMNS and volume arrays. Frame-level rules (duplicates) are a
    RequestError; `in_order`: the caller built the bars sorted by time and symbol without duplicates, so they are
    the validated frame already."""
    frame = pd.DataFrame({"timestamp": pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC"),
                          "symbol": symbol.array, **{name: values[name] + 0.0 for name in BAR_VALUES}})  # -0.0 -> 0.0
    if in_order:
        frame.attrs["widened_bars"] = 0  # every rule held exactly: nothing to widen
        return frame
    try:
        return validate_bars(frame, source="request bars")
    except DataError as err:
        raise RequestError(str(err)) from None


def bar_rule_breaks(ns: np.ndarray, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """Which bars break a per-bar rule (time range, prices, volume, high/low): what `check_columns` refuses, as a
    mask, for callers that route such bars elsewhere rather than refuse them."""
    bad = (ns < EARLIEST_NS) | (ns >= LATEST_NS)
    for broken, _ in _bar_rules(values):
        bad |= broken
    return bad


def _length(table: Mapping[str, Any], names: Sequence[str], required: Sequence[str], what: str) -> int:
    """The common length of a table's columns (0 for no columns); an unknown column, a missing required one or
    columns of different lengths are a RequestError."""
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise RequestError(f"{what} has unknown columns {unknown}; {what} columns are {list(names)}")
    lengths = {name: len(table[name]) for name in names if name in table}
    if not lengths:
        return 0
    missing = [name for name in required if name not in table]
    if missing:
        raise RequestError(f"{what} lack the columns {missing}; {what} need {list(required)}")
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise RequestError(f"{what} columns have different lengths ({detail}): send one value per row in each")
    return next(iter(lengths.values()))


class _Rows:
    """Raises for the first row a rule refuses, naming the row, what it is, and how many rows share the problem."""

    def __init__(self, what: str, label: Callable[[int], str]) -> None:
        self.what = what
        self.label = label

    def check(self, bad: np.ndarray, message: Callable[[int], str]) -> None:
        if bad.any():
            row = int(bad.argmax())
            count = int(bad.sum())
            more = f" ({count} rows in all)" if count > 1 else ""
            raise RequestError(f"{self.what} row {row} ({self.label(row)}): {message(row)}{more}")


def _checked_bars(bars: Mapping[str, Any], n: int) -> pd.DataFrame:
    symbol = pd.Series(bars["symbol"], dtype="str") if n else pd.Series([], dtype="str")
    ns = _utc_ns(bars["timestamp"], "timestamp", _Rows("bars", lambda row: str(symbol.iat[row])))
    size = symbol.str.len().to_numpy(dtype=np.float64, na_value=np.nan)
    _Rows("bars", lambda row: f"at {utc_text(ns[row])}").check(
        ~((size >= 1) & (size <= MAX_SYMBOL_CHARS)),
        lambda row: f"symbol {symbol.iat[row]!r} must have 1 to {MAX_SYMBOL_CHARS} characters")
    rows = _Rows("bars", lambda row: f"{symbol.iat[row]} at {utc_text(ns[row])}")
    values = {c: np.asarray(bars[c], dtype=np.float64) for c in BAR_VALUES}
    for broken, message in _bar_rules(values):
        rows.check(broken, message)
    code = pd.factorize(symbol, sort=True)[0]
    # bars sent sorted by time and symbol without a repeat (as clients send them) are the validated frame already
    in_order = bool(np.all((ns[1:] > ns[:-1]) | ((ns[1:] == ns[:-1]) & (code[1:] > code[:-1]))))
    return request_bars(ns, symbol, values, in_order=in_order)


def _bar_rules(values: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, Callable[[int], str]]]:
    """The per-bar value rules in the order they are checked: (bars breaking it, what is wrong with a row)."""
    rules: list[tuple[np.ndarray, Callable[[int], str]]] = [
        (~(np.isfinite(values[name]) & (values[name] > 0)),
         lambda row, name=name: f"{name} {values[name][row]} must be a finite number > 0")
        for name in PRICE_COLUMNS]
    volume = values["volume"]
    rules.append((~(np.isfinite(volume) & (volume >= 0)),
                  lambda row: f"volume {volume[row]} must be a finite number >= 0"))
    o, h, lo, c = (values[name] for name in PRICE_COLUMNS)
    rules.append(((h < np.maximum(o, c)) | (lo > np.minimum(o, c)),
                  lambda row: f"high {h[row]} and low {lo[row]} must bound open {o[row]} and close {c[row]}"))
    return rules


def _checked_news(news: Mapping[str, Any], n: int, limits: RequestLimits) -> pd.DataFrame:
    """News are few (NFC_MAX_NEWS), and their text rules must match the row model's exactly (str.strip), so
    these rules run per item."""
    ids = [str(v) if v is not None else "" for v in news.get("id", [])]
    rows = _Rows("news", lambda row: f"id {ids[row]!r}")
    size = np.fromiter((len(v) for v in ids), np.int64, n)
    rows.check((size < 1) | (size > MAX_ID_CHARS), lambda row: f"id must have 1 to {MAX_ID_CHARS} characters")
    ns = _utc_ns(news.get("published_at", []), "published_at", rows)
    title = _texts(news.get("title"), n, "title", rows)
    body = _texts(news.get("body"), n, "body", rows)
    chars = np.fromiter((len(article_text(t, b)) for t, b in zip(title, body, strict=True)), np.int64, n)
    rows.check(chars == 0, lambda row: f"news item {ids[row]!r} has no text: title and body are both blank")
    rows.check(chars > limits.max_text_chars,
               lambda row: f"{chars[row]} characters of text are over the limit of {limits.max_text_chars} "
                           "(NFC_MAX_TEXT_CHARS): shorten its body")
    symbols = list(news.get("symbols", [None] * n))
    bad = np.fromiter((_symbols_problem(v) is not None for v in symbols), bool, n)
    rows.check(bad, lambda row: str(_symbols_problem(symbols[row])))
    return pd.DataFrame({"id": pd.Series(ids, dtype=object), "published_at": pd.to_datetime(ns, utc=True),
                         "title": pd.Series(title, dtype=object), "body": pd.Series(body, dtype=object),
                         "symbols": pd.Series([None if v is None else list(v) for v in symbols], dtype=object)})


def _texts(values: Sequence[Any] | None, n: int, name: str, rows: _Rows) -> list[str]:
    """A text column: missing means blank, null values are blank (as the row model's defaults)."""
    if values is None:
        return [""] * n
    texts = ["" if v is None else v for v in values]
    rows.check(np.fromiter((not isinstance(v, str) for v in texts), bool, n), lambda row: f"{name} must be text")
    return texts


def _symbols_problem(value: Any) -> str | None:
    """What is wrong with one item's `symbols` (a list of tickers, or None), or None."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        return f"symbols must be a list of tickers or null, got {value!r}"
    if len(value) > MAX_SYMBOLS_PER_ITEM:
        return f"symbols has {len(value)} tickers, at most {MAX_SYMBOLS_PER_ITEM} are allowed"
    for ticker in value:
        if not isinstance(ticker, str) or not 0 < len(ticker) <= MAX_SYMBOL_CHARS:
            return f"symbols must hold tickers of 1 to {MAX_SYMBOL_CHARS} characters, got {ticker!r}"
    return None


def _utc_ns(values: Any, name: str, rows: _Rows) -> np.ndarray:
    """int64 UTC nanoseconds of a time column (epoch nanoseconds, or RFC 3339 strings with an offset), each inside
    [EARLIEST_TIME, LATEST_TIME). Strings are parsed once per distinct value, and a process remembers the last
    TIME_MEMO_SIZE strings it found good: consecutive windows share all their bar times but one, and pandas parses
    a window's 160 distinct times in ~1.3 ms."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":  # read from Arrow: UTC, any unit
        rows.check(np.isnat(values), lambda row: f"{name} is missing")
        # compared in the array's own unit: a year-9999 time in seconds overflows as nanoseconds
        low, high = (np.datetime64(t.replace(tzinfo=None)).astype(values.dtype) for t in (EARLIEST_TIME, LATEST_TIME))
        rows.check((values < low) | (values >= high), lambda row: f"{name} {values[row]}Z is outside {_RANGE}")
        return values.astype("datetime64[ns]").view(np.int64)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":  # epoch nanoseconds
        ns = values.astype(np.int64)
        rows.check((ns < EARLIEST_NS) | (ns >= LATEST_NS),
                   lambda row: f"{name} {ns[row]} (epoch nanoseconds) is outside {_RANGE}")
        return ns
    index: dict[Any, int] = {}  # each distinct value once: a window repeats each bar time for every symbol
    codes = np.fromiter((index.setdefault(value, len(index)) for value in values), dtype=np.intp, count=len(values))
    distinct = list(index)
    stamps = np.zeros(len(distinct), dtype=np.int64)
    held = _TIME_MEMO.found(value for value in distinct if isinstance(value, str))
    for value, ns in held.items():
        stamps[index[value]] = ns
    new = [i for i, value in enumerate(distinct) if value not in held]
    if new:
        stamps[new] = _checked_times(pd.Series([distinct[i] for i in new], dtype="str"), np.asarray(new), codes,
                                     name, rows)
        _TIME_MEMO.put_many((distinct[i], int(stamps[i])) for i in new)
    return stamps[codes]


def _checked_times(text: pd.Series, which: np.ndarray, codes: np.ndarray, name: str, rows: _Rows) -> np.ndarray:
    """UTC nanoseconds of `text`, the distinct values `which` among those `codes` maps the column's rows to, once
    each is there, aware and inside the range; else a RequestError naming the first row that is not."""
    def refused(bad: np.ndarray, message: Callable[[str], str]) -> None:
        flags = np.zeros(int(codes.max()) + 1, dtype=bool)  # one per distinct value
        flags[which] = bad
        rows.check(flags[codes], lambda row: message(text.iat[int(np.searchsorted(which, codes[row]))]))

    refused(text.isna().to_numpy(), lambda value: f"{name} is missing")
    aware = text.str.contains(_OFFSET, regex=True).to_numpy(dtype=bool)
    refused(~aware, lambda value: f"{name} {value!r} has no time zone; write ISO 8601 with an offset, "
                                  "e.g. 2026-01-05T14:03:00Z")
    parsed = _parsed(text)
    stamps = parsed.array.asi8  # NaT: not a time, or beyond pandas' range (years 1677..2262)
    refused(parsed.isna().to_numpy() | (stamps < EARLIEST_NS) | (stamps >= LATEST_NS),
            lambda value: _time_problem(name, value))
    return stamps


def _parsed(text: pd.Series) -> pd.Series:
    """UTC nanosecond times of RFC 3339 strings, NaT where a string is no time or beyond pandas' range."""
    try:
        return pd.to_datetime(text, format="ISO8601", utc=True).dt.as_unit("ns")
    except (ValueError, TypeError, OverflowError):  # a bad value fails the whole parse: only then one at a time
        return pd.Series([_one_time(value) for value in text], dtype="datetime64[ns, UTC]")


def _one_time(value: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(value).tz_convert("UTC").as_unit("ns")
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def _time_problem(name: str, value: str) -> str:
    """Why one time string was refused: not a time at all, or outside the range (the row model's words)."""
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return f"{name} {value!r} is not an RFC 3339 time with an offset, e.g. 2026-01-05T14:03:00Z"
    return f"{name} {value} is outside {_RANGE}"
