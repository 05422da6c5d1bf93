"""BentoML services: `EncoderService` (texts -> article vectors) and `PortfolioService` (bars + news -> weights).

    bentoml serve serving.service:PortfolioService      # or `nfc serve`, which also starts MongoDB if needed

PortfolioService is the entry service; it calls EncoderService through `bentoml.depends`, so under
`bentoml serve` the encoder runs in its own workers with its own batching queue, and in a `to_asgi()` app
(tests) in the same process. Both batch concurrent calls adaptively. Configuration: `serving.settings`.

HTTP routes (JSON; OpenAPI at /docs.json, Prometheus at /metrics, BentoML's /livez and /readyz):
  POST /predict        a PredictRequest -> PredictionOut, stored in MongoDB before it is returned (API key)
  POST /latest         {"model_version": null} -> the newest stored prediction (404: none yet)
  POST /history        HistoryQuery -> stored predictions in [start, end), newest first, `next_before` pages
  POST /model_info     the served model: version, universe, window, providers, batch statistics
  POST /predict_batch  internal: the batched path behind /predict and gRPC Predict (refuses outside callers)
Errors are `{"error": "..."}` (ours) or BentoML's `{"error", "detail"}` for malformed or invalid JSON, with
4xx for input to fix and nothing written, 401 for a missing/wrong key, 503 while the model is not loaded
or MongoDB is unreachable (nothing reported stored). gRPC (NFC_GRPC_PORT): serving/grpc_server.py.

Readiness (/readyz, gRPC health): the model package loaded and verified, and MongoDB answering a ping. A
missing or altered package leaves the service up but never ready, and /predict answers 503: it never
serves weights from another model.

Model swaps without a restart: with NFC_RELOAD_INTERVAL_S set, each portfolio worker resolves the store tag
NFC_MODEL (e.g. `neuralfusion:latest`: the newest entry labelled promoted, serving/model_store.py) that often
and, when it names another version, loads and verifies
that package beside the current one and then replaces the runtime in one assignment. A batch reads the
runtime once and uses it from preparation to the stored record, so every answer comes from one version and
names it (`model_version`). A package that fails to load, or whose encoder differs from the one the encoder
service runs (that would need a restart), is refused with the reason in the log, and the current one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiohttp
import anyio.to_thread
import attrs
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from neuralfusion.redact import install_log_redaction
from serving.errors import ServingError, check_api_key
from serving.model_store import load_verified_manifest, resolve_model_tag
from serving.schemas import HistoryOut, HistoryQuery, PredictionOut, PredictRequest, RequestError
from serving.settings import ServeSettings
from serving.store import PredictionRecord, PredictionStore, StoreError

with bentoml.importing():  # runtime-only: `bentoml build` works without onnxruntime and grpcio installed
    from serving.grpc_server import GrpcServer
    from serving.runtime import NewsEncoder, PortfolioRuntime, PreparedRequest

__all__ = ["EncoderService", "ModelInfo", "PortfolioService", "PredictJob", "PredictOutcome"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# batching and worker counts are decorator arguments, so they are read when this module is imported
SETTINGS = ServeSettings.from_env()
install_log_redaction()  # the workers' log lines never show the passwords of NFC_MONGO_URI & co or NFC_API_KEY
# the package comes from the model store (and `bentoml build` packs it) unless a folder is named
MODEL = None if SETTINGS.model_path else bentoml.models.BentoModel(SETTINGS.model)
# the in-process clients (self.to_async, depends) otherwise recycle their session every 100 requests and
# drop the calls in flight at that moment (BentoML 1.4's default connection limits)
RUNNER_CONNECTION = {"max_requests": 1_000_000_000, "max_age": 1e9}
# how a call to the encoder service over its socket fails when the connection drops under load (the client
# is aiohttp): BrokenPipeError, ConnectionResetError, aiohttp's ServerDisconnectedError and the like
CONNECTION_ERRORS = (ConnectionError, aiohttp.ClientConnectionError)


def batching(max_batch: int, max_latency_ms: int) -> dict[str, Any]:
    """`bentoml.api` arguments for a queue of at most `max_batch` rows. BentoML refuses max_batch_size=1, and a
    batch of one is no batching: then the API is declared not batchable and each call runs alone."""
    if max_batch < 2:
        return {}
    return {"batchable": True, "max_batch_size": max_batch, "max_latency_ms": max_latency_ms}


class PredictJob(BaseModel):
    """Internal: one prepared request on its way through the batched path. The request itself stays in the
    worker (`PortfolioService._jobs`), so it is not serialised and validated a second time."""

    job: str = Field(description="Id of a prepared request waiting in this worker.")
    token: str = Field(description="Proves the job comes from this worker's /predict or gRPC front.")


class PredictOutcome(BaseModel):
    """Internal: the answer to one job; a failure carries its HTTP status and what to do."""

    prediction: PredictionOut | None = None
    status: int = 200
    error: str | None = None


class ModelInfo(BaseModel):
    """The model this server answers with, and how it runs."""

    version: str = Field(description="Model package version; every stored prediction carries it.")
    created: str = Field(description="When the package was exported (UTC).")
    symbols: list[str] = Field(description="The universe, in the order of weights and logits.")
    interval: str = Field(description="Bar interval, e.g. 3min.")
    lookback: int = Field(description="Bars the model reads.")
    horizon: int = Field(description="Bars the weights are meant to be held.")
    bars_needed: int = Field(description="Bars per symbol a request must cover: feature warm-up + lookback.")
    top_k: int = Field(description="Assets held long or short.")
    features: list[str] = Field(description="Per-asset market features, computed by the server from the bars.")
    encoder_max_length: int = Field(description="Tokens per article read by the encoder; longer ones are cut.")
    parity_passed: bool = Field(description="Whether every ONNX-vs-PyTorch parity check passed at export.")
    providers: dict[str, str] = Field(description="ONNX Runtime execution provider in use per graph.")
    execution: dict[str, dict[str, str]] = Field(
        description="Per graph: the provider in use, the graph variant (fp32, cpu, fp16) and why that device, "
                    "e.g. 'cuda unavailable, fell back to the CPU: ...'.")
    batches: dict[str, dict[str, Any]] = Field(description="Batches run per graph in this worker, by size.")
    truncated_texts: int = Field(description="Articles cut to encoder_max_length in the encoder's worker.")
    refused_model: str | None = Field(None, description="The last model swap refused in this worker, and why.")


def _http_errors(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A ServingError becomes `{"error": message}` with its status (BentoML sends a returned Response as is)."""
    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except ServingError as err:
            ctx = kwargs.get("ctx")
            if isinstance(ctx, bentoml.Context):  # BentoML gives the responses of APIs with a context its status
                ctx.response.status_code = err.status
            return JSONResponse({"error": err.message}, status_code=err.status)  # type: ignore[return-value]
    return wrapper


