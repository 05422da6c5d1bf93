"""The training package's commands: `nfc embed`, `nfc encoder init|pretrain|train`, `nfc train`, `nfc finetune`.

    nfc encoder init     --news data/synth/news.jsonl --out runs/encoder-init [--set KEY=VALUE ...]
    nfc encoder pretrain --news data/synth/news.jsonl --encoder runs/encoder-init --out runs/encoder-mlm \\
        [--set epochs=3] [--resume]
    nfc encoder train    --news data/synth/news.jsonl --encoder runs/encoder-init --out runs/encoder \\
        [--label-field planted.sentiment] [--set KEY=VALUE ...]
    nfc embed --news data/synth/news.jsonl --out data/synth/embeddings.parquet --encoder runs/encoder
    nfc train --data runs/demo/data --embeddings runs/demo/embeddings.parquet --out runs/demo/model
    nfc finetune --model runs/demo/model --data data/newer --embeddings newer.parquet --out runs/demo/model-2

`--set KEY=VALUE` overrides the command's config (EncoderSetupConfig, PretrainConfig, SentimentTrainConfig,
TrainConfig) after an optional `--config FILE.json|.toml`; unknown keys and wrong types are errors. Each encoder
stage trains only on news published before `--cutoff` (default: the training end of `--data`, or of the data
folder holding the news file, under `--split` when given) and records that range (neuralfusion/encoder_text.py);
embed copies the record into its output, and train/finetune refuse embeddings whose encoder read later news
unless --allow-encoder-leak. Without `--encoder`, embed uses OUT's folder/encoder, building it with `encoder
init` defaults from the news before the default cut-off when missing. Embeddings are
cached by (sha256 of the text, encoder fingerprint) in a parquet file (and a MongoDB collection with
--mongo-uri / NFC_MONGO_URI), so a rerun over the same news computes nothing. The training loop itself is
training/train.py; `nfc backtest` (runs and packages) is the app's (nfc/backtest.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neuralfusion.cli_common import (
    cli_errors,
    config_options,
    data_option,
    embeddings_option,
    force_option,
    json_result,
    leak_option,
    log_level_option,
    out_option,
    resolve_config,
    split_option,
)
from neuralfusion.data.news import article_text, read_news
from neuralfusion.dataset import load_data_dir
from neuralfusion.embeddings import embed_cached, open_caches, write_embeddings
from neuralfusion.encoder_text import RECORD_KEY, read_folder_record, resolve_cutoff, stage_record, texts_before
from neuralfusion.errors import DataError
from neuralfusion.specs import PortfolioSpec, WindowSpec
from neuralfusion.staging import partial_folder
from neuralfusion.train_config import TrainConfig
from training.checkpoints import CHECKPOINTS_DIR, checkpoint_folder
from training.encoder import ATTENTION_TYPES, POOLINGS, NfcEncoder
from training.encoder_finetune import SentimentTrainConfig, label_values, probe_accuracy, train_sentiment
from training.encoder_init import EncoderSetupConfig, init_encoder, save_encoder
from training.encoder_pretrain import PretrainConfig, pretrain_encoder
from training.model import CgaModel
from training.runs import DECISION_FILE, load_run
from training.train import (
    VARIANTS,
    TrainResult,
    distributed_context,
    end_distributed,
    model_config_for,
    model_overrides,
    prepare,
    train_model,
    validation_sharpe,
    write_run,
)

__all__ = ["embed", "encoder", "finetune", "train"]

logger = logging.getLogger(__name__)

_DTYPES = click.Choice(["float32", "bfloat16", "float16"])
_news_option = click.option("--news", "news_path", required=True,
                            type=click.Path(exists=True, dir_okay=False, path_type=Path),
                            help="News file (JSONL or parquet; see the data contracts in the README).")


def _read_texts(news_path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The validated news frame and each article's encoder text."""
    news = read_news(news_path)
    return news, [article_text(t, b) for t, b in zip(news["title"], news["body"], strict=True)]


_cutoff_option = click.option(
    "--cutoff", default=None, metavar="DATE|none",
    help="Train only on news published before DATE (ISO 8601, UTC if no zone); 'none' for all of it. Default: the "
         "training end of --data, or of the data folder holding --news (none without bars there).")
_encoder_data_option = click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False,
                                    path_type=Path), default=None,
                                    help="Data folder whose training end is the default --cutoff.")


