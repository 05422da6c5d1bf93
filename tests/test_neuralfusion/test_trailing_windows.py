"""`trailing_mean_std`: every window's mean and std as a two-pass computation over that window gives them, causal to
the bit, exact on flat stretches, NaN where a window is short or holds a gap."""

from __future__ import annotations

import numpy as np
import pytest

from neuralfusion.features import trailing_mean_std


def two_pass(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: each window's numpy mean and std (ddof 1), NaN where the window is short or holds a NaN."""
    mean, std = np.full(values.shape, np.nan), np.full(values.shape, np.nan)
    for t in range(window - 1, len(values)):
        part = values[t - window + 1:t + 1]
        mean[t], std[t] = part.mean(axis=0), part.std(axis=0, ddof=1)
    return mean, std


def awkward_columns(rows: int = 2500) -> np.ndarray:
    """Log-volume-like columns with what real feeds hold: a zero-volume (forward-filled) stretch, a flat stretch
    at another level, a gap, a column with no values, a trend (volume up 20-fold), more rows than one chunk."""
    rng = np.random.default_rng(7)
    values = rng.normal(8.0, 1.0, (rows, 5))
    values[100:300, 0] = 0.0
    values[500:700, 1] = 3.25
    values[900:905, 2] = np.nan
    values[:, 3] = np.nan
    values[1000:, 4] += np.linspace(0.0, 3.0, rows - 1000)
    return values


@pytest.mark.parametrize("window", [3, 20, 80])
def test_every_window_matches_a_two_pass_computation(window):
    values = awkward_columns()
    mean, std = trailing_mean_std(values, window)
    ref_mean, ref_std = two_pass(values, window)
    np.testing.assert_array_equal(np.isnan(mean), np.isnan(ref_mean))
    np.testing.assert_array_equal(np.isnan(std), np.isnan(ref_std))
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-11)
    np.testing.assert_allclose(std, ref_std, rtol=0, atol=1e-9)
    assert np.isnan(mean[:window - 1]).all() and np.isnan(std[:window - 1]).all()
    assert np.isnan(std[:, 3]).all()  # no values: no statistics
    assert np.isnan(std[904:904 + window, 2]).all() and np.isfinite(std[905 + window - 1, 2])  # the gap's windows


def test_a_flat_window_has_std_zero_and_its_value_as_mean_exactly():
    """A z-score divides by this std: rounding left at ~1e-17 (pandas' rolling std leaves 4e-7 after the stretch
    at 3.25 below) would turn a flat volume baseline into a huge z-score instead of the bar's own excess."""
    values = awkward_columns()
    mean, std = trailing_mean_std(values, 80)
    assert (std[179:300, 0] == 0).all() and (mean[179:300, 0] == 0).all()
    assert (std[579:700, 1] == 0).all() and (mean[579:700, 1] == 3.25).all()
    assert (std[300:379, 0] > 0).all()  # a window that reaches past the stretch is not flat


def test_later_rows_do_not_move_an_earlier_result_by_one_bit():
    values = awkward_columns()
    changed = values.copy()
    changed[1200:] = np.random.default_rng(8).normal(50.0, 9.0, changed[1200:].shape)
    for window in (20, 80):
        before, after = trailing_mean_std(values, window), trailing_mean_std(changed, window)
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a[:1200], b[:1200])
            assert not np.allclose(a[1200:, 0], b[1200:, 0])


def test_fewer_rows_than_the_window_give_nan_only():
    mean, std = trailing_mean_std(np.ones((5, 2)), 80)
    assert np.isnan(mean).all() and np.isnan(std).all()
