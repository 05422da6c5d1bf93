"""Every supported encoder family exports to ONNX with parity: BigBird, BERT, RoBERTa, DeBERTa-v2 (plain and
v3-style relative attention) and ModernBERT, each a tiny random config built here (no hub), with the project's
tokenizer. And serving's tokenizer (the package's tokenizer.json read by the `tokenizers` library, truncated
to max_length) gives the ids transformers gives, for the project's tokenizer and for BERT's WordPiece and
RoBERTa's byte-level BPE tokenizers built from vocabulary files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import FP32_ATOL, TINY_ENCODER
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertTokenizerFast, RobertaTokenizerFast

from export.onnx_export import export_encoder, graph_signature
from export.parity import TOLERANCES, encoder_batch_invariance, encoder_cases, encoder_parity, variant_session
from training.encoder import ENCODER_FAMILIES, NfcEncoder
from training.encoder_init import EncoderSetupConfig, init_encoder

TEXTS = [f"{name} {verb} estimates as sales {move} in quarter {i}" for i, (name, verb, move) in
         enumerate(zip(["Acme", "Globex", "Initech", "Hooli"] * 10, ["beats", "misses"] * 20, ["jump", "slump"] * 20,
                       strict=True))]
MAX_LENGTH = 768  # above BigBird's 704-token switch, within every tiny config's positions


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def project_tokenizer_dir(tmp_path_factory) -> Path:
    return init_encoder(TEXTS, tmp_path_factory.mktemp("families") / "big_bird", EncoderSetupConfig(**TINY_ENCODER))


def tiny_encoder(family: str, root: Path) -> NfcEncoder:
    if family == "deberta-v3":  # DeBERTa-v2's code with the v3 checkpoints' relative-attention settings
        tokenizer = AutoTokenizer.from_pretrained(init_encoder(TEXTS, root / "tok", EncoderSetupConfig(**TINY_ENCODER)))
        config = AutoConfig.for_model("deberta-v2", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=1024,
                                      relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=256,
                                      max_relative_positions=-1, position_biased_input=False, norm_rel_ebd="layer_norm",
                                      share_att_key=True, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        return NfcEncoder(AutoModel.from_config(config), tokenizer, max_length=MAX_LENGTH, device="cpu",
                          dtype="float32", source=family)
    folder = init_encoder(TEXTS, root / family, EncoderSetupConfig(**TINY_ENCODER, family=family))
    return NfcEncoder.load(folder, max_length=MAX_LENGTH, device="cpu", dtype="float32")


@pytest.mark.parametrize("family", [*ENCODER_FAMILIES, "deberta-v3"])
def test_family_exports_with_dynamic_axes_and_parity(family, tmp_path):
    encoder = tiny_encoder(family, tmp_path)
    assert encoder.model.config.model_type == family.replace("deberta-v3", "deberta-v2")
    path = export_encoder(encoder, tmp_path / "encoder.onnx")
    assert all(isinstance(dim, str) for entry in graph_signature(path)["inputs"] for dim in entry["shape"])
    session, tolerance = variant_session(path, "fp32"), TOLERANCES["fp32"]
    assert tolerance.atol == FP32_ATOL
    for case, batch in encoder_cases(encoder):
        with torch.inference_mode():
            expected = encoder.forward_pooled(*(torch.as_tensor(x) for x in batch)).numpy()
        result = encoder_parity(path.name, session, tolerance, case, batch, expected)
        assert result.passed, result
        if 2 <= len(batch[0]) <= 16:
            assert encoder_batch_invariance(path.name, session, tolerance, case, batch).passed


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_pooling_is_selectable_for_every_family(family, tmp_path):
    folder = init_encoder(TEXTS, tmp_path / family, EncoderSetupConfig(**TINY_ENCODER, family=family))
    mean, cls = (NfcEncoder.load(folder, max_length=64, pooling=p) for p in ("mean", "cls"))
    ids, mask = mean.pad_batch(mean.tokenize(TEXTS[:2])[0])
    with torch.inference_mode():
        hidden = mean.model(input_ids=ids, attention_mask=mask).last_hidden_state
    np.testing.assert_allclose(cls.encode(TEXTS[:2]), hidden[:, 0].numpy(), atol=1e-5)
    assert mean.fingerprint != cls.fingerprint


def serving_ids(tokenizer_json: Path, texts: list[str], max_length: int) -> list[list[int]]:
    """What serving/runtime.py's NewsEncoder does: tokenizers' Tokenizer, no padding, truncation to max_length."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def wordpiece_tokenizer(root: Path) -> BertTokenizerFast:
    words = sorted({w.lower() for text in TEXTS for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast.from_pretrained(root)  # a hub folder's vocab.txt


def byte_bpe_tokenizer(root: Path) -> RobertaTokenizerFast:
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *sorted(pre_tokenizers.ByteLevel.alphabet()), "Ġa", "es"]
    (root / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (root / "merges.txt").write_text("#version: 0.2\nĠ a\ne s\n")
    return RobertaTokenizerFast.from_pretrained(root)  # a hub folder's vocab.json + merges.txt


@pytest.mark.parametrize("kind", ["project", "wordpiece", "byte-bpe"])
def test_serving_tokenizer_matches_transformers(kind, project_tokenizer_dir, tmp_path):
    if kind == "project":
        tokenizer = AutoTokenizer.from_pretrained(project_tokenizer_dir)
    else:
        tokenizer = wordpiece_tokenizer(tmp_path) if kind == "wordpiece" else byte_bpe_tokenizer(tmp_path)
    tokenizer.save_pretrained(tmp_path / "saved")
    texts = [*TEXTS[:5], " ".join(TEXTS * 4)]  # the last one is cut at max_length
    for max_length in (12, 512):
        expected = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        assert len(expected[-1]) == max_length and expected[-1][-1] == tokenizer.sep_token_id
        assert len(set(expected[0])) > 4  # real tokens, not a vocabulary of unknowns
        assert serving_ids(tmp_path / "saved" / "tokenizer.json", texts, max_length) == expected
