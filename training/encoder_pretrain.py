"""Self-supervised encoder training (`nfc encoder pretrain`): masked language modelling on the user's own news.

No labels are needed: transformers' `DataCollatorForLanguageModeling` masks 15% of the tokens and the
family's `AutoModelForMaskedLM` learns to fill them in. The encoder's backbone starts from the source
encoder folder (or hub id); the MLM head is new (seeded) and is thrown away at the end: the saved folder
holds the backbone in the source's own class (pooler kept), its final LayerNorm rescaled so the pooled
vectors of the training texts are standardised per dimension (`standardise`, training/encoder_standardise.py),
so `NfcEncoder.load`, `nfc embed` and `nfc export` read it exactly like an `nfc encoder init` folder.

The latest `heldout_fraction` of the texts (they come in publication order) is held out: its MLM loss,
with masks fixed by the seed, is measured before training and after every epoch, so "it learns" means
"it predicts later news better". Resumable: a checkpoint (MLM weights, optimizer, schedule, torch RNG,
position in the epoch) is written every `checkpoint_every` steps (0: every epoch) into
OUT/checkpoints/, and `resume=True` continues from the latest; an uninterrupted run and an interrupted,
resumed one end with the same weights (same device).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

from training.checkpoints import CHECKPOINTS_DIR, numbered_folders, written_whole
from training.encoder import NfcEncoder
from training.encoder_init import check_out_dir, save_encoder
from training.encoder_standardise import NotFoldableError, fold_standardisation

__all__ = ["PretrainConfig", "PretrainResult", "heldout_mlm_loss", "pretrain_encoder"]

logger = logging.getLogger(__name__)

_STATE_FILE = "state.json"
_WEIGHTS_FILE = "mlm.safetensors"
_TRAINER_FILE = "trainer.pt"


@dataclass(frozen=True)
class PretrainConfig:
    """Masked language modelling on news: AdamW with linear warm-up and decay, checkpoints, held-out loss."""

    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_length: int = 256  # tokens per article while training; news items are short
    mlm_probability: float = 0.15
    heldout_fraction: float = 0.1  # the latest texts, scored and never trained on
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of every epoch
    keep_checkpoints: int = 2
    seed: int = 0
    # fold a per-dimension standardisation of the training texts' pooled vectors into the final LayerNorm
    # (training/encoder_standardise.py): the raw MLM vectors vary too little for the CGA model's news inputs.
    # Families whose final norm has no bias (ModernBERT) keep their raw vectors, with a warning
    standardise: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.checkpoint_every < 0:
            raise ValueError("learning_rate must be > 0, weight_decay >= 0 and checkpoint_every >= 0, got "
                             f"{self.learning_rate}, {self.weight_decay}, {self.checkpoint_every}")
        if not 0 < self.mlm_probability < 1 or not 0 < self.heldout_fraction < 1 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("mlm_probability and heldout_fraction must be in (0, 1) and warmup_fraction in [0, 1), "
                             f"got {self.mlm_probability}, {self.heldout_fraction}, {self.warmup_fraction}")


@dataclass(frozen=True)
class PretrainResult:
    """What pretraining did: sizes, steps, and the held-out MLM loss before and after each epoch."""

    n_train: int
    n_heldout: int
    steps: int
    heldout_loss_before: float
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, heldout_loss
    resumed_from: int | None  # the checkpoint step a resumed run started from


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def _features(ids: list[list[int]], special: list[list[int]], rows: Sequence[int]) -> list[dict[str, list[int]]]:
    """The collator's input for texts `rows`: token ids and which of them are special (never masked)."""
    return [{"input_ids": ids[i], "special_tokens_mask": special[i]} for i in rows]


def heldout_mlm_loss(model: torch.nn.Module, tokenizer: Any, ids: list[list[int]], special: list[list[int]],
                     config: PretrainConfig, device: torch.device) -> float:
    """Mean MLM loss per masked token over `ids`, with masks drawn from the seed (the same every call)."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.mlm_probability, seed=config.seed)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), config.batch_size):
            batch = collator(_features(ids, special, range(start, min(start + config.batch_size, len(ids)))))
            batch = {k: v.to(device) for k, v in batch.items()}
            n_masked = int((batch["labels"] != -100).sum())
            if n_masked:
                total += float(model(**batch).loss) * n_masked
                count += n_masked
    model.train(was_training)
    return total / max(count, 1)


def _settings(source: str, config: PretrainConfig, texts: Sequence[str]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the source, the config and the exact texts."""
    return {"source": source, "config": dataclasses.asdict(config), "texts_sha256": _texts_digest(texts)}


def _latest_checkpoint(folder: Path) -> Path | None:
    steps = numbered_folders(folder, "step")
    return steps[-1] if steps else None


