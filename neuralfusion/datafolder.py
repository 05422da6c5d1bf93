"""Writing a data folder (bars.parquet, news.jsonl, universe.json, ...) so that readers never see half a file.

Shared by the synthetic market, `nfc data import` and `nfc data export`: the same bar schema, the same
news lines and the same JSON layout wherever a data folder is made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["BAR_SCHEMA", "DATA_FILES", "json_bytes", "news_records", "write_bars", "write_files_atomic",
           "write_news"]

BAR_SCHEMA = pa.schema([("timestamp", pa.timestamp("ns", tz="UTC")), ("symbol", pa.string())]
                       + [(c, pa.float64()) for c in ("open", "high", "low", "close", "volume")])
DATA_FILES = ("bars.parquet", "news.jsonl", "universe.json")


def json_bytes(data: Any) -> bytes:
    """Sorted, indented JSON with a final newline: the same data always gives the same bytes."""
    return (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()


def write_bars(bars: pd.DataFrame, path: Path) -> None:
    """Bars in the contract's columns as zstd parquet with fixed writer options (reproducible bytes)."""
    table = pa.Table.from_pandas(bars[list(BAR_SCHEMA.names)], schema=BAR_SCHEMA, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(), path, compression="zstd", compression_level=3,
                   use_dictionary=["symbol"])


def write_news(records: list[dict[str, Any]], path: Path) -> None:
    """One JSON object per line, keys sorted."""
    path.write_bytes("".join(json.dumps(item, sort_keys=True) + "\n" for item in records).encode())


def news_records(news: pd.DataFrame) -> list[dict[str, Any]]:
    """Validated news as JSON-ready records: published_at as ISO 8601 UTC ('Z'), extra fields kept."""
    stamps = news["published_at"].dt.tz_convert("UTC")
    records = []
    for row, record in enumerate(news.to_dict(orient="records")):
        stamp = stamps.iat[row]
        text = stamp.strftime("%Y-%m-%dT%H:%M:%S") + (f".{stamp.microsecond:06d}" if stamp.microsecond else "") + "Z"
        records.append({key: _plain(value) for key, value in record.items()} | {"published_at": text})
    return records


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as the JSON types they hold."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_files_atomic(out: Path, writers: dict[str, Callable[[Path], None]]) -> Path:
    """Run each writer on a temporary name in `out`, then rename all into place once every write succeeded,
    so a crash never leaves a half-written file."""
    out.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            staged[name] = out / f".{name}.{os.getpid()}.tmp"  # same folder, so os.replace is atomic
            write(staged[name])
        for name, tmp in staged.items():
            os.replace(tmp, out / name)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return out
