"""The job behind `nfc predict` (serving/cli.py): one run of the live loop (the seed's 4-hourly job), in this
process or by reference through the service (`--url`: for each as-of bar it would predict, POST /predict/at; the
service reads the bars and news from its own sources, predicts and stores, serving/by_reference.py).

    # live: the latest complete bar from ClickHouse + MongoDB news -> weights -> MongoDB -> Redis
    NFC_MONGO_URI=... NFC_CLICKHOUSE_URL=clickhouse://user:pw@ch:9000/market NFC_REDIS_URL=redis://redis:6379/0 \\
        nfc predict --bars clickhouse --news mongo --model-path /models/package
    nfc predict --data /data/latest --model-path PKG --as-of 2026-03-05T12:00:00Z    # data folder, one bar
    nfc predict --data DIR --model-path PKG --start 2026-03-05T00:00Z --end 2026-03-06T00:00Z --every 80
    nfc predict --url http://nfc:3000 --as-of 2026-03-05T12:00:00Z    # by reference: the service reads its sources
    cron:  0 */4 * * *  cd /srv/nfc && .venv/bin/nfc predict --bars clickhouse --news mongo \\
                        --model-path /models/package >> /var/log/nfc-predict.log 2>&1     (docs/LIVE.md)

Predictions go to the `predictions` collection of $NFC_MONGO_DB (default neuralfusion), as the service's do.
Redis gets the latest prediction as MongoDB holds it (a bar already stored keeps its first answer, and that is
what is published), and its key only moves forward: a run for an older bar than the key holds leaves it.

Order of work, so that a failure stores nothing: take the run lock (a second run exits 1 at once), read every
source, check staleness, build and check every window, predict everything, then store all predictions in one
idempotent bulk write, then publish the latest to Redis, then keep the news read for the next run. A repeated
run over the same bars stores nothing new and says so. Back-fills (`--start/--end`) predict every bar in the
range (or every `--every`-th) through the same windows a live run builds, so they equal `nfc backtest --package`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pymongo
import pymongo.errors

from neuralfusion.client import Client, Prediction, ServiceError
from neuralfusion.data.news import MongoNewsSource, NewsFieldMap
from neuralfusion.dataset import find_data_file
from neuralfusion.errors import DataError
from neuralfusion.redact import encode_userinfo, redact_uri, scrub, uri_secrets
from neuralfusion.specs import BarSpec, Universe
from serving.client import predict_payload
from serving.live_sources import (
    BarReader,
    FileBars,
    FileNews,
    IncrementalMongoNews,
    NewsReader,
    check_staleness,
    grid_bars,
    grid_name,
    live_as_of_bar,
)
from serving.store import PredictionRecord

__all__ = ["Job", "JobError", "run_job", "store_path"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class JobError(RuntimeError):
    """A run that cannot go on (a missing setting, a refused window, a failed publish); the message says what to do."""


@dataclass(frozen=True)
class Model:
    """What the job needs to know of the model, from the package or from the service's /model_info."""

    version: str
    universe: Universe
    bar_spec: BarSpec
    bars_needed: int
    lookback: int  # the bars whose news the model reads
    runtime: Any = None  # serving.runtime.PortfolioRuntime in this process; None through the service


@dataclass(frozen=True)
class Job:
    """One run's settings, checked by the command line."""

    data_dir: Path | None  # files, or None for ClickHouse + MongoDB
    clickhouse: dict[str, Any] | None  # ClickHouseBarSource options
    news: tuple[str, str, NewsFieldMap] | None  # MongoDB database, collection, field map
    package: Path | None  # in this process, or None with `url`
    url: str | None
    as_of: pd.Timestamp | None
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    every: int
    limit: pd.Timedelta  # staleness limit
    state_dir: Path
    redis_key: str | None
    redis_channel: str | None
    request_prefix: str
    api_key_env: str = "NFC_API_KEY"  # with `url`: the variable holding the service's API key


def run_job(job: Job) -> dict[str, Any]:
    """One run (the caller holds the lock); returns its summary. Raises DataError, ValueError, JobError, StoreError."""
    model = _load_model(job)
    summary = _by_reference(job, model) if model.runtime is None else _local(job, model)
    summary["published"] = _publish(summary.pop("latest_record"), job.redis_key, job.redis_channel)
    return summary


