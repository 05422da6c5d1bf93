"""The portfolio service's ASGI middleware (serving.middleware) called directly, as uvicorn calls it: the key, the
body size and the body deadline are decided before the app is called, the app gets the body whole, and /docs.json
is completed for the settings."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import Iterable
from typing import Any

import pytest

from serving.middleware import OpenAPILabel, RequestGuard

KEY = "mw-key-1"


class App:
    """An ASGI app that records the body it read and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"openapi": "3.0.2", "info": {"version": "None"}}'})


def call(app: Any, path: str, chunks: Iterable[bytes] = (b"{}",), headers: dict[str, str] | None = None,
         stall: bool = False) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    """(status, JSON body, headers) of one request sent to `app` in `chunks` (then stalling, with `stall`)."""
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or stall}
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST" if path != "/docs.json" else "GET", "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), dict(start["headers"])


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> tuple[App, RequestGuard]:
    monkeypatch.setenv("NFC_API_KEY", KEY)
    monkeypatch.setenv("NFC_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("NFC_BODY_TIMEOUT_S", "1")
    app = App()
    return app, RequestGuard(app)


def test_the_key_is_checked_before_the_body_is_read(guarded):
    app, guard = guarded
    for path in ("/predict", "/latest", "/history", "/model_info", "/docs.json", "/anything"):
        status, body, headers = call(guard, path, [b"x" * 5000])
        assert status == 401 and "API key" in body["error"] and headers[b"connection"] == b"close"
    assert call(guard, "/predict", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert app.bodies == []  # the app never ran
    for probe in ("/livez", "/readyz", "/metrics"):
        assert call(guard, probe)[0] == 200


def test_with_the_key_the_app_gets_the_body_whole(guarded):
    app, guard = guarded
    assert call(guard, "/predict", [b'{"a":', b" 1}"], {"X-API-Key": KEY})[0] == 200
    assert call(guard, "/latest", [b"{}"], {"authorization": f"bearer {KEY}"})[0] == 200
    assert app.bodies == [b'{"a": 1}', b"{}"]


def test_reads_open_leaves_only_writes_behind_the_key(guarded, monkeypatch):
    monkeypatch.setenv("NFC_API_KEY_READS", "open")
    app = App()
    guard = RequestGuard(app)
    for path in ("/latest", "/history", "/model_info", "/docs.json"):
        assert call(guard, path)[0] == 200
    assert call(guard, "/predict")[0] == 401


def test_a_body_over_the_limit_is_413_by_length_or_by_counted_chunks(guarded):
    app, guard = guarded
    status, body, _ = call(guard, "/predict", [b"x"], {"X-API-Key": KEY, "Content-Length": "1001"})
    assert status == 413 and "over the limit of 1000 bytes (NFC_MAX_BODY_BYTES)" in body["error"]
    status, body, _ = call(guard, "/predict", [b"x" * 400] * 3, {"X-API-Key": KEY})  # chunked: no Content-Length
    assert status == 413 and "more than 1200 bytes" in body["error"]
    assert call(guard, "/predict", [b"x" * 500] * 2, {"X-API-Key": KEY})[0] == 200  # exactly the limit
    assert app.bodies == [b"x" * 1000]


def test_a_stalled_body_is_408_after_the_body_timeout(guarded):
    app, guard = guarded
    status, body, headers = call(guard, "/predict", [b'{"bars": ['], {"X-API-Key": KEY}, stall=True)
    assert status == 408 and "NFC_BODY_TIMEOUT_S" in body["error"] and headers[b"connection"] == b"close"
    assert app.bodies == []


def test_bad_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("NFC_API_KEY_READS", "sometimes")
    with pytest.raises(ValueError, match="NFC_API_KEY_READS='sometimes' must be one of"):
        RequestGuard(App())


@pytest.mark.parametrize("reads", ["key", "open"])
def test_the_openapi_document_is_completed_for_the_settings(monkeypatch, reads):
    monkeypatch.setenv("NFC_API_KEY", KEY)
    monkeypatch.setenv("NFC_API_KEY_READS", reads)
    status, body, headers = call(OpenAPILabel(App(), api_version="9.9"), "/docs.json")
    assert status == 200 and body["openapi"] == "3.1.0" and int(headers[b"content-length"]) == len(json.dumps(body))
    assert body["info"]["version"] == importlib.metadata.version("neuralfusioncore")
    assert importlib.metadata.metadata("neuralfusioncore")["Summary"] in body["info"]["description"]
    assert "Contract version 9.9" in body["info"]["description"]
    assert body["components"]["securitySchemes"]["ApiKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The server's NFC_API_KEY."}
    assert body["components"]["securitySchemes"]["Bearer"]["scheme"] == "bearer"
    latest = body["paths"]["/latest"]["get"]
    assert [p["name"] for p in latest["parameters"]] == ["model_version"]
    assert latest["parameters"][0]["schema"]["type"] == "string"  # a query string cannot carry null
    assert ("security" in latest) == ("401" in latest["responses"]) == (reads == "key")
    assert latest["responses"]["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_without_a_key_no_route_declares_security_or_401(monkeypatch):
    monkeypatch.delenv("NFC_API_KEY", raising=False)
    _, body, _ = call(OpenAPILabel(App(), api_version="9.9"), "/docs.json")
    operations = [op for item in body["paths"].values() for op in item.values()]
    assert operations and not any("security" in op or "401" in op["responses"] for op in operations)
