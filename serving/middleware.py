"""Pure ASGI middleware of the portfolio service, added with BentoML's `add_asgi_middleware`.

`RequestGuard` runs before BentoML reads or parses a body: the API key on every route but the probes (and the
read routes when NFC_API_KEY_READS=open), 413 for a body over NFC_MAX_BODY_BYTES (by Content-Length, and by
counting streamed or chunked bytes), and 408 for a body that is not complete NFC_BODY_TIMEOUT_S after the
headers (a stalled or trickling client). `OpenAPILabel` publishes /docs.json as the service really answers
(serving/openapi.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.errors import PayloadTooLarge, RequestTimeout, ServingError, Unauthenticated, check_api_key
from serving.openapi import complete
from serving.schemas import RequestLimits
from serving.settings import ServeSettings

__all__ = ["OPEN_PATHS", "READ_PATHS", "OpenAPILabel", "RequestGuard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
READ_PATHS = frozenset({"/latest", "/history", "/model_info", "/docs.json", "/"})


async def _refuse(send: Send, err: ServingError) -> None:
    """`err` as its JSON answer, closing the connection: the rest of an unread body would otherwise be taken for
    the next request."""
    body = json.dumps({"error": err.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": int(err.status), "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Key, body size and body deadline, checked before the app sees the request."""

    def __init__(self, app: ASGIApp) -> None:
        # read when the app is built (in each worker, like the service's own settings), not at import
        settings = ServeSettings.from_env()
        self.app = app
        self.api_key = settings.api_key
        self.reads_need_key = settings.reads_need_key
        self.max_body_bytes = settings.max_body_bytes or RequestLimits.from_env().max_body_bytes
        self.body_timeout_s = settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())}
        try:
            if path not in READ_PATHS or self.reads_need_key:
                check_api_key(self.api_key, headers)
            body = await self._body(headers, receive)
        except (Unauthenticated, PayloadTooLarge, RequestTimeout) as err:
            await _refuse(send, err)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        """The whole body, or PayloadTooLarge / RequestTimeout as soon as it is known to be too large or late."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(self._too_large(f"Content-Length {declared}"))
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise RequestTimeout(f"the request body was not complete {self.body_timeout_s:g} s after its "
                                     "headers (NFC_BODY_TIMEOUT_S); send it whole") from None
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(self._too_large(f"more than {size} bytes"))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self, what: str) -> str:
        return (f"the request body ({what}) is over the limit of {self.max_body_bytes} bytes (NFC_MAX_BODY_BYTES): "
                "send only the model's window")


class OpenAPILabel:
    """GET /docs.json as the service really answers (serving/openapi.py `complete`): the distribution's version and
    summary, the key's security schemes on the routes that need it under these settings, the GET read routes,
    and every status each route sends with the one error body schema."""

    def __init__(self, app: ASGIApp, api_version: str) -> None:
        settings = ServeSettings.from_env()  # read when the app is built, as RequestGuard does
        self.app = app
        self.api_version = api_version
        self.key_required = settings.api_key is not None
        self.reads_need_key = settings.reads_need_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/docs.json" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, collect)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(complete(json.loads(body), self.api_version, self.key_required,
                                       self.reads_need_key)).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