def _local(job: Job, model: Model) -> dict[str, Any]:
    """Read the sources here, build every window, predict them in this process and store them."""
    clock = model.bar_spec.clock
    with ExitStack() as sources:
        bar_reader, source = _bar_reader(job, sources)
        news_reader = _news_reader(job, sources)
        times = _as_of_times(bar_reader, model, job)
        first = clock.earlier(times[0], model.bars_needed + 1) - job.limit
        raw = bar_reader.load(model.universe.symbols, first, times[-1])
        if raw["timestamp"].max() < times[-1]:
            raise DataError(f"the as-of bar {times[-1].isoformat()} is not complete: the newest bar closes at "
                            f"{raw['timestamp'].max().isoformat()}", source=source)
        check_staleness(raw, model.universe.symbols, times, job.limit, clock, source)
        bars = grid_bars(raw, model.universe, model.bar_spec, source)
        news = news_reader.load(first, times[-1])
        payloads = [predict_payload(bars, news, when, model.bars_needed, clock,
                                    f"{job.request_prefix}-{when.isoformat()}", news_bars=model.lookback)
                    for when in times]
        summary = _in_process(model, payloads, times, job.state_dir)
        if isinstance(news_reader, IncrementalMongoNews):
            news_reader.commit()
            summary["news_new_items"] = news_reader.new_items
    return summary


def _load_model(job: Job) -> Model:
    if job.url is not None:
        with _client(job) as client:
            info = _ask_service(job, "the model's description", client.model_info)
        return Model(version=info.version, universe=Universe(symbols=info.symbols),
                     bar_spec=BarSpec(interval=info.interval, calendar=info.calendar),
                     bars_needed=info.bars_needed, lookback=info.lookback)
    from serving.runtime import PortfolioRuntime

    runtime = PortfolioRuntime.load(job.package or Path())
    return Model(version=runtime.version, universe=runtime.universe, bar_spec=runtime.bar_spec,
                 bars_needed=runtime.bars_needed, lookback=runtime.lookback, runtime=runtime)


def _bar_reader(job: Job, stack: ExitStack) -> tuple[BarReader, str]:
    """The bar reader and how errors name it; a ClickHouse connection is closed with `stack`."""
    if job.data_dir is not None:
        return FileBars(find_data_file(job.data_dir, "bars", (".parquet", ".csv"))), str(job.data_dir)
    from neuralfusion.data.clickhouse import ClickHouseBarSource

    uri = os.environ.get("NFC_CLICKHOUSE_URL")
    if not uri:
        raise JobError("set NFC_CLICKHOUSE_URL (clickhouse://user:password@host:9000/database) for --bars clickhouse")
    source = stack.enter_context(ClickHouseBarSource.from_url(uri, **(job.clickhouse or {})))
    return source, source.source


def _news_reader(job: Job, stack: ExitStack) -> NewsReader:
    """The news reader; a MongoDB client opened for it is closed with `stack`."""
    if job.data_dir is not None:
        return FileNews(find_data_file(job.data_dir, "news", (".jsonl", ".parquet")))
    uri = os.environ.get("NFC_NEWS_MONGO_URI") or os.environ.get("NFC_MONGO_URI")
    if not uri or job.news is None:
        raise JobError("set NFC_NEWS_MONGO_URI (or NFC_MONGO_URI) for --news mongo")
    db, collection, fields = job.news
    try:
        client = stack.enter_context(pymongo.MongoClient(encode_userinfo(uri), serverSelectionTimeoutMS=10_000,
                                                         tz_aware=True))
    except (pymongo.errors.PyMongoError, ValueError) as err:  # InvalidURI repeats the URI, password included
        raise JobError(f"cannot open the news MongoDB at {redact_uri(uri)}: {scrub(err, uri_secrets(uri))}") from None
    return IncrementalMongoNews(MongoNewsSource(client[db][collection], fields),
                                job.state_dir / f"news-{db}-{collection}.parquet")


def _as_of_times(bars: BarReader, model: Model, job: Job) -> list[pd.Timestamp]:
    """The as-of bars of this run, on the model's grid: a back-fill range, one bar, or (live) the latest
    complete bar (`live_as_of_bar`: on an exchange calendar a shut market is not a stale feed)."""
    clock = model.bar_spec.clock
    if job.start is not None and job.end is not None:
        times = list(clock.closes(job.start, job.end)[::job.every])
        if not times:
            raise ValueError(f"the back-fill range {job.start.isoformat()}..{job.end.isoformat()} holds no "
                             f"{grid_name(model.bar_spec)} bar")
        return times
    if job.as_of is not None:
        _check_on_grid(job.as_of, model)
        return [job.as_of]
    now = pd.Timestamp.now(tz="UTC")
    if isinstance(bars, FileBars):
        last = bars.latest()
    else:  # from the grid bar before the one due: enough to tell whether the due bar is there
        last = bars.load(model.universe.symbols, clock.earlier(clock.last_close(now - job.limit), 1),
                         now)["timestamp"].max()
    return [live_as_of_bar(clock, last, now, job.limit)]


