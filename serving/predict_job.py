"""`nfc predict`: one run of the live loop (the seed's 4-hourly job), in this process or through the service.

    # live: the latest complete bar from ClickHouse + MongoDB news -> weights -> MongoDB -> Redis
    NFC_MONGO_URI=... NFC_CLICKHOUSE_URL=clickhouse://user:pw@ch:9000/market NFC_REDIS_URL=redis://redis:6379/0 \\
        nfc predict --bars clickhouse --news mongo --model-path /models/package
    nfc predict --data /data/latest --model-path PKG --as-of 2026-03-05T12:00:00Z    # data folder, one bar
    nfc predict --data DIR --model-path PKG --start 2026-03-05T00:00Z --end 2026-03-06T00:00Z --every 80
    nfc predict --data DIR --url http://nfc:3000                                     # the service predicts and stores
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
import json
import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pandas as pd
import pymongo
import pymongo.errors

from neuralfusion.data.news import MongoNewsSource, NewsFieldMap
from neuralfusion.dataset import find_data_file
from neuralfusion.errors import DataError
from neuralfusion.redact import encode_userinfo, redact_uri, scrub, uri_secrets
from neuralfusion.specs import BarSpec, Universe
from serving.client import predict_http, predict_payload
from serving.live_lock import LockHeld, RunLock
from serving.live_sources import (
    BarReader,
    FileBars,
    FileNews,
    IncrementalMongoNews,
    NewsReader,
    check_staleness,
    grid_bars,
    latest_complete_bar,
)
from serving.store import PredictionRecord

__all__ = ["predict"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """What the job needs to know of the model, from the package or from the service's /model_info."""

    version: str
    universe: Universe
    bar_spec: BarSpec
    bars_needed: int
    runtime: Any = None  # serving.runtime.PortfolioRuntime in this process; None through the service


def _time(value: str | None, option: str) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        stamp = pd.Timestamp(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=option) from None
    if stamp.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone; write it like 2026-03-05T12:00:00Z", param_hint=option)
    return stamp.tz_convert("UTC")


