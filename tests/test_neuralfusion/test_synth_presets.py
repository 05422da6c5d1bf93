"""The named synthetic markets (`nfc synth --preset`): realistic (weak, heavy-tailed, a year of test bars, oracle
Sharpe 2-4) and interaction (the news effect's sign depends on a state only the bars show)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from neuralfusion.cli import synth
from neuralfusion.synth import SYNTH_PRESETS, SynthConfig, generate_market, preset_config, write_market

FILES = ("bars.parquet", "news.jsonl", "oracle.json", "universe.json")


@pytest.fixture(scope="module")
def realistic():
    return generate_market(preset_config("realistic"))


@pytest.fixture(scope="module")
def interaction():
    return generate_market(preset_config("interaction"))


def wide(market, column: str) -> np.ndarray:
    return market.bars.pivot(index="timestamp", columns="symbol", values=column)[list(market.universe.symbols)] \
        .to_numpy()


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def test_the_default_preset_is_the_default_market() -> None:
    assert preset_config("default") == SynthConfig()


def test_an_unknown_preset_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic preset 'hard'.*interaction.*realistic"):
        preset_config("hard")


def test_the_cli_offers_every_preset() -> None:
    choices = next(p for p in synth.params if p.name == "preset").type.choices
    assert sorted(choices) == sorted(SYNTH_PRESETS)


@pytest.mark.parametrize("preset", ["realistic", "interaction"])
def test_a_preset_is_deterministic_per_seed(preset: str, tmp_path: Path) -> None:
    first = digests(write_market(generate_market(preset_config(preset, seed=4)), tmp_path / "a"))
    again = digests(write_market(generate_market(preset_config(preset, seed=4)), tmp_path / "b"))
    other = digests(write_market(generate_market(preset_config(preset, seed=5)), tmp_path / "c"))
    assert first == again
    assert all(first[name] != other[name] for name in ("bars.parquet", "news.jsonl", "oracle.json"))


def test_a_span_past_the_exchange_calendar_is_refused_not_cut_short() -> None:
    """The calendar's sessions end at CALENDAR_END: bars would stop there while news and shocks fill every day."""
    with pytest.raises(ValueError, match=r"days=5850 from 2024-01-02.*runs to 2040-01-08, past 2035-12-31.*XNYS.*"
                                         r"at most 4381 days"):
        preset_config("realistic", days=5850)
    assert preset_config("default", days=5850).days == 5850  # round the clock: no calendar to run out of


def test_realistic_oracle_sharpe_is_between_2_and_4_on_its_default_seed(realistic) -> None:
    assert 2.0 <= realistic.oracle["sharpe"] <= 4.0


def test_realistic_has_a_year_of_test_bars_on_exchange_sessions(realistic) -> None:
    oracle = realistic.oracle
    assert realistic.config.calendar == "XNYS"
    assert oracle["bars"] >= oracle["bars_per_year"]
    assert oracle["partial_sharpe"]["news_only"] > 0 and oracle["partial_sharpe"]["shocks_only"] > 0


def test_realistic_returns_have_heavy_tails_and_volatility_regimes(realistic) -> None:
    log_ret = np.diff(np.log(wide(realistic, "close")), axis=0)
    standard = (log_ret - log_ret.mean(axis=0)) / log_ret.std(axis=0)
    kurtosis = float((standard**4).mean())
    assert kurtosis > 6.0  # normal: 3; Student-t(4) shocks under two vol regimes: far more
    # the calm/stressed regimes: a month's realised vol varies far more than sampling alone would make it
    monthly = pd.DataFrame(log_ret[:, 0]).rolling(13 * 21).std().dropna().to_numpy().ravel()
    assert monthly.max() / monthly.min() > 1.6


