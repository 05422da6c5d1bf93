"""The BigBird news encoder: loading, pooling, attention type, batch invariance, fine-tune, CLI.

Models are tiny (2 layers, hidden 64, block 16, 2 random blocks) and made here from a config and a
tokenizer trained on generated headlines: no network. With block_size 16 and 2 random blocks, HF
switches block_sparse to full attention at <= (5 + 2*2)*16 = 144 tokens, so the block-sparse tests use
texts longer than that (and short ones, to show the encoder pads them past the threshold).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModel, AutoTokenizer, BigBirdModel

from neuralfusion.embeddings import read_embeddings
from training.cli import embed, encoder
from training.encoder import EncoderNotFoundError, NfcEncoder
from training.encoder_finetune import SentimentTrainConfig, label_values, probe_accuracy, train_sentiment
from training.encoder_init import METADATA_FILE, EncoderSetupConfig, init_encoder

TINY = EncoderSetupConfig(vocab_size=400, min_frequency=1, num_hidden_layers=2, hidden_size=64,
                          num_attention_heads=2, intermediate_size=128, max_position_embeddings=512,
                          block_size=16, num_random_blocks=2)
TINY_SETS = [f"--set={k}={json.dumps(v)}" for k, v in dataclasses.asdict(TINY).items()]

COMPANIES = ("Acme Corp", "Globex", "Initech", "Umbrella Labs", "Hooli", "Vandelay Imports")
HEADLINES = {
    1: ("{c} beats estimates as sales jump", "{c} raises guidance after a strong quarter",
        "Analysts upgrade {c} to buy", "{c} shares surge on record profit"),
    -1: ("{c} misses estimates as sales slump", "{c} cuts guidance after a weak quarter",
         "Analysts downgrade {c} to sell", "{c} shares plunge after a recall"),
    0: ("{c} schedules its earnings call", "{c} appoints a new director",
        "{c} to present at an industry conference", "{c} moves its regional office"),
}
FILLER = ("The company has offices in several countries.", "A spokesperson declined to comment.",
          "The statement came during the trading session.", "It employs thousands of people.")


def make_articles(n: int, seed: int = 0, max_filler: int = 4) -> list[dict]:
    """Headline + filler body with a known sentiment, in the news contract plus "planted"."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        sentiment = (-1, 0, 1)[i % 3]
        title = rng.choice(HEADLINES[sentiment]).format(c=rng.choice(COMPANIES))
        body = " ".join(rng.choice(FILLER, size=int(rng.integers(1, max_filler + 1))))
        records.append({"id": f"t{seed}-{i:04d}", "published_at": f"2026-01-05T00:{i // 60:02d}:{i % 60:02d}Z",
                        "title": str(title), "body": body, "planted": {"sentiment": sentiment}})
    return records


def text_of(record: dict) -> str:
    return f"{record['title']}\n\n{record['body']}"


def long_text(seed: int, words: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(" ".join(FILLER + HEADLINES[1]).split(), size=words))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import (before conftest sets it): force it here."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    texts = [text_of(r) for r in make_articles(120)] + [long_text(i, 300) for i in range(4)]
    return init_encoder(texts, tmp_path_factory.mktemp("enc") / "tiny", TINY)


@pytest.fixture(scope="module")
def full(tiny_dir) -> NfcEncoder:
    return NfcEncoder.load(tiny_dir, max_length=512)


@pytest.fixture(scope="module")
def sparse(tiny_dir) -> NfcEncoder:
    return NfcEncoder.load(tiny_dir, attention_type="block_sparse", max_length=512)


