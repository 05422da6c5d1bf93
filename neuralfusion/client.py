"""Python client of the portfolio service's HTTP API, sync (`Client`) and async (`AsyncClient`); needs httpx only.

    from neuralfusion.client import Client

    with Client("http://127.0.0.1:3000", api_key="...") as client:    # or Client.from_env(url): NFC_API_KEY
        prediction = client.predict(bars, news)      # pandas frames or lists of row dicts
        prediction.weights["AURX"], prediction.as_of, prediction.stored, prediction.duplicate
        client.latest()                              # the newest stored prediction
        for p in client.history(start, end):         # stored predictions, newest first, page after page
            ...
        client.model_info().bars_needed
        client.predict_at(as_of)                     # by reference: the service reads the bars and news itself

`predict` sends an Arrow IPC stream to /predict/arrow (neuralfusion/request_body.py), the body the service reads
cheapest. `AsyncClient` has the same methods, awaited (`history` is an async iterator). Answers are typed (Prediction,
ModelInfo), refusals are exceptions by status (BadRequest, Unauthorized, NotFound, RequestTimeout, Conflict,
PayloadTooLarge, ServiceUnavailable; ClientError and ServerError for the families) carrying the service's
message.

Retries: a 503, a lost connection or a timeout is tried again, up to `retries` more times, after the server's
Retry-After or else an exponential backoff. Every predict carries a request id (a uuid4 when the caller gives
none), the same on every attempt: the service stores one prediction per inputs and answers a repeat with the
stored one and `duplicate: true`, so a retry after an answer was lost never makes a second prediction.

The two clients share everything but the sending: each method builds a `_Call` (route, parameters, body, how to
read the answer) and `_settle` decides, per attempt, between an answer, an exception and a retry after a delay.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.metadata
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx
import pandas as pd

from neuralfusion.request_body import ARROW_MEDIA_TYPE, arrow_body

__all__ = [
    "KEEPALIVE_EXPIRY_S",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "ModelInfo",
    "NotFound",
    "PayloadTooLarge",
    "Prediction",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "ServiceError",
    "ServiceUnavailable",
    "Unauthorized",
]

T = TypeVar("T")

BAR_FIELDS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
NEWS_FIELDS = ("id", "published_at", "title", "body", "symbols")
MAX_PAGE = 1000  # the service's largest /history page


# -- answers -------------------------------------------------------------------------------------------------------


def _utc(value: str) -> datetime:
    """An RFC 3339 time of the service as an aware UTC datetime."""
    return datetime.fromisoformat(value).astimezone(UTC)


@dataclass(frozen=True)
class Prediction:
    """Portfolio weights for the bars after `as_of`, as the service stored them."""

    model_version: str
    as_of: datetime  # aware, UTC: the close time of the last bar the prediction saw
    symbols: tuple[str, ...]  # the model's universe, in model order
    weights: dict[str, float]  # target weight per symbol
    logits: dict[str, float]  # raw model score per symbol
    horizon_bars: int  # bars the weights are meant to be held
    request_id: str  # the request that made the stored prediction (on a duplicate: the first one)
    stored: bool  # MongoDB acknowledged the write or already held this prediction
    duplicate: bool  # MongoDB already held it for these same inputs

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prediction:
        return cls(model_version=data["model_version"], as_of=_utc(data["as_of"]), symbols=tuple(data["symbols"]),
                   weights=dict(data["weights"]), logits=dict(data["logits"]), horizon_bars=data["horizon_bars"],
                   request_id=data["request_id"], stored=data["stored"], duplicate=data.get("duplicate", False))


@dataclass(frozen=True)
class ModelInfo:
    """The model the server answers with (GET /model_info); fields the server adds later are ignored."""

    version: str
    created: str
    symbols: tuple[str, ...]
    interval: str
    calendar: str
    lookback: int
    horizon: int
    bars_needed: int  # bars per symbol a predict request must cover
    top_k: int
    features: tuple[str, ...]
    encoder_max_length: int
    parity_passed: bool
    providers: dict[str, str]
    execution: dict[str, dict[str, str]]
    batches: dict[str, dict[str, Any]]
    truncated_texts: int
    refused_model: str | None = None
    vector_cache: dict[str, Any] = field(default_factory=dict)  # the encoder worker's article vector cache

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        known = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**{**known, "symbols": tuple(known["symbols"]), "features": tuple(known["features"])})


@dataclass(frozen=True)
class _Page:
    items: list[Prediction]
    next_before: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Page:
        before = data["next_before"]
        return cls([Prediction.from_json(item) for item in data["items"]], None if before is None else _utc(before))


# -- refusals ------------------------------------------------------------------------------------------------------


class ServiceError(Exception):
    """The service refused or could not answer; `message` is its own (`{"error": ...}`), `status` its HTTP status
    (None when no answer came)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.message = message
        self.status = status


