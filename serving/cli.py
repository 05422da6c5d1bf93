"""The serving package's command: `nfc predict`, one run of the live loop (the job is serving/predict_job.py).

    NFC_MONGO_URI=... NFC_CLICKHOUSE_URL=clickhouse://user:pw@ch:9000/market NFC_REDIS_URL=redis://redis:6379/0 \\
        nfc predict --bars clickhouse --news mongo --model-path /models/package --json
    nfc predict --data /data/latest --model-path PKG --as-of 2026-03-05T12:00:00Z    # data folder, one bar
    nfc predict --data DIR --model-path PKG --start 2026-03-05T00:00Z --end 2026-03-06T00:00Z --every 80
    nfc predict --url http://nfc:3000 --as-of 2026-03-05T12:00:00Z    # by reference: the service reads its sources

Prints one line per prediction (as-of bar, request id, outcome) and the run's summary, or with `--json` the
summary as one JSON object. Exit codes: 0 done (also when nothing new was stored), 1 the run failed and stored
nothing it should not have (the message says what), 2 the options do not fit together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pandas as pd

from neuralfusion.cli_common import cli_errors, json_result, live_source_options, log_level_option
from neuralfusion.data.news import NewsFieldMap
from serving.live_lock import LockHeld, RunLock
from serving.predict_job import Job, JobError, run_job, store_path
from serving.store import StoreError

__all__ = ["predict"]

log = logging.getLogger(__name__)


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


def _predicted_lines(summary: dict[str, Any]) -> Iterator[str]:
    for prediction in summary["predictions"]:
        outcome = prediction.get("outcome", "stored" if prediction.get("stored") else "not stored")
        yield f"{prediction['as_of']}  {prediction['request_id']}  {outcome}"
    yield summary["message"]


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
@click.option("--url", default=None, help="Predict by reference through this running service instead: it reads its "
              "own bar and news sources for each as-of bar (POST /predict/at) and stores the results.")
@click.option("--api-key-env", default="NFC_API_KEY", show_default=True,
              help="With --url: the environment variable that holds the service's API key.")
@click.option("--as-of", default=None, help="Close time of the one bar to predict (ISO 8601 with offset). "
              "Default: the latest complete bar.")
@click.option("--start", default=None, help="Back-fill: first as-of bar (rounded up to the grid).")
@click.option("--end", default=None, help="Back-fill: last as-of bar (inclusive).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Back-fill: predict every N-th bar of the range.")
@click.option("--max-staleness", default="15min", show_default=True, envvar="NFC_MAX_STALENESS",
              help="Refuse a run when an asset's last real bar is older than this before the as-of bar (on an "
              "exchange: its missed session bars times the interval), or (live) a bar that closed more than this "
              "ago is missing (on an exchange: a session bar, so a shut market is not stale).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".nfc-state"),
              show_default=True, envvar="NFC_STATE_DIR",
              help="The run lock, the news read so far and the embedding cache live here.")
@click.option("--lock-file", type=click.Path(dir_okay=False, path_type=Path), default=None, envvar="NFC_LOCK_FILE",
              help="Lock against overlapping runs.  [default: STATE_DIR/predict.lock]")
@live_source_options
@click.option("--redis-key", default="nfc:weights:latest", show_default=True, envvar="NFC_REDIS_KEY")
@click.option("--redis-channel", default="nfc:weights", show_default=True, envvar="NFC_REDIS_CHANNEL")
@click.option("--request-id", default=None, help="Prefix of the stored request ids.  [default: nfc-predict]")
@log_level_option
@json_result(_predicted_lines)
@cli_errors(also=(JobError, LockHeld, StoreError))
def predict(data_dir: Path | None, bars_source: str | None, news_source: str | None, model_path: Path | None,
            model_tag: str | None, url: str | None, api_key_env: str, as_of: str | None, start: str | None,
            end: str | None, every: int, max_staleness: str, state_dir: Path, lock_file: Path | None,
            clickhouse_table: str, clickhouse_columns: str, clickhouse_label: str, clickhouse_candle: str, news_db: str,
            news_collection: str, news_fields: str, redis_key: str, redis_channel: str,
            request_id: str | None) -> dict[str, Any]:
    """Predict the latest (or --as-of, or each --start..--end) bar, store the weights in MongoDB
    ($NFC_MONGO_URI) and publish the latest to Redis ($NFC_REDIS_URL, when set)."""
    if sum(x is not None for x in (model_path, model_tag, url)) != 1:
        raise click.UsageError("give exactly one of --model-path, --model or --url")
    sources_given = data_dir is not None or bars_source is not None or news_source is not None
    if url is not None and sources_given:
        raise click.UsageError("with --url the service reads its own bars and news (NFC_BARS_DIR or "
                               "NFC_CLICKHOUSE_URL, NFC_NEWS_* where it runs): drop --data, --bars and --news")
    if url is None and ((data_dir is None) == (bars_source is None and news_source is None) or (
            data_dir is None and None in (bars_source, news_source))):
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
              redis_channel=redis_channel or None, request_prefix=request_id or "nfc-predict", api_key_env=api_key_env)
    with RunLock(lock_file or state_dir / "predict.lock"):
        return run_job(job)


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
