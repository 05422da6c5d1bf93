"""The synthetic market: file contracts, determinism, the planted news and shock signals and the oracle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuralfusion.features import WARMUP_BARS, simple_returns
from neuralfusion.portfolio import annualised_sharpe, portfolio_returns, topk_weights
from neuralfusion.specs import PortfolioSpec, Universe, WindowSpec
from neuralfusion.synth import SynthConfig, generate_market, synthetic_universe, write_market
from neuralfusion.windows import chronological_split, usable_anchors

FILES = ("bars.parquet", "news.jsonl", "oracle.json", "universe.json")
# dense news, so that the oracle test sees items aligned right at and just after rebalancing anchors
SMALL = SynthConfig(n_assets=4, days=10, seed=7, asset_news_per_day=12.0)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_market(generate_market(SMALL), tmp_path_factory.mktemp("small"))


def read_news(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def close_panel(bars: pd.DataFrame, symbols: tuple[str, ...]) -> tuple[pd.DatetimeIndex, np.ndarray]:
    wide = bars.pivot(index="timestamp", columns="symbol", values="close")[list(symbols)]
    return wide.index, wide.to_numpy()


def aligned_bars(close_times: pd.DatetimeIndex, news: list[dict]) -> np.ndarray:
    """First bar whose close time >= published_at (the alignment rule of docs/DESIGN.md)."""
    published = pd.to_datetime([n["published_at"] for n in news], format="ISO8601", utc=True)
    return np.searchsorted(close_times.as_unit("ns").asi8, published.as_unit("ns").asi8, side="left")


def test_same_seed_writes_byte_identical_files(tmp_path: Path) -> None:
    first = write_market(generate_market(SMALL), tmp_path / "a")
    second = write_market(generate_market(SMALL), tmp_path / "b")
    assert digests(first) == digests(second)


def test_different_seed_changes_every_data_file(tmp_path: Path) -> None:
    first = digests(write_market(generate_market(SMALL), tmp_path / "a"))
    other = digests(write_market(generate_market(dataclasses.replace(SMALL, seed=8)), tmp_path / "b"))
    assert all(first[name] != other[name] for name in ("bars.parquet", "news.jsonl", "oracle.json"))


def test_bars_satisfy_ohlc_contract(small_dir: Path) -> None:
    bars = pd.read_parquet(small_dir / "bars.parquet")
    prices = bars[["open", "high", "low", "close"]].to_numpy()
    assert list(bars.columns) == ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    assert all(bars[c].dtype == np.float64 for c in ("open", "high", "low", "close", "volume"))
    assert np.isfinite(prices).all() and (prices > 0).all()
    assert (bars["volume"] > 0).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert not bars.duplicated(["timestamp", "symbol"]).any()
    assert bars.equals(bars.sort_values(["timestamp", "symbol"], ignore_index=True))


def test_open_is_previous_close(small_dir: Path) -> None:
    bars = pd.read_parquet(small_dir / "bars.parquet")
    for _, group in bars.groupby("symbol"):
        assert np.array_equal(group["open"].to_numpy()[1:], group["close"].to_numpy()[:-1])


def test_bars_lie_on_a_regular_utc_grid_closing_one_interval_after_start(small_dir: Path) -> None:
    bars = pd.read_parquet(small_dir / "bars.parquet")
    assert str(bars["timestamp"].dtype) == "datetime64[ns, UTC]"
    times = pd.DatetimeIndex(bars["timestamp"].unique())
    assert len(times) == SMALL.n_bars
    assert times[0] == pd.Timestamp(SMALL.start) + pd.Timedelta("3min")
    assert (np.diff(times.asi8) == pd.Timedelta("3min").value).all()
    assert (bars.groupby("timestamp")["symbol"].count() == SMALL.n_assets).all()


def test_universe_file_round_trips_with_interval_and_calendar(small_dir: Path) -> None:
    data = json.loads((small_dir / "universe.json").read_text())
    universe = Universe.from_dict(data)
    assert universe == synthetic_universe(SMALL.n_assets)
    assert (data["interval"], data["calendar"]) == ("3min", "24/7")
    assert all(re.fullmatch(r"[A-Z]{4}", s) for s in synthetic_universe(26).symbols)


def test_news_published_at_is_utc_within_the_bar_range_and_off_grid(small_dir: Path) -> None:
    news = read_news(small_dir / "news.jsonl")
    bars = pd.read_parquet(small_dir / "bars.parquet")
    published = pd.to_datetime(pd.Series([n["published_at"] for n in news]), format="ISO8601")
    assert str(published.dtype).endswith("UTC]")
    assert all(n["published_at"].endswith(("Z", "+00:00")) for n in news)
    assert published.min() > pd.Timestamp(SMALL.start) and published.max() <= bars["timestamp"].max()
    assert published.is_monotonic_increasing
    assert (published.dt.second != 0).mean() > 0.9  # seconds resolution, not on the 3-minute grid


def test_news_records_follow_the_contract(small_dir: Path) -> None:
    news = read_news(small_dir / "news.jsonl")
    assert len({n["id"] for n in news}) == len(news)
    for item in news:
        assert {"id", "published_at", "title", "body", "planted"} <= set(item) <= {
            "id", "published_at", "title", "body", "planted", "symbols"}
        assert isinstance(item["title"], str) and item["title"] and isinstance(item["body"], str)
        assert set(item["planted"]) == {"sentiment", "symbol", "drift_bps_per_bar", "bars"}
        assert item["planted"]["sentiment"] in (-1, 0, 1)
    lines = (small_dir / "news.jsonl").read_text().splitlines()
    assert all(list(json.loads(line)) == sorted(json.loads(line)) for line in lines)


def test_about_a_fifth_of_asset_news_omits_symbols_and_names_the_company() -> None:
    market = generate_market(SynthConfig(n_assets=8, days=20, seed=3))
    asset_news = [n for n in market.news if n["planted"]["symbol"] is not None]
    omitted = [n for n in asset_news if "symbols" not in n]
    assert 0.15 < len(omitted) / len(asset_news) < 0.25
    for item in omitted:
        alias = market.universe.aliases[item["planted"]["symbol"]][0]
        assert alias.lower() in item["title"].lower()


def test_asset_news_names_only_its_own_asset() -> None:
    market = generate_market(SynthConfig(n_assets=26, days=3, seed=5))
    universe = market.universe
    for item in market.news:
        text = f"{item['title']} {item['body']}"
        named = {s for s in universe.symbols
                 if any(re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) for w in (s, *universe.aliases[s]))}
        symbol = item["planted"]["symbol"]
        assert named == ({symbol} if symbol else set()), item
        if "symbols" in item:
            assert item["symbols"] == ([symbol] if symbol else [])


def test_distractors_carry_no_sentiment_and_no_drift() -> None:
    news = generate_market(SynthConfig(n_assets=4, days=10, seed=2)).news
    distractors = [n for n in news if n["planted"]["symbol"] is None]
    assert len(distractors) > 20
    assert all(n["planted"] == {"sentiment": 0, "symbol": None, "drift_bps_per_bar": 0.0, "bars": 0}
               for n in distractors)
    # sentiment words without an asset exist, so words alone are not the signal
    assert any(re.search(r"rally|slump|beat", n["title"] + n["body"]) for n in distractors)


@pytest.mark.parametrize(("phrase", "sentiment"), [
    ("does not expect a downturn", 1),
    ("rules out layoffs", 1),
    ("closes probe into", 1),
    ("fails to beat", -1),
    ("will not raise its dividend", -1),
    ("does not expect growth", -1),
])
def test_negated_headlines_carry_the_sentiment_their_meaning_says(phrase: str, sentiment: int) -> None:
    news = generate_market(SynthConfig(n_assets=12, days=20, seed=4)).news
    matching = [n for n in news if phrase in n["title"]]
    assert matching, f"no headline with {phrase!r}"
    assert {n["planted"]["sentiment"] for n in matching} == {sentiment}


def test_planted_drift_starts_on_the_bar_after_alignment_exactly() -> None:
    # without noise (and without flow shocks), each bar's log return is exactly the sum of the planted drifts on it
    config = SynthConfig(n_assets=3, days=2, seed=11, factor_vol_bps=(), idio_vol_bps=0.0, shocks_per_day=0.0)
    market = generate_market(config)
    times, close = close_panel(market.bars, market.universe.symbols)
    expected = np.zeros_like(close)
    live = [n for n in market.news if n["planted"]["sentiment"] != 0]
    for item, bar in zip(live, aligned_bars(times, live), strict=True):
        column = market.universe.index(item["planted"]["symbol"])
        expected[bar + 1: bar + 1 + item["planted"]["bars"], column] += item["planted"]["drift_bps_per_bar"] / 1e4
    assert len(live) > 10
    np.testing.assert_allclose(np.diff(np.log(close), axis=0), expected[1:], rtol=0, atol=1e-12)


def shock_log_returns(market, config: SynthConfig) -> np.ndarray:
    """The log returns (T, N) the oracle's recorded flow shocks add: the jump on its bar, the drift after it."""
    added = np.zeros((config.n_bars, config.n_assets))
    for shock in market.oracle["planted"]["shocks"]:
        column = market.universe.index(shock["symbol"])
        added[shock["bar"], column] += shock["sign"] * config.shock_jump_bps / 1e4
        added[shock["bar"] + 1: shock["bar"] + 1 + config.shock_bars, column] += (
            shock["sign"] * config.shock_drift_bps_per_bar / 1e4)
    return added


