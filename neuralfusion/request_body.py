"""The Arrow IPC body of POST /predict/arrow: its layout and a writer, shared by the service (serving/columns.py
reads it) and the Python client (neuralfusion.client writes it); pyarrow only.

One IPC stream holding one record batch of one row, the request: `bars` a list of structs (timestamp[ns, UTC],
symbol, open, high, low, close, volume), `news` a list of structs (id, published_at timestamp[ns, UTC], title,
body, symbols list<string>, null: match aliases) and `request_id` (string, null: one is assigned).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from neuralfusion.data.bars import PRICE_COLUMNS

__all__ = ["ARROW_MEDIA_TYPE", "ARROW_SCHEMA", "arrow_body"]

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
_TIME = pa.timestamp("ns", tz="UTC")
ARROW_SCHEMA = pa.schema([
    ("bars", pa.list_(pa.struct([("timestamp", _TIME), ("symbol", pa.string()),
                                 *((name, pa.float64()) for name in (*PRICE_COLUMNS, "volume"))]))),
    ("news", pa.list_(pa.struct([("id", pa.string()), ("published_at", _TIME), ("title", pa.string()),
                                 ("body", pa.string()), ("symbols", pa.list_(pa.string()))]))),
    ("request_id", pa.string()),
])


def arrow_body(bars: pd.DataFrame, news: pd.DataFrame, request_id: str | None = None) -> bytes:
    """A /predict/arrow body (ARROW_SCHEMA) from long bar and news frames (the data contracts' columns)."""
    bar_fields = ARROW_SCHEMA.field("bars").type.value_type
    news_fields = ARROW_SCHEMA.field("news").type.value_type
    bar_struct = pa.StructArray.from_arrays(
        [pa.array(pd.DatetimeIndex(bars["timestamp"]).tz_convert("UTC"), _TIME), pa.array(bars["symbol"].astype(str),
                                                                                          pa.string()),
         *(pa.array(bars[c].to_numpy(np.float64)) for c in (*PRICE_COLUMNS, "volume"))], fields=list(bar_fields))
    news_struct = pa.StructArray.from_arrays(
        [pa.array(news["id"].astype(str), pa.string()),
         pa.array(pd.DatetimeIndex(news["published_at"]).tz_convert("UTC"), _TIME),
         pa.array(news["title"].fillna(""), pa.string()), pa.array(news["body"].fillna(""), pa.string()),
         pa.array([None if s is None else list(s) for s in news["symbols"]], pa.list_(pa.string()))],
        fields=list(news_fields))
    batch = pa.record_batch([
        pa.ListArray.from_arrays(pa.array([0, len(bars)], pa.int32()), bar_struct),
        pa.ListArray.from_arrays(pa.array([0, len(news)], pa.int32()), news_struct),
        pa.array([request_id], pa.string())], schema=ARROW_SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ARROW_SCHEMA) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()
