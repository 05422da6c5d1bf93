"""`nfc encoder pretrain`: masked language modelling without labels, checkpoints, resume, every family.

Tiny encoders (2 layers, hidden 32) made here from a tokenizer trained on generated headlines: no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import TINY_ENCODER
from click.testing import CliRunner
from transformers import AutoModel

from training.checkpoints import CHECKPOINTS_DIR
from training.cli import encoder
from training.encoder import ENCODER_FAMILIES, NfcEncoder
from training.encoder_init import METADATA_FILE, EncoderSetupConfig, init_encoder
from training.encoder_pretrain import PretrainConfig, pretrain_encoder

SUBJECTS = ("Acme", "Globex", "Initech", "Hooli", "Umbrella")
PATTERNS = ("{s} beats estimates as sales jump", "{s} misses estimates as sales slump",
            "{s} raises guidance after a strong quarter", "{s} cuts guidance after a weak quarter",
            "analysts upgrade {s} to buy", "analysts downgrade {s} to sell")
QUICK = PretrainConfig(epochs=3, batch_size=8, learning_rate=3e-3, max_length=32, heldout_fraction=0.2)


def headlines(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [str(rng.choice(PATTERNS)).format(s=rng.choice(SUBJECTS)) for _ in range(n)]


@pytest.fixture(scope="module", autouse=True)
def offline(one_torch_thread):
    """Offline hub for the module (its shared encoders are built under it and under one torch thread)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        yield


def tiny_setup(family: str = "big_bird") -> EncoderSetupConfig:
    return EncoderSetupConfig(**{**TINY_ENCODER, "max_position_embeddings": 256}, family=family, min_frequency=1)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    return init_encoder(headlines(80), tmp_path_factory.mktemp("init") / "enc", tiny_setup())