def test_init_writes_a_checkpoint_plain_transformers_loads(tiny_dir):
    assert {"config.json", "model.safetensors", "tokenizer.json", METADATA_FILE} <= {p.name for p in tiny_dir.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModel.from_pretrained(tiny_dir)
    assert isinstance(model, BigBirdModel) and model.config.attention_type == "original_full"
    ids = tokenizer("Acme beats estimates")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.pad_token_id == model.config.pad_token_id == 0


def test_init_is_deterministic(tmp_path, full):
    texts = [text_of(r) for r in make_articles(120)] + [long_text(i, 300) for i in range(4)]
    again = NfcEncoder.load(init_encoder(texts, tmp_path / "again", TINY), max_length=512)
    assert again.fingerprint == full.fingerprint


def test_encode_returns_one_float32_vector_per_text(full):
    vectors = full.encode([text_of(r) for r in make_articles(5)])
    assert vectors.shape == (5, 64) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert full.encode([]).shape == (0, 64)


def test_full_attention_vector_does_not_depend_on_batch_mates(full):
    target = text_of(make_articles(1, seed=3)[0])
    alone = full.encode([target])[0]
    mates = [long_text(1, 200), target, "Hooli holds meeting", long_text(2, 60)]
    for batch_size in (1, 2, 4):
        np.testing.assert_allclose(full.encode(mates, batch_size=batch_size)[1], alone, atol=1e-5)


def test_block_sparse_stays_block_sparse_after_short_inputs(sparse):
    sparse.encode(["Acme beats estimates", "Globex misses"])  # 5-6 tokens, far below the 144-token switch
    assert sparse.model.attention_type == "block_sparse"
    assert all(layer.attention.attention_type == "block_sparse" for layer in sparse.model.encoder.layer)
    assert sparse.padded_length(6) == 160 and sparse.padded_length(161) == 176


def test_block_sparse_vector_does_not_depend_on_batch_mates(sparse):
    texts = [long_text(10, 250), long_text(11, 180), "Initech appoints a director", long_text(12, 400)]
    alone = np.stack([sparse.encode([t])[0] for t in texts])
    for batch_size in (2, 4):
        np.testing.assert_allclose(sparse.encode(texts, batch_size=batch_size), alone, atol=1e-5)


def test_block_sparse_really_is_sparse_on_long_inputs(full, sparse):
    text = long_text(20, 400)
    assert np.abs(full.encode([text]) - sparse.encode([text])).max() > 1e-4


def test_cls_pooling_is_the_first_token_state(tiny_dir, full):
    cls = NfcEncoder.load(tiny_dir, max_length=512, pooling="cls")
    texts = ["Acme beats estimates", long_text(5, 50)]
    vectors = cls.encode(texts)
    ids, mask = full.pad_batch(full.tokenize(texts[:1])[0])
    with torch.inference_mode():
        first = full.model(input_ids=ids, attention_mask=mask).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(vectors[0], first, atol=1e-5)
    assert not np.allclose(vectors, full.encode(texts), atol=1e-3)


def test_long_texts_are_truncated_and_counted(tiny_dir, caplog):
    short = NfcEncoder.load(tiny_dir, max_length=32)
    head = long_text(30, 40)
    texts = [head + " alpha beta gamma", head + " something else entirely", "Acme beats"]
    with caplog.at_level(logging.WARNING, logger="training.encoder"):
        vectors, n_tokens = short.encode_with_counts(texts)
    assert n_tokens[0] > 32 and n_tokens[1] > 32 and n_tokens[2] < 32
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # they differ only after token 32
    assert "2 of 3 texts exceed max_length=32" in caplog.text


@pytest.mark.parametrize(("texts", "error", "message"), [
    (["fine", ""], ValueError, "text 1 is empty"),
    (["fine", "   \n"], ValueError, "text 1 is empty"),
    (["fine", None], TypeError, "text 1 is NoneType"),
    ("a single string", TypeError, "not one string"),
])
def test_bad_texts_are_refused(full, texts, error, message):
    with pytest.raises(error, match=message):
        full.encode(texts)


def test_unknown_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderNotFoundError, match="neither a local save_pretrained folder nor a hub model"):
        NfcEncoder.load(tmp_path / "no-such-encoder")
    with pytest.raises(EncoderNotFoundError, match="offline mode: only the local hub cache"):
        NfcEncoder.load("nfc-test-org/no-such-bigbird")
    with pytest.raises(EncoderNotFoundError, match=r"has no config\.json"):
        NfcEncoder.load(tmp_path)