def _check_on_grid(as_of: pd.Timestamp, model: Model) -> None:
    clock = model.bar_spec.clock
    if not clock.is_close(as_of):
        raise ValueError(f"--as-of {as_of.isoformat()} is not on the {grid_name(model.bar_spec)} bar grid: "
                         f"the last bar closing before it closed at {clock.last_close(as_of).isoformat()}")


def _in_process(model: Model, payloads: Sequence[dict[str, Any]], times: Sequence[pd.Timestamp],
                state_dir: Path) -> dict[str, Any]:
    """Check every window, embed its news (cached), predict all, then store all in one bulk write."""
    from neuralfusion.embeddings import ParquetEmbeddingCache, embed_cached
    from serving.errors import ServingError
    from serving.schemas import PredictRequest

    runtime = model.runtime
    prepared = []
    for payload, when in zip(payloads, times, strict=True):
        try:
            prepared.append(runtime.prepare(PredictRequest.model_validate(payload)))
        except (ServingError, ValueError) as err:  # a RequestError is a ServingError; pydantic's are ValueErrors
            raise JobError(f"cannot predict for {when.isoformat()}: {err}") from None
    texts = [text for item in prepared for text in item.texts]
    encoder = runtime.encoder
    embedded = embed_cached(texts, encoder.vector_key, lambda batch: _encode(encoder, batch),
                            [ParquetEmbeddingCache(state_dir / "embeddings.parquet")])
    vectors = embedded.vectors.reshape(len(texts), runtime.embed_dim)
    records = runtime.predict(prepared, vectors)
    outcomes, held = asyncio.run(_save(records))
    stored = sum(outcome == "stored" for outcome in outcomes)
    message = (f"stored {stored} new predictions of {len(records)}" if stored else
               f"nothing new: all {len(records)} predictions for {model.version} were already in MongoDB")
    return {"model_version": model.version, "mode": "in-process", "stored": stored,
            "already_present": len(records) - stored, "message": message,
            "embeddings": {"cached": embedded.n_cached, "computed": embedded.n_computed},
            "predictions": [_prediction(record, outcome) for record, outcome in zip(records, outcomes, strict=True)],
            "latest_record": held}


def _encode(encoder: Any, texts: list[str]) -> tuple[Any, Any]:
    encoded = encoder.encode(texts)
    return encoded.vectors, encoded.n_tokens


async def _save(records: list[PredictionRecord]) -> tuple[list[str], PredictionRecord]:
    """Store `records` in $NFC_MONGO_DB (default neuralfusion) of $NFC_MONGO_URI; the outcomes, and the latest
    prediction as MongoDB holds it (the first answer for that bar wins, and that is what Redis gets)."""
    from serving.store import PredictionStore

    latest = records[-1]
    async with PredictionStore(os.environ["NFC_MONGO_URI"], database=_mongo_database()) as store:
        await store.ensure_indexes()
        outcomes = [result.outcome.value for result in await store.save(records)]
        held = await store.get(latest.model_version, latest.as_of)
    if held is None:
        raise JobError(f"MongoDB acknowledged the prediction for {latest.as_of.isoformat()} but does "
                                   f"not return it from database {_mongo_database()!r}")
    return outcomes, held


def _mongo_database() -> str:
    """The database of the `predictions` collection: $NFC_MONGO_DB, as for the service."""
    from serving.store import DEFAULT_DATABASE

    return os.environ.get("NFC_MONGO_DB", "").strip() or DEFAULT_DATABASE


def _prediction(record: PredictionRecord, outcome: str) -> dict[str, Any]:
    return {"as_of": record.as_of.isoformat(), "request_id": record.request_id, "weights": record.weights,
            "outcome": outcome}