def _load(settings: ServeSettings, service: Any, build: Callable[[Path], T],
          folder: Path | None = None) -> tuple[T | None, str | None]:
    """`build(package folder)`, or (None, why) when the package is missing, altered or unreadable: the
    service then stays up but not ready, and says why, instead of crashing its worker in a restart loop.
    The folder is `folder`, else NFC_MODEL_PATH, else the store entry NFC_MODEL resolves to (`resolve_model_tag`)."""
    try:
        # the store is read only here, when a package is loaded: `name:latest` is the newest promoted entry
        if folder is None:
            folder = Path(settings.model_path) if settings.model_path else Path(
                bentoml.models.get(resolve_model_tag(settings.model)).path)
        return build(folder), None
    except Exception as err:  # any failure to load means "not ready", with the reason
        reason = f"{type(err).__name__}: {err}"
        log.error("model not loaded, the service will not become ready: %s", reason)
        return None, reason


@dataclass(frozen=True)
class _Job:
    """A request prepared by the runtime that was served when it arrived (a swap may replace that one)."""

    request: PredictRequest
    runtime: PortfolioRuntime
    prepared: PreparedRequest


async def retry_once_on_disconnect(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`call()`, once more when its connection dropped (CONNECTION_ERRORS); a second drop is a 503 ServingError
    naming `what`, never an unhandled 500."""
    try:
        return await call()
    except CONNECTION_ERRORS as err:
        log.warning("%s dropped the connection (%s: %s); retrying once", what, type(err).__name__, err)
    try:
        return await call()
    except CONNECTION_ERRORS as err:
        raise ServingError(503, f"{what} dropped the connection twice ({type(err).__name__}); retry later") from None


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

        loaded, self.model_error = _load(settings, self, build)
        # the fingerprint lets a portfolio worker check that a package it swaps in fits this encoder
        self.fingerprint, self.encoder = loaded if loaded is not None else (None, None)

    def __is_ready__(self) -> bool:
        return self.encoder is not None

    @bentoml.api(**batching(SETTINGS.encoder_max_batch, SETTINGS.encoder_max_latency_ms))
    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float32 vectors; texts longer than the encoder's max_length are cut and counted."""
        if self.encoder is None:
            raise ServiceUnavailable(_not_loaded(self.model_error))
        return self.encoder.encode(texts).vectors

    @bentoml.api
    def info(self) -> dict[str, Any]:
        """Provider, batch statistics and truncation count of this encoder worker."""
        if self.encoder is None:
            raise ServiceUnavailable(_not_loaded(self.model_error))
        return {"provider": self.encoder.provider, "execution": self.encoder.graph.info(),
                "batches": self.encoder.stats.snapshot(),
                "truncated_texts": self.encoder.truncated_texts, "fingerprint": self.fingerprint}


@bentoml.service(name="neuralfusion", workers=SETTINGS.workers, traffic={"timeout": SETTINGS.timeout_s},
                 runner_connection=RUNNER_CONNECTION)
class PortfolioService:
    """Portfolio weights from OHLCV bars and news, stored in MongoDB; HTTP and gRPC (module docstring)."""

    bento_model = MODEL
    encoder = bentoml.depends(EncoderService)

    def __init__(self) -> None:
        self.settings = ServeSettings.from_env()
        self.runtime, self.model_error = _load(self.settings, self, self._build_runtime)
        self.store: PredictionStore | None = None
        self.grpc: GrpcServer | None = None
        self.refused_model: str | None = None  # "<tag>: <why>" of the last swap refused
        self._follower: asyncio.Task[None] | None = None
        self._indexed = False
        self._token = secrets.token_hex(16)  # per worker: /predict_batch serves only this worker's own jobs
        self._jobs: dict[str, _Job] = {}  # prepared requests waiting for their batch, by job id

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
            self.grpc = GrpcServer(self, self.settings.api_key, self.settings.grpc_host, self.settings.grpc_port)
            await self.grpc.start()
        if self.settings.reload_interval_s is not None:
            self._follower = asyncio.create_task(self.follow_model_tag(self.settings.reload_interval_s))

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

    async def __is_ready__(self) -> bool:
        return await self.is_ready()

    async def is_ready(self) -> bool:
        """The model is loaded and MongoDB answers."""
        if self.runtime is None or self.store is None:
            return False
        try:
            await self.store.ping()
        except StoreError:
            return False
        return True

    # -- HTTP routes --------------------------------------------------------------------------------------

    @bentoml.api(route="/predict")
    @_http_errors
    async def predict(self, request: PredictRequest, /, ctx: bentoml.Context) -> PredictionOut:
        """Portfolio weights for the bars after the request's last bar, stored in MongoDB before they are
        returned. Needs the API key when the server has one (NFC_API_KEY)."""
        check_api_key(self.settings.api_key, ctx.request.headers)
        return await self.predict_one(request)

    @bentoml.api(route="/latest")
    @_http_errors
    async def latest(self, model_version: str | None = None) -> PredictionOut:
        """The stored prediction with the newest as_of, of `model_version` or of any version."""
        return await self.query_latest(model_version)

    @bentoml.api(route="/history")
    @_http_errors
    async def history(self, query: HistoryQuery, /) -> HistoryOut:
        """Stored predictions with start <= as_of < end, newest first; pass `next_before` as `before` for more."""
        return await self.query_history(query)

    @bentoml.api(route="/model_info")
    @_http_errors
    async def model_info(self) -> ModelInfo:
        """The served model: version, universe, window, execution providers, batch statistics."""
        runtime = self._runtime()
        try:
            encoder = await retry_once_on_disconnect(self.encoder.to_async.info, "the encoder service")
        except BentoMLException as err:
            raise ServingError(503, f"the encoder service is not answering: {err}") from None
        data = runtime.manifest.data
        return ModelInfo(
            version=runtime.version, created=data["created"], symbols=list(runtime.universe.symbols),
            interval=runtime.bar_spec.interval, lookback=runtime.lookback, horizon=runtime.horizon,
            bars_needed=runtime.bars_needed, top_k=data["portfolio"]["top_k"], features=data["features"]["names"],
            encoder_max_length=data["encoder"]["max_length"],
            parity_passed=all(row["passed"] for row in data["parity"]),
            providers={"fusion": runtime.provider, "encoder": encoder["provider"]},
            execution={"fusion": runtime.graph.info(), "encoder": encoder["execution"]},
            batches={"fusion": runtime.stats.snapshot(), "encoder": encoder["batches"]},
            truncated_texts=encoder["truncated_texts"], refused_model=self.refused_model)

    @bentoml.api(**batching(SETTINGS.predict_max_batch, SETTINGS.predict_max_latency_ms))
    async def predict_batch(self, jobs: list[PredictJob]) -> list[PredictOutcome]:
        """Internal (use /predict): the prepared requests of concurrent /predict and gRPC calls, merged by
        BentoML's adaptive batching, go through the encoder and the fusion graph together and are stored in one
        write. A bad request fails alone; jobs without this worker's token are refused, and a job id this worker
        does not hold fails with a message saying so."""
        outcomes: dict[int, PredictOutcome] = {}
        held: dict[int, _Job] = {}
        for i, job in enumerate(jobs):
            if not secrets.compare_digest(job.token.encode(), self._token.encode()):
                outcomes[i] = PredictOutcome(status=403, error="/predict_batch is internal; call /predict")
            elif (entry := self._jobs.pop(job.job, None)) is None:
                outcomes[i] = PredictOutcome(status=500, error=f"job {job.job!r} is not waiting in this worker "
                                                               "(answered already, or never prepared here)")
            else:
                held[i] = entry
        try:
            runtime = self._runtime()
            # the batch runs on one runtime: a job prepared before a model swap is prepared again on this one
            stale = [i for i, entry in held.items() if entry.runtime is not runtime]
            again = await anyio.to_thread.run_sync(_prepare_all, runtime, [held[i].request for i in stale])
            prepared: dict[int, PreparedRequest | str] = {i: entry.prepared for i, entry in held.items()}
            prepared.update(zip(stale, again, strict=True))
            ready = [(i, item) for i, item in prepared.items() if not isinstance(item, str)]
            outcomes.update({i: PredictOutcome(status=400, error=item)
                             for i, item in prepared.items() if isinstance(item, str)})
            records = await self._run_models(runtime, [item for _, item in ready])
            await self._save(records)
        except ServingError as err:
            outcomes.update({i: PredictOutcome(status=err.status, error=err.message)
                             for i in held if i not in outcomes})
        else:
            outcomes.update({i: PredictOutcome(prediction=PredictionOut.from_record(record, stored=True))
                             for (i, _), record in zip(ready, records, strict=True)})
        return [outcomes[i] for i in range(len(jobs))]

    # -- shared by the HTTP and gRPC fronts (serving.grpc_server.PortfolioBackend) ---------------------------

    async def predict_one(self, request: PredictRequest) -> PredictionOut:
        """One request prepared in its own thread (the per-request work), then through the batched path (the
        work a batch shares); failures are ServingError."""
        runtime = self._runtime()
        [prepared] = await anyio.to_thread.run_sync(_prepare_all, runtime, [request])
        if isinstance(prepared, str):
            raise ServingError(400, prepared)
        job = uuid.uuid4().hex
        self._jobs[job] = _Job(request, runtime, prepared)
        try:
            [outcome] = await self.to_async.predict_batch([PredictJob(job=job, token=self._token)])
        except BentoMLException as err:  # refused by the batching queue (503: deadline) or failed in it
            raise ServingError(err.error_code, f"the batched prediction path failed ({err}); retry later, and if "
                                               "this repeats under load raise NFC_PREDICT_MAX_LATENCY_MS") from None
        finally:
            self._jobs.pop(job, None)  # still here when the queue refused it
        if outcome.prediction is None:
            raise ServingError(outcome.status, outcome.error or "prediction failed")
        return outcome.prediction

    async def query_latest(self, model_version: str | None) -> PredictionOut:
        record = await self._store_call(lambda store: store.latest(model_version))
        if record is None:
            scope = f" for model version {model_version!r}" if model_version else ""
            raise ServingError(404, f"no prediction is stored yet{scope}; POST /predict first")
        return PredictionOut.from_record(record, stored=True)

    async def query_history(self, query: HistoryQuery) -> HistoryOut:
        page = await self._store_call(lambda store: store.history(
            query.start, query.end, query.model_version, query.limit, query.before))
        return HistoryOut(items=[PredictionOut.from_record(r, stored=True) for r in page.items],
                          next_before=page.next_before)

    # -- model swaps (NFC_RELOAD_INTERVAL_S) -----------------------------------------------------------------------

    async def follow_model_tag(self, interval_s: float) -> None:
        """Every `interval_s`, swap in the package NFC_MODEL resolves to when it is another version."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                resolved = await anyio.to_thread.run_sync(resolve_model_tag, self.settings.model)  # newest promoted
                model = await anyio.to_thread.run_sync(bentoml.models.get, resolved)
                await self.swap_to(str(model.tag), Path(model.path))
            except Exception as err:  # e.g. the store unreadable for a moment: keep serving, try again next time
                log.warning("checking %s for a model swap failed: %s", self.settings.model, err)

    async def swap_to(self, tag: str, folder: Path) -> bool:
        """Load and verify the package in `folder` (model-store `tag`) and make it the served runtime; False
        when that version is already served or was refused (reason in the log and /model_info)."""
        current = self.runtime
        version = bentoml.Tag.from_str(tag).version
        if (current is not None and version == current.version) or (self.refused_model or "").startswith(f"{tag}: "):
            return False
        runtime, error = await anyio.to_thread.run_sync(_load, self.settings, None, self._build_runtime, folder)
        if runtime is not None:
            error = await self._encoder_mismatch(runtime)
        if runtime is None or error is not None:
            self.refused_model = f"{tag}: {error}"
            log.error("model swap to %s refused, still serving %s: %s", tag,
                      current.version if current else "nothing", error)
            return False
        self.runtime, self.model_error = runtime, None  # one assignment: a batch holds the runtime it started with
        log.info("model swapped: now serving %s (was %s)", tag, current.version if current else "nothing")
        return True

    async def _encoder_mismatch(self, runtime: PortfolioRuntime) -> str | None:
        """Why `runtime` cannot run with the encoder service's encoder, or None when it can."""
        wanted = runtime.manifest.data["encoder"]["fingerprint"]
        try:
            running = (await self.encoder.to_async.info())["fingerprint"]
        except BentoMLException as err:
            return f"the encoder service is not answering ({err})"
        if running != wanted:
            return (f"its encoder (fingerprint {wanted[:12]}) is not the one the encoder service runs "
                    f"({running[:12]}); restart the service to change the encoder")
        return None

    def _build_runtime(self, folder: Path) -> PortfolioRuntime:
        return PortfolioRuntime.load(folder, self.settings.device, self.settings.ort_variant,
                                     self.settings.ort_threads, with_encoder=False)

    # -- internals ---------------------------------------------------------------------------------------------

    def _runtime(self) -> PortfolioRuntime:
        if self.runtime is None:
            raise ServingError(503, _not_loaded(self.model_error))
        return self.runtime

    async def _run_models(self, runtime: PortfolioRuntime,
                          prepared: Sequence[PreparedRequest]) -> list[PredictionRecord]:
        """Article vectors from the encoder service for every text of the batch, then one fusion run."""
        texts = [text for item in prepared for text in item.texts]
        vectors = np.zeros((0, runtime.embed_dim), dtype=np.float32)
        if texts:
            try:
                encoded = await retry_once_on_disconnect(lambda: self.encoder.to_async.encode(texts),
                                                         "the encoder service")
                vectors = np.asarray(encoded, dtype=np.float32)
            except BentoMLException as err:
                raise ServingError(503, f"the encoder service failed ({err}); retry later") from None
        return await anyio.to_thread.run_sync(runtime.predict, prepared, vectors)

    async def _ensure_indexes(self) -> None:
        """The unique index that makes writes idempotent must exist before the first write."""
        if not self._indexed and self.store is not None:
            await self.store.ensure_indexes()
            self._indexed = True

    async def _save(self, records: list[PredictionRecord]) -> None:
        async def save(store: PredictionStore) -> None:
            await self._ensure_indexes()
            await store.save(records)
        if records:
            await self._store_call(save, "the predictions were not stored; ")

    async def _store_call(self, call: Callable[[PredictionStore], Awaitable[T]], consequence: str = "") -> T:
        """Run a store operation: MongoDB trouble is a 503 (with `consequence`), a bad argument a 400."""
        if self.store is None:
            raise ServingError(503, "the prediction store is not open yet; retry in a moment")
        try:
            return await call(self.store)
        except StoreError as err:
            raise ServingError(503, f"{err}; {consequence}retry when MongoDB answers") from None
        except ValueError as err:
            raise ServingError(400, str(err)) from None


class _OpenAPI31Service(type(PortfolioService)):  # type: ignore[misc]
    """BentoML 1.4 labels /docs.json "openapi: 3.0.2" but fills it with pydantic's JSON Schema 2020-12 (numeric
    `exclusiveMinimum`, `examples` lists): that is OpenAPI 3.1's schema dialect, and 3.0 tools (schemathesis,
    code generators) refuse the request schemas. Publish the label that matches the content."""

    __slots__ = ()

    @property
    def openapi_spec(self) -> Any:
        return attrs.evolve(super().openapi_spec, openapi="3.1.0")


PortfolioService.__class__ = _OpenAPI31Service


def _prepare_all(runtime: PortfolioRuntime, requests: Sequence[PredictRequest]) -> list[PreparedRequest | str]:
    """Each request prepared, or the message of why it cannot be answered (a client error)."""
    out: list[PreparedRequest | str] = []
    for request in requests:
        try:
            out.append(runtime.prepare(request))
        except RequestError as err:
            out.append(str(err))
    return out

