"""A model trained on derived market channels (the flow-event channel and cross-sectional standardisation, both
off by default) is exported with them and served with them: the package's normaliser holds the settings, its
fusion graph reads the extra channel, and `nfc predict`'s back-fill gives the weights `nfc backtest --package`
gives."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from builders import package_backtest, tiny_package
from click.testing import CliRunner

from neuralfusion.features import FEATURE_NAMES, FLOW_EVENT_NAME
from neuralfusion.manifest import load_manifest
from neuralfusion.synth import SynthConfig
from nfc.cli import main

DERIVED = ("--set", "flow_event_z=1.0", "--set", "feature_cross_section=true")
PREDICTIONS_DB = "derived_feature_predictions"  # the tiny package's version and bar times: a database apart


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    return tiny_package(tmp_path_factory.getbasetemp() / "derived-features", SynthConfig(n_assets=6, days=3, seed=7),
                        DERIVED)


def test_the_package_carries_the_derived_channels_and_its_graphs_passed_parity(derived):
    manifest = load_manifest(derived.package)
    normaliser = manifest.normaliser
    assert (normaliser.flow_event_z, normaliser.cross_section) == (1.0, True)
    assert normaliser.channel_names == (*FEATURE_NAMES, FLOW_EVENT_NAME)
    assert manifest.data["features"]["names"] == list(FEATURE_NAMES)  # the server computes the same bar features
    [market] = [e for e in manifest.data["graphs"]["fusion"]["inputs"] if e["name"] == "market"]
    assert market["shape"][-1] == len(FEATURE_NAMES) + 1
    assert manifest.data["parity"] and all(check["passed"] for check in manifest.data["parity"])


def test_a_backfill_equals_the_package_backtest(derived, mongo_uri, tmp_path):
    backtest, _, weights = package_backtest(derived.package, derived.data)
    times = backtest.times[backtest.anchors]
    [every] = np.unique(np.diff(backtest.anchors))
    result = CliRunner().invoke(main, [
        "--log-level", "WARNING", "predict", "--json", "--data", str(derived.data),
        "--model-path", str(derived.package), "--start", times[0].isoformat(), "--end", times[-1].isoformat(),
        "--every", str(every), "--request-id", "derived", "--state-dir", str(tmp_path)],
        env={"NFC_MONGO_URI": mongo_uri, "NFC_MONGO_DB": PREDICTIONS_DB})
    assert result.exit_code == 0, result.output
    served = json.loads(result.stdout)["predictions"]
    assert [pd.Timestamp(p["as_of"]) for p in served] == list(times) and len(times) > 3
    served_weights = np.array([[p["weights"][s] for s in backtest.symbols] for p in served])
    np.testing.assert_array_equal(weights, backtest.model.anchor_weights)
    np.testing.assert_allclose(served_weights, backtest.model.anchor_weights, rtol=0, atol=1e-6)