def test_flow_shock_jumps_on_its_bar_and_drifts_after_it_exactly() -> None:
    # no noise, no news: each bar's log return is the jumps on it plus the shock drifts active on it
    config = SynthConfig(n_assets=3, days=2, seed=12, factor_vol_bps=(), idio_vol_bps=0.0, asset_news_per_day=0.0,
                         shocks_per_day=4.0)
    market = generate_market(config)
    _, close = close_panel(market.bars, market.universe.symbols)
    assert len(market.oracle["planted"]["shocks"]) > 10
    assert {s["sign"] for s in market.oracle["planted"]["shocks"]} == {-1, 1}
    np.testing.assert_allclose(np.diff(np.log(close), axis=0), shock_log_returns(market, config)[1:], rtol=0,
                               atol=1e-12)


def test_shocks_add_to_the_same_news_and_noise() -> None:
    # each part of the market has its own random stream: with shocks switched off the news are the same
    # and the log returns differ by exactly the shocks' planted moves
    config = SynthConfig(n_assets=4, days=5, seed=3)
    with_shocks, without = generate_market(config), generate_market(dataclasses.replace(config, shocks_per_day=0.0))
    assert with_shocks.news == without.news
    assert len(with_shocks.oracle["planted"]["shocks"]) > 10 and not without.oracle["planted"]["shocks"]
    log_returns = [np.diff(np.log(close_panel(m.bars, m.universe.symbols)[1]), axis=0) for m in (with_shocks, without)]
    np.testing.assert_allclose(log_returns[0] - log_returns[1], shock_log_returns(with_shocks, config)[1:], rtol=0,
                               atol=1e-9)
    volume = [m.bars.pivot(index="timestamp", columns="symbol", values="volume").to_numpy() for m in (with_shocks,
                                                                                                      without)]
    rows = [s["bar"] for s in with_shocks.oracle["planted"]["shocks"]]
    cols = [with_shocks.universe.index(s["symbol"]) for s in with_shocks.oracle["planted"]["shocks"]]
    # the burst multiplies volume by up to 1 + shock_volume_boost (less where news already boosted it, and the
    # jump can cancel a bar's noise, which lowers the |return| part of volume)
    assert np.mean(np.log(volume[0][rows, cols] / volume[1][rows, cols])) > 1.0