def test_checkpoint_of_an_untested_family_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2' checkpoint; NfcEncoder takes big_bird, bert, roberta"):
        NfcEncoder.load(tmp_path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"attention_type": "sparse"}, "attention_type must be one of"),
    ({"pooling": "max"}, "pooling must be one of"),
    ({"max_length": 1024}, "max_position_embeddings=512"),
    ({"attention_type": "block_sparse", "max_length": 513}, "needs 528 positions"),  # whole blocks of 16
    ({"max_length": 1}, "max_length must be >= 2"),
])
def test_bad_settings_are_refused(tiny_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        NfcEncoder.load(tiny_dir, **kwargs)


def test_fingerprint_covers_the_settings_that_change_vectors(tiny_dir, full):
    same = NfcEncoder.load(tiny_dir, max_length=512)
    others = [NfcEncoder.load(tiny_dir, max_length=256), NfcEncoder.load(tiny_dir, max_length=512, pooling="cls"),
              NfcEncoder.load(tiny_dir, max_length=512, attention_type="block_sparse")]
    assert same.fingerprint == full.fingerprint
    assert len({full.fingerprint, *(o.fingerprint for o in others)}) == 4
    with torch.no_grad():
        same.model.embeddings.word_embeddings.weight[5, 0] += 1e-3
    del same.__dict__["fingerprint"]
    assert same.fingerprint != full.fingerprint


def test_label_values_reads_dotted_fields_and_missing_labels():
    import pandas as pd

    news = pd.DataFrame({"planted": [{"sentiment": 1}, {"other": 2}, None], "tag": ["a", None, "c"]})
    assert label_values(news, "planted.sentiment") == [1, None, None]
    assert label_values(news, "tag") == ["a", None, "c"]
    with pytest.raises(ValueError, match="label field 'nope' not found"):
        label_values(news, "nope")


def test_sentiment_fine_tune_learns_the_planted_label(tiny_dir):
    records = make_articles(150, seed=1, max_filler=1)
    texts, labels = [text_of(r) for r in records], np.array([r["planted"]["sentiment"] for r in records])
    model = NfcEncoder.load(tiny_dir, max_length=64)
    before = model.encode(texts)
    config = SentimentTrainConfig(epochs=6, batch_size=16, learning_rate=3e-3, max_length=64, val_fraction=0.3)
    result = train_sentiment(model, texts, list(labels), config)
    assert result.classes == [-1, 0, 1] and result.n_val == 45
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    after = model.encode(texts)
    train, val = result.train_index, result.val_index

    def probe(vectors: np.ndarray, per_class: int | None = None) -> float:
        return probe_accuracy(vectors[train], labels[train], vectors[val], labels[val], per_class=per_class)

    assert probe(after) > 0.8  # chance is 1/3
    # templated headlines are easy to memorise with many labels; with 3 per class only tuning helps
    assert probe(after, per_class=3) > probe(before, per_class=3) + 0.2


def write_news(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_cli_init_train_embed_and_rerun_computes_nothing(tmp_path, caplog):
    news = write_news(tmp_path / "news.jsonl", make_articles(45, seed=2, max_filler=1))
    runner = CliRunner()
    result = runner.invoke(encoder, ["init", "--news", str(news), "--out", str(tmp_path / "init"), *TINY_SETS])
    assert result.exit_code == 0, result.output
    result = runner.invoke(encoder, ["train", "--news", str(news), "--encoder", str(tmp_path / "init"),
                                     "--out", str(tmp_path / "tuned"), "--set", "epochs=1", "--set", "max_length=64"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "tuned" / METADATA_FILE).read_text())
    assert meta["kind"] == "sentiment" and meta["classes"] == [-1, 0, 1] and 0 <= meta["val_probe_accuracy"] <= 1
    out = tmp_path / "emb" / "news.parquet"
    args = ["--news", str(news), "--out", str(out), "--encoder", str(tmp_path / "tuned"), "--max-length", "64"]
    with caplog.at_level(logging.INFO, logger="training.cli"):
        assert runner.invoke(embed, args).exit_code == 0
        first = read_embeddings(out)
        caplog.clear()
        assert runner.invoke(embed, args).exit_code == 0
    distinct = len({text_of(r) for r in make_articles(45, seed=2, max_filler=1)})
    assert f"{distinct} distinct texts from cache, 0 computed" in caplog.text
    second = read_embeddings(out)
    assert first[0] == second[0] == [r["id"] for r in make_articles(45, seed=2)]
    np.testing.assert_array_equal(first[1], second[1])
    assert first[1].shape == (45, 64)
    assert NfcEncoder.load(tmp_path / "tuned", max_length=64).fingerprint == second[2]["nfc.encoder_fingerprint"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["embedding_cache.parquet", "news.parquet"]


def test_cli_config_overrides_are_checked(tmp_path):
    news = write_news(tmp_path / "news.jsonl", make_articles(6))
    result = CliRunner().invoke(encoder, ["init", "--news", str(news), "--out", str(tmp_path / "e"),
                                          "--set", "hidden_sise=64"])
    assert result.exit_code != 0 and "unknown keys ['hidden_sise']" in result.output
    result = CliRunner().invoke(encoder, ["init", "--news", str(news), "--out", str(tmp_path / "e"),
                                          "--set", "hidden_size=wide"])
    assert result.exit_code != 0 and "hidden_size must be int" in result.output
    assert not (tmp_path / "e").exists()


def test_cli_init_replaces_an_encoder_folder_but_never_other_data(tmp_path):
    news = write_news(tmp_path / "news.jsonl", make_articles(6))
    args = ["init", "--news", str(news), *TINY_SETS, "--out"]
    assert CliRunner().invoke(encoder, [*args, str(tmp_path / "enc")]).exit_code == 0
    assert CliRunner().invoke(encoder, [*args, str(tmp_path / "enc")]).exit_code == 0
    result = CliRunner().invoke(encoder, [*args, str(tmp_path)])
    assert result.exit_code == 1 and "is not an encoder folder" in result.output
    assert news.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_embed_without_encoder_builds_the_default_next_to_out(tmp_path):
    news = write_news(tmp_path / "news.jsonl", make_articles(12))
    out = tmp_path / "data" / "emb.parquet"
    result = CliRunner().invoke(embed, ["--news", str(news), "--out", str(out), "--max-length", "128"])
    assert result.exit_code == 0, result.output
    _, vectors, meta = read_embeddings(out)
    assert vectors.shape == (12, EncoderSetupConfig().hidden_size)
    assert meta["nfc.encoder"] == str(tmp_path / "data" / "encoder")


def test_cli_embed_unknown_encoder_writes_nothing(tmp_path):
    news = write_news(tmp_path / "news.jsonl", make_articles(3))
    out = tmp_path / "out" / "emb.parquet"
    result = CliRunner().invoke(embed, ["--news", str(news), "--out", str(out), "--encoder", "./no/such/encoder"])
    assert result.exit_code == 1 and "'./no/such/encoder' is neither a local" in result.output
    assert not out.parent.exists()


def test_cli_embed_refuses_empty_articles(tmp_path):
    records = make_articles(3)
    records[1].update(title="  ", body="")
    news = write_news(tmp_path / "news.jsonl", records)
    result = CliRunner().invoke(embed, ["--news", str(news), "--out", str(tmp_path / "o" / "e.parquet"),
                                        "--encoder", str(tmp_path)])
    assert result.exit_code == 1 and "empty news text" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.mongo
def test_cli_embed_with_mongo_recomputes_nothing_after_losing_the_parquet_cache(tmp_path, tiny_dir, mongo_uri,
                                                                                 caplog):
    news = write_news(tmp_path / "news.jsonl", make_articles(9, seed=4))
    out = tmp_path / "emb.parquet"
    args = ["--news", str(news), "--out", str(out), "--encoder", str(tiny_dir), "--max-length", "128",
            "--mongo-uri", mongo_uri, "--mongo-db", "nfc_encoder_test"]
    assert CliRunner().invoke(embed, args).exit_code == 0
    (tmp_path / "embedding_cache.parquet").unlink()
    with caplog.at_level(logging.INFO, logger="training.cli"):
        assert CliRunner().invoke(embed, args).exit_code == 0
    distinct = len({text_of(r) for r in make_articles(9, seed=4)})
    assert f"{distinct} distinct texts from cache, 0 computed" in caplog.text
    assert mongo_uri not in caplog.text
    assert (tmp_path / "embedding_cache.parquet").exists()


@pytest.mark.slow
def test_fine_tune_on_the_default_synthetic_news_makes_sentiment_linearly_readable(tmp_path):
    """The acceptance check: default encoder, default synthetic market, held-out linear probe."""
    from neuralfusion.synth import SynthConfig, generate_market

    news = generate_market(SynthConfig()).news
    texts = [f"{r['title']}\n\n{r['body']}".strip() for r in news]
    labels = [r["planted"]["sentiment"] for r in news]
    held_out = np.arange(len(texts)) % 5 == 0  # articles the encoder never trains on
    fit_texts = [t for t, h in zip(texts, held_out, strict=True) if not h]
    fit_labels = [y for y, h in zip(labels, held_out, strict=True) if not h]
    model = NfcEncoder.load(init_encoder(fit_texts, tmp_path / "init"), max_length=256)
    y = np.array(labels)

    def probe(per_class: int | None = None) -> float:
        vectors = model.encode(texts, batch_size=32)
        return probe_accuracy(vectors[~held_out], y[~held_out], vectors[held_out], y[held_out], per_class=per_class)

    random_init_few_shot = probe(per_class=5)
    train_sentiment(model, fit_texts, fit_labels, SentimentTrainConfig())
    accuracy, few_shot = probe(), probe(per_class=5)
    majority = np.unique(y[held_out], return_counts=True)[1].max() / held_out.sum()
    print(f"held-out linear probe: {accuracy:.3f}; 5-shot {few_shot:.3f} (random-init {random_init_few_shot:.3f}); "
          f"majority class {majority:.3f}, n={held_out.sum()}")
    assert accuracy > majority + 0.3
    assert few_shot > random_init_few_shot + 0.2
