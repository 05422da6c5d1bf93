"""The read routes of the portfolio service as GET with query parameters, a Starlette app BentoML mounts.

BentoML 1.4's `@bentoml.api` routes are POST only; the documented way to add other methods is to mount an ASGI
app on the service (`@bentoml.asgi_app`). Its handlers reach the service instance of their worker with
`bentoml.get_current_service()`, as BentoML's own class views do, so they run the same store queries as the gRPC
GetLatest and GetHistory. Query parameters go through the API's pydantic models (serving.schemas): an unknown
parameter or a bad value is a 400 `{"error": ...}` naming it, like every other refusal.

    GET /latest?model_version=                                   -> PredictionOut (404: none stored)
    GET /history?start=&end=&model_version=&limit=&before=       -> HistoryOut, newest first
    GET /model_info                                              -> ModelInfo
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import bentoml
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.errors import RequestError, ServingError, error_response
from serving.request_checks import describe_validation_error
from serving.schemas import HistoryOut, HistoryQuery, LatestQuery, ModelInfo, PredictionOut

__all__ = ["READ_ROUTES", "NoParameters", "ReadBackend", "ReadRoute", "read_app"]


class ReadBackend(Protocol):
    """What the read routes need from the portfolio service; failures are ServingError."""

    async def query_latest(self, model_version: str | None) -> PredictionOut: ...

    async def query_history(self, query: HistoryQuery) -> HistoryOut: ...

    async def query_model_info(self) -> ModelInfo: ...


@dataclass(frozen=True)
class ReadRoute:
    """One GET route: the model of its query string, the model of its answer, and the service call."""

    query: type[BaseModel]
    answer: type[BaseModel]
    call: Callable[[ReadBackend, Any], Awaitable[BaseModel]]


class NoParameters(BaseModel):
    """A route without query parameters: any parameter is refused."""

    model_config = ConfigDict(extra="forbid")


# the OpenAPI document (serving/openapi.py) publishes the parameters and answers from this table
READ_ROUTES: dict[str, ReadRoute] = {
    "/latest": ReadRoute(LatestQuery, PredictionOut, lambda service, q: service.query_latest(q.model_version)),
    "/history": ReadRoute(HistoryQuery, HistoryOut, lambda service, q: service.query_history(q)),
    "/model_info": ReadRoute(NoParameters, ModelInfo, lambda service, q: service.query_model_info()),
}


def _parse(model: type[BaseModel], request: Request) -> BaseModel:
    """The request's query string through `model`; a repeated parameter or a violated rule is a RequestError."""
    params = request.query_params
    repeated = sorted({name for name in params if len(params.getlist(name)) > 1})
    if repeated:
        raise RequestError(f"query parameter {repeated[0]!r} is given more than once; give it once")
    try:
        return model.model_validate(dict(params))
    except ValidationError as err:
        raise RequestError(describe_validation_error(err)) from None


def _endpoint(route: ReadRoute) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            result = await route.call(bentoml.get_current_service(), _parse(route.query, request))
        except ServingError as err:
            return error_response(err)
        return JSONResponse(result.model_dump(mode="json"))
    return endpoint


async def _wrong_method(request: Request, exc: Exception) -> Response:
    """Another method on a read route (405) in the `{"error": ...}` body of every refusal."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": f"{request.method} {request.url.path} is not served: read it with GET and query "
                                  "parameters"}, status_code=exc.status_code, headers=exc.headers)


def read_app() -> Starlette:
    """The GET routes, for `@bentoml.asgi_app(read_app(), path="/")`."""
    return Starlette(routes=[Route(path, _endpoint(route), methods=["GET"]) for path, route in READ_ROUTES.items()],
                     exception_handlers={HTTPException: _wrong_method})
