"""News items: read and validate JSONL/parquet files or a MongoDB collection.

Contract (docs/DESIGN.md, data contracts): `id`, `published_at` (UTC), `title`, `body` (optional),
`symbols` (optional list of tickers; when absent they are matched from the universe's aliases).
Extra fields (e.g. the synthetic market's `planted` ground truth) are kept as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuralfusion.data.columns import read_table, standard_columns
from neuralfusion.errors import DataError
from neuralfusion.timeutil import to_utc

__all__ = ["NEWS_COLUMNS", "MongoNewsSource", "NewsFieldMap", "article_text", "read_news", "validate_news"]


NEWS_COLUMNS = ("id", "published_at", "title", "body", "symbols")


def article_text(title: str, body: str) -> str:
    """The text the encoder reads for one article: title, blank line, body."""
    return f"{title.strip()}\n\n{body.strip()}".strip()


def validate_news(frame: pd.DataFrame, source: str, timezone: str | None = None) -> pd.DataFrame:
    """Check the news contract; return a copy sorted by (published_at, id).

    Errors name the source and row: missing id/published_at/title columns, empty or non-string
    text (title and body both empty), naive timestamps (unless `timezone` declares their zone), duplicate
    ids, `symbols` that is not a list of strings. A missing `body` column reads as empty bodies; a missing
    `symbols` value means "match from the text" and is kept as None. In a CSV, `symbols` is text: tickers
    separated by ';', ',', '|' or blanks, or a JSON list.
    """
    missing = [c for c in ("id", "published_at", "title") if c not in frame.columns]
    if missing:
        raise DataError(f"missing fields {missing}; news needs id, published_at, title (body, symbols optional)",
                        source=source)
    out = frame.reset_index(drop=True).copy()
    if "body" not in out.columns:
        out["body"] = ""
    if "symbols" not in out.columns:
        out["symbols"] = None
    if out["id"].isna().any():
        raise DataError("item without id", source=source, row=int(out["id"].isna().to_numpy().argmax()))
    out["id"] = out["id"].astype(str)
    out["published_at"] = to_utc(out["published_at"], column="published_at", source=source, timezone=timezone)
    for column in ("title", "body"):
        values = out[column].where(out[column].notna(), "")
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise DataError(f"{column!r} must be text, got {type(values.iat[bad[0]]).__name__} "
                            f"(id {out['id'].iat[bad[0]]})", source=source, row=bad[0])
        out[column] = values
    empty = [i for i, (t, b) in enumerate(zip(out["title"], out["body"], strict=True)) if not article_text(t, b)]
    if empty:
        raise DataError(f"empty news text (title and body blank), id {out['id'].iat[empty[0]]}; "
                        f"{len(empty)} such items", source=source, row=empty[0])
    out["symbols"] = [_symbol_list(v, source, row) for row, v in enumerate(out["symbols"])]
    dupes = out["id"].duplicated()
    if dupes.any():
        row = int(dupes.to_numpy().argmax())
        raise DataError(f"duplicate news id {out['id'].iat[row]!r}", source=source, row=row)
    # ids are unique by now, so (published_at, id) orders every item; numpy's lexsort costs a fraction of
    # pandas' two-key sort_values, which a served request pays per call
    order = np.lexsort((np.asarray(out["id"].tolist(), dtype=str), out["published_at"].array.asi8))
    return out.take(order).reset_index(drop=True)


def _symbol_list(value: Any, source: str, row: int) -> list[str] | None:
    """Normalise one `symbols` value to a list of tickers, or None when the item has none recorded."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        raise DataError(f"'symbols' must be a list of tickers, got the string {value!r}", source=source, row=row)
    try:
        items = list(value)
    except TypeError:
        raise DataError(f"'symbols' must be a list of tickers, got {value!r}", source=source, row=row) from None
    if not all(isinstance(s, str) and s for s in items):
        raise DataError(f"'symbols' must hold non-empty strings, got {items!r}", source=source, row=row)
    return items


