"""The Sharpe ratio's uncertainty: the standard error matches simulation, PSR behaves as a probability."""

from __future__ import annotations

import numpy as np
import pytest

from neuralfusion.portfolio import annualised_sharpe
from neuralfusion.stats import independent_periods, interval_words, probabilistic_sharpe, sharpe_statistics


def test_standard_error_matches_the_spread_of_simulated_sharpe_ratios():
    rng = np.random.default_rng(0)
    bars, per_year, true_per_bar = 250, 252.0, 0.1
    samples = rng.normal(true_per_bar * 0.01, 0.01, size=(4000, bars))
    simulated = np.array([annualised_sharpe(r, per_year) for r in samples])
    predicted = sharpe_statistics(samples[0], per_year)["sharpe_se"]
    assert predicted == pytest.approx(simulated.std(), rel=0.05)
    stats = [sharpe_statistics(r, per_year) for r in samples[:1000]]
    true_annual = true_per_bar * np.sqrt(per_year)
    covered = np.mean([lo <= true_annual <= hi for lo, hi in (s["sharpe_ci95"] for s in stats)])
    assert covered == pytest.approx(0.95, abs=0.02)


def test_probabilistic_sharpe_ratio():
    rng = np.random.default_rng(1)
    good, noise = rng.normal(0.002, 0.01, 2000), rng.normal(0.0, 0.01, 20)
    assert probabilistic_sharpe(good) > 0.999
    assert 0.05 < probabilistic_sharpe(noise) < 0.95
    assert probabilistic_sharpe(good, benchmark_per_bar=0.2) == pytest.approx(1 - probabilistic_sharpe(
        -good, benchmark_per_bar=-0.2), abs=0.05)
    stats = sharpe_statistics(good, 252.0, benchmark=good)
    assert stats["psr_vs_equal_weight"] == pytest.approx(0.5)


def test_interval_words_and_independent_periods():
    assert interval_words("model", 1.2, [-0.5, 2.9]).endswith("includes 0: this test cannot tell it from no skill.")
    assert interval_words("model", 3.0, [1.0, 5.0]).endswith("lies above 0.")
    assert independent_periods(100, rebalance_every=1, horizon=10) == 10
    assert independent_periods(100, rebalance_every=20, horizon=10) == 5
