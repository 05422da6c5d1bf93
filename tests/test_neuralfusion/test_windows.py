"""Windows and splits: the embargo holds, inputs end at the anchor, targets start after it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuralfusion.errors import DataError
from neuralfusion.features import FeatureNormalizer, market_features, simple_returns
from neuralfusion.specs import WindowSpec
from neuralfusion.windows import chronological_split, input_windows, target_windows, usable_anchors


def test_inputs_end_at_anchor_and_targets_start_after_it():
    values = np.arange(100)[:, None] * np.ones((1, 2))
    anchors = np.array([30, 50])
    inputs = input_windows(values, anchors, lookback=5)
    targets = target_windows(values, anchors, horizon=3)
    assert inputs.shape == (2, 5, 2) and targets.shape == (2, 3, 2)
    np.testing.assert_array_equal(inputs[:, :, 0], [[26, 27, 28, 29, 30], [46, 47, 48, 49, 50]])
    np.testing.assert_array_equal(targets[:, :, 0], [[31, 32, 33], [51, 52, 53]])


def test_split_is_chronological_with_an_embargo_of_h_bars():
    spec = WindowSpec(lookback=10, horizon=7)
    anchors = usable_anchors(1000, first_valid=20, spec=spec)
    assert anchors[0] == 29 and anchors[-1] == 992
    splits = chronological_split(anchors, spec)
    assert splits.train[-1] < splits.val[0] < splits.val[-1] < splits.test[0]
    # the first target bar of the next split comes after the last target bar of the previous one
    assert splits.val[0] - splits.train[-1] > spec.horizon
    assert splits.test[0] - splits.val[-1] > spec.horizon


def test_too_short_data_says_how_many_bars_are_needed():
    with pytest.raises(DataError, match="needs at least 180 bars"):
        usable_anchors(150, first_valid=20, spec=WindowSpec(lookback=80, horizon=80))
    with pytest.raises(DataError, match="too few to split"):
        chronological_split(np.arange(50), WindowSpec(lookback=10, horizon=20))


def test_window_spec_validates_numbers():
    with pytest.raises(ValueError, match="lookback must be >= 2"):
        WindowSpec(lookback=1)
    with pytest.raises(ValueError, match="leave room for a test split"):
        WindowSpec(train_fraction=0.8, val_fraction=0.2)


def test_normaliser_uses_only_its_fit_window_and_round_trips_json(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 3, 7))
    features[200:] += 100.0  # a later regime must not move the statistics
    normaliser = FeatureNormalizer.fit(features, 0, 199)
    normalised = normaliser.transform(features[:200])
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised.reshape(-1, 7).mean(axis=0), 0, atol=1e-6)
    normaliser.save(tmp_path / "norm.json")
    assert FeatureNormalizer.load(tmp_path / "norm.json") == normaliser
    with pytest.raises(DataError, match="NaN/inf"):
        FeatureNormalizer.fit(np.full((10, 1, 7), np.nan), 0, 9)


def test_features_are_nan_only_during_warm_up():
    from builders import make_bars

    from neuralfusion.data.bars import resample_bars
    from neuralfusion.features import FEATURE_NAMES, WARMUP_BARS
    from neuralfusion.specs import BarSpec, Universe

    panel = resample_bars(make_bars(n_bars=200), Universe(symbols=("AAA", "BBB", "CCC")), BarSpec())
    features = market_features(panel)
    assert features.shape == (200, 3, len(FEATURE_NAMES))
    assert np.isnan(features[:WARMUP_BARS]).all() and np.isfinite(features[WARMUP_BARS:]).all()
    returns = simple_returns(panel.close)
    np.testing.assert_allclose(returns[5], panel.close[5] / panel.close[4] - 1)


def test_a_date_split_starts_validation_and_test_at_the_first_anchor_closing_on_those_dates():
    from builders import session_times

    times = session_times("XNYS", "1D", "2024-01-01", "2025-12-31")
    spec = WindowSpec(lookback=20, horizon=5, val_start="2025-01-01", test_start="2025-07-01")
    anchors = usable_anchors(len(times), 80, spec)
    splits = chronological_split(anchors, spec, times)
    first_val = int(np.searchsorted(times, pd.Timestamp("2025-01-01", tz="UTC")))
    first_test = int(np.searchsorted(times, pd.Timestamp("2025-07-01", tz="UTC")))
    assert splits.train[-1] == first_val - 1 and times[splits.train[-1]] < pd.Timestamp("2025-01-01", tz="UTC")
    assert splits.val[0] == first_val + spec.embargo and splits.val[-1] == first_test - 1
    assert splits.test[0] == first_test + spec.embargo
    assert str(times[splits.test[0]].date()) == "2025-07-09"  # 1 July + 5 trading bars of embargo (4 July shut)


def test_a_date_split_needs_both_dates_in_order_and_room_for_every_split():
    times = pd.date_range("2026-01-05 00:03", periods=400, freq="3min", tz="UTC")
    with pytest.raises(ValueError, match="needs both val_start and test_start"):
        WindowSpec(val_start="2026-01-05")
    with pytest.raises(ValueError, match="must come before"):
        WindowSpec(val_start="2026-01-06", test_start="2026-01-05")
    late = WindowSpec(lookback=10, horizon=5, val_start="2026-01-05T19:00Z", test_start="2026-01-06")
    with pytest.raises(DataError, match=r"date split 2026-01-05T19:00Z / 2026-01-06 .* \(train \d+, val \d+, test 0\)"):
        chronological_split(usable_anchors(len(times), 80, late), late, times)
