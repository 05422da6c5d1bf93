"""Client helpers: build a /predict body from bars and news, send it over HTTP or gRPC.

Used by `nfc demo` and the serving tests, so both speak to the service exactly as a user's client would.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx
import pandas as pd

from neuralfusion.calendar import BarClock
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc

__all__ = ["predict_grpc", "predict_http", "predict_payload", "request_to_proto", "wait_until_ready"]


def predict_payload(bars: pd.DataFrame, news: pd.DataFrame, end: pd.Timestamp, n_bars: int,
                    step: pd.Timedelta | BarClock, request_id: str | None = None,
                    news_bars: int | None = None) -> dict[str, Any]:
    """A /predict body: every symbol's bars of the `n_bars` grid bars closing at `end` (bars of `step` round the
    clock, or of the model's calendar), and the news published during them (during the last `news_bars` only,
    when given: the model reads the news of its lookback, and a daily window's warm-up spans months of news), as
    a client would send them (ISO timestamps)."""
    clock = BarClock.of(step)
    start = clock.earlier(end, n_bars - 1)
    window = bars[(bars["timestamp"] >= start) & (bars["timestamp"] <= end)]
    after = clock.earlier(end, n_bars if news_bars is None else min(news_bars, n_bars))
    items = news[(news["published_at"] > after) & (news["published_at"] <= end)]
    return {
        "bars": [{**row, "timestamp": row["timestamp"].isoformat()} for row in
                 window[["timestamp", "symbol", "open", "high", "low", "close", "volume"]].to_dict("records")],
        "news": [{"id": row["id"], "published_at": row["published_at"].isoformat(), "title": row["title"],
                  "body": row["body"] or "", "symbols": row["symbols"]}
                 for row in items[["id", "published_at", "title", "body", "symbols"]].to_dict("records")],
        "request_id": request_id,
    }


def request_to_proto(payload: dict[str, Any]) -> pb.PredictRequest:
    """The HTTP body as a gRPC request; `symbols: None` (match aliases) becomes has_symbols=false."""
    return pb.PredictRequest(
        bars=[pb.Bar(**bar) for bar in payload["bars"]],
        news=[pb.NewsItem(id=n["id"], published_at=n["published_at"], title=n["title"], body=n["body"],
                          symbols=n["symbols"] or [], has_symbols=n["symbols"] is not None) for n in payload["news"]],
        request_id=payload["request_id"] or "")


def predict_http(url: str, payload: dict[str, Any], api_key: str | None = None, timeout_s: float = 60) -> dict:
    """POST /predict; raises httpx.HTTPStatusError with the service's message on a 4xx/5xx."""
    headers = {"x-api-key": api_key} if api_key else {}
    response = httpx.post(f"{url.rstrip('/')}/predict", json=payload, headers=headers, timeout=timeout_s)
    response.raise_for_status()
    return response.json()


def predict_grpc(target: str, payload: dict[str, Any], api_key: str | None = None,
                 timeout_s: float = 60) -> pb.Prediction:
    """PortfolioService.Predict over an insecure channel (loopback or a trusted network)."""
    import grpc

    metadata = [("x-api-key", api_key)] if api_key else []
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.PortfolioServiceStub(channel).Predict(request_to_proto(payload), metadata=metadata,
                                                             timeout=timeout_s)
    return reply.prediction


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