def _news_before_cutoff(news_path: Path, cutoff_option: str | None, data_dir: Path | None,
                        split: tuple[str, str] | None = None) -> tuple[pd.DataFrame, list[str], pd.Timestamp | None]:
    """The news published before the cut-off (frame, encoder texts) and the cut-off itself; logs what was kept."""
    news, texts = _read_texts(news_path)
    cutoff = resolve_cutoff(cutoff_option, news_path, data_dir, split)
    keep = texts_before(news["published_at"], cutoff).to_numpy()
    logger.info("cut-off %s: training on %d of %d articles", cutoff if cutoff is not None else "none (all text)",
                int(keep.sum()), len(texts))
    if not keep.any():
        raise DataError(f"no article was published before the cut-off {cutoff}", source=str(news_path))
    return news[keep].reset_index(drop=True), [t for t, k in zip(texts, keep, strict=True) if k], cutoff


def _source_record(encoder_name: str) -> dict[str, Any] | None:
    """The text record of the encoder a stage starts from (None for a hub id or an unrecorded folder)."""
    return read_folder_record(encoder_name) if Path(encoder_name).expanduser().is_dir() else None


def _majority(labels: list[Any]) -> float:
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


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
@log_level_option
@json_result()
@cli_errors
def embed(news_path: Path, out_path: Path, encoder_name: str | None, cache_path: Path | None,
          mongo_uri: str | None, mongo_db: str, mongo_collection: str, attention_type: str, max_length: int,
          pooling: str, batch_size: int, device: str | None, dtype: str | None) -> dict[str, Any]:
    """Embed every article of NEWS into OUT, computing only what the cache lacks.

    \b
    nfc embed --news data/synth/news.jsonl --out data/synth/embeddings.parquet --encoder runs/encoder
    """
    news, texts = _read_texts(news_path)
    if encoder_name is None:
        default_dir = out_path.parent / "encoder"
        if not (default_dir / "config.json").is_file():
            seen, seen_texts, cutoff = _news_before_cutoff(news_path, None, None)
            logger.info("no --encoder: building the default encoder from %d articles into %s", len(seen_texts),
                        default_dir)
            init_encoder(seen_texts, default_dir, EncoderSetupConfig(),
                         stage_record("init", seen["published_at"], cutoff))
        encoder_name = str(default_dir)
    encoder = NfcEncoder.load(encoder_name, attention_type=attention_type, max_length=max_length, pooling=pooling,
                              device=device, dtype=dtype)
    logger.info("encoder %s: dim %d, %s attention, %s pooling, max_length %d, %s on %s, fingerprint %s",
                encoder_name, encoder.dim, attention_type, pooling, max_length,
                str(encoder.dtype).removeprefix("torch."), encoder.device, encoder.fingerprint[:12])
    cache_path = cache_path or out_path.parent / "embedding_cache.parquet"
    with open_caches(cache_path, mongo_uri, mongo_db, mongo_collection) as caches, \
            tqdm(total=0, desc="embed", unit="text") as bar:
        def encode(chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
            return encoder.encode_with_counts(chunk, batch_size=batch_size, progress=bar.update)

        result = embed_cached(texts, encoder.fingerprint, encode, caches, on_missing=bar.reset)
    truncated = int((result.n_tokens > max_length).sum())
    record = _source_record(encoder_name)
    write_embeddings(out_path, news["id"].tolist(), result.vectors, result.n_tokens, encoder.fingerprint,
                     metadata={"nfc.encoder": encoder_name, "nfc.attention_type": attention_type,
                               "nfc.pooling": pooling, "nfc.max_length": str(max_length),
                               **({RECORD_KEY: json.dumps(record)} if record else {})})
    logger.info("%d articles -> %s: %d distinct texts from cache, %d computed, %d truncated to %d tokens",
                len(texts), out_path, result.n_cached, result.n_computed, truncated, max_length)
    return {"out": str(out_path), "articles": len(texts), "cached": result.n_cached, "computed": result.n_computed,
            "truncated": truncated, "max_length": max_length, "dim": encoder.dim, "encoder": encoder_name,
            "fingerprint": encoder.fingerprint}


@click.group("encoder")
@log_level_option
def encoder() -> None:
    """Build (init), self-supervise (pretrain) or sentiment-tune (train) the news encoder."""


@encoder.command("init")
@_news_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the save_pretrained model + tokenizer.")
@config_options("EncoderSetupConfig")
@_cutoff_option
@_encoder_data_option
@split_option
@log_level_option
@json_result()
@cli_errors
def init_command(news_path: Path, out_dir: Path, config_path: Path | None, sets: tuple[str, ...],
                 cutoff: str | None, data_dir: Path | None, split: tuple[str, str] | None) -> dict[str, Any]:
    """Train a tokenizer on the news before the cut-off and save a random-init small encoder (BigBird) with it.

    \b
    nfc encoder init --news data/synth/news.jsonl --out runs/encoder-init --set num_hidden_layers=4
    nfc encoder init --news news.jsonl --out runs/encoder-init --cutoff 2026-01-07 --set family=roberta
    """
    setup = resolve_config(EncoderSetupConfig(), config_path, sets)
    logger.info("encoder setup: %s", dataclasses.asdict(setup))
    news, texts, cutoff_at = _news_before_cutoff(news_path, cutoff, data_dir, split)
    record = stage_record("init", news["published_at"], cutoff_at)
    init_encoder(texts, out_dir, setup, record)
    logger.info("wrote %s", out_dir)
    return {"out": str(out_dir), "articles": len(texts), "config": dataclasses.asdict(setup), "text": record}


@encoder.command("train")
@_news_option
@click.option("--encoder", "encoder_name", required=True, help="Encoder to start from (folder or hub id).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the tuned save_pretrained model + tokenizer.")
@click.option("--label-field", default="planted.sentiment", show_default=True,
              help="News column, or dotted path into one, holding the label; rows without one are skipped.")
@config_options("SentimentTrainConfig")
@click.option("--device", default=None, help="cuda, cpu, ... Default: cuda when available.")
@click.option("--dtype", type=_DTYPES, default=None, help="Default: bfloat16/float16 on CUDA, float32 on CPU.")
@_cutoff_option
@_encoder_data_option
@split_option
@log_level_option
@json_result()
@cli_errors
def train_command(news_path: Path, encoder_name: str, out_dir: Path, label_field: str, config_path: Path | None,
                  device: str | None, dtype: str | None, sets: tuple[str, ...], cutoff: str | None,
                  data_dir: Path | None, split: tuple[str, str] | None) -> dict[str, Any]:
    """Fine-tune the encoder on labelled news before the cut-off so its pooled embedding carries the label.

    \b
    nfc encoder train --news data/synth/news.jsonl --encoder runs/encoder-init --out runs/encoder --set epochs=4
    """
    config = resolve_config(SentimentTrainConfig(), config_path, sets)
    logger.info("sentiment fine-tune: %s", dataclasses.asdict(config))
    news, texts, cutoff_at = _news_before_cutoff(news_path, cutoff, data_dir, split)
    try:
        labels = label_values(news, label_field)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--label-field") from None
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) < len(labels):
        logger.info("%d of %d articles have no %r label and are skipped", len(labels) - len(keep), len(labels),
                    label_field)
    texts, labels, published = [texts[i] for i in keep], [labels[i] for i in keep], news["published_at"].iloc[keep]
    model = NfcEncoder.load(encoder_name, attention_type=config.attention_type, max_length=config.max_length,
                            pooling=config.pooling, device=device, dtype=dtype)

    def log(metrics: dict[str, float]) -> None:
        logger.info("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.3f", metrics["epoch"],
                    metrics["train_loss"], metrics["val_loss"], metrics["val_accuracy"])

    result = train_sentiment(model, texts, labels, config, log=log, progress=True)
    vectors = model.encode(texts, batch_size=config.batch_size)
    val_labels = [labels[i] for i in result.val_index]
    probe = probe_accuracy(vectors[result.train_index], [labels[i] for i in result.train_index],
                           vectors[result.val_index], val_labels, seed=config.seed)
    majority = _majority(val_labels)
    logger.info("linear probe on held-out embeddings: accuracy %.3f (majority class %.3f)", probe, majority)
    record = stage_record("sentiment", published, cutoff_at, encoder_name, _source_record(encoder_name), True)
    metadata = {"kind": "sentiment", "source": encoder_name, "label_field": label_field,
                "classes": result.classes, "config": dataclasses.asdict(config), "n_train": result.n_train,
                "n_val": result.n_val, "history": result.history, "val_probe_accuracy": probe, "text": record}
    save_encoder(model.model, model.tokenizer, out_dir, metadata)
    logger.info("wrote %s", out_dir)
    return {"out": str(out_dir), **metadata, "val_majority_class": majority}


