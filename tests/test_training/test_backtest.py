"""`nfc backtest` on a tiny synthetic market with tiny trained runs (the model and a news-only ablation).

The runs use the default windows (L = H = 80) so the backtest's test split is the oracle's.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import no_text_record
from click.testing import CliRunner, Result
from PIL import Image

from neuralfusion.backtest import METRIC_KEYS, Backtest, walk_forward
from neuralfusion.dataset import load_data_dir
from neuralfusion.embeddings import write_embeddings
from neuralfusion.features import WARMUP_BARS
from neuralfusion.portfolio import annualised_sharpe, topk_weights
from neuralfusion.report import PLOTS
from neuralfusion.specs import PortfolioSpec, WindowSpec
from neuralfusion.synth import SynthConfig, generate_market, write_market
from neuralfusion.train_config import TrainConfig
from neuralfusion.windows import chronological_split, usable_anchors
from nfc.cli import main
from training.backtest import run_backtest
from training.runs import load_run
from training.train import model_config_for, prepare, train_model, write_run

WINDOW = WindowSpec()  # the oracle's windows
PORTFOLIO = PortfolioSpec(top_k=2)
TINY_MODEL = {"d_model": 16, "n_heads": 2}
TINY_TRAIN = TrainConfig(epochs=1, train_stride=64, val_offsets=1)


def write_synthetic(out: Path, n_assets: int) -> Path:
    """A 4-day synthetic market with random 8-dim article embeddings in `out/embeddings.parquet`."""
    market = generate_market(SynthConfig(n_assets=n_assets, days=4, seed=0))
    write_market(market, out / "data")
    ids = [item["id"] for item in market.news]
    vectors = np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32)
    write_embeddings(out / "embeddings.parquet", ids, vectors, np.ones(len(ids)), "test", no_text_record())
    return out


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with data/, embeddings.parquet and two trained runs: cga/ (the model) and news/ (an ablation)."""
    root = write_synthetic(tmp_path_factory.mktemp("backtest"), n_assets=4)
    prepared = prepare(load_data_dir(root / "data"), root / "embeddings.parquet", WINDOW)
    for variant in ("cga", "news"):
        config = model_config_for(prepared, WINDOW, PORTFOLIO, TINY_TRAIN, variant, TINY_MODEL)
        result = train_model(prepared, config, TINY_TRAIN, WINDOW, PORTFOLIO, progress=False)
        write_run(root / variant, result, prepared, TINY_TRAIN, WINDOW, PORTFOLIO, extra_meta={"variant": variant})
    return root


def invoke(market: Path, out: Path, *extra: str, data: Path | None = None) -> Result:
    return CliRunner().invoke(main, [
        "backtest", "--model", str(market / "cga"), "--ablation", str(market / "news"),
        "--data", str(data or market / "data"), "--embeddings", str(market / "embeddings.parquet"),
        "--out", str(out), *extra])


@pytest.fixture(scope="module")
def report(market: Path) -> Path:
    """The report of `nfc backtest` with default settings (rebalance every H, the run's costs)."""
    out = market / "report"
    result = invoke(market, out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def backtest(market: Path) -> Backtest:
    return run_backtest(load_run(market / "cga"), market / "data", market / "embeddings.parquet",
                        [load_run(market / "news")], progress=False)


def test_metrics_json_has_every_strategy_with_every_metric(report: Path) -> None:
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["strategies"]) == {"model", "news", "equal_weight", "momentum"}
    for name, values in metrics["strategies"].items():
        assert set(METRIC_KEYS) <= set(values), name
    assert set(METRIC_KEYS) <= set(metrics["oracle"])
    ratio = metrics["strategies"]["model"]["sharpe"] / metrics["oracle"]["sharpe"]
    assert metrics["model_to_oracle_sharpe"] == pytest.approx(ratio)
    assert metrics["costs"]["cost_bps"] == PORTFOLIO.cost_bps
    assert metrics["settings"]["rebalance_every"] == WINDOW.horizon


def test_equal_weight_metrics_equal_a_walk_forward_by_hand(market: Path, report: Path) -> None:
    data = load_data_dir(market / "data")
    anchors = chronological_split(usable_anchors(data.n_bars, WARMUP_BARS, WINDOW), WINDOW).test[::WINDOW.horizon]
    book = np.full((len(anchors), 4), 0.25)
    expected = walk_forward(anchors, book, data.returns, WINDOW.horizon, PORTFOLIO.cost_bps).metrics(
        data.bars_per_year)
    reported = json.loads((report / "metrics.json").read_text())["strategies"]["equal_weight"]
    assert {key: reported[key] for key in METRIC_KEYS} == pytest.approx(expected, rel=1e-12)


def test_momentum_weights_are_topk_of_trailing_returns(market: Path, backtest: Backtest) -> None:
    bars = pd.read_parquet(market / "data" / "bars.parquet")
    close = bars.pivot(index="timestamp", columns="symbol", values="close")[list(backtest.symbols)].to_numpy()
    trailing = close[backtest.anchors] / close[backtest.anchors - WINDOW.lookback] - 1.0
    expected = topk_weights(trailing, PORTFOLIO.top_k)
    np.testing.assert_allclose(backtest.strategies["momentum"].anchor_weights, expected, rtol=0, atol=1e-15)
    assert np.count_nonzero(expected, axis=1).max() == PORTFOLIO.top_k