class ClientError(ServiceError):
    """A 4xx: the request must change before it can succeed."""


class BadRequest(ClientError):
    """400: the inputs break a rule; the message names it. Nothing was stored."""


class Unauthorized(ClientError):
    """401: the API key is missing or wrong."""


class NotFound(ClientError):
    """404: nothing stored matches."""


class RequestTimeout(ClientError):
    """408: the body did not reach the server in time."""


class Conflict(ClientError):
    """409: another request's prediction is stored for this (model version, as_of); nothing was written."""


class PayloadTooLarge(ClientError):
    """413: the body is over the server's limit."""


class ServerError(ServiceError):
    """A 5xx."""


class ServiceUnavailable(ServerError):
    """503 (or no answer at all) after every retry: the model, an inner service or MongoDB is down."""


_BY_STATUS: dict[int, type[ServiceError]] = {400: BadRequest, 401: Unauthorized, 404: NotFound, 408: RequestTimeout,
                                             409: Conflict, 413: PayloadTooLarge, 503: ServiceUnavailable}


def _refusal(response: httpx.Response) -> ServiceError:
    try:
        message = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:500] or response.reason_phrase
    family = ClientError if response.status_code < 500 else ServerError
    return _BY_STATUS.get(response.status_code, family)(message, response.status_code)


# -- retries -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait: `retries` more attempts after the first; waits of `backoff_s` doubling up
    to `max_backoff_s`, or the server's Retry-After (up to `max_retry_after_s`)."""

    retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0 or self.max_retry_after_s < 0:
            raise ValueError(f"retry settings must be >= 0, got {self}")

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempts count from 0)."""
        advised = _retry_after_s(retry_after)
        if advised is not None:
            return min(advised, self.max_retry_after_s)
        return min(self.backoff_s * 2 ** attempt, self.max_backoff_s)


def _limits() -> httpx.Limits:
    return httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


# the service's HTTP server (uvicorn under BentoML) closes a connection idle for 5 s; httpx keeps one for 5 s too, so
# a request sent on a connection at the moment the server closes it fails. Expiring ours first avoids that race.
KEEPALIVE_EXPIRY_S = 4.0
RETRIED_ERRORS = (httpx.TransportError,)  # connection refused or dropped, timeouts, a broken answer


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call as data: what to send and how to read the answer."""

    method: str
    path: str
    read: Callable[[Any], T]
    params: dict[str, str] | None = None
    content: bytes | None = None
    content_type: str | None = None

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        headers = {"content-type": self.content_type} if self.content_type else None
        return http.build_request(self.method, self.path, params=self.params, content=self.content, headers=headers)


def _settle(call: _Call[T], outcome: httpx.Response | Exception, attempt: int,
            policy: RetryPolicy) -> tuple[T | None, float | None]:
    """(answer, None) when `outcome` answers `call`, (None, delay) to try again after `delay` s; a refusal, or
    a 503 or lost connection on the last attempt, raises."""
    if isinstance(outcome, httpx.Response):
        if outcome.is_success:
            return call.read(outcome.json()), None
        if outcome.status_code != 503 or attempt >= policy.retries:
            raise _refusal(outcome)
        return None, policy.delay(attempt, outcome.headers.get("retry-after"))
    if attempt >= policy.retries:
        raise ServiceUnavailable(f"no answer from the service after {attempt + 1} attempts: "
                                 f"{type(outcome).__name__}: {outcome}") from outcome
    return None, policy.delay(attempt, None)


# -- requests ------------------------------------------------------------------------------------------------------


def _time(value: datetime | pd.Timestamp | str, name: str) -> str:
    """An aware time as RFC 3339; naive times are refused here, before anything is sent."""
    stamp = pd.Timestamp(value)  # RFC 3339 text too: a naive one is refused like a naive datetime
    if stamp.tzinfo is None:
        raise ValueError(f"{name} {value!r} has no time zone; give an aware time, e.g. 2026-01-05T14:03:00Z")
    return stamp.tz_convert("UTC").isoformat().replace("+00:00", "Z")


def _rows(data: pd.DataFrame | Sequence[Mapping[str, Any]], columns: tuple[str, ...], what: str) -> list[dict]:
    """Rows of `columns` from a frame or a list of dicts; a missing column is a ValueError naming it."""
    records = data[[c for c in columns if c in data.columns]].to_dict("records") if isinstance(data, pd.DataFrame) \
        else [dict(row) for row in data]
    for i, row in enumerate(records):
        missing = [c for c in columns if c not in row and c not in ("title", "body", "symbols")]
        if missing:
            raise ValueError(f"{what}[{i}] has no {', '.join(missing)}; {what} need the columns {', '.join(columns)}")
    return records


