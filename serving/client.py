"""Serving-side client helpers: build a predict body from bars and news (JSON rows, JSON columns or Arrow), send it
over gRPC, wait for readiness.

Used by `nfc demo`, the benchmarks and the serving tests. HTTP calls go through the project's Python client,
`neuralfusion.client` (retries, idempotent request ids), as a user's would. Pass `news_bars` = the model's lookback
(/model_info `lookback`) to send only the news the model reads.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx
import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp

from neuralfusion.calendar import BarClock
from neuralfusion.data.bars import PRICE_COLUMNS
from serving.columns import ARROW_MEDIA_TYPE, arrow_body, columns_body
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc

__all__ = ["arrow_payload", "columns_payload", "columns_to_proto", "predict_grpc",
           "predict_http", "predict_payload", "request_to_proto", "wait_until_ready", "window_frames"]


def window_frames(bars: pd.DataFrame, news: pd.DataFrame, end: pd.Timestamp, n_bars: int,
                  step: pd.Timedelta | BarClock, news_bars: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every symbol's bars of the `n_bars` grid bars closing at `end` (bars of `step` round the clock, or of the
    model's calendar), and the news published during them, or during the last `news_bars` only: the model reads
    the news of its lookback, and a window's feature warm-up (a daily window's spans months) adds only bytes."""
    clock = BarClock.of(step)
    start = clock.earlier(end, n_bars - 1)
    window = bars[(bars["timestamp"] >= start) & (bars["timestamp"] <= end)]
    after = clock.earlier(end, n_bars if news_bars is None else min(news_bars, n_bars))
    return window, news[(news["published_at"] > after) & (news["published_at"] <= end)]


def predict_payload(bars: pd.DataFrame, news: pd.DataFrame, end: pd.Timestamp, n_bars: int,
                    step: pd.Timedelta | BarClock, request_id: str | None = None,
                    news_bars: int | None = None) -> dict[str, Any]:
    """A /predict body (JSON rows, ISO timestamps) of `window_frames`' bars and news."""
    window, items = window_frames(bars, news, end, n_bars, step, news_bars)
    return {
        "bars": [{**row, "timestamp": row["timestamp"].isoformat()} for row in
                 window[["timestamp", "symbol", "open", "high", "low", "close", "volume"]].to_dict("records")],
        "news": [{"id": row["id"], "published_at": row["published_at"].isoformat(), "title": row["title"],
                  "body": row["body"] or "", "symbols": row["symbols"]}
                 for row in items[["id", "published_at", "title", "body", "symbols"]].to_dict("records")],
        "request_id": request_id,
    }


def columns_payload(bars: pd.DataFrame, news: pd.DataFrame, end: pd.Timestamp, n_bars: int,
                    step: pd.Timedelta | BarClock, request_id: str | None = None,
                    news_bars: int | None = None) -> dict[str, Any]:
    """A /predict/columns body (one array per field) of `window_frames`' bars and news."""
    return columns_body(*window_frames(bars, news, end, n_bars, step, news_bars), request_id)


def arrow_payload(bars: pd.DataFrame, news: pd.DataFrame, end: pd.Timestamp, n_bars: int,
                  step: pd.Timedelta | BarClock, request_id: str | None = None, news_bars: int | None = None) -> bytes:
    """A /predict/arrow body (an Arrow IPC stream, serving/columns.py) of `window_frames`' bars and news."""
    return arrow_body(*window_frames(bars, news, end, n_bars, step, news_bars), request_id)


def _timestamp(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromJsonString(text)
    return stamp


def request_to_proto(payload: dict[str, Any]) -> pb.PredictRequest:
    """The HTTP body as a gRPC request (RFC 3339 times as Timestamps); `symbols: None` (match aliases) becomes
    has_symbols=false."""
    return pb.PredictRequest(
        bars=[pb.Bar(**{**bar, "timestamp": _timestamp(bar["timestamp"])}) for bar in payload["bars"]],
        news=[pb.NewsItem(id=n["id"], published_at=_timestamp(n["published_at"]), title=n["title"], body=n["body"],
                          symbols=n["symbols"] or [], has_symbols=n["symbols"] is not None) for n in payload["news"]],
        request_id=payload["request_id"] or "")


def columns_to_proto(body: dict[str, Any]) -> pb.PredictColumnsRequest:
    """A /predict/columns body (RFC 3339 or epoch-nanosecond times) as a PredictColumns request."""
    def nanoseconds(times: list[Any]) -> list[int]:
        if not times or not isinstance(times[0], str):
            return list(times)
        return pd.to_datetime(times, utc=True, format="ISO8601").as_unit("ns").asi8.tolist()

    bars, news = body["bars"], body.get("news") or {}
    return pb.PredictColumnsRequest(
        bars=pb.BarColumns(timestamp=nanoseconds(bars["timestamp"]), symbol=bars["symbol"],
                           **{name: bars[name] for name in (*PRICE_COLUMNS, "volume")}),
        news=pb.NewsColumns(id=news.get("id", []), published_at=nanoseconds(news.get("published_at", [])),
                            title=news.get("title") or [], body=news.get("body") or [],
                            symbols=[pb.SymbolList(symbols=s or [], has_symbols=s is not None)
                                     for s in news.get("symbols") or []]),
        request_id=body.get("request_id") or "")


def predict_http(url: str, payload: dict[str, Any] | bytes, api_key: str | None = None, timeout_s: float = 60,
                 route: str = "/predict") -> dict:
    """POST a body: a JSON body to `route` (/predict for rows, /predict/columns for columns), an Arrow stream
    (bytes) to /predict/arrow. Raises httpx.HTTPStatusError with the service's message on a 4xx/5xx."""
    headers = {"x-api-key": api_key} if api_key else {}
    if isinstance(payload, bytes):
        response = httpx.post(f"{url.rstrip('/')}/predict/arrow", content=payload, timeout=timeout_s,
                              headers={**headers, "content-type": ARROW_MEDIA_TYPE})
    else:
        response = httpx.post(f"{url.rstrip('/')}{route}", json=payload, headers=headers, timeout=timeout_s)
    response.raise_for_status()
    return response.json()


def predict_grpc(target: str, payload: dict[str, Any], api_key: str | None = None,
                 timeout_s: float = 60) -> pb.Prediction:
    """PortfolioService.Predict (a /predict body) or PredictColumns (a /predict/columns body) over an insecure
    channel (loopback or a trusted network)."""
    import grpc

    metadata = [("x-api-key", api_key)] if api_key else []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PortfolioServiceStub(channel)
        if isinstance(payload["bars"], dict):  # a /predict/columns body
            return stub.PredictColumns(columns_to_proto(payload), metadata=metadata, timeout=timeout_s)
        return stub.Predict(request_to_proto(payload), metadata=metadata, timeout=timeout_s)


def wait_until_ready(url: str, process: subprocess.Popen[Any], timeout_s: float) -> bool:
    """Poll GET /readyz until it answers 200 (True), or the server process exits or time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url.rstrip('/')}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False