def _get_rng() -> dict[str, Any]:
    """The global generators that dropout and masking draw from (CPU, and every CUDA device when present)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     schedule: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any], keep: int) -> None:
    """One checkpoint folder, written under a temporary name and renamed, then the oldest beyond `keep` removed."""
    with written_whole(folder / f"step-{state['step']:07d}") as tmp:
        save_model(model, str(tmp / _WEIGHTS_FILE))  # handles the tied input/output embeddings
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": _get_rng()},
                   tmp / _TRAINER_FILE)
        (tmp / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    for old in numbered_folders(folder, "step")[:-keep]:
        shutil.rmtree(old)


def pretrain_encoder(source: str, texts: Sequence[str], out_dir: Path, config: PretrainConfig | None = None,
                     text_record: dict[str, Any] | None = None, resume: bool = False,
                     device: str | None = None, progress: bool = False,
                     on_step: Callable[[int, float], None] | None = None) -> PretrainResult:
    """MLM-train the encoder `source` on `texts` (publication order) and save it to `out_dir` (module docstring).

    text_record: when the texts were published (neuralfusion.encoder_text), stored in the folder's metadata.
    on_step(step, loss) is called after every optimiser step (and its checkpoint, if one was due).
    """
    config = config or PretrainConfig()
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    checkpoints = out_dir / CHECKPOINTS_DIR
    latest = _latest_checkpoint(checkpoints) if checkpoints.is_dir() else None
    if latest is not None and not resume:
        raise FileExistsError(f"{out_dir} holds pretraining checkpoints (latest {latest.name}); pass --resume to "
                              "continue from it, or choose another --out")
    if resume and latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {checkpoints}; start without --resume")
    n_heldout = max(1, round(len(texts) * config.heldout_fraction))
    if len(texts) - n_heldout < 1:
        raise ValueError(f"need at least 2 texts to train and hold out, got {len(texts)}")
    encoder = NfcEncoder.load(source, max_length=config.max_length, device=device, dtype="float32")
    tokenizer = encoder.tokenizer
    if tokenizer.mask_token_id is None:
        raise ValueError(f"tokenizer of {source} has no mask token; masked language modelling needs one")
    torch.manual_seed(config.seed)  # the new MLM head
    model = AutoModelForMaskedLM.from_config(encoder.model.config)
    missing, unexpected = model.base_model.load_state_dict(encoder.model.state_dict(), strict=False)
    if missing or any(not key.startswith("pooler.") for key in unexpected):
        raise ValueError(f"{source}'s weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.to(encoder.device)
    encoded = tokenizer(list(texts), truncation=True, max_length=config.max_length, return_special_tokens_mask=True,
                        return_attention_mask=False, verbose=False)
    ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
    n_train = len(texts) - n_heldout
    train_ids, train_special = ids[:n_train], special[:n_train]
    heldout = (ids[n_train:], special[n_train:])
    settings = _settings(source, config, texts)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup = max(1, round(config.warmup_fraction * total_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    step, history, losses, resumed_from = 0, [], [], None
    if latest is not None:
        state = json.loads((latest / _STATE_FILE).read_text())
        if state["settings"] != settings:
            raise ValueError(f"checkpoint {latest} was made with other settings, source or texts; it cannot be "
                             "resumed with these (start a new --out)")
        load_model(model, str(latest / _WEIGHTS_FILE), device=str(encoder.device))
        trainer = torch.load(latest / _TRAINER_FILE, weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        schedule.load_state_dict(trainer["schedule"])
        _set_rng(trainer["rng"])
        step, history, losses, before = state["step"], state["history"], state["epoch_losses"], state["before"]
        resumed_from = step
        logger.info("resumed from %s (step %d of %d)", latest, step, total_steps)
    else:
        before = heldout_mlm_loss(model, tokenizer, *heldout, config, encoder.device)
        torch.manual_seed(config.seed)  # dropout and masking draw from the global generators from here on
    logger.info("MLM pretraining: %d train texts, %d held out (the latest), %d steps; held-out loss %.4f",
                n_train, n_heldout, total_steps, before)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.mlm_probability)
    every = config.checkpoint_every or steps_per_epoch
    model.train()
    with tqdm(total=total_steps, initial=step, disable=not progress, desc="pretrain", unit="step") as bar:
        for epoch in range(step // steps_per_epoch, config.epochs):
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(config.seed + epoch))
            first = step - epoch * steps_per_epoch  # batches of this epoch done before the resumed checkpoint
            losses = losses if first else []
            for rows in order.split(config.batch_size)[first:]:
                batch = {k: v.to(encoder.device) for k, v in
                         collator(_features(train_ids, train_special, rows.tolist())).items()}
                loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if step % steps_per_epoch == 0:
                    heldout_loss = heldout_mlm_loss(model, tokenizer, *heldout, config, encoder.device)
                    history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                                    "heldout_loss": heldout_loss})
                    logger.info("epoch %d: train MLM loss %.4f, held-out MLM loss %.4f", epoch + 1,
                                history[-1]["train_loss"], heldout_loss)
                if step % every == 0:
                    state = {"step": step, "settings": settings, "history": history, "before": before,
                             "epoch_losses": [] if step % steps_per_epoch == 0 else losses}
                    _save_checkpoint(checkpoints, model, optimizer, schedule, state, config.keep_checkpoints)
                if on_step is not None:
                    on_step(step, losses[-1])
    encoder.model.load_state_dict(model.base_model.state_dict(), strict=False)  # the source's class, pooler kept
    standardised = None
    if config.standardise:
        try:
            standardised = fold_standardisation(encoder, list(texts[:n_train]), config.batch_size)
            logger.info("pooled vectors standardised over the %d training texts (per-dimension std was %.3g-%.3g)",
                        n_train, *standardised["std_before"])
        except NotFoldableError as err:
            logger.warning("pooled vectors left as they are: %s", err)
    result = PretrainResult(n_train=n_train, n_heldout=n_heldout, steps=step, heldout_loss_before=before,
                            history=history, resumed_from=resumed_from)
    metadata = {"kind": "pretrain", "source": source, "config": dataclasses.asdict(config),
                **dataclasses.asdict(result), "standardised": standardised, "text": text_record}
    save_encoder(encoder.model, tokenizer, out_dir, metadata)
    return result
