"""The gRPC front of the portfolio service (serving/proto/neuralfusion.proto), run inside each BentoML worker.

BentoML 1.4 does not serve gRPC for new-style services, so every worker starts its own `grpc.aio` server from a
startup hook, on the worker's event loop. Predict and PredictColumns go the same way as HTTP /predict and
/predict/columns (`PortfolioService.predict_inline`: the same checks, inner encoder and fusion services), PredictAt
as /predict/at (the service reads the bars itself, serving/by_reference.py, then the same path), so both
protocols fill one batching queue; GetLatest and GetHistory run the same store queries as HTTP /latest and
/history. Several workers bind one port with SO_REUSEPORT and the kernel spreads connections between them. gRPC
health (`grpc.health.v1`, SERVING only while the service is ready) and server reflection are on.

The API key (NFC_API_KEY) is checked on every RPC of the PortfolioService before its message is decoded (on Predict,
PredictColumns and PredictAt only with NFC_API_KEY_READS=open); health and reflection stay open. Messages over
NFC_MAX_BODY_BYTES are refused by grpcio (RESOURCE_EXHAUSTED). Status codes are those of the serving.errors
classes: bad input INVALID_ARGUMENT, missing or wrong API key UNAUTHENTICATED, nothing stored (or no source bars
for a PredictAt) NOT_FOUND, another request's prediction stored for that key ALREADY_EXISTS, MongoDB, the model or a
bar or news source unavailable UNAVAILABLE; the details
say what to do, as the HTTP body does."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.column_checks import RequestColumns
from serving.errors import ServingError, Unauthenticated, check_api_key
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc
from serving.proto_convert import (
    columns_from_proto,
    columns_from_request_proto,
    history_query_from_proto,
    history_to_proto,
    predict_at_from_proto,
    prediction_to_proto,
)
from serving.request_checks import CheckedRequest
from serving.schemas import HistoryOut, HistoryQuery, PredictAtRequest, PredictionOut
from serving.settings import ServeSettings

__all__ = ["SERVICE_NAME", "GrpcServer", "PortfolioBackend", "PortfolioServicer"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PortfolioService"].full_name
PREDICTS = (f"/{SERVICE_NAME}/Predict", f"/{SERVICE_NAME}/PredictColumns", f"/{SERVICE_NAME}/PredictAt")
T = TypeVar("T")


class PortfolioBackend(Protocol):
    """What the gRPC front needs from the portfolio service; failures are ServingError."""


    async def predict_inline(self, read: Callable[[], RequestColumns | CheckedRequest]) -> PredictionOut: ...

    async def predict_at_one(self, query: PredictAtRequest) -> PredictionOut: ...

    async def query_latest(self, model_version: str | None) -> PredictionOut: ...

    async def query_history(self, query: HistoryQuery) -> HistoryOut: ...

    async def is_ready(self) -> bool: ...


class PortfolioServicer(pb_grpc.PortfolioServiceServicer):
    """PortfolioService RPCs forwarded to a backend (the key is checked by `KeyAndStrictDecoding` first)."""

    def __init__(self, backend: PortfolioBackend) -> None:
        self._backend = backend

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.Prediction:
        # the messages are read in the request's own thread with the rest of its preparation, not on the event loop
        prediction = await _answer(context, self._backend.predict_inline(lambda: columns_from_request_proto(request)))
        return prediction_to_proto(prediction)

    async def PredictColumns(self, request: pb.PredictColumnsRequest,
                             context: grpc.aio.ServicerContext) -> pb.Prediction:
        prediction = await _answer(context, self._backend.predict_inline(lambda: columns_from_proto(request)))
        return prediction_to_proto(prediction)

    async def PredictAt(self, request: pb.PredictAtRequest, context: grpc.aio.ServicerContext) -> pb.Prediction:
        async def predict_at() -> PredictionOut:
            return await self._backend.predict_at_one(predict_at_from_proto(request))

        return prediction_to_proto(await _answer(context, predict_at()))

    async def GetLatest(self, request: pb.LatestRequest, context: grpc.aio.ServicerContext) -> pb.Prediction:
        latest = await _answer(context, self._backend.query_latest(request.model_version or None))
        return prediction_to_proto(latest)

    async def GetHistory(self, request: pb.HistoryRequest, context: grpc.aio.ServicerContext) -> pb.HistoryResponse:
        async def history() -> HistoryOut:
            return await self._backend.query_history(history_query_from_proto(request))

        return history_to_proto(await _answer(context, history()))


async def _answer(context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
    """The call's result, or the call's ServingError as the RPC's status (abort raises)."""
    try:
        return await call
    except ServingError as err:
        await context.abort(grpc.StatusCode[err.grpc_code], err.message)  # raises


class KeyAndStrictDecoding(grpc.aio.ServerInterceptor):
    """On the PortfolioService's RPCs: the API key first (before the message is decoded), then our own decoding,
    so a malformed message is INVALID_ARGUMENT with a reason (grpcio reports a failing deserializer as UNKNOWN)
    and never reaches a handler. Health and reflection pass as they are."""

    def __init__(self, api_key: str | None, reads_need_key: bool) -> None:
        self._api_key = api_key
        self._reads_need_key = reads_need_key

    async def intercept_service(self, continuation: Callable[..., Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (handler is None or handler.unary_unary is None or handler.request_deserializer is None
                or not method.startswith(f"/{SERVICE_NAME}/")):
            return handler
        decode, behavior = handler.request_deserializer, handler.unary_unary
        needs_key = method in PREDICTS or self._reads_need_key
        metadata = {k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)}

        async def strict(raw: bytes, context: grpc.aio.ServicerContext) -> object:
            if needs_key:
                try:
                    check_api_key(self._api_key, metadata)
                except Unauthenticated as err:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, err.message)
            try:
                request = decode(raw)
            except DecodeError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"malformed request for {method}: {err}; send a serialised message of the type "
                                    "serving/proto/neuralfusion.proto declares")
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(strict, request_deserializer=None,
                                                   response_serializer=handler.response_serializer)


class GrpcServer:
    """A grpc.aio server with the PortfolioService, health and reflection; `start` binds, `stop` drains."""

    def __init__(self, backend: PortfolioBackend, settings: ServeSettings, max_message_bytes: int,
                 health_interval_s: float = 5.0) -> None:
        self.address = f"{settings.grpc_host}:{settings.grpc_port}"
        self._backend = backend
        self._server = grpc.aio.server(
            interceptors=[KeyAndStrictDecoding(settings.api_key, settings.reads_need_key)],
            options=[("grpc.max_receive_message_length", max_message_bytes)])
        pb_grpc.add_PortfolioServiceServicer_to_server(PortfolioServicer(backend),
                                                       self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        self._health_interval_s = health_interval_s
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and serve; a port that cannot be bound is an error naming it."""
        try:
            self._server.add_insecure_port(self.address)
        except RuntimeError as err:  # "Failed to bind to address ..."
            raise OSError(f"gRPC cannot listen on {self.address} ({err}); set NFC_GRPC_PORT to a free port") from None
        await self._server.start()
        self._health_task = asyncio.create_task(self._report_health())
        log.info("gRPC %s listening on %s", SERVICE_NAME, self.address)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)

    async def _report_health(self) -> None:
        """Keep the overall and the service's health status in step with the backend's readiness."""
        while True:
            ready = await self._backend.is_ready()
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in (health.OVERALL_HEALTH, SERVICE_NAME):
                await self._health.set(name, status)
            # while not ready (e.g. the inner services still starting), look again soon
            await asyncio.sleep(self._health_interval_s if ready else min(self._health_interval_s, 0.5))