def _bar(row: dict[str, Any]) -> dict[str, Any]:
    return {"timestamp": _time(row["timestamp"], "bar timestamp"), "symbol": str(row["symbol"]),
            **{c: float(row[c]) for c in BAR_FIELDS[2:]}}


def _news_item(row: dict[str, Any]) -> dict[str, Any]:
    symbols = row.get("symbols")
    has_symbols = symbols is not None and not (isinstance(symbols, float) and math.isnan(symbols))
    return {"id": str(row["id"]), "published_at": _time(row["published_at"], "news published_at"),
            "title": _text(row.get("title")), "body": _text(row.get("body")),
            "symbols": [str(s) for s in symbols] if has_symbols else None}


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...], time_column: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(columns))
    frame[time_column] = pd.to_datetime(frame[time_column], utc=True, format="ISO8601")
    return frame


def _predict_call(bars: pd.DataFrame | Sequence[Mapping[str, Any]],
                  news: pd.DataFrame | Sequence[Mapping[str, Any]] | None, request_id: str | None) -> _Call[Prediction]:
    """POST /predict/arrow: the cheapest body for the service to read (an Arrow IPC stream, one array per field),
    after the rows were checked here (aware times, the contracts' columns)."""
    bar_rows = [_bar(row) for row in _rows(bars, BAR_FIELDS, "bars")]
    news_rows = [_news_item(row) for row in _rows(news if news is not None else [], NEWS_FIELDS, "news")]
    body = arrow_body(_frame(bar_rows, BAR_FIELDS, "timestamp"), _frame(news_rows, NEWS_FIELDS, "published_at"),
                      request_id or uuid.uuid4().hex)  # one id for every attempt: a retry is a duplicate
    return _Call("POST", "/predict/arrow", Prediction.from_json, content=body, content_type=ARROW_MEDIA_TYPE)


def _predict_at_call(as_of: datetime | str | None, symbols: Sequence[str] | None,
                     request_id: str | None) -> _Call[Prediction]:
    body = {"as_of": None if as_of is None else _time(as_of, "as_of"),
            "symbols": None if symbols is None else list(symbols), "request_id": request_id or uuid.uuid4().hex}
    return _Call("POST", "/predict/at", Prediction.from_json, content=json.dumps(body).encode(),
                 content_type="application/json")


def _latest_call(model_version: str | None) -> _Call[Prediction]:
    return _Call("GET", "/latest", Prediction.from_json,
                 params={"model_version": model_version} if model_version else None)


def _history_call(start: datetime | str | None, end: datetime | str | None, model_version: str | None,
                  page_size: int, before: datetime | str | None) -> _Call[_Page]:
    given = {"start": start, "end": end, "before": before}
    params = {name: _time(value, name) for name, value in given.items() if value is not None}
    if model_version:
        params["model_version"] = model_version
    return _Call("GET", "/history", _Page.from_json, params={**params, "limit": str(page_size)})


class _Pager:
    """The /history calls of one `history()` iteration: page after page until none is left or `limit` items
    were taken."""

    def __init__(self, start: datetime | str | None, end: datetime | str | None, model_version: str | None,
                 limit: int | None, page_size: int) -> None:
        if not 1 <= page_size <= MAX_PAGE:
            raise ValueError(f"page_size={page_size} must be within 1..{MAX_PAGE}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit={limit} must be >= 0 (or None: all)")
        self._query = (start, end, model_version)
        self._limit, self._page_size = limit, page_size
        self._taken = 0
        self._before: datetime | None = None
        self._done = limit == 0

    def next_call(self) -> _Call[_Page] | None:
        """The next page's call; None when the iteration is over."""
        if self._done:
            return None
        size = self._page_size if self._limit is None else min(self._page_size, self._limit - self._taken)
        return _history_call(*self._query, size, self._before)

    def take(self, page: _Page) -> list[Prediction]:
        """The page's items still wanted; the next call starts before the page."""
        items = page.items if self._limit is None else page.items[:self._limit - self._taken]
        self._taken += len(items)
        self._before = page.next_before
        self._done = page.next_before is None or self._taken == self._limit
        return items


