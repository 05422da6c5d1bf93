"""`nfc predict`: one run of the scheduled prediction job (the seed's 4-hourly loop), without a server or through one.

    NFC_MONGO_URI=mongodb://db:27017/ nfc predict --data /data/latest --model-path /models/package
    nfc predict --data /data/latest --url http://nfc:3000          # through the HTTP service (it stores)
    cron:  0 */4 * * *  cd /srv/nfc && NFC_MONGO_URI=... .venv/bin/nfc predict --data /data/latest \\
                        --model-path /models/package >> /var/log/nfc-predict.log 2>&1

It reads the data folder's bars and news (the same file contracts as training), takes the last
`bars_needed` bars up to the as-of bar (the latest bar unless --as-of), predicts with the package's ONNX
graphs (no torch) or through the service, and stores the weights in MongoDB. Storage is idempotent: a
second run for the same model version and as-of bar writes nothing and says so.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click
import pandas as pd

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from neuralfusion.dataset import find_data_file, load_universe
from neuralfusion.errors import DataError
from serving.client import predict_http, predict_payload

__all__ = ["predict"]


@click.command("predict")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Data folder with the latest bars and news (bars.parquet|csv, news.jsonl|parquet).")
@click.option("--model-path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model package folder (predict in this process).")
@click.option("--model", "model_tag", default=None, help="BentoML model-store tag (predict in this process).")
@click.option("--url", default=None, help="Predict through this running service instead (it stores the result).")
@click.option("--as-of", default=None, help="Close time of the as-of bar (ISO 8601 with offset). Default: latest bar.")
@click.option("--request-id", default=None, help="Stored with the prediction. Default: nfc-predict-<as-of>.")
def predict(data_dir: Path, model_path: Path | None, model_tag: str | None, url: str | None, as_of: str | None,
            request_id: str | None) -> None:
    """Predict the weights for the latest (or --as-of) bar and store them in MongoDB ($NFC_MONGO_URI)."""
    if sum(x is not None for x in (model_path, model_tag, url)) != 1:
        raise click.UsageError("give exactly one of --model-path, --model or --url")
    try:
        bars = BarFileSource(find_data_file(data_dir, "bars", (".parquet", ".csv"))).read()
        news = read_news(find_data_file(data_dir, "news", (".jsonl", ".parquet")))
    except DataError as err:
        raise click.ClickException(str(err)) from None
    step = load_universe(data_dir, bars)[1].timedelta
    end = pd.Timestamp(as_of) if as_of else bars["timestamp"].max()
    if end.tzinfo is None:
        raise click.UsageError(f"--as-of {as_of!r} has no time zone; write it like 2026-03-05T12:00:00Z")
    request_id = request_id or f"nfc-predict-{end.isoformat()}"
    if url is not None:
        bars_needed = int(predict_http_info(url)["bars_needed"])
        answer = predict_http(url, predict_payload(bars, news, end, bars_needed, step, request_id),
                              api_key=os.environ.get("NFC_API_KEY"))
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(json.dumps(predict_in_process(model_path or store_path(model_tag), bars, news, end, step, request_id),
                          indent=2))


def predict_http_info(url: str) -> dict:
    import httpx

    return httpx.post(f"{url.rstrip('/')}/model_info", timeout=30).json()


def store_path(tag: str) -> Path:
    import bentoml

    return Path(bentoml.models.get(tag).path)


def predict_in_process(package: Path, bars: pd.DataFrame, news: pd.DataFrame, end: pd.Timestamp,
                       step: pd.Timedelta, request_id: str) -> dict:
    """Predict with the package's graphs and store the record; the outcome says whether it was new."""
    from serving.errors import ServingError
    from serving.runtime import PortfolioRuntime
    from serving.schemas import PredictRequest
    from serving.store import PredictionStore, StoreError

    uri = os.environ.get("NFC_MONGO_URI")
    if not uri:
        raise click.ClickException("set NFC_MONGO_URI to the MongoDB that stores predictions")
    runtime = PortfolioRuntime.load(package)
    try:
        request = PredictRequest.model_validate(predict_payload(bars, news, end, runtime.bars_needed, step,
                                                                request_id))
        [record] = runtime.predict_requests([request])
    except (ServingError, ValueError) as err:  # RequestError and pydantic's errors are ValueErrors
        raise click.ClickException(f"cannot predict for {end.isoformat()}: {err}") from None

    async def save() -> str:
        async with PredictionStore(uri) as store:
            await store.ensure_indexes()
            [result] = await store.save([record])
        return result.outcome.value

    try:
        outcome = asyncio.run(save())
    except StoreError as err:
        raise click.ClickException(str(err)) from None
    return {"model_version": record.model_version, "as_of": record.as_of.isoformat(), "weights": record.weights,
            "request_id": record.request_id, "outcome": outcome}
