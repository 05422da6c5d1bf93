"""`nfc embed` and `nfc encoder init|train`: news embeddings, and the offline default encoder.

    nfc encoder init  --news data/synth/news.jsonl --out runs/encoder-init [--set KEY=VALUE ...]
    nfc encoder train --news data/synth/news.jsonl --encoder runs/encoder-init --out runs/encoder \
        [--label-field planted.sentiment] [--set KEY=VALUE ...]
    nfc embed --news data/synth/news.jsonl --out data/synth/embeddings.parquet --encoder runs/encoder

`--set KEY=VALUE` overrides EncoderSetupConfig (init) or SentimentTrainConfig (train), after an
optional `--config FILE.json`; unknown keys and wrong types are errors. Without `--encoder`, embed
uses OUT's folder/encoder, building it with `encoder init` defaults from the news when missing.
Embeddings are cached by (sha256 of the text, encoder fingerprint) in a parquet file (and a MongoDB
collection with --mongo-uri / NFC_MONGO_URI), so a rerun over the same news computes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm.auto import tqdm

from neuralfusion.data.news import article_text, read_news
from neuralfusion.embeddings import (
    EmbeddingCache,
    MongoEmbeddingCache,
    ParquetEmbeddingCache,
    embed_cached,
    write_embeddings,
)
from neuralfusion.errors import DataError
from neuralfusion.overrides import apply_overrides
from training.encoder import ATTENTION_TYPES, POOLINGS, EncoderNotFoundError, NfcEncoder
from training.encoder_finetune import SentimentTrainConfig, label_values, probe_accuracy, train_sentiment
from training.encoder_init import EncoderSetupConfig, init_encoder, save_encoder

__all__ = ["embed", "encoder"]

logger = logging.getLogger(__name__)

_DTYPES = click.Choice(["float32", "bfloat16", "float16"])
_news_option = click.option("--news", "news_path", required=True,
                            type=click.Path(exists=True, dir_okay=False, path_type=Path),
                            help="News file (JSONL or parquet; the news contract in docs/DESIGN.md).")


def _read_texts(news_path: Path) -> tuple[Any, list[str]]:
    """The validated news frame and each article's encoder text; contract errors become click errors."""
    try:
        news = read_news(news_path)
    except DataError as err:
        raise click.ClickException(str(err)) from None
    return news, [article_text(t, b) for t, b in zip(news["title"], news["body"], strict=True)]


def _resolve(base: Any, config_path: Path | None, overrides: tuple[str, ...]) -> Any:
    try:
        return apply_overrides(base, list(overrides), config_path)
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from None


def _load_encoder(name: str, **kwargs: Any) -> NfcEncoder:
    try:
        return NfcEncoder.load(name, **kwargs)
    except (EncoderNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None


@contextmanager
def _caches(cache_path: Path, mongo_uri: str | None, mongo_db: str,
            mongo_collection: str) -> Iterator[list[EmbeddingCache]]:
    """The parquet cache, then the MongoDB one when a URI is given (client closed on exit)."""
    caches: list[EmbeddingCache] = [ParquetEmbeddingCache(cache_path)]
    with ExitStack() as stack:
        if mongo_uri:
            from pymongo import MongoClient
            from pymongo.errors import PyMongoError

            try:
                client = stack.enter_context(MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000))
                caches.append(MongoEmbeddingCache(client[mongo_db][mongo_collection]))
            except PyMongoError as err:  # the URI may hold credentials: never echo it
                raise click.ClickException(f"MongoDB embedding cache {mongo_db}.{mongo_collection}: {err}") from None
            logger.info("mongodb cache: %s.%s", mongo_db, mongo_collection)
        yield caches


@click.command("embed")
@_news_option
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Parquet file to write: id, n_tokens, vector.")
@click.option("--encoder", "encoder_name", default=None,
              help="save_pretrained folder or hub id. Default: OUT's folder/encoder (built if missing).")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Parquet embedding cache. Default: OUT's folder/embedding_cache.parquet.")
@click.option("--mongo-uri", envvar="NFC_MONGO_URI", default=None,
              help="Also cache in MongoDB (env NFC_MONGO_URI).")
@click.option("--mongo-db", default="neuralfusion", show_default=True)
@click.option("--mongo-collection", default="news_embeddings", show_default=True)
@click.option("--attention-type", type=click.Choice(ATTENTION_TYPES), default="original_full", show_default=True,
              help="Fixed for the whole run; part of the cache key.")