def test_planted_effect_shows_in_returns_after_news() -> None:
    config = SynthConfig(n_assets=8, days=20, seed=9)
    market = generate_market(config)
    times, close = close_panel(market.bars, market.universe.symbols)
    returns = simple_returns(close)
    live = [n for n in market.news if n["planted"]["sentiment"] != 0]
    after = {1: [], -1: []}
    for item, bar in zip(live, aligned_bars(times, live), strict=True):
        window = returns[bar + 1: bar + 1 + config.impact_bars, market.universe.index(item["planted"]["symbol"])]
        if len(window) == config.impact_bars:
            after[item["planted"]["sentiment"]].append(window.mean())
    pos, neg = np.array(after[1]), np.array(after[-1])
    gap = pos.mean() - neg.mean()
    t_stat = gap / np.sqrt(pos.var(ddof=1) / len(pos) + neg.var(ddof=1) / len(neg))
    assert t_stat > 4.0, (gap, t_stat)


def test_volume_rises_with_news_and_with_absolute_return() -> None:
    market = generate_market(SynthConfig(n_assets=4, days=10, seed=6))
    bars = market.bars
    times, close = close_panel(bars, market.universe.symbols)
    volume = np.log(bars.pivot(index="timestamp", columns="symbol", values="volume").to_numpy())
    has_news = np.zeros_like(volume, dtype=bool)
    live = [n for n in market.news if n["planted"]["sentiment"] != 0]
    for item, bar in zip(live, aligned_bars(times, live), strict=True):
        has_news[bar, market.universe.index(item["planted"]["symbol"])] = True
    assert volume[has_news].mean() > volume[~has_news].mean() + 0.5
    abs_return = np.abs(simple_returns(close))[1:].ravel()
    assert np.corrcoef(abs_return, volume[1:].ravel())[0, 1] > 0.2


