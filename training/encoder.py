"""The news encoder: a Hugging Face encoder model + tokenizer -> one float32 vector per article.

Loads a checkpoint of any supported family (BigBird, the default for long texts, BERT, RoBERTa,
DeBERTa-v2, ModernBERT) by local folder or hub id through the Auto classes (`NfcEncoder.load`).
Articles are tokenized, truncated to `max_length` tokens (counted, never silently), sorted by length
and run in batches; the vector is the masked mean of the last hidden states ("mean", default) or the
first token's state ("cls": [CLS], or <s> for RoBERTa).

BigBird's attention type is fixed per encoder (chosen at load, stored in the fingerprint) and never
changes: HF BigBird permanently switches a module from "block_sparse" to "original_full" after any input
of <= (5 + 2*num_random_blocks)*block_size tokens (704 with the defaults), with a warning, and stays
switched for every later call at any length. So:
- "original_full" (default): exact full attention; fastest on GPU and exports fully dynamic. Padding
  is masked out, so an article's vector does not depend on its batch-mates (up to float rounding).
- "block_sparse": each article runs at its own canonical padded length, a multiple of block_size
  and always above the switch threshold; batches only group articles of equal canonical length.
  Block-sparse output depends on the padded length (the last block is global), so this is what
  makes an article's vector independent of what else is in its batch.
To compare attention types, load the checkpoint twice. The other families have full attention only
("original_full" is their one attention type).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import is_offline_mode
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = [
    "ATTENTION_TYPES",
    "ENCODER_FAMILIES",
    "POOLINGS",
    "EncoderNotFoundError",
    "NfcEncoder",
    "pool_hidden",
    "position_limit",
]

logger = logging.getLogger(__name__)

ATTENTION_TYPES = ("original_full", "block_sparse")
POOLINGS = ("mean", "cls")
# model_type of the families that are tested here (loading, pooling, pretraining, ONNX export and parity)
ENCODER_FAMILIES = ("big_bird", "bert", "roberta", "deberta-v2", "modernbert")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# config entries that name or describe a checkpoint without changing what it computes
_CONFIG_NOISE = {"transformers_version", "architectures", "dtype", "torch_dtype", "attention_type",
                 "id2label", "label2id", "problem_type", "finetuning_task", "output_hidden_states",
                 "output_attentions", "return_dict", "use_cache"}


class EncoderNotFoundError(FileNotFoundError):
    """The encoder path or hub id names nothing loadable."""


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, C) hidden states + (B, T) mask -> (B, C) float32: masked mean, or the first ([CLS]) token."""
    hidden = hidden.float()
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def position_limit(config: PretrainedConfig) -> int:
    """Longest sequence the model's position embeddings take: RoBERTa numbers positions from pad_token_id + 1."""
    limit = int(config.max_position_embeddings)
    if config.model_type == "roberta":
        limit -= int(config.pad_token_id) + 1
    return limit


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """Compute dtype: bf16 (else fp16) on CUDA, fp32 on CPU, unless asked for explicitly."""
    if dtype is None:
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


