"""No leakage through the encoder: `nfc train` and `nfc backtest` refuse embeddings from an encoder that read
validation or test news (or whose text is unknown), naming the dates, unless --allow-encoder-leak."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from builders import TINY_ENCODER, TINY_RUN, nfc

from neuralfusion.dataset import load_data_dir
from neuralfusion.embeddings import read_embeddings
from neuralfusion.encoder_text import RECORD_KEY, training_end
from neuralfusion.specs import WindowSpec
from neuralfusion.synth import SynthConfig, generate_market, write_market

TINY_SETS = [arg for key, value in TINY_ENCODER.items() for arg in ("--set", f"{key}={value}")]
TINY_WINDOW = WindowSpec(lookback=16, horizon=8)  # TINY_RUN's


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("leak") / "data"
    write_market(generate_market(SynthConfig(n_assets=4, days=3, seed=5)), data)
    return data


def embed_with(data: Path, encoder_dir: Path, out: Path) -> Path:
    code, output = nfc("embed", "--news", str(data / "news.jsonl"), "--encoder", str(encoder_dir), "--out", str(out),
                       "--max-length", "256")
    assert code == 0, output
    return out


@pytest.fixture(scope="module")
def clean(market) -> Path:
    """An encoder built with the default cut-off (the data folder's training end) and its embeddings."""
    encoder = market.parent / "clean-encoder"
    code, output = nfc("encoder", "init", "--news", str(market / "news.jsonl"), "--out", str(encoder), *TINY_SETS)
    assert code == 0, output
    return embed_with(market, encoder, market.parent / "clean.parquet")


@pytest.fixture(scope="module")
def leaking(market) -> Path:
    """The same encoder trained on all the news (--cutoff none) and its embeddings."""
    encoder = market.parent / "leaking-encoder"
    code, output = nfc("encoder", "init", "--news", str(market / "news.jsonl"), "--out", str(encoder), "--cutoff",
                       "none", *TINY_SETS)
    assert code == 0, output
    return embed_with(market, encoder, market.parent / "leaking.parquet")


def test_encoder_records_the_time_range_of_its_text(market, clean, leaking):
    data = load_data_dir(market)
    news = data.news["published_at"]
    default_end = training_end(data, WindowSpec())
    clean_record = json.loads(read_embeddings(clean)[2][RECORD_KEY])
    assert clean_record["cutoff"] == default_end.isoformat() and clean_record["complete"] is True
    assert pd.Timestamp(clean_record["end"]) == news[news < default_end].max()
    assert clean_record["n_texts"] == int((news < default_end).sum()) < len(news)
    leaking_record = json.loads(read_embeddings(leaking)[2][RECORD_KEY])
    assert leaking_record["cutoff"] is None and pd.Timestamp(leaking_record["end"]) == news.max()
    assert leaking_record["n_texts"] == len(news)


def test_train_refuses_a_leaking_encoder_naming_the_dates(market, leaking, tmp_path):
    data = load_data_dir(market)
    end = training_end(data, TINY_WINDOW).isoformat()
    last = data.news["published_at"].max().isoformat()
    code, output = nfc("train", "--data", str(market), "--embeddings", str(leaking), "--out", str(tmp_path / "run"),
                       *TINY_RUN)
    assert code == 1, output
    assert "trained on news published" in output and last in output and f"training end {end}" in output
    assert "--allow-encoder-leak" in output and "--cutoff" in output
    assert not (tmp_path / "run").exists()


def test_train_accepts_a_clean_encoder_and_records_the_check(market, clean, tmp_path):
    code, output = nfc("train", "--data", str(market), "--embeddings", str(clean), "--out", str(tmp_path / "run"),
                       *TINY_RUN)
    assert code == 0, output
    check = json.loads((tmp_path / "run" / "run.json").read_text())["encoder"]["text_check"]
    assert check["status"] == "clean" and check["allowed"] is False
    assert pd.Timestamp(check["text_end"]) < pd.Timestamp(check["training_end"])


def test_allowed_leak_is_recorded_in_the_run_and_the_backtest_report(market, leaking, tmp_path):
    run, report = tmp_path / "run", tmp_path / "report"
    code, output = nfc("train", "--data", str(market), "--embeddings", str(leaking), "--out", str(run), *TINY_RUN,
                       "--allow-encoder-leak")
    assert code == 0, output
    check = json.loads((run / "run.json").read_text())["encoder"]["text_check"]
    assert check["status"] == "leak" and check["allowed"] is True
    backtest = ["backtest", "--model", str(run), "--data", str(market), "--embeddings", str(leaking), "--out",
                str(report)]
    code, output = nfc(*backtest)
    assert code == 1 and "past this split's training end" in output and not report.exists()
    code, output = nfc(*backtest, "--allow-encoder-leak")
    assert code == 0, output
    settings = json.loads((report / "metrics.json").read_text())["settings"]
    assert settings["encoder_text"]["status"] == "leak" and settings["encoder_text_at_training"] == "leak"
    page = (report / "report.html").read_text()
    assert "Encoder leak allowed" in page and re.search(r"read validation or test text", page)


def test_embeddings_without_a_record_are_refused_with_the_fix(market, clean, tmp_path):
    from neuralfusion.embeddings import write_embeddings

    ids, vectors, meta = read_embeddings(clean)
    old = tmp_path / "old.parquet"  # as `nfc embed` wrote them before encoders recorded their text
    write_embeddings(old, ids, vectors, [0] * len(ids), meta["nfc.encoder_fingerprint"],
                     {k: v for k, v in meta.items() if k not in (RECORD_KEY, "nfc.encoder_fingerprint", "nfc.dim")})
    code, output = nfc("train", "--data", str(market), "--embeddings", str(old), "--out", str(tmp_path / "run"),
                       *TINY_RUN)
    assert code == 1 and "has no record of the text it was trained on" in output and "re-embed" in output


def test_a_stage_on_an_unrecorded_encoder_stays_unrecorded(market, clean, tmp_path):
    encoder = market.parent / "clean-encoder"
    unrecorded = tmp_path / "hub-like"
    unrecorded.mkdir()
    for path in encoder.iterdir():  # the same weights and tokenizer, without nfc's metadata file
        if path.name != "nfc_encoder.json":
            (unrecorded / path.name).write_bytes(path.read_bytes())
    code, output = nfc("encoder", "pretrain", "--news", str(market / "news.jsonl"), "--encoder", str(unrecorded),
                       "--out", str(tmp_path / "mlm"), "--set", "epochs=1", "--set", "max_length=64")
    assert code == 0, output
    embeddings = embed_with(market, tmp_path / "mlm", tmp_path / "mlm.parquet")
    record = json.loads(read_embeddings(embeddings)[2][RECORD_KEY])
    assert record["complete"] is False and record["stages"][0] == {
        "kind": "unrecorded", "start": None, "end": None, "n_texts": None, "cutoff": None, "source": str(unrecorded)}
    code, output = nfc("train", "--data", str(market), "--embeddings", str(embeddings), "--out",
                       str(tmp_path / "run"), *TINY_RUN)
    assert code == 1 and f"started from one without a record of its training text ({unrecorded})" in output