def test_realistic_news_is_weak_and_half_uninformative(realistic) -> None:
    named = [item["planted"] for item in realistic.news if item["planted"].get("symbol") and
             not item["planted"].get("leak")]
    neutral = np.mean([p["sentiment"] == 0 for p in named])
    assert 0.45 < neutral < 0.55
    config = realistic.config
    idio_sigma_over_impact = config.idio_vol_bps * np.sqrt(config.impact_bars)
    assert config.impact_bps_per_bar * config.impact_bars < 0.6 * idio_sigma_over_impact


def test_interaction_news_moves_prices_with_the_headline_when_active_and_against_it_when_quiet(interaction) -> None:
    """Measured on the bars: sentiment x the asset's log return over the impact bars after the item's bar, by the
    state the item met. Read without the state, the news predicts little."""
    config = interaction.config
    close = wide(interaction, "close")
    times = pd.DatetimeIndex(sorted(interaction.bars["timestamp"].unique()))
    symbols = interaction.universe.symbols
    signed = {True: [], False: []}
    for item in interaction.news:
        planted = item["planted"]
        if not planted.get("sentiment"):
            continue
        bar = int(times.searchsorted(pd.Timestamp(item["published_at"]), side="left"))
        if bar + config.impact_bars >= len(times):
            continue
        j = symbols.index(planted["symbol"])
        move = np.log(close[bar + config.impact_bars, j] / close[bar, j])
        signed[planted["active"]].append(planted["sentiment"] * move * 1e4)  # bps
    planted_move = config.impact_bps_per_bar * config.impact_bars  # 180 bps
    active, quiet = (np.asarray(signed[state]) for state in (True, False))
    assert len(active) > 100 and len(quiet) > 100
    for values, sign in ((active, 1.0), (quiet, -1.0)):
        mean, error = values.mean(), values.std(ddof=1) / np.sqrt(len(values))
        assert sign * mean > 3 * error  # each state's effect is there, with its own sign
        assert abs(mean - sign * planted_move) < 4 * error  # and of the planted size
    oracle = interaction.oracle["partial_sharpe"]
    assert oracle["news_ignoring_state"] < 0.5 * interaction.oracle["sharpe"]


def test_interaction_state_shows_in_the_bars(interaction) -> None:
    """Active spells trade more volume at higher volatility: the market stream can see the state."""
    n_bars, n_assets = interaction.config.n_bars, interaction.config.n_assets
    active = np.zeros((n_bars, n_assets), dtype=bool)
    for spell in interaction.oracle["planted"]["active_spells"]:
        active[spell["first_bar"]:spell["last_bar"] + 1, interaction.universe.index(spell["symbol"])] = True
    assert 0.3 < active.mean() < 0.7
    volume = wide(interaction, "volume")
    log_ret = np.abs(np.diff(np.log(wide(interaction, "close")), axis=0))
    assert np.median(volume[active]) > 2.0 * np.median(volume[~active])
    assert np.median(log_ret[active[1:]]) > 1.3 * np.median(log_ret[~active[1:]])


@pytest.mark.parametrize("changes", [{"tail_df": 2.0}, {"quiet_news_sign": -2.0}, {"activity_mean_bars": 0.5},
                                     {"active_volume_multiplier": 0.5}])
def test_bad_new_settings_are_refused(changes: dict) -> None:
    name = next(iter(changes))
    with pytest.raises(ValueError, match=name):
        SynthConfig(**changes)


def test_nfc_synth_writes_a_preset_with_overrides(tmp_path: Path) -> None:
    out = tmp_path / "interaction"
    result = CliRunner().invoke(synth, ["--out", str(out), "--preset", "interaction", "--days", "4", "--assets", "3",
                                        "--json"])
    assert result.exit_code == 0, result.output
    reply = json.loads(result.output)
    assert (reply["preset"], reply["assets"], reply["days"], reply["interval"]) == ("interaction", 3, 4, "3min")
    oracle = json.loads((out / "oracle.json").read_text())
    assert oracle["config"]["quiet_news_sign"] == -1.0 and oracle["planted"]["active_spells"]