@encoder.command("pretrain")
@_news_option
@click.option("--encoder", "encoder_name", required=True, help="Encoder to start from (folder or hub id).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the pretrained encoder; its checkpoints/ subfolder holds the resumable states.")
@config_options("PretrainConfig")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in OUT/checkpoints.")
@click.option("--device", default=None, help="cuda, cpu, ... Default: cuda when available.")
@_cutoff_option
@_encoder_data_option
@split_option
@log_level_option
@json_result()
@cli_errors
def pretrain_command(news_path: Path, encoder_name: str, out_dir: Path, config_path: Path | None,
                     sets: tuple[str, ...], resume: bool, device: str | None, cutoff: str | None,
                     data_dir: Path | None, split: tuple[str, str] | None) -> dict[str, Any]:
    """Masked language modelling on the news before the cut-off: an encoder that learns without labels.

    \b
    nfc encoder pretrain --news data/synth/news.jsonl --encoder runs/encoder-init --out runs/encoder-mlm
    nfc encoder pretrain ... --set epochs=5 --set checkpoint_every=200 --resume
    """
    config = resolve_config(PretrainConfig(), config_path, sets)
    logger.info("MLM pretraining: %s", dataclasses.asdict(config))
    news, texts, cutoff_at = _news_before_cutoff(news_path, cutoff, data_dir, split)
    record = stage_record("pretrain", news["published_at"], cutoff_at, encoder_name, _source_record(encoder_name),
                          True)
    result = pretrain_encoder(encoder_name, texts, out_dir, config, record, resume=resume, device=device,
                              progress=True)
    logger.info("held-out MLM loss %.4f -> %.4f over %d steps; wrote %s", result.heldout_loss_before,
                result.history[-1]["heldout_loss"], result.steps, out_dir)
    return {"out": str(out_dir), **dataclasses.asdict(result), "text": record}


