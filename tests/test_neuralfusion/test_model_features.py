"""The market channels derived before standardising: the flow-event channel, cross-sectional standardisation, and
that both travel with the normaliser (off by default, so a default normaliser's record is unchanged)."""

from __future__ import annotations

import numpy as np
import pytest

from neuralfusion.features import FEATURE_NAMES, FLOW_EVENT_NAME, FeatureNormalizer, model_features
from neuralfusion.train_config import TrainConfig

RETURN, VOLUME_Z = FEATURE_NAMES.index("log_return"), FEATURE_NAMES.index("volume_z")


def random_features(seed: int = 0, bars: int = 300, assets: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(bars, assets, len(FEATURE_NAMES)))
    features[:20] = np.nan  # a warm-up, as market_features leaves it
    return features


def test_the_flow_event_is_the_return_scaled_by_the_volume_burst_over_the_threshold():
    features = np.zeros((3, 2, len(FEATURE_NAMES)))
    features[:, :, RETURN] = [[0.01, -0.02], [0.03, 0.04], [np.nan, 0.01]]
    features[:, :, VOLUME_Z] = [[5.0, 4.0], [2.9, -1.0], [6.0, 3.5]]
    derived = model_features(features, flow_event_z=3.0)
    assert derived.shape == (3, 2, len(FEATURE_NAMES) + 1)
    np.testing.assert_array_equal(derived[..., :-1], features)  # the features themselves pass through
    np.testing.assert_allclose(derived[..., -1], [[0.02, -0.02], [0.0, 0.0], [np.nan, 0.005]])
    np.testing.assert_array_equal(model_features(features), features)  # off: nothing derived


def test_with_cross_section_the_flow_event_reads_the_asset_s_own_jump_on_its_own_burst():
    features = random_features()[20:]
    standard = model_features(features, cross_section=True)
    both = model_features(features, flow_event_z=0.5, cross_section=True)
    np.testing.assert_array_equal(both[..., :-1], standard)
    np.testing.assert_allclose(both[..., -1], standard[..., RETURN] * np.maximum(standard[..., VOLUME_Z] - 0.5, 0.0))
    # a return and a volume burst every asset shares is no event of any asset's own
    shared = features.copy()
    shared[:, :, RETURN], shared[:, :, VOLUME_Z] = 0.02, 6.0
    assert np.all(model_features(shared, flow_event_z=0.5, cross_section=True)[..., -1] == 0.0)
    assert np.all(model_features(shared, flow_event_z=0.5)[..., -1] > 0.0)


def test_cross_section_leaves_what_sets_an_asset_apart_from_the_others_on_each_bar():
    features = random_features()[20:]
    standard = model_features(features, cross_section=True)
    np.testing.assert_allclose(standard.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(standard.std(axis=1), 1.0, atol=1e-12)
    # a move every asset shares, and a bar-wide change of scale, leave it unchanged
    rng = np.random.default_rng(1)
    shifted = features * rng.uniform(0.5, 2.0, size=(len(features), 1, 1)) + rng.normal(size=(len(features), 1, 1))
    np.testing.assert_allclose(model_features(shifted, cross_section=True), standard, atol=1e-9)
    # a channel on which the assets agree gives 0 (no division by a zero spread)
    features[:, :, VOLUME_Z] = 3.0
    assert np.all(model_features(features, cross_section=True)[:, :, VOLUME_Z] == 0.0)


def test_the_normaliser_derives_standardises_and_keeps_its_settings():
    features = random_features()
    normaliser = FeatureNormalizer.fit(features, 20, 199, flow_event_z=1.0, cross_section=True)
    assert normaliser.channel_names == (*FEATURE_NAMES, FLOW_EVENT_NAME)
    out = normaliser.transform(features)
    assert out.shape == (300, 5, len(FEATURE_NAMES) + 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[20:200].reshape(-1, out.shape[-1]).mean(axis=0), 0.0, atol=1e-5)
    assert np.isnan(out[:20]).all() and np.isfinite(out[20:]).all()
    expected = (model_features(features[20:], 1.0, True) - np.asarray(normaliser.mean)) / np.asarray(normaliser.std)
    np.testing.assert_allclose(out[20:], expected, rtol=1e-5, atol=1e-5)
    assert FeatureNormalizer.from_dict(normaliser.to_dict()) == normaliser
    # the serving window is standardised as the grid it was cut from (every channel is a function of one bar)
    np.testing.assert_array_equal(normaliser.transform(features[120:200]), out[120:200])


def test_a_default_normaliser_writes_the_record_it_wrote_before():
    plain = FeatureNormalizer.fit(random_features(), 20, 199)
    assert set(plain.to_dict()) == {"names", "mean", "std", "fit_start", "fit_end", "clip"}
    assert plain.channel_names == FEATURE_NAMES and plain.transform(random_features()).shape[-1] == len(FEATURE_NAMES)


def test_train_config_carries_the_settings_to_the_normaliser():
    settings = TrainConfig(flow_event_z=2.5, feature_cross_section=True, feature_clip=3.0,
                           feature_keep=["volume_z", "flow_event"]).normaliser_settings
    assert settings == {"clip": 3.0, "flow_event_z": 2.5, "cross_section": True, "keep": ("volume_z", "flow_event")}
    assert TrainConfig().normaliser_settings == {"clip": 0.0, "flow_event_z": 0.0, "cross_section": False, "keep": ()}
    normaliser = FeatureNormalizer.fit(random_features(), 20, 199, **settings)
    assert normaliser.channel_names == ("volume_z", "flow_event")


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
@pytest.mark.parametrize(("setting", "config_name"), [("clip", "feature_clip"), ("flow_event_z", "flow_event_z")])
def test_a_clip_or_flow_event_threshold_that_is_not_a_finite_number_is_refused(bad, setting, config_name):
    with pytest.raises(ValueError, match=f"{setting} must be a finite number >= 0"):
        FeatureNormalizer.fit(random_features(), 20, 199, **{setting: bad})
    with pytest.raises(ValueError, match=f"{config_name} must be a finite number >= 0"):
        TrainConfig(**{config_name: bad})


def test_keep_selects_the_channels_the_model_reads_in_its_order():
    features = random_features()
    every = FeatureNormalizer.fit(features, 20, 199, flow_event_z=1.0, cross_section=True)
    kept = FeatureNormalizer.fit(features, 20, 199, flow_event_z=1.0, cross_section=True,
                                 keep=("flow_event", "log_return"))
    assert kept.channel_names == ("flow_event", "log_return")
    np.testing.assert_allclose(kept.transform(features), every.transform(features)[..., [7, RETURN]], atol=1e-6)
    assert FeatureNormalizer.from_dict(kept.to_dict()) == kept
    assert kept.to_dict()["keep"] == ["flow_event", "log_return"]
    with pytest.raises(ValueError, match="keep must name distinct channels among"):
        FeatureNormalizer.fit(features, 20, 199, keep=("flow_event",))  # no flow-event channel without its threshold
    with pytest.raises(ValueError, match="keep must name distinct channels among"):
        FeatureNormalizer.fit(features, 20, 199, keep=("volume_z", "volume_z"))


def test_a_normaliser_whose_statistics_do_not_match_its_channels_is_refused():
    stored = FeatureNormalizer.fit(random_features(), 20, 199, flow_event_z=1.0).to_dict()
    del stored["flow_event_z"]
    with pytest.raises(ValueError, match="holds 8 means and 8 stds for the 7 channels"):
        FeatureNormalizer.from_dict(stored)
