"""Answers other than success, shared by the HTTP and gRPC fronts: one status, one message saying what to do.

HTTP sends `{"error": message}` with the status; gRPC aborts with the matching status code
(serving/grpc_server.py) and the same message. The API key check lives here because both fronts apply it
the same way.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from http import HTTPStatus

__all__ = ["ServingError", "check_api_key"]


class ServingError(Exception):
    """A request that cannot be answered as asked: HTTP `status` and a `message` that says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = HTTPStatus(status)
        self.message = message


def check_api_key(expected: str | None, headers: Mapping[str, str]) -> None:
    """Raise ServingError(401) unless `expected` is None or `headers` (HTTP headers or gRPC metadata) carry it
    as `Authorization: Bearer <key>` or `X-API-Key: <key>`, header names in any case.

    The key is compared in constant time and never appears in the message.
    """
    if expected is None:
        return
    lowered = {name.lower(): value for name, value in headers.items()}
    bearer = lowered.get("authorization", "")
    provided = bearer[7:].strip() if bearer[:7].lower() == "bearer " else lowered.get("x-api-key", "").strip()
    if not provided:
        raise ServingError(HTTPStatus.UNAUTHORIZED, "this route needs the API key: send it as "
                                                    "'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    if not secrets.compare_digest(provided.encode(), expected.encode()):
        raise ServingError(HTTPStatus.UNAUTHORIZED, "the API key is not valid for this server")
