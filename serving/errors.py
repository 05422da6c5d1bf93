"""Answers other than success, shared by the HTTP and gRPC fronts: one exception per kind of refusal.

Every refusal is a `ServingError` subclass that carries its HTTP status and its gRPC status code name; HTTP
sends `{"error": message}` with the status (`error_response`, the one place a refusal becomes a response),
gRPC aborts with the code and the same message (serving/grpc_server.py). Messages say what to fix and never
carry hosts, URIs or driver internals (those go to the server's log). The API key check lives here because the
HTTP middleware and the gRPC front apply it the same way.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from http import HTTPStatus
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

__all__ = [
    "RETRY_AFTER_S",
    "Conflict",
    "ErrorBody",
    "NotFound",
    "PayloadTooLarge",
    "RequestError",
    "RequestTimeout",
    "ServingError",
    "Unauthenticated",
    "Unavailable",
    "check_api_key",
    "error_for_status",
    "error_response",
]


RETRY_AFTER_S = 1  # what a 503 asks a client to wait: MongoDB or an inner service back within seconds, or not


class ErrorBody(BaseModel):
    """The body of every refusal, published in the OpenAPI document as `Error`."""

    model_config = ConfigDict(extra="forbid", title="Error")

    error: str = Field(description="What went wrong and what to fix.",
                       examples=["bars[3].high: Input should be greater than 0"])
    detail: list[dict[str, object]] | None = Field(
        default=None, description="Only on a body that is not valid JSON for the route's schema: pydantic's list "
                                  "of the problems (field location, message).")


class ServingError(Exception):
    """A request that cannot be answered as asked; subclasses fix the HTTP status and the gRPC code."""

    status: ClassVar[HTTPStatus] = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code: ClassVar[str] = "UNAVAILABLE"  # a grpc.StatusCode name (grpcio is not needed to raise one)
    retry_after_s: ClassVar[int | None] = None  # sent as Retry-After: when trying again may succeed

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestError(ServingError):
    """The request cannot be served as sent; the message says what to fix. Nothing was written."""

    status = HTTPStatus.BAD_REQUEST
    grpc_code = "INVALID_ARGUMENT"


class Unauthenticated(ServingError):
    """The API key is missing or wrong."""

    status = HTTPStatus.UNAUTHORIZED
    grpc_code = "UNAUTHENTICATED"


class NotFound(ServingError):
    """Nothing stored matches."""

    status = HTTPStatus.NOT_FOUND
    grpc_code = "NOT_FOUND"


class RequestTimeout(ServingError):
    """The body did not arrive in time."""

    status = HTTPStatus.REQUEST_TIMEOUT
    grpc_code = "DEADLINE_EXCEEDED"


class Conflict(ServingError):
    """Another request's prediction is stored for this (model version, as-of); nothing was written."""

    status = HTTPStatus.CONFLICT
    grpc_code = "ALREADY_EXISTS"


class PayloadTooLarge(ServingError):
    """The body is over NFC_MAX_BODY_BYTES."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(ServingError):
    """The model, the encoder or MongoDB cannot answer now: retry later. Nothing is reported stored."""

    retry_after_s = RETRY_AFTER_S


_BY_STATUS = {cls.status: cls for cls in (RequestError, Unauthenticated, NotFound, RequestTimeout, Conflict,
                                          PayloadTooLarge, Unavailable)}


def error_for_status(status: int, message: str) -> ServingError:
    """The ServingError of an HTTP `status` (a 4xx/5xx BentoML reported for an internal call), Unavailable for
    any status without its own class."""
    return _BY_STATUS.get(HTTPStatus(status), Unavailable)(message)


def error_response(err: ServingError) -> JSONResponse:
    """`err` as its status and `{"error": message}` (ErrorBody), with Retry-After when retrying may succeed."""
    headers = None if err.retry_after_s is None else {"retry-after": str(err.retry_after_s)}
    return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)


def check_api_key(expected: str | None, headers: Mapping[str, str]) -> None:
    """Raise Unauthenticated unless `expected` is None or `headers` (HTTP headers or gRPC metadata) carry it
    as `Authorization: Bearer <key>` or `X-API-Key: <key>`, header names in any case.

    The key is compared in constant time and never appears in the message.
    """
    if expected is None:
        return
    lowered = {name.lower(): value for name, value in headers.items()}
    bearer = lowered.get("authorization", "")
    provided = bearer[7:].strip() if bearer[:7].lower() == "bearer " else lowered.get("x-api-key", "").strip()
    if not provided:
        raise Unauthenticated("this route needs the API key: send it as 'Authorization: Bearer <key>' or "
                              "'X-API-Key: <key>'")
    if not secrets.compare_digest(provided.encode(), expected.encode()):
        raise Unauthenticated("the API key is not valid for this server")