def _duration(value: str, option: str) -> pd.Timedelta:
    try:
        duration = pd.Timedelta(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration like 15min or 1h", param_hint=option) from None
    if duration <= pd.Timedelta(0):
        raise click.BadParameter(f"{value!r} must be positive", param_hint=option)
    return duration


@click.command("predict")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Data folder with bars and news (bars.parquet|csv, news.jsonl|parquet) instead of live sources.")
@click.option("--bars", "bars_source", type=click.Choice(["clickhouse"]), default=None,
              help="Live bar source; connection from $NFC_CLICKHOUSE_URL (clickhouse://user:pw@host:9000/db).")
@click.option("--news", "news_source", type=click.Choice(["mongo"]), default=None,
              help="Live news source; $NFC_NEWS_MONGO_URI, else $NFC_MONGO_URI.")
@click.option("--model-path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model package folder (predict in this process).")
@click.option("--model", "model_tag", default=None, help="BentoML model-store tag (predict in this process).")
@click.option("--url", default=None, help="Predict through this running service instead (it stores the results).")
@click.option("--as-of", default=None, help="Close time of the one bar to predict (ISO 8601 with offset). "
              "Default: the latest complete bar.")
@click.option("--start", default=None, help="Back-fill: first as-of bar (rounded up to the grid).")
@click.option("--end", default=None, help="Back-fill: last as-of bar (inclusive).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Back-fill: predict every N-th bar of the range.")
@click.option("--max-staleness", default="15min", show_default=True, envvar="NFC_MAX_STALENESS",
              help="Refuse a run when an asset's last real bar is older than this before the as-of bar, or (live) "
              "the as-of bar is older than this before now.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".nfc-state"),
              show_default=True, envvar="NFC_STATE_DIR",
              help="The run lock, the news read so far and the embedding cache live here.")
@click.option("--lock-file", type=click.Path(dir_okay=False, path_type=Path), default=None, envvar="NFC_LOCK_FILE",
              help="Lock against overlapping runs.  [default: STATE_DIR/predict.lock]")
@click.option("--clickhouse-table", default="market.candles", show_default=True, envvar="NFC_CLICKHOUSE_TABLE")
@click.option("--clickhouse-columns", default="", envvar="NFC_CLICKHOUSE_COLUMNS",
              help="Column mapping, e.g. 'timestamp=candle_time,symbol=symbol'. Default: the seed's names.")
@click.option("--clickhouse-label", type=click.Choice(["open", "close"]), default="open", show_default=True,
              envvar="NFC_CLICKHOUSE_LABEL", help="Whether a row's time is its candle's open or close time.")
@click.option("--clickhouse-candle", default="1min", show_default=True, envvar="NFC_CLICKHOUSE_CANDLE",
              help="Length of one table row's candle.")
@click.option("--news-db", default="news", show_default=True, envvar="NFC_NEWS_DB")
@click.option("--news-collection", default="news", show_default=True, envvar="NFC_NEWS_COLLECTION")
@click.option("--news-fields", default="", envvar="NFC_NEWS_FIELDS",
              help="Field mapping, e.g. 'published_at=releasedAt,body=content'. Default: the seed's names.")
@click.option("--redis-key", default="nfc:weights:latest", show_default=True, envvar="NFC_REDIS_KEY")
@click.option("--redis-channel", default="nfc:weights", show_default=True, envvar="NFC_REDIS_CHANNEL")
@click.option("--request-id", default=None, help="Prefix of the stored request ids.  [default: nfc-predict]")
def predict(data_dir: Path | None, bars_source: str | None, news_source: str | None, model_path: Path | None,
            model_tag: str | None, url: str | None, as_of: str | None, start: str | None, end: str | None, every: int,
            max_staleness: str, state_dir: Path, lock_file: Path | None, clickhouse_table: str,
            clickhouse_columns: str, clickhouse_label: str, clickhouse_candle: str, news_db: str,
            news_collection: str, news_fields: str, redis_key: str, redis_channel: str,
            request_id: str | None) -> None:
    """Predict the latest (or --as-of, or each --start..--end) bar, store the weights in MongoDB
    ($NFC_MONGO_URI) and publish the latest to Redis ($NFC_REDIS_URL, when set)."""
    if sum(x is not None for x in (model_path, model_tag, url)) != 1:
        raise click.UsageError("give exactly one of --model-path, --model or --url")
    if (data_dir is None) == (bars_source is None and news_source is None) or (
            data_dir is None and None in (bars_source, news_source)):
        raise click.UsageError("give either --data DIR, or --bars clickhouse and --news mongo")
    if as_of is not None and (start or end):
        raise click.UsageError("give --as-of or --start/--end, not both")
    if (start is None) != (end is None):
        raise click.UsageError("a back-fill needs both --start and --end")
    if url is None and not os.environ.get("NFC_MONGO_URI"):
        raise click.ClickException("set NFC_MONGO_URI to the MongoDB that stores predictions")
    job = Job(data_dir=data_dir, clickhouse=_clickhouse_options(clickhouse_table, clickhouse_columns, clickhouse_label,
                                                                 clickhouse_candle) if bars_source else None,
              news=_news_options(news_db, news_collection, news_fields) if news_source else None,
              package=model_path or (None if model_tag is None else store_path(model_tag)), url=url,
              as_of=_time(as_of, "--as-of"), start=_time(start, "--start"), end=_time(end, "--end"), every=every,
              limit=_duration(max_staleness, "--max-staleness"), state_dir=state_dir, redis_key=redis_key or None,
              redis_channel=redis_channel or None, request_prefix=request_id or "nfc-predict")
    try:
        with RunLock(lock_file or state_dir / "predict.lock"):
            summary = run_job(job)
    except (LockHeld, DataError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(summary, indent=2))
    click.echo(summary["message"], err=True)


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


def _clickhouse_options(table: str, columns: str, label: str, candle: str) -> dict[str, Any]:
    from neuralfusion.data.clickhouse import BarColumnMap, quote_identifier

    try:
        quote_identifier(table)
        return {"table": table, "columns": BarColumnMap.parse(columns), "label": label,
                "candle": _duration(candle, "--clickhouse-candle")}
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def _news_options(db: str, collection: str, fields: str) -> tuple[str, str, NewsFieldMap]:
    from neuralfusion.data.clickhouse import field_map_from_text

    try:
        return db, collection, field_map_from_text(NewsFieldMap, fields)
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def run_job(job: Job) -> dict[str, Any]:
    """One run under the lock; returns the summary printed as JSON. Raises DataError/ValueError/ClickException."""
    model = _load_model(job)
    step = model.bar_spec.timedelta
    with ExitStack() as sources:
        bar_reader, source = _bar_reader(job, sources)
        news_reader = _news_reader(job, sources)
        times = _as_of_times(bar_reader, model, job)
        first = times[0] - (model.bars_needed + 1) * step - job.limit
        raw = bar_reader.load(model.universe.symbols, first, times[-1])
        if raw["timestamp"].max() < times[-1]:
            raise DataError(f"the as-of bar {times[-1].isoformat()} is not complete: the newest bar closes at "
                            f"{raw['timestamp'].max().isoformat()}", source=source)
        check_staleness(raw, model.universe.symbols, times, job.limit, source)
        bars = grid_bars(raw, model.universe, model.bar_spec, source)
        news = news_reader.load(first, times[-1])
        payloads = [predict_payload(bars, news, when, model.bars_needed, step,
                                    f"{job.request_prefix}-{when.isoformat()}") for when in times]
        if model.runtime is None:
            summary = _through_service(job.url or "", payloads, times)
        else:
            summary = _in_process(model, payloads, times, job.state_dir)
        summary["published"] = _publish(summary.pop("latest_record"), job.redis_key, job.redis_channel)
        if isinstance(news_reader, IncrementalMongoNews):
            news_reader.commit()
            summary["news_new_items"] = news_reader.new_items
    return summary


def _load_model(job: Job) -> Model:
    if job.url is not None:
        info = predict_http_info(job.url)
        return Model(version=info["version"], universe=Universe(symbols=tuple(info["symbols"])),
                     bar_spec=BarSpec(interval=info["interval"]), bars_needed=int(info["bars_needed"]))
    from serving.runtime import PortfolioRuntime

    runtime = PortfolioRuntime.load(job.package or Path())
    return Model(version=runtime.version, universe=runtime.universe, bar_spec=runtime.bar_spec,
                 bars_needed=runtime.bars_needed, runtime=runtime)


def _bar_reader(job: Job, stack: ExitStack) -> tuple[BarReader, str]:
    """The bar reader and how errors name it; a ClickHouse connection is closed with `stack`."""
    if job.data_dir is not None:
        return FileBars(find_data_file(job.data_dir, "bars", (".parquet", ".csv"))), str(job.data_dir)
    from neuralfusion.data.clickhouse import ClickHouseBarSource

    uri = os.environ.get("NFC_CLICKHOUSE_URL")
    if not uri:
        raise click.ClickException("set NFC_CLICKHOUSE_URL (clickhouse://user:password@host:9000/database) "
                                   "for --bars clickhouse")
    source = stack.enter_context(ClickHouseBarSource.from_url(uri, **(job.clickhouse or {})))
    return source, source.source


def _news_reader(job: Job, stack: ExitStack) -> NewsReader:
    """The news reader; a MongoDB client opened for it is closed with `stack`."""
    if job.data_dir is not None:
        return FileNews(find_data_file(job.data_dir, "news", (".jsonl", ".parquet")))
    uri = os.environ.get("NFC_NEWS_MONGO_URI") or os.environ.get("NFC_MONGO_URI")
    if not uri or job.news is None:
        raise click.ClickException("set NFC_NEWS_MONGO_URI (or NFC_MONGO_URI) for --news mongo")
    db, collection, fields = job.news
    try:
        client = stack.enter_context(pymongo.MongoClient(encode_userinfo(uri), serverSelectionTimeoutMS=10_000,
                                                         tz_aware=True))
    except (pymongo.errors.PyMongoError, ValueError) as err:  # InvalidURI repeats the URI, password included
        raise click.ClickException(f"cannot open the news MongoDB at {redact_uri(uri)}: "
                                   f"{scrub(err, uri_secrets(uri))}") from None
    return IncrementalMongoNews(MongoNewsSource(client[db][collection], fields),
                                job.state_dir / f"news-{db}-{collection}.parquet")


def _as_of_times(bars: BarReader, model: Model, job: Job) -> list[pd.Timestamp]:
    """The as-of bars of this run: a back-fill range, one bar, or (live) the latest complete bar, which must
    be within the staleness limit of the wall clock."""
    step = model.bar_spec.timedelta
    if job.start is not None and job.end is not None:
        times = list(pd.date_range(job.start.ceil(step), job.end, freq=step)[::job.every])
        if not times:
            raise ValueError(f"the back-fill range {job.start.isoformat()}..{job.end.isoformat()} holds no "
                             f"{model.bar_spec.interval} bar")
        return times
    if job.as_of is not None:
        if job.as_of.ceil(step) != job.as_of:
            raise ValueError(f"--as-of {job.as_of.isoformat()} is not on the {model.bar_spec.interval} bar grid")
        return [job.as_of]
    now = pd.Timestamp.now(tz="UTC")
    if isinstance(bars, FileBars):
        last = bars.latest()
    else:
        last = bars.load(model.universe.symbols, now - job.limit - step, now)["timestamp"].max()
    latest = latest_complete_bar(last, step)
    if now - latest > job.limit:
        raise DataError(f"the latest complete bar closed at {latest.isoformat()}, {now - latest} ago, over the "
                        f"staleness limit of {job.limit} (--max-staleness): the bar feed is behind, nothing was "
                        "predicted", source="bars")
    return [latest]


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
        except (ServingError, ValueError) as err:  # RequestError and pydantic's errors are ValueErrors
            raise click.ClickException(f"cannot predict for {when.isoformat()}: {err}") from None
    texts = [text for item in prepared for text in item.texts]
    encoder = runtime.encoder
    fingerprint = f"{runtime.manifest.data['encoder']['fingerprint']}:onnx:{encoder.provider}"
    embedded = embed_cached(texts, fingerprint, lambda batch: _encode(encoder, batch),
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
    from serving.store import PredictionStore, StoreError

    latest = records[-1]
    try:
        async with PredictionStore(os.environ["NFC_MONGO_URI"], database=_mongo_database()) as store:
            await store.ensure_indexes()
            outcomes = [result.outcome.value for result in await store.save(records)]
            held = await store.get(latest.model_version, latest.as_of)
    except StoreError as err:
        raise click.ClickException(str(err)) from None
    if held is None:
        raise click.ClickException(f"MongoDB acknowledged the prediction for {latest.as_of.isoformat()} but does "
                                   f"not return it from database {_mongo_database()!r}")
    return outcomes, held


def _mongo_database() -> str:
    """The database of the `predictions` collection: $NFC_MONGO_DB, as for the service."""
    from serving.store import DEFAULT_DATABASE

    return os.environ.get("NFC_MONGO_DB", "").strip() or DEFAULT_DATABASE


def _prediction(record: PredictionRecord, outcome: str) -> dict[str, Any]:
    return {"as_of": record.as_of.isoformat(), "request_id": record.request_id, "weights": record.weights,
            "outcome": outcome}


def _through_service(url: str, payloads: Sequence[dict[str, Any]], times: Sequence[pd.Timestamp]) -> dict[str, Any]:
    """Send each window to the service (it predicts and stores); every window was built before the first call."""
    import httpx

    answers = []
    for payload, when in zip(payloads, times, strict=True):
        try:
            answers.append(predict_http(url, payload, api_key=os.environ.get("NFC_API_KEY")))
        except httpx.HTTPStatusError as err:
            raise click.ClickException(f"the service refused the window of {when.isoformat()} "
                                       f"({err.response.status_code}): {err.response.text[:500]}; "
                                       f"{len(answers)} earlier windows were stored") from None
    last = answers[-1]
    record = PredictionRecord(model_version=last["model_version"], as_of=datetime.fromisoformat(last["as_of"]),
                              symbols=tuple(last["symbols"]), weights=last["weights"], logits=last["logits"],
                              horizon_bars=last["horizon_bars"], request_id=last["request_id"])
    return {"model_version": last["model_version"], "mode": "service", "sent": len(answers),
            "message": f"the service answered {len(answers)} predictions (stored: "
                       f"{sum(bool(a['stored']) for a in answers)})",
            "predictions": [{"as_of": a["as_of"], "request_id": a["request_id"], "weights": a["weights"],
                             "stored": a["stored"]} for a in answers],
            "latest_record": record}


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
        raise click.ClickException(f"{err}; the predictions are stored in MongoDB, rerun to publish") from None
    finally:
        publisher.close()
    log.info("Redis %s: %s for %s (the key holds %s)", redact_uri(url), published.status, record.as_of.isoformat(),
             published.key_as_of.isoformat() if published.key_as_of else "no bar")
    return {"as_of": record.as_of.isoformat(), "model_version": record.model_version, "key": key,
            "channel": channel, "status": published.status, "receivers": published.receivers,
            "unchanged": published.status == "unchanged",
            "key_as_of": published.key_as_of.isoformat() if published.key_as_of else None}


def predict_http_info(url: str) -> dict:
    import httpx

    return httpx.post(f"{url.rstrip('/')}/model_info", timeout=30).json()


def store_path(tag: str) -> Path:
    """The model-store folder of `tag`; `name:latest` is the newest promoted entry, as in serving."""
    import bentoml
    from bentoml.exceptions import NotFound

    from neuralfusion.manifest import PackageError
    from serving.model_store import resolve_model_tag

    try:
        return Path(bentoml.models.get(resolve_model_tag(tag)).path)
    except (PackageError, NotFound) as err:
        raise click.ClickException(f"--model {tag}: {err}") from None
