"""BentoML services: `PortfolioService` (bars + news -> weights) and its inner `EncoderService` and `FusionService`.

    bentoml serve serving.service:PortfolioService      # or `nfc serve`, which also starts MongoDB if needed

PortfolioService is the entry service: it checks and prepares each request in its own thread (validation,
features, the window), and hands the prepared arrays to two inner services through `bentoml.depends`:
EncoderService (article texts -> vectors) and FusionService (fusion inputs -> logits and weights). Under
`bentoml serve` the inner services run in their own workers, each with its own adaptive batching queue, and are
not on the public port; in a `to_asgi()` app (tests) they run in the same process, unbatched. Configuration:
`serving.settings`.

HTTP routes (JSON; OpenAPI at /docs.json, Prometheus at /metrics, BentoML's /livez and /readyz):
  POST /predict        a PredictRequest -> PredictionOut, stored in MongoDB before it is returned
  POST /predict/columns  the same with bars and news as arrays (PredictColumnsRequest, serving/columns.py)
  POST /predict/arrow  the same as an Arrow IPC stream (application/vnd.apache.arrow.stream, serving/columns.py)
  POST /predict/at     {"as_of", "symbols", "request_id"} -> the same, from the service's own bar and news
                       sources (predictions by reference, serving/by_reference.py)
  GET /latest?model_version=   the newest stored prediction (404: none yet)
  GET /history?start=&end=&model_version=&limit=&before=   stored predictions in [start, end), newest first,
                               `next_before` pages
  GET /model_info              the served model: version, universe, window, providers, batch statistics
The GET routes are a Starlette app mounted on the service (serving/read_routes.py): BentoML's APIs are POST.
With NFC_API_KEY set every route but the probes and /metrics needs it (NFC_API_KEY_READS=open leaves the read
routes open), checked with the body size and deadline before anything is parsed (serving/middleware.py).
Refusals are `{"error": "..."}` with the status of their serving.errors class (BentoML's own `{"error",
"detail"}` for malformed or schema-invalid JSON): 400 input to fix, 401 key, 404 nothing stored, 408 body too
slow, 409 another request's prediction holds that (model version, as-of), 413 body too large, 503 model,
encoder or MongoDB unavailable (nothing reported stored). gRPC (NFC_GRPC_PORT, Predict, PredictColumns, PredictAt):
serving/grpc_server.py.

Readiness (/readyz, gRPC health): the model package loaded and verified, the encoder service running the same
encoder, the fusion service holding the same package, and MongoDB answering a ping. A missing or altered
package leaves the service up but never ready, and /predict answers 503 naming the reason: it never serves
weights from another model. Model swaps without a restart (NFC_RELOAD_INTERVAL_S): serving/model_swap.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import aiohttp
import anyio
import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable
from bentoml.validators import ContentType

from neuralfusion.redact import install_log_redaction
from serving.column_checks import RequestColumns, check_columns
from serving.columns import (
    ARROW_MEDIA_TYPE,
    PredictColumnsRequest,
    columns_from_arrow,
    columns_from_json,
    columns_from_rows,
)
from serving.errors import Conflict, NotFound, RequestError, ServingError, Unavailable, error_for_status, error_response
from serving.fusion_jobs import FusionJob, FusionOutcome, RuntimeCache
from serving.middleware import OpenAPILabel, RequestGuard
from serving.model_store import load_verified_manifest
from serving.model_swap import ServedModel, load_package
from serving.read_routes import read_app
from serving.request_checks import CheckedRequest, check_as_of, inputs_sha256
from serving.schemas import (
    HistoryOut,
    HistoryQuery,
    ModelInfo,
    PredictAtRequest,
    PredictionOut,
    PredictRequest,
    RequestLimits,
)
from serving.settings import ServeSettings
from serving.store import PredictionRecord, PredictionStore, SaveOutcome, StoreError

with bentoml.importing():  # runtime-only: `bentoml build` works without onnxruntime and grpcio installed
    from serving.by_reference import ModelWindow, ReferenceSources, predict_by_reference
    from serving.grpc_server import GrpcServer
    from serving.runtime import NewsEncoder, PortfolioRuntime, PreparedRequest
    from serving.vector_cache import KnownVectors, vector_cache

__all__ = ["API_VERSION", "EncoderService", "FusionService", "PortfolioService"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# batching and worker counts are decorator arguments, so they are read when this module is imported
SETTINGS = ServeSettings.from_env()
install_log_redaction()  # the workers' log lines never show the passwords of NFC_MONGO_URI & co or NFC_API_KEY
# the package comes from the model store (and `bentoml build` packs it) unless a folder is named
MODEL = None if SETTINGS.model_path else bentoml.models.BentoModel(SETTINGS.model)
# the in-process clients (depends) otherwise recycle their session every 100 requests and drop the calls in
# flight at that moment (BentoML 1.4's default connection limits)
RUNNER_CONNECTION = {"max_requests": 1_000_000_000, "max_age": 1e9}
# the media type of an inner API's answer, said once: without it BentoML derives it from the answer type's JSON
# schema on every response, which cost the fusion service ~30% of its CPU
JSON = ContentType("application/json")
# how a call to an inner service over its socket fails when the connection drops under load (the client is
# aiohttp): BrokenPipeError, ConnectionResetError, aiohttp's ServerDisconnectedError and the like
CONNECTION_ERRORS = (ConnectionError, aiohttp.ClientConnectionError)
# waits before each retry of a dropped inner call: at concurrency 64 on 2 cores one retry still left ~1.5% of the
# requests answered 503 (bench/bench_serving.py --quick, docs/BENCHMARKS.md)
INNER_RETRY_DELAYS_S = (0.05, 0.25)
# of the HTTP and gRPC contract (proto package neuralfusion.v2), published in /docs.json. 2.0: reads are GET with
# query parameters; gRPC times are Timestamps, weights and logits maps by symbol, Predict answers a Prediction
API_VERSION = "2.0"


def batching(max_batch: int, max_latency_ms: int) -> dict[str, Any]:
    """`bentoml.api` arguments for a queue of at most `max_batch` rows. BentoML refuses max_batch_size=1, and a
    batch of one is no batching: then the API is declared not batchable and each call runs alone."""
    if max_batch < 2:
        return {}
    return {"batchable": True, "max_batch_size": max_batch, "max_latency_ms": max_latency_ms}


def _http_errors(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A ServingError becomes its `{"error": message}` response (BentoML sends a returned Response as is)."""
    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except ServingError as err:
            return error_response(err)  # type: ignore[return-value]
    return wrapper