def _headers(api_key: str | None) -> dict[str, str]:
    try:
        version = importlib.metadata.version("neuralfusioncore")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    headers = {"user-agent": f"neuralfusion-client/{version}", "accept": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _key_from_env() -> str | None:
    return os.environ.get("NFC_API_KEY") or None


# -- the clients ---------------------------------------------------------------------------------------------------


class Client:
    """Blocking client; one connection pool, closed by `close()` or a `with` block."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 60.0, retries: int = 3,
                 backoff_s: float = 0.5, http: httpx.Client | None = None) -> None:
        """`http`: an httpx.Client of your own (proxies, TLS, transport); its base_url and headers are set here."""
        self.retry = RetryPolicy(retries=retries, backoff_s=backoff_s)
        self._http = http or httpx.Client(timeout=timeout, limits=_limits())
        self._http.base_url = url
        self._http.headers.update(_headers(api_key))

    @classmethod
    def from_env(cls, url: str, **kwargs: Any) -> Client:
        """A client whose API key is NFC_API_KEY (none when unset)."""
        return cls(url, _key_from_env(), **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(self, bars: pd.DataFrame | Sequence[Mapping[str, Any]],
                news: pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
                request_id: str | None = None) -> Prediction:
        """Weights for the bars after the last one, stored before they are returned (sent as Arrow to
        /predict/arrow). `bars` and `news` follow the data contracts (columns timestamp, symbol, open, high, low,
        close, volume; id, published_at, title, body, symbols), with aware times; send the news of the model's
        lookback only (`model_info().lookback` bars): the rest is read for nothing."""
        return self._send(_predict_call(bars, news, request_id))

    def predict_at(self, as_of: datetime | str | None = None, symbols: Sequence[str] | None = None,
                   request_id: str | None = None) -> Prediction:
        """POST /predict/at, by reference: weights for the bar closing at `as_of` (None: the newest complete bar
        of the service's source), read from the service's own bar and news sources; `symbols`: the universe
        you expect (it must be the model's)."""
        return self._send(_predict_at_call(as_of, symbols, request_id))

    def latest(self, model_version: str | None = None) -> Prediction:
        """GET /latest: the stored prediction with the newest as_of (NotFound when none)."""
        return self._send(_latest_call(model_version))

    def history(self, start: datetime | str | None = None, end: datetime | str | None = None,
                model_version: str | None = None, limit: int | None = None,
                page_size: int = 100) -> Iterator[Prediction]:
        """GET /history page after page: stored predictions with start <= as_of < end, newest first, at most
        `limit` of them (None: all)."""
        pager = _Pager(start, end, model_version, limit, page_size)
        while (call := pager.next_call()) is not None:
            yield from pager.take(self._send(call))

    def model_info(self) -> ModelInfo:
        """GET /model_info: the served model's version, universe, window and execution."""
        return self._send(_Call("GET", "/model_info", ModelInfo.from_json))

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | Exception = self._http.send(call.request(self._http))
            except RETRIED_ERRORS as err:
                outcome = err
            answer, delay = _settle(call, outcome, attempt, self.retry)
            if delay is None:
                return answer  # type: ignore[return-value]
            time.sleep(delay)
            attempt += 1


class AsyncClient:
    """The same methods as `Client`, awaited; `history` is an async iterator."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 60.0, retries: int = 3,
                 backoff_s: float = 0.5, http: httpx.AsyncClient | None = None) -> None:
        self.retry = RetryPolicy(retries=retries, backoff_s=backoff_s)
        self._http = http or httpx.AsyncClient(timeout=timeout, limits=_limits())
        self._http.base_url = url
        self._http.headers.update(_headers(api_key))

    @classmethod
    def from_env(cls, url: str, **kwargs: Any) -> AsyncClient:
        """A client whose API key is NFC_API_KEY (none when unset)."""
        return cls(url, _key_from_env(), **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def predict(self, bars: pd.DataFrame | Sequence[Mapping[str, Any]],
                      news: pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
                      request_id: str | None = None) -> Prediction:
        """`Client.predict`."""
        return await self._send(_predict_call(bars, news, request_id))

    async def predict_at(self, as_of: datetime | str | None = None, symbols: Sequence[str] | None = None,
                         request_id: str | None = None) -> Prediction:
        """`Client.predict_at`."""
        return await self._send(_predict_at_call(as_of, symbols, request_id))

    async def latest(self, model_version: str | None = None) -> Prediction:
        """`Client.latest`."""
        return await self._send(_latest_call(model_version))

    async def history(self, start: datetime | str | None = None, end: datetime | str | None = None,
                      model_version: str | None = None, limit: int | None = None,
                      page_size: int = 100) -> AsyncIterator[Prediction]:
        """`Client.history`."""
        pager = _Pager(start, end, model_version, limit, page_size)
        while (call := pager.next_call()) is not None:
            for item in pager.take(await self._send(call)):
                yield item

    async def model_info(self) -> ModelInfo:
        """`Client.model_info`."""
        return await self._send(_Call("GET", "/model_info", ModelInfo.from_json))

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | Exception = await self._http.send(call.request(self._http))
            except RETRIED_ERRORS as err:
                outcome = err
            answer, delay = _settle(call, outcome, attempt, self.retry)
            if delay is None:
                return answer  # type: ignore[return-value]
            await asyncio.sleep(delay)
            attempt += 1
