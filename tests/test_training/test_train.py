"""Training end to end on a tiny market: run folders, determinism, fine-tune decisions, DDP, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import no_text_record
from click.testing import CliRunner

from neuralfusion.embeddings import write_embeddings
from neuralfusion.synth import SynthConfig, generate_market, write_market
from nfc.cli import main
from training.train import rank_shard

TINY = ["--lookback", "16", "--horizon", "8", "--model-set", "d_model=16", "--model-set", "n_heads=2",
        "--set", "epochs=2", "--set", "batch_size=32", "--set", "train_stride=8",
        "--set", "threads=1"]


def random_embeddings(news_path: Path, out: Path, dim: int = 8, nan_row: int | None = None) -> Path:
    ids = [json.loads(line)["id"] for line in news_path.read_text().splitlines()]
    vectors = np.random.default_rng(0).normal(size=(len(ids), dim)).astype(np.float32)
    if nan_row is not None:
        vectors[nan_row] = np.nan
    write_embeddings(out, ids, vectors, np.zeros(len(ids)), fingerprint="test", metadata=no_text_record())
    return out


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("market")
    write_market(generate_market(SynthConfig(n_assets=4, days=3, seed=5)), root / "data")
    return root / "data", random_embeddings(root / "data" / "news.jsonl", root / "emb.parquet")


def nfc(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--log-level", "WARNING", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def run_dir(market, tmp_path_factory) -> Path:
    data, emb = market
    out = tmp_path_factory.mktemp("runs") / "run"
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(out), *TINY)
    assert code == 0, output
    return out


def test_train_writes_a_complete_run_folder(run_dir):
    from training.runs import load_run

    run = load_run(run_dir)
    assert {p.name for p in run_dir.iterdir()} >= {"model.safetensors", "run.json", "metrics.json"}
    assert not run_dir.with_name(run_dir.name + ".partial").exists()
    assert run.window.lookback == 16 and run.model_config.d_model == 16
    assert run.normaliser.fit_end == run.meta["splits"]["train"][1]  # fitted on training bars only
    assert all(2 <= p <= 16 for p in run.model_config.periods)
    assert 1 <= run.metrics["best_epoch"] <= len(run.metrics["history"]) <= 2
    assert np.isfinite(run.metrics["best_val_sharpe"])
    # each epoch keeps the mean of every unweighted loss term, so their sizes can be compared before choosing a weight
    terms = run.metrics["history"][0]["train_terms"]
    assert {"sharpe", "diversification", "net_exposure", "turnover", "tilt"} <= set(terms)
    assert all(np.isfinite(value) for value in terms.values()) and terms["tilt"] > 0


def test_training_is_deterministic(market, run_dir, tmp_path):
    data, emb = market
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(tmp_path / "again"),
                       *TINY)
    assert code == 0, output
    first = json.loads((run_dir / "metrics.json").read_text())["history"]
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())["history"]
    assert [h["train_loss"] for h in first] == [h["train_loss"] for h in second]
    assert (run_dir / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()


def test_feature_clip_bounds_the_market_inputs_and_is_kept_with_the_run(market, run_dir, tmp_path):
    from neuralfusion.dataset import load_data_dir
    from training.backtest import prepare_run
    from training.runs import load_run

    data, emb = market
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(tmp_path / "clipped"),
                       *TINY, "--set", "feature_clip=1.5")
    assert code == 0, output
    clipped, plain = load_run(tmp_path / "clipped"), load_run(run_dir)
    assert (clipped.normaliser.clip, plain.normaliser.clip) == (1.5, 0.0)
    inputs = {name: prepare_run(run, load_data_dir(data), emb, "model").grid.market
              for name, run in (("clipped", clipped), ("plain", plain))}
    assert np.nanmax(np.abs(inputs["plain"])) > 3.0 and np.nanmax(np.abs(inputs["clipped"])) == pytest.approx(1.5)


def test_finetune_keeps_the_incumbent_unless_beaten(market, run_dir, tmp_path):
    data, emb = market
    code, output = nfc("finetune", "--model", str(run_dir), "--data", str(data), "--embeddings", str(emb),
                       "--out", str(tmp_path / "ft"), "--set", "epochs=1", "--set", "lr=1e-12")
    assert code == 0, output
    decision = json.loads((tmp_path / "ft" / "decision.json").read_text())
    # an unchanged challenger ties on the same windows, and a tie keeps the incumbent
    assert decision["challenger_val_sharpe"] == pytest.approx(decision["incumbent_val_sharpe"], abs=1e-6)
    assert decision["promoted"] is False and "kept the incumbent" in output
    assert (run_dir / "model.safetensors").exists()  # the old version stays


def test_too_short_data_is_refused_without_a_run_folder(tmp_path):
    write_market(generate_market(SynthConfig(n_assets=3, days=2, seed=1)), tmp_path / "d")
    emb = random_embeddings(tmp_path / "d" / "news.jsonl", tmp_path / "emb.parquet")
    code, output = nfc("train", "--data", str(tmp_path / "d"), "--embeddings", str(emb), "--out",
                       str(tmp_path / "run"), "--lookback", "500", "--horizon", "500")
    assert code == 1 and "data too short for one window" in output
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_nan_features_are_refused_naming_the_window(market):
    from dataclasses import replace

    from neuralfusion.dataset import load_data_dir
    from neuralfusion.errors import DataError
    from neuralfusion.specs import WindowSpec
    from training.train import prepare

    data_dir, emb = market
    data = load_data_dir(data_dir)
    features = data.features.copy()
    features[1200, 1, 0] = np.nan  # after the training bars: e.g. a feed glitch that slipped past validation
    prepared = prepare(replace(data, features=features), emb, WindowSpec(lookback=16, horizon=8))
    with pytest.raises(DataError, match="market has NaN/inf in the window ending at bar 1200"):
        prepared.grid.windows(np.array([1199, 1200, 1201]), 16)
    features[500, 1, 0] = np.nan  # inside the training bars: the normaliser refuses to fit
    with pytest.raises(DataError, match="first: bar 500, asset column 1, feature 'log_return'"):
        prepare(replace(data, features=features), emb, WindowSpec(lookback=16, horizon=8))


def test_universe_mismatch_between_model_and_data_is_refused(run_dir, tmp_path):
    write_market(generate_market(SynthConfig(n_assets=3, days=3, seed=2)), tmp_path / "other")
    emb = random_embeddings(tmp_path / "other" / "news.jsonl", tmp_path / "emb.parquet")
    code, output = nfc("finetune", "--model", str(run_dir), "--data", str(tmp_path / "other"), "--embeddings",
                       str(emb), "--out", str(tmp_path / "ft"))
    assert code == 1 and "have no bars" in output
    assert not (tmp_path / "ft").exists()


def test_a_run_from_another_model_version_is_refused_by_name(market, run_dir, tmp_path):
    data, emb = market
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    meta = json.loads((old / "run.json").read_text())
    meta["model"]["asset_dim"] = 8  # a setting of the earlier channel layout
    (old / "run.json").write_text(json.dumps(meta))
    code, output = nfc("backtest", "--model", str(old), "--data", str(data), "--embeddings", str(emb), "--out",
                       str(tmp_path / "report"))
    assert code == 1 and "run.json does not fit this version of nfc" in output and "['asset_dim']" in output
    assert not (tmp_path / "report").exists()


def test_unknown_override_is_refused(market, tmp_path):
    data, emb = market
    code, output = nfc("train", "--data", str(data), "--embeddings", str(emb), "--out", str(tmp_path / "r"),
                       "--set", "learning_rate=0.1")
    assert code == 2 and "Invalid value for --set" in output and "unknown keys ['learning_rate']" in output


def test_torchrun_ddp_with_gloo_on_two_processes(market, tmp_path):
    data, emb = market
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nfc.cli",
         "--log-level", "WARNING", "train", "--data", str(data), "--embeddings", str(emb),
         "--out", str(tmp_path / "ddp"), *TINY],
        capture_output=True, text=True, env=env, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert len(metrics["history"]) >= 1 and np.isfinite(metrics["best_val_sharpe"])
    # the last state holds every rank's generators (dropout is seeded per rank, so they differ)
    last = sorted((tmp_path / "ddp" / "checkpoints").glob("epoch-*"))[-1]
    rng = json.loads((last / "rng.json").read_text())
    assert len(rng) == 2 and rng[0]["torch"] != rng[1]["torch"]
    assert json.loads((last / "state.json").read_text())["settings"]["world_size"] == 2


def test_rank_shards_are_equal_so_every_rank_takes_the_same_steps():
    order = np.random.default_rng(0).permutation(161)
    shards = [rank_shard(order, rank, 2) for rank in (0, 1)]
    assert [len(s) for s in shards] == [80, 80] and not set(shards[0]) & set(shards[1])
    assert len(set(np.concatenate(shards))) == 160  # one window left out this epoch, none repeated


def test_torchrun_ddp_with_uneven_windows_per_rank(market, tmp_path):
    """161 windows (train_stride=5) over 2 ranks with batch_size=80: a plain [rank::2] split gives rank 0
    81 windows (2 steps) and rank 1 80 (1 step), and gloo then failed with "Connection closed by peer"
    and no run folder. Both ranks must take the same steps and rank 0 must write the run."""
    data, emb = market
    args = ["--lookback", "16", "--horizon", "8", "--model-set", "d_model=16", "--model-set", "n_heads=2",
            "--set", "epochs=1", "--set", "batch_size=80", "--set", "train_stride=5", "--set", "threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nfc.cli",
         "--log-level", "WARNING", "train", "--data", str(data), "--embeddings", str(emb),
         "--out", str(tmp_path / "ddp"), *args],
        capture_output=True, text=True, env=env, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["train_windows_per_epoch"] == 161  # the uneven case this test is about
    assert len(metrics["history"]) == 1 and np.isfinite(metrics["best_val_sharpe"])


def test_the_previous_book_is_the_current_one_for_the_same_window(market):
    """The turnover term compares books of one form: a window's own previous book (horizon 0) costs nothing,
    and one horizon back the books differ."""
    import torch

    from neuralfusion.dataset import load_data_dir
    from neuralfusion.specs import PortfolioSpec, WindowSpec
    from neuralfusion.train_config import TrainConfig
    from training.loss import turnover_loss
    from training.model import CgaModel, surrogate_weights
    from training.train import model_config_for, prepare, previous_books, to_tensors

    data_dir, emb = market
    window = WindowSpec(lookback=16, horizon=8)
    prepared = prepare(load_data_dir(data_dir), emb, window)
    config = model_config_for(prepared, window, PortfolioSpec(), TrainConfig(), "cga", {"d_model": 16, "n_heads": 2})
    torch.manual_seed(0)
    model = CgaModel(config).eval()
    anchors = prepared.splits.train[40:72:4]
    with torch.no_grad():
        current = surrogate_weights(model(**to_tensors(prepared.grid.windows(anchors, 16), torch.device("cpu"))).logits,
                                    config.top_k, config.surrogate_mix)
    first = int(prepared.splits.train[0])
    assert float(turnover_loss(current, previous_books(model, prepared.grid, anchors, 0, first))) < 1e-6
    assert float(turnover_loss(current, previous_books(model, prepared.grid, anchors, 8, first))) > 1e-3


def test_market_lr_scale_zero_trains_the_news_side_and_leaves_the_market_side_as_initialised(market):
    import torch

    from neuralfusion.dataset import load_data_dir
    from neuralfusion.specs import PortfolioSpec, WindowSpec
    from neuralfusion.train_config import TrainConfig
    from training.model import CgaModel
    from training.train import model_config_for, prepare, train_model

    data_dir, emb = market
    window = WindowSpec(lookback=16, horizon=8)
    prepared = prepare(load_data_dir(data_dir), emb, window)
    train = TrainConfig(epochs=1, batch_size=32, train_stride=8, threads=1, market_lr_scale=0.0)
    config = model_config_for(prepared, window, PortfolioSpec(), train, "cga", {"d_model": 16, "n_heads": 2})
    torch.manual_seed(train.seed)  # what train_model starts from
    initial = {k: v.clone() for k, v in CgaModel(config).state_dict().items()}
    trained = train_model(prepared, config, train, window, portfolio=PortfolioSpec(), progress=False).model
    market = {name for name, _ in trained.named_parameters() if name.startswith(("market.", "fusion.market_gate."))}
    state = trained.state_dict()
    assert market and all(torch.equal(state[name], initial[name]) for name in market)
    assert not torch.equal(state["news.asset_news.weight"], initial["news.asset_news.weight"])
    assert not torch.equal(state["head.out.weight"], initial["head.out.weight"])


@pytest.mark.parametrize("scale", [-0.1, 1.5])
def test_market_lr_scale_outside_zero_to_one_is_refused(scale):
    from neuralfusion.train_config import TrainConfig

    with pytest.raises(ValueError, match=r"market_lr_scale must be in \[0, 1\]"):
        TrainConfig(market_lr_scale=scale)