def test_ablations_are_scored_on_the_models_bars(backtest: Backtest) -> None:
    model = backtest.model.result
    for strategy in backtest.strategies.values():
        assert (strategy.result.first_bar, len(strategy.result.returns)) == (model.first_bar, len(model.returns))
    assert backtest.strategies["news"].kind == "ablation"
    assert not np.array_equal(backtest.strategies["news"].anchor_weights, backtest.model.anchor_weights)


def test_raising_costs_lowers_the_sharpe(market: Path) -> None:
    run = load_run(market / "cga")
    free, costly = (run_backtest(run, market / "data", market / "embeddings.parquet", cost_bps=bps, progress=False)
                    for bps in (0.0, 50.0))
    for name in ("model", "momentum"):
        assert (costly.strategies[name].result.metrics(costly.bars_per_year)["sharpe"]
                < free.strategies[name].result.metrics(free.bars_per_year)["sharpe"]), name


def test_rebalance_every_bar_trades_at_every_test_anchor(market: Path, tmp_path: Path) -> None:
    result = invoke(market, tmp_path / "report", "--rebalance-every", "1")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    first, last = metrics["settings"]["test_split"]
    assert metrics["evaluation"]["rebalances"] == last - first + 1
    assert metrics["evaluation"]["first_return_bar"] == first + 1
    assert metrics["evaluation"]["last_return_bar"] == last + 1
    assert not metrics["oracle"]["same_rebalance"]


def test_oracle_bars_equal_the_backtest_bars_when_settings_match(market: Path, report: Path) -> None:
    oracle = json.loads((market / "data" / "oracle.json").read_text())
    metrics = json.loads((report / "metrics.json").read_text())
    assert (oracle["rebalance_every"], oracle["cost_bps"]) == (metrics["settings"]["rebalance_every"],
                                                               metrics["costs"]["cost_bps"])
    evaluation = metrics["evaluation"]
    assert (evaluation["first_return_bar"], evaluation["last_return_bar"]) == (oracle["first_return_bar"],
                                                                               oracle["last_return_bar"])
    assert evaluation["rebalances"] == oracle["n_rebalances"]
    assert metrics["oracle"]["same_bars"] and metrics["oracle"]["sharpe"] == oracle["sharpe"]


def test_report_states_the_sharpes_uncertainty_and_keeps_every_return(report: Path, backtest: Backtest) -> None:
    metrics = json.loads((report / "metrics.json").read_text())
    returns = pd.read_csv(report / "returns.csv")
    assert list(returns.columns) == ["bar", "close_time", *backtest.strategies]
    assert len(returns) == metrics["evaluation"]["bars"]
    for name, values in metrics["strategies"].items():
        stats = metrics["statistics"][name]
        assert stats["sharpe_ci95"] == pytest.approx([values["sharpe"] - 1.959963984540054 * stats["sharpe_se"],
                                                      values["sharpe"] + 1.959963984540054 * stats["sharpe_se"]])
        assert values["sharpe"] == pytest.approx(annualised_sharpe(returns[name].to_numpy(),
                                                                   metrics["settings"]["bars_per_year"]), rel=1e-12)
        assert 0.0 <= stats["psr_vs_zero"] <= 1.0
        assert ("includes 0" in stats["words"]) == (stats["sharpe_ci95"][0] <= 0 <= stats["sharpe_ci95"][1])
    assert metrics["statistics"]["equal_weight"]["psr_vs_equal_weight"] is None
    assert metrics["evaluation"]["independent_rebalances"] == metrics["evaluation"]["bars"] // WINDOW.horizon
    page = (report / "report.html").read_text()
    assert html.escape(metrics["statistics"]["model"]["words"]) in page


def test_split_dates_choose_the_test_bars(market: Path, tmp_path: Path) -> None:
    result = invoke(market, tmp_path / "report", "--split", "2026-01-07T00:00Z,2026-01-08T00:00Z")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["settings"]["split_dates"] == ["2026-01-07T00:00Z", "2026-01-08T00:00Z"]
    times = load_data_dir(market / "data").panel.times
    first = int(np.searchsorted(times, pd.Timestamp("2026-01-08", tz="UTC"))) + WINDOW.horizon  # the embargo
    assert metrics["settings"]["test_split"][0] == first
    result = invoke(market, tmp_path / "bad", "--split", "2026-01-08")
    assert result.exit_code != 0 and "VAL_START,TEST_START" in result.output


def test_report_html_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.IGNORECASE)
    assert "<script" not in page and "<link" not in page
    assert "news-only" in page and "oracle" in page


def test_report_plots_are_valid_pngs(report: Path) -> None:
    for name in PLOTS:
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100, name
            image.verify()


def test_universe_mismatch_is_a_clear_error_and_leaves_no_report(market: Path, tmp_path: Path) -> None:
    other = write_synthetic(tmp_path / "three", n_assets=3)  # lacks the model's fourth asset
    out = tmp_path / "report"
    result = invoke(market, out, data=other / "data")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a click error, not a crash
    assert "Error:" in result.output and "have no bars" in result.output
    assert not out.exists() and not out.with_name("report.partial").exists()


def test_bar_interval_mismatch_is_a_clear_error_and_leaves_no_report(market: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(market / "data", tmp_path / "data"))
    universe = json.loads((data / "universe.json").read_text())
    (data / "universe.json").write_text(json.dumps({**universe, "interval": "6min"}))
    out = tmp_path / "report"
    result = invoke(market, out, data=data)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "data bars are 6min" in result.output and "3min" in result.output
    assert not out.exists() and not out.with_name("report.partial").exists()