@pytest.fixture(scope="module")
def pretrained(init_dir, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("mlm") / "enc"
    return out, pretrain_encoder(str(init_dir), headlines(80), out, QUICK, device="cpu")


def test_pretraining_lowers_the_heldout_mlm_loss(pretrained):
    _, result = pretrained
    assert result.n_heldout == 16 and result.n_train == 64 and result.steps == 3 * 8
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["heldout_loss"] < 0.8 * result.heldout_loss_before  # ln(400) ~ 6 at random init
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_pretrained_folder_loads_like_an_init_folder(init_dir, pretrained):
    out, _ = pretrained
    assert {"config.json", "model.safetensors", "tokenizer.json", METADATA_FILE, CHECKPOINTS_DIR} <= \
        {p.name for p in out.iterdir()}
    before, after = AutoModel.from_pretrained(init_dir), AutoModel.from_pretrained(out)
    assert type(after) is type(before) and after.state_dict().keys() == before.state_dict().keys()  # pooler kept
    torch.testing.assert_close(after.pooler.weight, before.pooler.weight)  # MLM does not train it
    assert not torch.equal(after.embeddings.word_embeddings.weight, before.embeddings.word_embeddings.weight)
    encoder = NfcEncoder.load(out, max_length=64)
    assert encoder.encode(["Acme beats estimates"]).shape == (1, 32)
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["kind"] == "pretrain" and meta["source"] == str(init_dir) and len(meta["history"]) == 3


def test_interrupted_and_resumed_run_ends_with_the_same_weights(init_dir, pretrained, tmp_path):
    out, straight = pretrained
    config = PretrainConfig(**{**QUICK.__dict__, "checkpoint_every": 5})
    target = tmp_path / "resumed"

    def crash(step: int, loss: float) -> None:
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_encoder(str(init_dir), headlines(80), target, config, device="cpu", on_step=crash)
    assert sorted(p.name for p in (target / CHECKPOINTS_DIR).iterdir()) == ["step-0000005", "step-0000010"]
    assert not (target / "config.json").exists()  # nothing that looks like a finished encoder
    with pytest.raises(FileExistsError, match="pass --resume"):
        pretrain_encoder(str(init_dir), headlines(80), target, config, device="cpu")
    resumed = pretrain_encoder(str(init_dir), headlines(80), target, config, device="cpu", resume=True)
    assert resumed.resumed_from == 10 and resumed.steps == straight.steps
    assert resumed.history == straight.history  # the same losses, epoch by epoch
    assert NfcEncoder.load(target, max_length=64).fingerprint == NfcEncoder.load(out, max_length=64).fingerprint


def test_resume_refuses_other_texts_or_settings(init_dir, tmp_path):
    config = PretrainConfig(**{**QUICK.__dict__, "epochs": 1})
    pretrain_encoder(str(init_dir), headlines(40), tmp_path / "enc", config, device="cpu")
    with pytest.raises(ValueError, match="other settings, source or texts"):
        pretrain_encoder(str(init_dir), headlines(40, seed=1), tmp_path / "enc", config, device="cpu", resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain_encoder(str(init_dir), headlines(40), tmp_path / "fresh", config, device="cpu", resume=True)


@pytest.mark.parametrize("family", [f for f in ENCODER_FAMILIES if f != "big_bird"])
def test_every_family_pretrains_and_loads(family, tmp_path):
    source = init_encoder(headlines(40), tmp_path / "init", tiny_setup(family))
    config = PretrainConfig(epochs=1, batch_size=8, max_length=32, heldout_fraction=0.2)
    result = pretrain_encoder(str(source), headlines(40), tmp_path / "mlm", config, device="cpu")
    assert result.steps == 4 and np.isfinite(result.history[0]["heldout_loss"])
    before, after = AutoModel.from_pretrained(source), AutoModel.from_pretrained(tmp_path / "mlm")
    assert type(after) is type(before) and after.config.model_type == family
    assert after.state_dict().keys() == before.state_dict().keys()
    assert NfcEncoder.load(tmp_path / "mlm", max_length=32).encode(["Hooli cuts guidance"]).shape == (1, 32)
    # standardised where the final norm has a bias to fold the shift into; ModernBERT's has none
    standardised = json.loads((tmp_path / "mlm" / METADATA_FILE).read_text())["standardised"]
    assert (standardised is None) == (family == "modernbert")


def test_cli_pretrain_trains_on_news_before_the_cutoff_and_records_it(init_dir, tmp_path):
    records = [{"id": f"n{i}", "published_at": f"2026-01-0{5 + i // 30}T10:{i % 30:02d}:00Z", "title": text}
               for i, text in enumerate(headlines(90))]  # 30 a day on Jan 5, 6 and 7
    news = tmp_path / "news.jsonl"
    news.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "mlm"
    args = ["pretrain", "--news", str(news), "--encoder", str(init_dir), "--out", str(out)]
    quick = ["--set", "epochs=1", "--set", "max_length=32"]
    result = CliRunner().invoke(encoder, [*args, "--cutoff", "2026-01-07", *quick])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["n_train"] + meta["n_heldout"] == 60  # Jan 5 and 6 only
    text = meta["text"]
    assert text["end"] == "2026-01-06T10:29:00+00:00" and text["cutoff"] == "2026-01-07T00:00:00+00:00"
    assert [s["kind"] for s in text["stages"]] == ["unrecorded", "pretrain"] and text["complete"] is False
    again = CliRunner().invoke(encoder, [*args, "--cutoff", "soon"])
    assert again.exit_code == 1 and "is not a date" in again.output


def test_pretrained_vectors_are_standardised_over_the_training_texts(pretrained):
    out, result = pretrained
    vectors = NfcEncoder.load(out, max_length=32).encode(headlines(80)[:result.n_train]).astype(np.float64)
    assert np.abs(vectors.mean(axis=0)).max() < 1e-3
    assert np.abs(vectors.std(axis=0) - 1.0).max() < 1e-3
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["standardised"]["texts"] == result.n_train and meta["standardised"]["max_error"] < 1e-3
