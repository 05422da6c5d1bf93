"""The ONNX Runtime path of serving, without a server: package checks, providers, batch invariance, and no
train/serve skew (the served window and embeddings equal the ones training computed)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import STEP

from neuralfusion.data.bars import BarFileSource, _aggregated, _grid_slots, _one_bar_per_slot, validate_bars
from neuralfusion.data.news import article_text, read_news
from neuralfusion.dataset import load_data_dir
from neuralfusion.embeddings import read_embeddings
from neuralfusion.inputs import INPUT_NAMES, grid_inputs
from neuralfusion.manifest import PackageError, load_manifest
from neuralfusion.specs import BarSpec
from serving.client import predict_payload
from serving.errors import ServingError, check_api_key
from serving.providers import choose_device
from serving.runtime import PortfolioRuntime, open_session
from serving.schemas import PredictRequest
from serving.settings import ServeSettings

FP32_ATOL = 1e-5  # the package's fp32 tolerance (manifest "tolerances"); batching changes only rounding


@pytest.fixture(scope="module")
def runtime(tiny) -> PortfolioRuntime:
    return PortfolioRuntime.load(tiny.package)


@pytest.fixture(scope="module")
def market(tiny) -> tuple[pd.DataFrame, pd.DataFrame]:
    return BarFileSource(tiny.data / "bars.parquet").read(), read_news(tiny.data / "news.jsonl")


def requests_ending_at(market, runtime: PortfolioRuntime, bars: list[int]) -> list[PredictRequest]:
    times = np.sort(market[0]["timestamp"].unique())
    return [PredictRequest.model_validate(predict_payload(*market, pd.Timestamp(times[i]), runtime.bars_needed, STEP))
            for i in bars]


def test_runtime_reports_the_provider_its_sessions_use(runtime):
    assert runtime.provider == runtime.session.get_providers()[0] == "CPUExecutionProvider"
    assert runtime.encoder is not None and runtime.encoder.provider == "CPUExecutionProvider"


def test_cpu_graphs_optimised_by_another_onnxruntime_are_not_used(tiny, caplog):
    manifest = load_manifest(tiny.package)
    manifest.data["onnx"]["onnxruntime"] = "1.0.0"
    with caplog.at_level(logging.INFO, logger="serving.runtime"):
        graph = open_session(manifest, "fusion", choose_device("cpu"))
    assert graph.variant == "fp32" and "fusion graph: fp32 variant on CPUExecutionProvider" in caplog.text


def test_an_altered_package_is_refused_naming_the_file(tiny, tmp_path):
    package = Path(shutil.copytree(tiny.package, tmp_path / "pkg"))
    with (package / "fusion.cpu.onnx").open("ab") as graph:
        graph.write(b"\0")
    with pytest.raises(PackageError, match=r"fusion\.cpu\.onnx was modified"):
        PortfolioRuntime.load(package)


def test_a_package_from_before_per_asset_news_is_refused_naming_its_input_layout(tiny, tmp_path):
    """A package whose fusion graph reads bar-pooled news (news_emb (B, L, D), news_mask) is refused before any
    graph opens, with both layouts named."""
    import json

    from neuralfusion.manifest import write_manifest

    package = Path(shutil.copytree(tiny.package, tmp_path / "pkg"))
    data = json.loads((package / "manifest.json").read_text())
    lookback, n_assets, dim = data["window"]["lookback"], len(data["universe"]["symbols"]), data["encoder"]["dim"]
    data["graphs"]["fusion"]["inputs"] = [
        {"name": "news_emb", "dtype": "float32", "shape": ["batch", lookback, dim]},
        {"name": "news_mask", "dtype": "float32", "shape": ["batch", lookback]},
        {"name": "coverage", "dtype": "float32", "shape": ["batch", lookback, n_assets]},
        {"name": "market", "dtype": "float32", "shape": ["batch", lookback, n_assets, 7]}]
    write_manifest(package, data)
    with pytest.raises(PackageError, match=r"before per-asset news.*news_emb \(B, L, D\).*news_emb \(B, L, N, D\)"):
        PortfolioRuntime.load(package)


def test_served_window_equals_the_training_window(runtime, market, tiny):
    """The same bar through the training path (data folder + the run's PyTorch embeddings) and the serving
    path (a request of bars_needed bars, ONNX encoder) gives the same logits, and the served encoder the
    run's embeddings (measured: 6e-8 and 2.4e-7)."""
    data = load_data_dir(tiny.data, universe=runtime.universe)
    ids, vectors, _ = read_embeddings(tiny.embeddings)
    by_id = dict(zip(ids, vectors, strict=True))
    item_vectors = np.stack([by_id[i] for i in data.news["id"]])
    grid = grid_inputs(data, item_vectors, runtime.normaliser)
    # the latest window (40 bars before the end or earlier) that reads news naming assets and news naming none
    for anchor in range(data.n_bars - 40, runtime.bars_needed, -1):
        window = grid.windows(np.array([anchor]), runtime.lookback)
        if window["coverage"].any() and window["market_news_mask"].any():
            break
    else:
        pytest.fail("no window reads both news channels")
    expected = runtime.session.run(["logits"], {name: window[name] for name in INPUT_NAMES})[0][0]
    payload = predict_payload(*market, data.panel.times[anchor], runtime.bars_needed, STEP)
    request = PredictRequest.model_validate(payload)
    [served] = runtime.predict_requests([request])
    assert served.as_of == data.panel.times[anchor]
    got = np.array([served.logits[s] for s in runtime.universe.symbols])
    np.testing.assert_allclose(got, expected, rtol=0, atol=FP32_ATOL)
    texts = [article_text(t, b) for t, b in zip(data.news["title"], data.news["body"], strict=True)]
    np.testing.assert_allclose(runtime.encoder.encode(texts).vectors, item_vectors, rtol=0, atol=FP32_ATOL)


def test_a_prediction_does_not_depend_on_its_batch_mates(runtime, market):
    requests = requests_ending_at(market, runtime, [150, 400, 401, 700, 900, 1100])
    together = runtime.predict_requests(requests)
    alone = [runtime.predict_requests([r])[0] for r in requests]
    for a, b in zip(together, alone, strict=True):
        assert a.as_of == b.as_of
        for field in ("logits", "weights"):
            diff = max(abs(getattr(a, field)[s] - getattr(b, field)[s]) for s in a.symbols)
            assert diff <= FP32_ATOL, f"{field} of {a.as_of} moved by {diff:.2e} in a batch"
    assert runtime.stats.snapshot()["max_rows"] >= len(requests)


def test_long_texts_are_truncated_and_counted(runtime):
    encoder = runtime.encoder
    before = encoder.truncated_texts
    encoded = encoder.encode(["Aurexa Mining " * 2000, "short"])
    assert encoded.n_truncated == 1 and encoded.n_tokens[0] > encoder.max_length >= encoded.n_tokens[1]
    assert encoder.truncated_texts == before + 1 and np.isfinite(encoded.vectors).all()
    ids, _ = encoder.tokenize(["Aurexa Mining " * 2000])
    assert len(ids[0]) == encoder.max_length


def test_settings_name_the_variable_at_fault():
    with pytest.raises(ValueError, match="NFC_GRPC_PORT='abc' must be a positive integer"):
        ServeSettings.from_env({"NFC_GRPC_PORT": "abc"})
    with pytest.raises(ValueError, match="NFC_DEVICE='tpu'"):
        ServeSettings.from_env({"NFC_DEVICE": "tpu"})
    with pytest.raises(ValueError, match="NFC_PREPARE_THREADS='0' must be a positive integer"):
        ServeSettings.from_env({"NFC_PREPARE_THREADS": "0"})
    settings = ServeSettings.from_env({"NFC_API_KEY": "s3cret", "NFC_PREDICT_MAX_BATCH": "8"})
    assert settings.predict_max_batch == 8 and "s3cret" not in repr(settings) and settings.prepare_threads == 2
    assert ServeSettings.from_env({"NFC_PREPARE_THREADS": "3"}).prepare_threads == 3


def test_api_key_is_checked_in_constant_time_and_never_echoed():
    check_api_key(None, {})  # no key configured: open
    check_api_key("s3cret", {"Authorization": "Bearer s3cret"})
    check_api_key("s3cret", {"x-api-key": "s3cret"})
    for headers in ({}, {"authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}):
        with pytest.raises(ServingError) as caught:
            check_api_key("s3cret", headers)
        assert caught.value.status == 401 and "s3cret" not in caught.value.message



def test_resampling_bars_already_on_the_grid_equals_the_aggregating_path():
    """The scatter fast path of resample_bars (one input bar per grid bar and symbol, as in a served request) gives
    the groupby path's numbers to the bit: gaps, a symbol that starts late, an off-grid close time, -0.0 volume."""
    rng = np.random.default_rng(7)
    start = pd.Timestamp("2026-01-05T00:00:00Z")
    rows = []
    for symbol, first in (("AAA", 0), ("BBB", 3)):
        for i in range(first, 40):
            if rng.random() < 0.15:
                continue  # an empty grid bar: forward-filled, stale
            close = 100 + rng.standard_normal()
            stamp = start + i * STEP - (pd.Timedelta(seconds=20) if i == 17 else pd.Timedelta(0))
            rows.append({"timestamp": stamp, "symbol": symbol, "open": close - 0.1, "high": close + 0.3,
                         "low": close - 0.4, "close": close, "volume": -0.0 if i == 9 else float(rng.integers(100))})
    frame = validate_bars(pd.DataFrame(rows), source="test")

    def rows_and_columns(bars: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, int]:
        slots = _grid_slots(bars, BarSpec(interval="3min"), "close", "test")
        column = pd.Index(["AAA", "BBB"]).get_indexer(slots.frame["symbol"])
        first = max(slots.index[column == j].min() for j in (0, 1))
        return slots.frame, slots.index - first, column, int(slots.index.max() - first + 1)

    bars, row, column, n_times = rows_and_columns(frame)
    fast = _one_bar_per_slot(bars, row, column, n_times, 2)
    slow = _aggregated(bars, row, column, n_times, 2)
    assert fast is not None
    for name, values in slow.items():
        assert fast[name].tobytes() == values.tobytes(), name
    assert np.isnan(slow["close"]).any() and np.signbit(slow["volume"]).sum() == 1
    doubled = validate_bars(pd.concat([pd.DataFrame(rows[:1]).assign(timestamp=start - pd.Timedelta(seconds=30)),
                                       pd.DataFrame(rows)]), source="test")
    assert _one_bar_per_slot(*rows_and_columns(doubled), 2) is None