async def call_inner(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`call()` of an inner service, again after INNER_RETRY_DELAYS_S when its connection dropped
    (CONNECTION_ERRORS: the inner calls compute and store nothing, so a retry is safe); the last drop, or the
    service failing, is Unavailable naming `what` (the details go to the log), never a 500."""
    for delay in (*INNER_RETRY_DELAYS_S, None):
        try:
            return await call()
        except CONNECTION_ERRORS as err:
            log.warning("%s dropped the connection (%s: %s)%s", what, type(err).__name__, err,
                        f"; retrying in {delay} s" if delay is not None else "")
            dropped = type(err).__name__
        except BentoMLException as err:  # a 5xx of the inner service, or its batching queue's deadline (503)
            log.warning("%s failed: %s", what, err)
            raise Unavailable(f"{what} failed; retry later, and if this repeats under load raise its "
                              "NFC_*_MAX_LATENCY_MS") from None
        if delay is not None:
            await asyncio.sleep(delay)
    raise Unavailable(f"{what} dropped the connection {len(INNER_RETRY_DELAYS_S) + 1} times ({dropped}); retry later")


def _not_loaded(reason: str | None) -> str:
    return f"the model is not loaded ({reason}); fix the package or NFC_MODEL/NFC_MODEL_PATH and restart"


@bentoml.service(name="nfc-encoder", workers=SETTINGS.encoder_workers, traffic={"timeout": SETTINGS.timeout_s},
                 runner_connection=RUNNER_CONNECTION)
class EncoderService:
    """News articles -> pooled article vectors with the package's tokenizer and encoder graph (internal)."""

    bento_model = MODEL

    def __init__(self) -> None:
        settings = ServeSettings.from_env()

        def build(folder: Path) -> tuple[str, NewsEncoder]:
            manifest = load_verified_manifest(folder)
            encoder = NewsEncoder(manifest, settings.device, settings.ort_variant, settings.ort_threads)
            return manifest.data["encoder"]["fingerprint"], encoder

        loaded, self.model_error = load_package(settings, build)
        # the fingerprint lets a portfolio worker check that the package it serves fits this encoder
        self.fingerprint, self.encoder = loaded if loaded is not None else (None, None)
        self.cached = None if self.encoder is None else vector_cache(self.encoder, settings)

    def __is_ready__(self) -> bool:
        return self.encoder is not None

    @bentoml.on_shutdown
    def stop(self) -> None:
        if self.cached is not None:
            self.cached.close()

    @bentoml.api(**batching(SETTINGS.encoder_max_batch, SETTINGS.encoder_max_latency_ms))
    def encode(self, texts: list[str]) -> Annotated[np.ndarray, JSON]:
        """(len(texts), D) float32 vectors; texts longer than the encoder's max_length are cut and counted."""
        if self.cached is None:
            raise ServiceUnavailable(_not_loaded(self.model_error))
        return self.cached.encode(texts)

    @bentoml.api
    def info(self) -> Annotated[dict[str, Any], JSON]:
        """Provider, batch statistics, truncation count and encoder fingerprint of this worker; without a
        model, why not (`error`), so the portfolio service can say it (BentoML hides a 5xx's message)."""
        if self.encoder is None:
            return {"error": _not_loaded(self.model_error)}
        return {"provider": self.encoder.provider, "execution": self.encoder.graph.info(),
                "batches": self.encoder.stats.snapshot(),
                "truncated_texts": self.encoder.truncated_texts, "fingerprint": self.fingerprint,
                "vector_cache": self.cached.info() if self.cached else {}}


@bentoml.service(name="nfc-fusion", workers=SETTINGS.fusion_workers, traffic={"timeout": SETTINGS.timeout_s},
                 runner_connection=RUNNER_CONNECTION)
class FusionService:
    """Prepared window parts -> fusion inputs -> logits and weights, concurrent jobs merged into one run (internal)."""

    def __init__(self) -> None:
        settings = ServeSettings.from_env()
        self.runtimes = RuntimeCache(lambda folder: PortfolioRuntime.load(
            folder, settings.device, settings.ort_variant, settings.ort_threads, with_encoder=False))

    @bentoml.api(**batching(SETTINGS.predict_max_batch, SETTINGS.predict_max_latency_ms))
    async def run(self, jobs: list[FusionJob]) -> Annotated[list[FusionOutcome], JSON]:
        """One fusion run per package among `jobs` (one, but for a batch that spans a model swap)."""
        outcomes: dict[int, FusionOutcome] = {}
        for package in dict.fromkeys(job.package for job in jobs):
            group = [i for i, job in enumerate(jobs) if job.package == package]
            try:
                runtime = await self.runtimes.get(package, jobs[group[0]].version)
                logits, weights = await anyio.to_thread.run_sync(
                    runtime.run, [runtime.window_inputs(**jobs[i].parts()) for i in group])
            except ServingError as err:
                outcomes.update({i: FusionOutcome(status=int(err.status), error=err.message) for i in group})
            else:
                outcomes.update({i: FusionOutcome(logits=logits[k].tolist(), weights=weights[k].tolist())
                                 for k, i in enumerate(group)})
        return [outcomes[i] for i in range(len(jobs))]

    @bentoml.api
    async def info(self, package: str, version: str) -> Annotated[dict[str, Any], JSON]:
        """Provider, graph variant and batch statistics of `package` in this worker (loaded if it was not);
        `error` when it cannot be loaded."""
        try:
            runtime = await self.runtimes.get(package, version)
        except ServingError as err:
            return {"error": err.message}
        return {"provider": runtime.provider, "execution": runtime.graph.info(), "batches": runtime.stats.snapshot()}


@bentoml.service(name="neuralfusion", workers=SETTINGS.workers, traffic={"timeout": SETTINGS.timeout_s},
                 runner_connection=RUNNER_CONNECTION)
@bentoml.asgi_app(read_app(), path="/")  # GET /latest, /history, /model_info (serving/read_routes.py)
class PortfolioService:
    """Portfolio weights from OHLCV bars and news, stored in MongoDB; HTTP and gRPC (module docstring)."""

    bento_model = MODEL
    encoder = bentoml.depends(EncoderService)
    fusion = bentoml.depends(FusionService)

    def __init__(self) -> None:
        self.settings = ServeSettings.from_env()
        self.limits = RequestLimits.from_env()
        self.model = ServedModel(self.settings, self._encoder_fingerprint)
        self.store: PredictionStore | None = None
        self.grpc: GrpcServer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._indexed = False
        self._checked: PortfolioRuntime | None = None  # the runtime both inner services were found to run
        self.references = ReferenceSources(self.settings, self.limits)  # /predict/at's sources (opened on use)
        self.prepare_threads = anyio.CapacityLimiter(self.settings.prepare_threads)  # NFC_PREPARE_THREADS
        # the vectors the encoder service answered this worker: a request whose texts it saw makes no encoder call
        self.known_vectors = KnownVectors(self.settings.vector_cache_size)

    @bentoml.on_startup
    async def start(self) -> None:
        """Open MongoDB (an unreachable server only delays readiness), then the gRPC front if configured."""
        self.store = PredictionStore(self.settings.mongo_uri, database=self.settings.mongo_db,
                                     server_selection_timeout_ms=self.settings.mongo_timeout_ms)
        try:
            await self._ensure_indexes()
        except StoreError as err:
            log.warning("MongoDB is not reachable yet (%s); the service is not ready until it is", err)
        if self.settings.grpc_port is not None:
            self.grpc = GrpcServer(self, self.settings, self.settings.max_body_bytes or self.limits.max_body_bytes)
            await self.grpc.start()
        if self.settings.reload_interval_s is not None:
            self._follower = asyncio.create_task(self.model.follow_tag(self.settings.reload_interval_s))

    @bentoml.on_shutdown
    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        if self.grpc is not None:
            await self.grpc.stop()
        if self.store is not None:
            await self.store.close()
        self.references.close()

    async def __is_ready__(self) -> bool:
        return await self.is_ready()

    async def is_ready(self) -> bool:
        """The model is loaded, both inner services run it, and MongoDB answers."""
        if self.model.runtime is None or self.store is None:
            return False
        try:
            await self._check_inner_services(self.model.runtime)
            await self.store.ping()
        except (ServingError, StoreError):
            return False
        return True

    @property
    def runtime(self) -> PortfolioRuntime | None:
        return self.model.runtime

    # -- HTTP routes --------------------------------------------------------------------------------------

    @bentoml.api(route="/predict")
    @_http_errors
    async def predict(self, request: PredictRequest, /) -> PredictionOut:
        """Portfolio weights for the bars after the request's last bar, stored in MongoDB before they are
        returned. A repeat of a stored request answers the stored prediction with `duplicate: true`; other
        inputs for a stored (model version, as-of) are a 409 naming the stored request id."""
        return await self.predict_inline(lambda: columns_from_rows(request))

    @bentoml.api(route="/predict/columns")
    @_http_errors
    async def predict_columns(self, request: PredictColumnsRequest, /) -> PredictionOut:
        """/predict with the bars and news as arrays, one per field: the same checks, weights and inputs hash,
        without an object per bar. Times are RFC 3339 strings with an offset or epoch nanoseconds."""
        return await self.predict_inline(lambda: columns_from_json(request))

    @bentoml.api(route="/predict/arrow")
    @_http_errors
    async def predict_arrow(self, body: Annotated[bytes, ContentType(ARROW_MEDIA_TYPE)], /) -> PredictionOut:
        """/predict with the request as an Arrow IPC stream: one record batch of one row whose `bars` and `news`
        columns are lists of structs and `request_id` a string (layout: serving/columns.py ARROW_SCHEMA)."""
        return await self.predict_inline(lambda: columns_from_arrow(body))

    @bentoml.api(route="/predict/at")
    @_http_errors
    async def predict_at(self, request: PredictAtRequest, /) -> PredictionOut:
        """Portfolio weights for an as-of bar whose bars and news the service reads from its own sources
        (NFC_BARS_DIR or NFC_CLICKHOUSE_URL, NFC_NEWS_*), stored as /predict stores them (the same inputs give
        the same record and `duplicate: true` the second time). 400: as_of not a bar close of the model's
        calendar, in the future, or another universe; 404: the source lacks those bars; 503: it does not answer."""
        return await self.predict_at_one(request)

    # -- shared by the HTTP and gRPC fronts (serving.grpc_server.PortfolioBackend) ---------------------------

    async def predict_inline(self, read: Callable[[], RequestColumns | CheckedRequest]) -> PredictionOut:
        """Read a body into arrays with `read` (or take a request already checked and hashed, as predictions by
        reference build it), check and prepare it in its own thread, encode its texts and run the fusion graph in
        the inner services (batched with concurrent requests there), store it, and answer what MongoDB holds."""
        runtime = self._runtime()  # read once: a swap meanwhile does not mix versions in this answer
        await self._check_inner_services(runtime)
        prepared, inputs_hash = await anyio.to_thread.run_sync(
            _prepare, runtime, read, self.limits, self.settings.as_of_lead_bars, limiter=self.prepare_threads)
        if prepared.texts:
            vectors = await self.known_vectors.vectors(
                runtime.manifest.data["encoder"]["fingerprint"], prepared.texts, runtime.embed_dim,
                lambda texts: call_inner(lambda: self.encoder.to_async.encode(texts), "the encoder service"))
        else:  # nothing to encode, but the answer still needs the model whole: a broken encoder is a 503
            await self._encoder_info()
            vectors = np.zeros((0, runtime.embed_dim), dtype=np.float32)
        job = FusionJob.of(runtime.manifest.root, runtime.version, runtime.job_parts(prepared, vectors))
        [outcome] = await call_inner(lambda: self.fusion.to_async.run([job]), "the fusion service")
        if outcome.logits is None or outcome.weights is None:
            raise error_for_status(outcome.status, outcome.error or "the fusion service failed")
        record = runtime.record(prepared, np.array(outcome.logits), np.array(outcome.weights))
        return await self._save(record.with_inputs(inputs_hash))

    async def predict_at_one(self, query: PredictAtRequest) -> PredictionOut:
        """Read the as-of bar's bars and news in a thread and `predict_inline` them, unless MongoDB holds that
        bar's prediction from the same inputs (serving/by_reference.py)."""
        runtime = self._runtime()
        return await predict_by_reference(
            self.references, ModelWindow.of(runtime), query,
            lambda as_of: self._store_call(lambda store: store.get(runtime.version, as_of)),
            lambda checked: self.predict_inline(lambda: checked), self.prepare_threads)

    async def query_model_info(self) -> ModelInfo:
        """The served model: version, universe, window, execution providers, batch statistics."""
        runtime = self._runtime()
        encoder = await self._encoder_info()
        fusion = await self._fusion_info(runtime)
        data = runtime.manifest.data
        return ModelInfo(
            version=runtime.version, created=data["created"], symbols=list(runtime.universe.symbols),
            interval=runtime.bar_spec.interval, calendar=runtime.bar_spec.calendar, lookback=runtime.lookback,
            horizon=runtime.horizon,
            bars_needed=runtime.bars_needed, top_k=data["portfolio"]["top_k"], features=data["features"]["names"],
            encoder_max_length=data["encoder"]["max_length"],
            parity_passed=all(row["passed"] for row in data["parity"]),
            providers={"fusion": fusion["provider"], "encoder": encoder["provider"]},
            execution={"fusion": fusion["execution"], "encoder": encoder["execution"]},
            batches={"fusion": fusion["batches"], "encoder": encoder["batches"]},
            truncated_texts=encoder["truncated_texts"], refused_model=self.model.refused,
            vector_cache=encoder["vector_cache"])

    async def query_latest(self, model_version: str | None) -> PredictionOut:
        record = await self._store_call(lambda store: store.latest(model_version))
        if record is None:
            scope = f" for model version {model_version!r}" if model_version else ""
            raise NotFound(f"no prediction is stored yet{scope}; POST /predict first")
        return PredictionOut.from_record(record)

    async def query_history(self, query: HistoryQuery) -> HistoryOut:
        page = await self._store_call(lambda store: store.history(
            query.start, query.end, query.model_version, query.limit, query.before))
        return HistoryOut(items=[PredictionOut.from_record(r) for r in page.items], next_before=page.next_before)

    # -- internals ---------------------------------------------------------------------------------------------

    def _runtime(self) -> PortfolioRuntime:
        if self.model.runtime is None:
            raise Unavailable(_not_loaded(self.model.error))
        return self.model.runtime

    async def _encoder_info(self) -> dict[str, Any]:
        """The encoder service's `info`; Unavailable when it does not answer or has no model."""
        info = await call_inner(self.encoder.to_async.info, "the encoder service")
        if "error" in info:
            raise Unavailable(f"the encoder service has no model: {info['error']}")
        return info

    async def _encoder_fingerprint(self) -> str:
        return (await self._encoder_info())["fingerprint"]

    async def _fusion_info(self, runtime: PortfolioRuntime) -> dict[str, Any]:
        """The fusion service's `info` on `runtime`'s package (loading it there); Unavailable when it cannot."""
        info = await call_inner(lambda: self.fusion.to_async.info(str(runtime.manifest.root), runtime.version),
                                "the fusion service")
        if "error" in info:
            raise Unavailable(info["error"])
        return info

    async def _check_inner_services(self, runtime: PortfolioRuntime) -> None:
        """Unavailable unless the encoder service runs `runtime`'s encoder and the fusion service holds its package
        (asked once per runtime)."""
        if self._checked is runtime:
            return
        mismatch = await self.model.encoder_mismatch(runtime)
        if mismatch is not None:
            raise Unavailable(f"the model cannot run: {mismatch}")
        await self._fusion_info(runtime)
        self._checked = runtime

    async def _ensure_indexes(self) -> None:
        """The unique index that makes writes idempotent must exist before the first write."""
        if not self._indexed and self.store is not None:
            await self.store.ensure_indexes()
            self._indexed = True

    async def _save(self, record: PredictionRecord) -> PredictionOut:
        """Store `record` and answer what MongoDB holds: it, the same prediction stored before from the same
        inputs (`duplicate`), or a Conflict naming the request whose prediction holds the key."""
        async def save(store: PredictionStore) -> Any:
            await self._ensure_indexes()
            return await store.save([record])
        [result] = await self._store_call(save, "the prediction was not stored; ")
        if result.outcome is SaveOutcome.CONFLICT:
            raise Conflict(f"model version {record.model_version} already has a prediction stored for as_of "
                           f"{record.as_of.isoformat()} from other inputs (request id {result.held.request_id!r}); "
                           "nothing was written: send the same inputs to read it back, or read it with /history")
        return PredictionOut.from_record(result.held, duplicate=result.outcome is SaveOutcome.ALREADY_PRESENT)

    async def _store_call(self, call: Callable[[PredictionStore], Awaitable[T]], consequence: str = "") -> T:
        """Run a store operation: MongoDB trouble is Unavailable (with `consequence`), a bad argument a 400."""
        if self.store is None:
            raise Unavailable("the prediction store is not open yet; retry in a moment")
        try:
            return await call(self.store)
        except StoreError as err:
            raise Unavailable(f"{err}; {consequence}retry when MongoDB answers") from None
        except ValueError as err:
            raise RequestError(str(err)) from None


PortfolioService.add_asgi_middleware(RequestGuard)
PortfolioService.add_asgi_middleware(OpenAPILabel, api_version=API_VERSION)


def _prepare(runtime: PortfolioRuntime, read: Callable[[], RequestColumns | CheckedRequest], limits: RequestLimits,
             lead_bars: int) -> tuple[PreparedRequest, str]:
    """The request's per-request work: read, checked (one rule set for every body format; a CheckedRequest comes
    checked and hashed), reduced to the model's window, and its inputs hashed."""
    body = read()
    checked = body if isinstance(body, CheckedRequest) else _checked(body, limits)
    check_as_of(checked.frames, runtime.bar_spec.timedelta, lead_bars)
    return runtime.prepare(checked.frames, checked.panel), checked.inputs_sha256


def _checked(columns: RequestColumns, limits: RequestLimits) -> CheckedRequest:
    frames = check_columns(columns, limits)
    return CheckedRequest(frames, inputs_sha256(frames))
