"""Clipping of the standardised market features: the bound, its validation, and that it travels with the normaliser."""

from __future__ import annotations

import numpy as np
import pytest

from neuralfusion.features import FEATURE_NAMES, FeatureNormalizer


def heavy_tailed_features(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    features = rng.standard_t(3, size=(400, 3, len(FEATURE_NAMES)))
    features[:20] = np.nan  # a warm-up, as market_features leaves it
    return features


def test_clipped_features_are_the_standardised_ones_bounded_at_the_clip():
    features = heavy_tailed_features()
    plain = FeatureNormalizer.fit(features, 20, 299)
    clipped = FeatureNormalizer.fit(features, 20, 299, clip=2.0)
    assert (plain.mean, plain.std) == (clipped.mean, clipped.std)  # the clip does not change the fit
    raw, bounded = plain.transform(features), clipped.transform(features)
    assert np.nanmax(np.abs(raw)) > 4.0 and np.nanmax(np.abs(bounded)) == pytest.approx(2.0)
    np.testing.assert_array_equal(bounded, np.clip(raw, -2.0, 2.0))  # inside the bound, nothing changes
    assert np.isnan(bounded[:20]).all() and np.isfinite(bounded[20:]).all()  # the warm-up stays NaN
    assert features[25, 0, 0] == heavy_tailed_features()[25, 0, 0]  # the input is not mutated


def test_the_clip_travels_with_the_normaliser_and_old_ones_have_none():
    clipped = FeatureNormalizer.fit(heavy_tailed_features(), 20, 299, clip=2.5)
    stored = clipped.to_dict()
    assert stored["clip"] == 2.5 and FeatureNormalizer.from_dict(stored) == clipped
    before_clipping = {k: v for k, v in stored.items() if k != "clip"}
    assert FeatureNormalizer.from_dict(before_clipping).clip == 0.0