def _trained_lines(result: dict[str, Any]) -> Iterator[str]:
    resumed = f" (resumed after epoch {result['resumed_from']})" if result["resumed_from"] is not None else ""
    yield (f"wrote {result['out']}: best val Sharpe {result['best_val_sharpe']:.2f} at epoch {result['best_epoch']}, "
           f"{result['epochs']} epochs in {result['seconds']:.0f} s{resumed}")


_resume_option = click.option(
    "--resume", is_flag=True,
    help="Continue an interrupted run from its last epoch state (OUT.partial/checkpoints); every setting must match.")


def _train_checkpointed(out: Path, force: bool, resume: bool, **train_args: Any) -> TrainResult:
    """`train_model` with the last and best state written per epoch under OUT.partial/checkpoints (rank 0 prepares
    the folder; a resume continues from it)."""
    rank, _ = distributed_context()
    checkpoints = checkpoint_folder(out, force, resume) if rank == 0 else partial_folder(out) / CHECKPOINTS_DIR
    return train_model(**train_args, checkpoints=checkpoints, resume=resume)


@click.command()
@data_option
@embeddings_option
@out_option
@config_options("TrainConfig")
@click.option("--model-set", "model_sets", multiple=True, metavar="KEY=VALUE", help="Override a CgaConfig field.")
@click.option("--variant", type=click.Choice(sorted(VARIANTS)), default="cga", show_default=True,
              help="cga = the model; concat / market / news = ablations.")