def _by_reference(job: Job, model: Model) -> dict[str, Any]:
    """Ask the service to predict each as-of bar from its own sources (POST /predict/at); it stores them. Live
    (no --as-of, --start/--end): the service's newest complete bar, with the request id it assigns; a bar older
    than a local live run accepts (--max-staleness) fails the run before anything is published: the feed is
    behind."""
    clock = model.bar_spec.clock
    if job.start is not None and job.end is not None:
        times: list[pd.Timestamp | None] = list(clock.closes(job.start, job.end)[::job.every])
        if not times:
            raise ValueError(f"the back-fill range {job.start.isoformat()}..{job.end.isoformat()} holds no "
                             f"{grid_name(model.bar_spec)} bar")
    elif job.as_of is not None:
        _check_on_grid(job.as_of, model)
        times = [job.as_of]
    else:
        times = [None]
    answers: list[Prediction] = []
    with _client(job) as client:  # retries a 503 or a lost answer with the same request id: never two predictions
        for when in times:
            request_id = None if when is None else f"{job.request_prefix}-{when.isoformat()}"
            what = "the newest bar" if when is None else f"the bar of {when.isoformat()}"
            answers.append(_ask_service(
                job, what, lambda when=when, request_id=request_id: client.predict_at(
                    when, model.universe.symbols, request_id),
                f"; {len(answers)} earlier bars were stored, rerun to go on"))
    last = answers[-1]
    if times == [None]:  # live: the service's newest bar must be as recent as a local live run requires
        live_as_of_bar(clock, pd.Timestamp(last.as_of), pd.Timestamp.now(tz="UTC"), job.limit)
    records = [PredictionRecord(model_version=a.model_version, as_of=a.as_of, symbols=a.symbols, weights=a.weights,
                                logits=a.logits, horizon_bars=a.horizon_bars, request_id=a.request_id)
               for a in answers]
    stored = sum(not answer.duplicate for answer in answers)
    return {"model_version": last.model_version, "mode": "by-reference", "sent": len(answers),
            "stored": stored, "already_present": len(answers) - stored,
            "message": (f"the service stored {stored} new predictions of {len(answers)}" if stored else
                        f"nothing new: the service already held all {len(answers)} predictions"),
            "predictions": [_prediction(record, "already present" if answer.duplicate else "stored")
                            for record, answer in zip(records, answers, strict=True)],
            "latest_record": records[-1]}


def _api_key(job: Job) -> str | None:
    return os.environ.get(job.api_key_env) or None


def _client(job: Job) -> Client:
    return Client(job.url or "", _api_key(job))


def _ask_service(job: Job, what: str, call: Callable[[], T], done: str = "") -> T:
    """`call()` of the service (after the client's retries); a refusal or no answer is a JobError saying which,
    with `done` (what is stored)."""
    try:
        return call()
    except ServiceError as err:
        if err.status is None:
            cause = type(err.__cause__).__name__ if err.__cause__ is not None else "no answer"
            raise JobError(f"the service at {redact_uri(job.url or '')} did not answer for {what} ({cause})"
                           f"{done}") from None
        raise JobError(f"the service refused {what} ({err.status}): {err.message[:500]}{done}") from None


def _publish(record: PredictionRecord, key: str | None, channel: str | None) -> dict[str, Any] | None:
    """Publish the latest prediction when $NFC_REDIS_URL is set; a failure fails the run (after storing)."""
    from serving.publish import PublishError, RedisPublisher

    url = os.environ.get("NFC_REDIS_URL")
    if not url:
        return None
    publisher = RedisPublisher(url, key, channel)
    try:
        published = publisher.publish(record)
    except PublishError as err:
        raise JobError(f"{err}; the predictions are stored in MongoDB, rerun to publish") from None
    finally:
        publisher.close()
    log.info("Redis %s: %s for %s (the key holds %s)", redact_uri(url), published.status, record.as_of.isoformat(),
             published.key_as_of.isoformat() if published.key_as_of else "no bar")
    return {"as_of": record.as_of.isoformat(), "model_version": record.model_version, "key": key,
            "channel": channel, "status": published.status, "receivers": published.receivers,
            "unchanged": published.status == "unchanged",
            "key_as_of": published.key_as_of.isoformat() if published.key_as_of else None}


def store_path(tag: str) -> Path:
    """The model-store folder of `tag`; `name:latest` is the newest promoted entry, as in serving."""
    import bentoml
    from bentoml.exceptions import NotFound

    from neuralfusion.manifest import PackageError
    from serving.model_store import resolve_model_tag

    try:
        return Path(bentoml.models.get(resolve_model_tag(tag)).path)
    except (PackageError, NotFound) as err:
        raise JobError(f"--model {tag}: {err}") from None