class NfcEncoder:
    """An encoder model and its tokenizer, with fixed attention type, max length and pooling."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_length: int = 2048,
                 pooling: str = "mean", device: str | torch.device | None = None, dtype: str | None = None,
                 source: str = "") -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer of {source or 'the encoder'} has no pad token; batches need one")
        config = model.config
        self.model = model
        self.tokenizer = tokenizer
        self.family = config.model_type
        self.attention_type = getattr(model, "attention_type", "original_full")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
        self.max_length = int(max_length)
        self.pooling = pooling
        self.source = source
        longest = self.padded_length(self.max_length)
        if longest > position_limit(config):
            raise ValueError(f"max_length {max_length} needs {longest} positions with attention "
                             f"{self.attention_type!r}, but the model has max_position_embeddings="
                             f"{config.max_position_embeddings} ({position_limit(config)} usable); lower max_length")
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        # the tokenizer's truncation state changes as it is used: digest it once, before any call
        self._tokenizer_digest = _tokenizer_digest(tokenizer)
        self.model.to(self.device).eval()

    @classmethod
    def load(cls, path_or_id: str | os.PathLike[str], *, attention_type: str = "original_full",
             max_length: int = 2048, pooling: str = "mean", device: str | torch.device | None = None,
             dtype: str | None = None) -> NfcEncoder:
        """Load model + tokenizer from a save_pretrained folder or a hub id (offline: the local hub cache).

        attention_type: "original_full" or "block_sparse" (BigBird only), fixed for this encoder (module docstring).
        dtype: "float32", "bfloat16", "float16", or None for bf16/fp16 on CUDA and fp32 on CPU.
        """
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        name = os.fspath(path_or_id)
        local = Path(name).expanduser()
        if local.exists() and not (local / "config.json").is_file():
            raise EncoderNotFoundError(f"encoder folder {local} has no config.json; expected a "
                                       "save_pretrained folder (build one with `nfc encoder init`)")
        target = str(local) if local.exists() else name
        offline = " (offline mode: only the local hub cache is searched)" if is_offline_mode() else ""
        try:
            config = AutoConfig.from_pretrained(target)
        except (OSError, ValueError) as err:
            raise EncoderNotFoundError(f"encoder {name!r} is neither a local save_pretrained folder nor a "
                                       f"hub model that could be loaded{offline}: {err}") from err
        if config.model_type not in ENCODER_FAMILIES:
            raise ValueError(f"encoder {name!r} is a {config.model_type!r} checkpoint; NfcEncoder takes "
                             f"{', '.join(ENCODER_FAMILIES)}")
        if attention_type != "original_full" and config.model_type != "big_bird":
            raise ValueError(f"attention_type {attention_type!r} is BigBird's; a {config.model_type!r} encoder "
                             "has full attention only (original_full)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(target)
        except (OSError, ValueError) as err:
            raise EncoderNotFoundError(f"encoder {name!r} has no loadable tokenizer{offline}: {err}") from err
        if config.model_type == "big_bird":
            config.attention_type = attention_type
        # weights a checkpoint lacks (e.g. a pooler it was saved without) are initialised here: seeded, so
        # the same folder always gives the same model and fingerprint
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModel.from_pretrained(target, config=config)
        return cls(model, tokenizer, max_length=max_length, pooling=pooling, device=device, dtype=dtype,
                   source=name)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over what decides the vectors: config, weights, tokenizer, pooling, max length,
        attention type and compute dtype. Cache entries are keyed by it."""
        digest = hashlib.sha256(b"nfc-encoder-v1\0")
        config = {k: v for k, v in self.model.config.to_dict().items()
                  if k not in _CONFIG_NOISE and not k.startswith("_")}
        settings = {"pooling": self.pooling, "max_length": self.max_length,
                    "attention_type": self.attention_type, "dtype": str(self.dtype).removeprefix("torch.")}
        digest.update(json.dumps([config, settings], sort_keys=True, default=str).encode())
        digest.update(self._tokenizer_digest.encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}\0".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def padded_length(self, n_tokens: int) -> int:
        """Sequence length an article of `n_tokens` runs at alone (block_sparse: its canonical length)."""
        if self.attention_type != "block_sparse":
            return n_tokens
        config = self.model.config
        block = config.block_size
        # at or below (5 + 2*num_random_blocks)*block_size HF switches to full attention for good: stay a block above
        floor = (6 + 2 * config.num_random_blocks) * block
        return max(math.ceil(n_tokens / block) * block, floor)

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids truncated to max_length (with special tokens) and each text's untruncated length."""
        _check_texts(texts)
        if not texts:
            return [], np.zeros(0, dtype=np.int64)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             return_attention_mask=False, verbose=False)["input_ids"]
        n_tokens = np.array([len(x) for x in ids], dtype=np.int64)
        at_limit = np.flatnonzero(n_tokens >= self.max_length)
        if len(at_limit):
            full = self.tokenizer([texts[i] for i in at_limit], truncation=False,
                                  return_attention_mask=False, verbose=False)["input_ids"]
            n_tokens[at_limit] = [len(x) for x in full]
        return ids, n_tokens

    def pad_batch(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the batch's longest padded_length: (B, T) input ids and (B, T) attention mask."""
        length = max(self.padded_length(len(x)) for x in ids)
        input_ids = torch.full((len(ids), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def forward_pooled(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids + mask -> (B, C) float32 pooled vectors, under this encoder's compute dtype."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        if getattr(self.model, "attention_type", "original_full") != self.attention_type:
            raise RuntimeError(f"BigBird switched attention from {self.attention_type!r} to "
                               f"{self.model.attention_type!r}; inputs must stay above the block_sparse "
                               "threshold")
        return pool_hidden(hidden, mask, self.pooling)

    def encode(self, texts: Sequence[str], batch_size: int = 16,
               progress: bool | Callable[[int], Any] = False) -> np.ndarray:
        """(M, D) float32 vectors, one per text, in input order."""
        return self.encode_with_counts(texts, batch_size=batch_size, progress=progress)[0]

    def encode_with_counts(self, texts: Sequence[str], batch_size: int = 16,
                           progress: bool | Callable[[int], Any] = False) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (M, D) float32 and untruncated token counts (M,); logs how many texts were truncated.

        progress: True for a tqdm bar, or a callback given the number of texts done after each batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids, n_tokens = self.tokenize(texts)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out, n_tokens
        truncated = int((n_tokens > self.max_length).sum())
        if truncated:
            logger.warning("%d of %d texts exceed max_length=%d tokens and were truncated (longest %d)",
                           truncated, len(texts), self.max_length, int(n_tokens.max()))
        with torch.inference_mode(), tqdm(total=len(ids), disable=progress is not True, unit="text",
                                          desc="encode") as bar:
            for batch in self._batches(ids, batch_size):
                input_ids, mask = self.pad_batch([ids[i] for i in batch])
                out[batch] = self.forward_pooled(input_ids, mask).cpu().numpy()
                bar.update(len(batch))
                if callable(progress):
                    progress(len(batch))
        return out, n_tokens

    def _batches(self, ids: list[list[int]], batch_size: int) -> list[np.ndarray]:
        """Index batches sorted by length (little padding); block_sparse never mixes canonical lengths."""
        lengths = np.array([len(x) for x in ids])
        order = np.argsort(lengths, kind="stable")
        batches: list[np.ndarray] = []
        start = 0
        while start < len(order):
            stop = min(start + batch_size, len(order))
            if self.attention_type == "block_sparse":
                padded = self.padded_length(int(lengths[order[start]]))
                while stop > start + 1 and self.padded_length(int(lengths[order[stop - 1]])) != padded:
                    stop -= 1
            batches.append(order[start:stop])
            start = stop
        return batches


def _check_texts(texts: Sequence[Any]) -> None:
    """Non-strings and empty texts are caller errors; name the first offender and the count."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"text {bad[0]} is {type(texts[bad[0]]).__name__}, not str ({len(bad)} such)")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"text {empty[0]} is empty or whitespace ({len(empty)} such); "
                         "drop them before encoding")


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's vocabulary and pipeline, without its per-call truncation/padding state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