@click.option("--max-length", default=2048, show_default=True, help="Tokens per article; longer ones are truncated.")
@click.option("--pooling", type=click.Choice(POOLINGS), default="mean", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--device", default=None, help="cuda, cpu, ... Default: cuda when available.")
@click.option("--dtype", type=_DTYPES, default=None, help="Default: bfloat16/float16 on CUDA, float32 on CPU.")
def embed(news_path: Path, out_path: Path, encoder_name: str | None, cache_path: Path | None,
          mongo_uri: str | None, mongo_db: str, mongo_collection: str, attention_type: str, max_length: int,
          pooling: str, batch_size: int, device: str | None, dtype: str | None) -> None:
    """Embed every article of NEWS into OUT, computing only what the cache lacks.

    \b
    nfc embed --news data/synth/news.jsonl --out data/synth/embeddings.parquet --encoder runs/encoder
    """
    news, texts = _read_texts(news_path)
    if encoder_name is None:
        default_dir = out_path.parent / "encoder"
        if not (default_dir / "config.json").is_file():
            logger.info("no --encoder: building the default encoder from %d articles into %s", len(texts),
                        default_dir)
            init_encoder(texts, default_dir, EncoderSetupConfig())
        encoder_name = str(default_dir)
    encoder = _load_encoder(encoder_name, attention_type=attention_type, max_length=max_length,
                            pooling=pooling, device=device, dtype=dtype)
    logger.info("encoder %s: dim %d, %s attention, %s pooling, max_length %d, %s on %s, fingerprint %s",
                encoder_name, encoder.dim, attention_type, pooling, max_length,
                str(encoder.dtype).removeprefix("torch."), encoder.device, encoder.fingerprint[:12])
    cache_path = cache_path or out_path.parent / "embedding_cache.parquet"
    with _caches(cache_path, mongo_uri, mongo_db, mongo_collection) as caches, \
            tqdm(total=0, desc="embed", unit="text") as bar:
        def encode(chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
            return encoder.encode_with_counts(chunk, batch_size=batch_size, progress=bar.update)

        try:
            result = embed_cached(texts, encoder.fingerprint, encode, caches, on_missing=bar.reset)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
    truncated = int((result.n_tokens > max_length).sum())
    write_embeddings(out_path, news["id"].tolist(), result.vectors, result.n_tokens, encoder.fingerprint,
                     metadata={"nfc.encoder": encoder_name, "nfc.attention_type": attention_type,
                               "nfc.pooling": pooling, "nfc.max_length": str(max_length)})
    logger.info("%d articles -> %s: %d distinct texts from cache, %d computed, %d truncated to %d tokens",
                len(texts), out_path, result.n_cached, result.n_computed, truncated, max_length)


@click.group("encoder")
def encoder() -> None:
    """Build (init) or sentiment-tune (train) the offline default BigBird encoder."""


@encoder.command("init")
@_news_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the save_pretrained model + tokenizer.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON file of EncoderSetupConfig fields.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override an EncoderSetupConfig field.")
def init_command(news_path: Path, out_dir: Path, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Train a tokenizer on the news and save a random-init small BigBird with it.

    \b
    nfc encoder init --news data/synth/news.jsonl --out runs/encoder-init --set num_hidden_layers=4
    """
    setup = _resolve(EncoderSetupConfig(), config_path, overrides)
    logger.info("encoder setup: %s", dataclasses.asdict(setup))
    _, texts = _read_texts(news_path)
    try:
        init_encoder(texts, out_dir, setup)
    except FileExistsError as err:
        raise click.ClickException(str(err)) from None
    logger.info("wrote %s", out_dir)


@encoder.command("train")
@_news_option
@click.option("--encoder", "encoder_name", required=True, help="Encoder to start from (folder or hub id).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the tuned save_pretrained model + tokenizer.")
@click.option("--label-field", default="planted.sentiment", show_default=True,
              help="News column, or dotted path into one, holding the label; rows without one are skipped.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON file of SentimentTrainConfig fields.")
@click.option("--device", default=None, help="cuda, cpu, ... Default: cuda when available.")
@click.option("--dtype", type=_DTYPES, default=None, help="Default: bfloat16/float16 on CUDA, float32 on CPU.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a SentimentTrainConfig field.")
def train_command(news_path: Path, encoder_name: str, out_dir: Path, label_field: str, config_path: Path | None,
                  device: str | None, dtype: str | None, overrides: tuple[str, ...]) -> None:
    """Fine-tune the encoder on labelled news so its pooled embedding carries the label.

    \b
    nfc encoder train --news data/synth/news.jsonl --encoder runs/encoder-init --out runs/encoder --set epochs=4
    """
    config = _resolve(SentimentTrainConfig(), config_path, overrides)
    logger.info("sentiment fine-tune: %s", dataclasses.asdict(config))
    news, texts = _read_texts(news_path)
    try:
        labels = label_values(news, label_field)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) < len(labels):
        logger.info("%d of %d articles have no %r label and are skipped", len(labels) - len(keep), len(labels),
                    label_field)
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    model = _load_encoder(encoder_name, attention_type=config.attention_type, max_length=config.max_length,
                          pooling=config.pooling, device=device, dtype=dtype)

    def log(metrics: dict[str, float]) -> None:
        logger.info("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.3f", metrics["epoch"],
                    metrics["train_loss"], metrics["val_loss"], metrics["val_accuracy"])

    try:
        result = train_sentiment(model, texts, labels, config, log=log, progress=True)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    vectors = model.encode(texts, batch_size=config.batch_size)
    probe = probe_accuracy(vectors[result.train_index], [labels[i] for i in result.train_index],
                           vectors[result.val_index], [labels[i] for i in result.val_index], seed=config.seed)
    logger.info("linear probe on held-out embeddings: accuracy %.3f (majority class %.3f)", probe,
                _majority([labels[i] for i in result.val_index]))
    metadata = {"kind": "sentiment", "source": encoder_name, "label_field": label_field,
                "classes": result.classes, "config": dataclasses.asdict(config), "n_train": result.n_train,
                "n_val": result.n_val, "history": result.history, "val_probe_accuracy": probe}
    try:
        save_encoder(model.model, model.tokenizer, out_dir, metadata)
    except FileExistsError as err:
        raise click.ClickException(str(err)) from None
    logger.info("wrote %s", out_dir)


def _majority(labels: list[Any]) -> float:
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())