@click.option("--lookback", default=WindowSpec.lookback, show_default=True, help="L: bars per input window.")
@click.option("--horizon", default=WindowSpec.horizon, show_default=True, help="H: bars the weights are held.")
@split_option
@force_option
@_resume_option
@leak_option
@log_level_option
@json_result(_trained_lines)
@cli_errors
def train(data_dir: Path, embeddings: Path, out: Path, config_path: Path | None, sets: tuple[str, ...],
          model_sets: tuple[str, ...], variant: str, lookback: int, horizon: int, split: tuple[str, str] | None,
          force: bool, resume: bool, allow_encoder_leak: bool) -> dict[str, Any] | None:
    """Train the CGA model (--set: TrainConfig fields, --model-set: CgaConfig fields).

    The last and the best state are written after every epoch (OUT/checkpoints once finished); an interrupted
    run continues with the same command and --resume.

    \b
    nfc train --data runs/demo/data --embeddings runs/demo/embeddings.parquet --out runs/demo/model
    nfc train --data runs/demo/data --embeddings runs/demo/embeddings.parquet --out runs/demo/model --resume
    torchrun --standalone --nproc_per_node=2 -m nfc.cli train --data ... --out ...
    """
    train_config = resolve_config(TrainConfig(), config_path, sets)
    try:
        overrides = model_overrides(model_sets)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--model-set") from None
    val_start, test_start = split or (None, None)
    window = WindowSpec(lookback=lookback, horizon=horizon, val_start=val_start, test_start=test_start)
    portfolio = PortfolioSpec()
    logger.info("train config: %s", train_config.to_dict())
    prepared = prepare(load_data_dir(data_dir), embeddings, window, allow_encoder_leak=allow_encoder_leak,
                       normaliser_settings=train_config.normaliser_settings)
    config = model_config_for(prepared, window, portfolio, train_config, variant, overrides)
    logger.info("model config: %s", config.to_dict())
    result = _train_checkpointed(out, force, resume, prepared=prepared, config=config, train=train_config,
                                 window=window, portfolio=portfolio)
    rank, _ = distributed_context()
    try:
        if rank == 0:
            write_run(out, result, prepared, train_config, window, portfolio,
                      extra_meta={"variant": variant, "data_dir": str(data_dir.resolve())}, force=force,
                      checkpointed=True)
    finally:
        end_distributed()
    if rank != 0:
        return None
    return {"out": str(out), "variant": variant, "best_val_sharpe": result.best_val_sharpe,
            "best_epoch": result.best_epoch, "epochs": len(result.history), "seconds": result.seconds,
            "resumed_from": result.resumed_from}


def _finetuned_lines(result: dict[str, Any]) -> Iterator[str]:
    verdict = "challenger promoted" if result["promoted"] else f"kept the incumbent {result['incumbent']}"
    yield (f"{verdict}: val Sharpe challenger {result['challenger_val_sharpe']:.2f} vs incumbent "
           f"{result['incumbent_val_sharpe']:.2f} (both versions kept with their metrics; challenger in "
           f"{result['out']})")


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The incumbent run folder.")
@data_option
@embeddings_option
@out_option
@config_options("TrainConfig")
@force_option
@_resume_option
@leak_option
@log_level_option
@json_result(_finetuned_lines)
@cli_errors
def finetune(model_dir: Path, data_dir: Path, embeddings: Path, out: Path, config_path: Path | None,
             sets: tuple[str, ...], force: bool, resume: bool, allow_encoder_leak: bool) -> dict[str, Any]:
    """Continue training on newer data; the challenger replaces the incumbent only if it wins on the
    same validation windows.

    \b
    nfc finetune --model runs/demo/model --data data/newer --embeddings newer.parquet --out runs/demo/model-2
    """
    incumbent_run = load_run(model_dir)
    train_config = resolve_config(incumbent_run.train_config, config_path, sets)
    data = load_data_dir(data_dir, universe=incumbent_run.universe)
    if data.bar_spec.interval != incumbent_run.bar_spec.interval:
        raise DataError(f"data bars are {data.bar_spec.interval}, the model was trained on "
                        f"{incumbent_run.bar_spec.interval}", source=str(data_dir))
    prepared = prepare(data, embeddings, incumbent_run.window, normaliser=incumbent_run.normaliser,
                       allow_encoder_leak=allow_encoder_leak)
    incumbent = CgaModel.from_checkpoint(incumbent_run.weights_path)
    incumbent_sharpe = validation_sharpe(incumbent, prepared, prepared.splits.val, incumbent_run.window,
                                         incumbent_run.portfolio, train_config.val_offsets)
    result = _train_checkpointed(out, force, resume, prepared=prepared, config=incumbent.config, train=train_config,
                                 window=incumbent_run.window, portfolio=incumbent_run.portfolio,
                                 init_state={k: v.clone() for k, v in incumbent.state_dict().items()})
    promoted = result.best_val_sharpe > incumbent_sharpe
    decision = {"incumbent": str(model_dir), "incumbent_val_sharpe": incumbent_sharpe,
                "challenger_val_sharpe": result.best_val_sharpe, "promoted": promoted,
                "validation_bars": prepared.splits.to_dict()["val"]}
    write_run(out, result, prepared, train_config, incumbent_run.window, incumbent_run.portfolio,
              extra_meta={"variant": incumbent_run.meta.get("variant", "cga"), "data_dir": str(data_dir.resolve()),
                          "parent": str(model_dir.resolve()), "finetune": decision}, force=force,
              extra_files={DECISION_FILE: decision}, checkpointed=True)
    return {"out": str(out), **decision}