def read_news(path: Path | str, columns: Mapping[str, str] | None = None, timezone: str | None = None) -> pd.DataFrame:
    """News from a JSONL, parquet or CSV file, validated; `columns` maps a vendor's field names to the
    contract's (which also match ignoring case) and `timezone` declares the zone of naive times.

    >>> read_news("data/news.jsonl").iloc[0]
    id                                  n000001
    published_at  2026-01-05 00:07:41+00:00     (datetime64[ns, UTC])
    title         Aurora Mining beats forecasts
    body          Analysts said ...
    symbols       ['AURA']                        (list[str] or None)
    """
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        if not path.exists():
            raise DataError("file not found", source=str(path))
        records = []
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"invalid JSON ({err.msg})", source=str(path), row=line_no) from None
        frame = pd.DataFrame.from_records(records)
    else:
        frame = read_table(path, ("jsonl", "parquet", "csv"), "news")
    if frame.empty:
        raise DataError("no news items", source=str(path))
    frame = standard_columns(frame, NEWS_COLUMNS, columns, source=str(path))
    if "symbols" in frame.columns and ".csv" in [s.lower() for s in path.suffixes]:  # CSV cells are text
        frame = frame.assign(symbols=[_symbols_from_text(v) for v in frame["symbols"]])
    return validate_news(frame, source=str(path), timezone=timezone)


def _symbols_from_text(value: Any) -> Any:
    """A CSV cell of tickers ('ON;AAPL', 'ON, AAPL', '["ON"]') as a list; blank cells mean none recorded."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value  # validate_news names the row
    return [part for part in re.split(r"[;,|\s]+", text) if part]


@dataclass(frozen=True)
class NewsFieldMap:
    """Where each contract field lives in a MongoDB document (dotted paths descend into lists).

    The defaults match the seed's collection: `{"_id", "releasedAt", "title", "content",
    "assets": [{"symbol": "BTC"}, ...]}`.
    """

    id: str = "_id"
    published_at: str = "releasedAt"
    title: str = "title"
    body: str = "content"
    symbols: str = "assets.symbol"


class MongoNewsSource:
    """News from a MongoDB collection (pymongo), queried by a time range on the mapped timestamp field.

    The collection is injected, so tests and callers choose the client, database and credentials.
    """

    def __init__(self, collection: Any, fields: NewsFieldMap | None = None) -> None:
        self.collection = collection
        self.fields = fields or NewsFieldMap()

    def ensure_index(self) -> None:
        """Index the timestamp field so incremental loads stay cheap."""
        self.collection.create_index([(self.fields.published_at, 1)])

    def load(self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> pd.DataFrame:
        """Items with start < published_at <= end (open start, so incremental runs never reread the last item)."""
        bounds: dict[str, Any] = {}
        if start is not None:
            bounds["$gt"] = pd.Timestamp(start).to_pydatetime()
        if end is not None:
            bounds["$lte"] = pd.Timestamp(end).to_pydatetime()
        query = {self.fields.published_at: bounds} if bounds else {}
        cursor = self.collection.find(query).sort(self.fields.published_at, 1)
        rows = [self._to_record(doc) for doc in cursor]
        source = f"mongodb collection {getattr(self.collection, 'full_name', self.collection)!r}"
        frame = pd.DataFrame.from_records(rows, columns=list(NEWS_COLUMNS))
        if frame.empty:
            return frame
        if frame["published_at"].map(lambda v: getattr(v, "tzinfo", 1) is None).any():
            # pymongo returns naive datetimes that are UTC by BSON's definition, unless tz_aware=True
            frame["published_at"] = pd.to_datetime(frame["published_at"]).dt.tz_localize("UTC")
        return validate_news(frame, source=source)

    def _to_record(self, doc: dict[str, Any]) -> dict[str, Any]:
        fields = self.fields
        symbols = _dotted(doc, fields.symbols)
        return {
            "id": _dotted(doc, fields.id),
            "published_at": _dotted(doc, fields.published_at),
            "title": _dotted(doc, fields.title),
            "body": _dotted(doc, fields.body),
            "symbols": None if symbols is None else list(_flatten(symbols)),
        }


def _dotted(doc: Any, path: str) -> Any:
    """Follow a dotted path through dicts, mapping over lists: 'assets.symbol' -> ['BTC', 'ETH']."""
    value = doc
    for key in path.split("."):
        if isinstance(value, list):
            value = [item.get(key) for item in value if isinstance(item, dict)]
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
    return value


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    elif value is not None:
        yield value
