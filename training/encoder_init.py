"""The offline default encoder, made from the news alone: a byte-level BPE tokenizer trained on the news and
a small random-init encoder, BigBird by default (`nfc encoder init`; `family` picks BERT, RoBERTa, DeBERTa-v2
or ModernBERT instead).

Everything is saved with `save_pretrained` (safetensors + tokenizer.json), so the folder loads as any
Hugging Face checkpoint (`AutoTokenizer`, `AutoModel.from_pretrained`) and with `NfcEncoder.load`.
A file `nfc_encoder.json` next to it records how it was made (config, data size, metrics) and the
publication time range of the text it was trained on (neuralfusion/encoder_text.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from neuralfusion.encoder_text import ENCODER_METADATA_FILE
from training.checkpoints import CHECKPOINTS_DIR
from training.encoder import ENCODER_FAMILIES

__all__ = [
    "METADATA_FILE",
    "SPECIAL_TOKENS",
    "EncoderSetupConfig",
    "build_config",
    "check_out_dir",
    "init_encoder",
    "save_encoder",
    "train_tokenizer",
]

logger = logging.getLogger(__name__)

METADATA_FILE = ENCODER_METADATA_FILE
# BERT-style specials; [PAD] first so pad_token_id == 0, BigBird's default
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_ROLES = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


@dataclass(frozen=True)
class EncoderSetupConfig:
    """Shape of the default encoder; small enough to train and run on a CPU."""

    family: str = "big_bird"  # a transformers model_type of training.encoder.ENCODER_FAMILIES
    vocab_size: int = 8000  # an upper bound: a small corpus yields fewer tokens
    min_frequency: int = 2
    lowercase: bool = True
    num_hidden_layers: int = 4
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    # = the encoder's default max_length, so full-length articles fit in either attention type
    max_position_embeddings: int = 2048
    block_size: int = 64
    num_random_blocks: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in ENCODER_FAMILIES:
            raise ValueError(f"family must be one of {ENCODER_FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "min_frequency", "num_hidden_layers", "hidden_size", "num_attention_heads",
                     "intermediate_size", "block_size", "num_random_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        smallest_vocab = 256 + len(SPECIAL_TOKENS)  # the byte alphabet and the specials
        if self.vocab_size < smallest_vocab:
            raise ValueError(f"vocab_size must be >= {smallest_vocab} (256 bytes + specials), got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        smallest_sparse = (6 + 2 * self.num_random_blocks) * self.block_size
        if self.family == "big_bird" and self.max_position_embeddings < smallest_sparse:
            raise ValueError(f"max_position_embeddings {self.max_position_embeddings} is below "
                             f"(6 + 2*num_random_blocks)*block_size = {smallest_sparse}, the shortest "
                             "block_sparse input; raise it or shrink block_size")


def train_tokenizer(texts: Sequence[str], vocab_size: int = 8000, min_frequency: int = 2,
                    lowercase: bool = True, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with BERT-style specials, that AutoTokenizer loads.

    Byte-level BPE never needs [UNK] and, unlike the `tokenizers` WordPiece trainer (whose vocabulary
    order varies run to run), trains deterministically, so the same corpus gives the same encoder.
    """
    if not texts:
        raise ValueError("cannot train a tokenizer on zero texts")
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Lowercase()] if lowercase else [normalizers.NFC()])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length, **_SPECIAL_ROLES)


def build_config(setup: EncoderSetupConfig, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """The `setup.family` config for `setup`, with vocabulary and special ids from `tokenizer`."""
    positions = setup.max_position_embeddings
    extra: dict[str, Any] = {}
    if setup.family == "big_bird":
        extra = {"block_size": setup.block_size, "num_random_blocks": setup.num_random_blocks,
                 "attention_type": "original_full"}
    elif setup.family == "roberta":  # RoBERTa numbers positions from pad_token_id + 1
        positions += tokenizer.pad_token_id + 1
    return AutoConfig.for_model(
        setup.family, vocab_size=len(tokenizer), hidden_size=setup.hidden_size,
        num_hidden_layers=setup.num_hidden_layers, num_attention_heads=setup.num_attention_heads,
        intermediate_size=setup.intermediate_size, max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id, cls_token_id=tokenizer.cls_token_id, **extra)


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that holds anything but an encoder folder or pretraining checkpoints: never delete data."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file; choose a folder for --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file() \
            and {p.name for p in out_dir.iterdir()} != {CHECKPOINTS_DIR}:
        raise FileExistsError(f"{out_dir} exists and is not an encoder folder; choose an empty or new --out")


def save_encoder(model: PreTrainedModel, tokenizer: Any, out_dir: Path | str, metadata: dict[str, Any]) -> Path:
    """save_pretrained model + tokenizer and write METADATA_FILE, replacing `out_dir` as a whole.

    The folder is written under a temporary name and renamed into place, so a crash never leaves a
    folder that looks complete but is not. An existing folder is replaced only if it is an encoder
    folder (it has config.json) or holds only pretraining checkpoints, so a mistyped --out never deletes
    data; its CHECKPOINTS_DIR is carried over into the new folder.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(8)}.tmp")
    old = tmp.with_name(tmp.name + ".old")
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        if not (tmp / "model.safetensors").is_file():
            raise RuntimeError(f"save_pretrained wrote no model.safetensors into {tmp}")
        if out_dir.exists():
            os.replace(out_dir, old)
            if (old / CHECKPOINTS_DIR).is_dir():
                os.replace(old / CHECKPOINTS_DIR, tmp / CHECKPOINTS_DIR)
        os.replace(tmp, out_dir)
    except BaseException:
        if old.exists() and not out_dir.exists():
            if (tmp / CHECKPOINTS_DIR).is_dir():
                os.replace(tmp / CHECKPOINTS_DIR, old / CHECKPOINTS_DIR)
            os.replace(old, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def init_encoder(texts: Sequence[str], out_dir: Path | str, setup: EncoderSetupConfig | None = None,
                 text_record: dict[str, Any] | None = None) -> Path:
    """Train the tokenizer on `texts`, random-init an encoder (seeded) and save both to `out_dir`.

    text_record: when the texts were published (neuralfusion.encoder_text.stage_record); without it the
    folder has no record and `nfc train` refuses its embeddings.
    """
    setup = setup or EncoderSetupConfig()
    tokenizer = train_tokenizer(texts, setup.vocab_size, setup.min_frequency, setup.lowercase,
                                model_max_length=setup.max_position_embeddings)
    config = build_config(setup, tokenizer)
    torch.manual_seed(setup.seed)
    model = AutoModel.from_config(config)
    logger.info("initialised %s: %d layers, hidden %d, vocab %d, %.1fM parameters", setup.family,
                setup.num_hidden_layers, setup.hidden_size, len(tokenizer),
                sum(p.numel() for p in model.parameters()) / 1e6)
    metadata = {"kind": "init", "setup": dataclasses.asdict(setup), "n_texts": len(texts), "text": text_record}
    return save_encoder(model, tokenizer, out_dir, metadata)