def test_regimes_cluster_volatility() -> None:
    def clustering(multiplier: float) -> float:
        market = generate_market(SynthConfig(n_assets=4, days=10, seed=1, stress_vol_multiplier=multiplier))
        size = np.abs(np.diff(np.log(close_panel(market.bars, market.universe.symbols)[1]), axis=0))
        return float(np.mean([np.corrcoef(size[1:, j], size[:-1, j])[0, 1] for j in range(size.shape[1])]))

    assert clustering(2.0) > 0.08 > clustering(1.0)


def test_oracle_sharpe_is_recomputable_from_the_files(small_dir: Path) -> None:
    oracle = json.loads((small_dir / "oracle.json").read_text())
    universe = Universe.from_dict(json.loads((small_dir / "universe.json").read_text()))
    times, close = close_panel(pd.read_parquet(small_dir / "bars.parquet"), universe.symbols)
    live = [n for n in read_news(small_dir / "news.jsonl") if n["planted"]["sentiment"] != 0]
    news_bar = aligned_bars(times, live)
    planted = oracle["planted"]
    shocks = planted["shocks"]
    assert shocks
    window, book = WindowSpec(), PortfolioSpec()
    splits = chronological_split(usable_anchors(len(times), WARMUP_BARS, window), window)
    horizon, path = window.horizon, []
    for anchor in range(int(splits.test[0]), int(splits.test[-1]) + 1, horizon):
        expected = np.zeros(universe.n_assets)
        for item, bar in zip(live, news_bar, strict=True):
            if bar <= anchor:  # published at or before the anchor bar's close
                first, last = max(bar + 1, anchor + 1), min(bar + item["planted"]["bars"], anchor + horizon)
                expected[universe.index(item["planted"]["symbol"])] += (
                    item["planted"]["drift_bps_per_bar"] * max(0, last - first + 1))
        for shock in shocks:
            if shock["bar"] <= anchor:  # seen at the shock bar's close
                first = max(shock["bar"] + 1, anchor + 1)
                last = min(shock["bar"] + planted["shock_bars"], anchor + horizon)
                expected[universe.index(shock["symbol"])] += (
                    shock["sign"] * planted["shock_drift_bps_per_bar"] * max(0, last - first + 1))
        path.append(np.repeat(topk_weights(expected, book.top_k)[None, :], horizon, axis=0))
    weights = np.vstack(path)
    start = int(splits.test[0]) + 1
    returns = portfolio_returns(weights, simple_returns(close)[start: start + len(weights)], book.cost_bps)
    assert oracle["splits"] == splits.to_dict()
    assert oracle["sharpe"] == pytest.approx(annualised_sharpe(returns, 365 * 480), rel=1e-9)
    assert oracle["cumulative_return"] == pytest.approx(np.prod(1 + returns) - 1, rel=1e-9)
    assert (oracle["horizon"], oracle["rebalance_every"], oracle["top_k"]) == (horizon, horizon, book.top_k)


def test_default_market_has_the_documented_scale_and_a_positive_oracle() -> None:
    market = generate_market(SynthConfig(seed=0))
    assert market.bars.shape == (60 * 480 * 12, 7)
    assert 2500 <= len(market.news) <= 4000
    assert market.oracle["sharpe"] > 2.0


def test_failed_write_leaves_previous_files_and_no_temporaries(tmp_path: Path) -> None:
    market = generate_market(SMALL)
    write_market(market, tmp_path)
    before = digests(tmp_path)
    broken = generate_market(dataclasses.replace(SMALL, seed=8))
    broken.news.append({"id": "bad", "published_at": object()})  # not JSON-serialisable: fails mid-write
    with pytest.raises(TypeError):
        write_market(broken, tmp_path)
    assert digests(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"n_assets": 0}, "n_assets must be in 1..26, got 0"),
    ({"n_assets": 27}, "got 27"),
    ({"days": 1}, "days=1"),
    ({"interval": "7min"}, "'7min'"),
    ({"calendar": "09:30-16:00"}, "'09:30-16:00'"),
    ({"start": "2026-01-05T00:00:00"}, "no time zone"),
    ({"idio_vol_bps": -1.0}, "got -1.0"),
    ({"idio_vol_bps": float("nan")}, "got nan"),
    ({"factor_vol_bps": (8.0, 500.0)}, "factor_vol_bps[1]"),
    ({"neutral_fraction": 1.5}, "got 1.5"),
    ({"impact_bars": 0}, "impact_bars must be >= 1, got 0"),
    ({"seed": -3}, "got -3"),
])
def test_bad_config_raises_value_error_quoting_the_value(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SynthConfig(**overrides)
