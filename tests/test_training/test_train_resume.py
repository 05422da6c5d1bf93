"""Per-epoch checkpoints of `nfc train` and `--resume`: an interrupted run ends where an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import nfc, no_text_record

from neuralfusion.dataset import load_data_dir
from neuralfusion.embeddings import write_embeddings
from neuralfusion.specs import PortfolioSpec, WindowSpec
from neuralfusion.synth import SynthConfig, generate_market, write_market
from neuralfusion.train_config import TrainConfig
from training.checkpoints import CHECKPOINTS_DIR, TrainState, differing_settings
from training.train import model_config_for, model_overrides, prepare, train_model

EPOCHS = 4
MODEL_SETS = ("d_model=16", "n_heads=2")
TRAIN_SETS = {"epochs": EPOCHS, "batch_size": 32, "train_stride": 8, "threads": 1}
CLI_ARGS = ["--lookback", "16", "--horizon", "8", *(a for s in MODEL_SETS for a in ("--model-set", s)),
            *(a for k, v in TRAIN_SETS.items() for a in ("--set", f"{k}={v}"))]


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume-market")
    write_market(generate_market(SynthConfig(n_assets=4, days=3, seed=5)), root / "data")
    ids = [json.loads(line)["id"] for line in (root / "data" / "news.jsonl").read_text().splitlines()]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    write_embeddings(root / "emb.parquet", ids, vectors, np.zeros(len(ids)), fingerprint="test",
                     metadata=no_text_record())
    return root / "data", root / "emb.parquet"


@pytest.fixture(scope="module")
def straight(market, tmp_path_factory) -> Path:
    """The uninterrupted run, as `nfc train` makes it."""
    data, emb = market
    out = tmp_path_factory.mktemp("straight") / "run"
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(out), *CLI_ARGS)
    assert code == 0, output
    return out


def interrupt_after(market, out: Path, epochs_done: int) -> None:
    """Train as `nfc train CLI_ARGS --out OUT` does, into OUT.partial/checkpoints, and stop it by a
    KeyboardInterrupt (what Ctrl-C raises) right after epoch `epochs_done` is written."""
    data_dir, emb = market
    window, portfolio, train = WindowSpec(lookback=16, horizon=8), PortfolioSpec(), TrainConfig(**TRAIN_SETS)
    prepared = prepare(load_data_dir(data_dir), emb, window)
    config = model_config_for(prepared, window, portfolio, train, "cga", model_overrides(MODEL_SETS))

    def stop(state: TrainState) -> None:
        if state.epoch == epochs_done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(prepared, config, train, window, portfolio, progress=False,
                    checkpoints=out.with_name(out.name + ".partial") / CHECKPOINTS_DIR, on_epoch=stop)


def test_a_finished_run_holds_its_last_and_best_state(straight):
    metrics = json.loads((straight / "metrics.json").read_text())
    best = metrics["best_epoch"]
    kept = sorted(p.name for p in (straight / CHECKPOINTS_DIR).iterdir())
    assert kept == sorted({f"epoch-{EPOCHS:04d}", f"epoch-{best:04d}"})
    last = straight / CHECKPOINTS_DIR / f"epoch-{EPOCHS:04d}"
    assert {p.name for p in last.iterdir()} == {"model.safetensors", "trainer.pt", "state.json", "rng.json"}
    state = json.loads((last / "state.json").read_text())
    assert state["epoch"] == EPOCHS and state["stopped"] and state["best_epoch"] == best
    assert state["history"] == metrics["history"]
    rng = json.loads((last / "rng.json").read_text())
    assert len(rng) == 1 and set(rng[0]) == {"torch", "cuda", "numpy", "python"}  # one process: one rank
    best_weights = straight / CHECKPOINTS_DIR / f"epoch-{best:04d}" / "model.safetensors"
    assert best_weights.read_bytes() == (straight / "model.safetensors").read_bytes()


def test_an_interrupted_run_resumed_ends_with_bit_identical_weights(market, straight, tmp_path):
    data, emb = market
    out = tmp_path / "run"
    interrupt_after(market, out, 2)
    partial = out.with_name("run.partial")
    assert not out.exists() and (partial / CHECKPOINTS_DIR / "epoch-0002" / "state.json").is_file()
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(out), *CLI_ARGS)
    assert code == 1 and "holds the states of an interrupted run (last: epoch-0002)" in output
    assert "pass --resume" in output

    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(out), *CLI_ARGS,
                       "--resume")
    assert code == 0, output
    assert "resumed after epoch 2" in output and not partial.exists()
    assert (out / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    resumed, uninterrupted = (json.loads((run / "metrics.json").read_text()) for run in (out, straight))
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in uninterrupted["history"]]
    assert [h["val_sharpe"] for h in resumed["history"]] == [h["val_sharpe"] for h in uninterrupted["history"]]


def test_a_resume_with_other_settings_is_refused_naming_them(market, tmp_path):
    data, emb = market
    out = tmp_path / "run"
    interrupt_after(market, out, 1)
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(out), *CLI_ARGS,
                       "--set", "lr=0.001", "--model-set", "dropout=0.2", "--resume")
    assert code == 1 and "trained with other settings (model.dropout, train.lr)" in output
    assert (out.with_name("run.partial") / CHECKPOINTS_DIR / "epoch-0001").is_dir()  # left as it was
    assert not out.exists()


def test_resume_without_an_interrupted_run_is_refused(market, straight, tmp_path):
    data, emb = market
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(tmp_path / "new"),
                       *CLI_ARGS, "--resume")
    assert code == 1 and "no epoch state" in output and "start without --resume" in output
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(straight),
                       *CLI_ARGS, "--resume")
    assert code == 1 and "is a finished run" in output


def test_differing_settings_names_nested_and_missing_keys():
    saved = {"train": {"lr": 0.005, "epochs": 4}, "world_size": 1, "gone": 1}
    current = {"train": {"lr": 0.001, "epochs": 4}, "world_size": 2, "new": None}
    assert differing_settings(saved, current) == ["gone", "new", "train.lr", "world_size"]
