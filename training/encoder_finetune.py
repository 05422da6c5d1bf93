"""Sentiment fine-tune of a news encoder (`nfc encoder train`), and the linear probe that measures what the
pooled embedding carries.

The fine-tune trains the encoder's backbone through a linear head on its own pooled vector, so the
embedding the fusion model reads is what learns the label; the head itself is thrown away.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from training.encoder import ATTENTION_TYPES, POOLINGS, NfcEncoder

__all__ = [
    "SentimentTrainConfig",
    "SentimentTrainResult",
    "label_values",
    "probe_accuracy",
    "train_sentiment",
]


@dataclass(frozen=True)
class SentimentTrainConfig:
    """Sentiment fine-tune: backbone + a linear head on the pooled embedding, cross-entropy."""

    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    # tokens per article while training; news items are short, long ones only lose their tail here
    max_length: int = 256
    val_fraction: float = 0.2
    attention_type: str = "original_full"
    pooling: str = "mean"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError(f"learning_rate must be > 0 and weight_decay >= 0, got {self.learning_rate}, "
                             f"{self.weight_decay}")
        if not 0 <= self.warmup_fraction < 1 or not 0 < self.val_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1) and val_fraction in (0, 1), got "
                             f"{self.warmup_fraction}, {self.val_fraction}")
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


@dataclass(frozen=True)
class SentimentTrainResult:
    """What the fine-tune learned: label classes (head output order) and per-epoch metrics."""

    classes: list[Any]
    n_train: int
    n_val: int
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, val_loss, val_accuracy
    train_index: np.ndarray  # positions (into the texts given) used for training; the rest is validation
    val_index: np.ndarray


def label_values(news: pd.DataFrame, field: str) -> list[Any]:
    """Label of each news row from column `field`, or a dotted path into dict columns ("planted.sentiment").

    Missing labels (absent key, None, NaN) come back as None; the caller drops those rows.
    """
    if field in news.columns:
        values = list(news[field])
    else:
        column, _, rest = field.partition(".")
        if column not in news.columns or not rest:
            raise ValueError(f"label field {field!r} not found; news columns are {sorted(news.columns)}")
        values = []
        for item in news[column]:
            for key in rest.split("."):
                item = item.get(key) if isinstance(item, dict) else None
            values.append(item)
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_sentiment(encoder: NfcEncoder, texts: Sequence[str], labels: Sequence[Any],
                    config: SentimentTrainConfig | None = None,
                    log: Callable[[dict[str, float]], None] | None = None,
                    progress: bool = False) -> SentimentTrainResult:
    """Fine-tune `encoder.model` in place on (text, label) pairs through a linear head on the pooled vector.

    The encoder's own pooling and padding are used, so what is trained is exactly what `encode` returns.
    A seeded split holds out `val_fraction` of the texts; `log` receives each epoch's metrics.
    Hugging Face's BigBird calls `np.random.seed` on every block_sparse training step, resetting numpy's
    global random state, so this function draws only from its own seeded generators.
    """
    config = config or SentimentTrainConfig()
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    try:
        classes = sorted(set(labels))
    except TypeError:
        kinds = sorted({type(v).__name__ for v in labels})
        raise ValueError(f"labels must be of one comparable type, got {kinds}") from None
    if len(classes) < 2:
        raise ValueError(f"need at least two label classes to train, got {classes}")
    if len(texts) < 4:
        raise ValueError(f"need at least 4 labelled texts to train and validate, got {len(texts)}")
    targets = torch.tensor([classes.index(v) for v in labels], dtype=torch.long)
    ids, _ = encoder.tokenize(texts)
    train_idx, val_idx = _split(len(texts), config.val_fraction, config.seed)
    torch.manual_seed(config.seed)
    model = encoder.model
    head = torch.nn.Sequential(torch.nn.Dropout(model.config.hidden_dropout_prob),
                               torch.nn.Linear(encoder.dim, len(classes))).to(encoder.device)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(train_idx) / config.batch_size)
    warmup = max(1, round(config.warmup_fraction * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    scaler = torch.amp.GradScaler(encoder.device.type, enabled=encoder.dtype == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    with tqdm(total=steps, disable=not progress, desc="fine-tune", unit="step") as bar:
        for epoch in range(1, config.epochs + 1):
            model.train()
            head.train()
            total, count = 0.0, 0
            for batch in torch.randperm(len(train_idx), generator=generator).split(config.batch_size):
                rows = train_idx[batch.numpy()]
                input_ids, mask = encoder.pad_batch([ids[i] for i in rows])
                logits = head(encoder.forward_pooled(input_ids, mask))  # (B, n_classes)
                loss = torch.nn.functional.cross_entropy(logits, targets[rows].to(encoder.device))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                total += float(loss.detach()) * len(rows)
                count += len(rows)
                bar.update(1)
            val_loss, val_accuracy = _evaluate(encoder, head, ids, targets, val_idx, config.batch_size)
            metrics = {"epoch": epoch, "train_loss": total / count, "val_loss": val_loss,
                       "val_accuracy": val_accuracy}
            history.append(metrics)
            if log is not None:
                log(metrics)
    model.eval()
    return SentimentTrainResult(classes=classes, n_train=len(train_idx), n_val=len(val_idx), history=history,
                                train_index=train_idx, val_index=val_idx)


def _evaluate(encoder: NfcEncoder, head: torch.nn.Module, ids: list[list[int]], targets: torch.Tensor,
              rows: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy of the head on `rows`, in eval mode."""
    encoder.model.eval()
    head.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            logits = head(encoder.forward_pooled(*encoder.pad_batch([ids[i] for i in chunk])))
            target = targets[chunk].to(encoder.device)
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
    return loss / len(rows), correct / len(rows)


def probe_accuracy(train_vectors: np.ndarray, train_labels: Sequence[Any], test_vectors: np.ndarray,
                   test_labels: Sequence[Any], seed: int = 0, per_class: int | None = None, draws: int = 5) -> float:
    """Accuracy of a logistic regression fitted on train embeddings and scored on held-out ones.

    Tells whether the pooled embedding carries the label linearly, which is how the fusion model sees it.
    With `per_class`, each of `draws` probes sees only that many train examples per class (mean accuracy
    returned): with templated news a full probe can memorise templates even from a random-init encoder,
    a few-shot probe cannot, so it shows what fine-tuning added.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_vectors, train_labels = np.asarray(train_vectors), np.asarray(train_labels)
    rng = np.random.default_rng(seed)
    subsets = [np.arange(len(train_labels))]
    if per_class is not None:
        subsets = [np.concatenate([rng.choice(np.flatnonzero(train_labels == c), per_class, replace=False)
                                   for c in np.unique(train_labels)]) for _ in range(draws)]
    scores = []
    for rows in subsets:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        probe.fit(train_vectors[rows], train_labels[rows])
        scores.append(probe.score(np.asarray(test_vectors), np.asarray(test_labels)))
    return float(np.mean(scores))
