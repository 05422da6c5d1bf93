"""Bar contract: validation errors name the problem, resampling follows the close-time rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import STEP, make_bars

from neuralfusion.data.bars import BarFileSource, resample_bars, validate_bars
from neuralfusion.errors import DataError
from neuralfusion.specs import BarSpec, Universe

UNIVERSE = Universe(symbols=("AAA", "BBB", "CCC"))


def test_valid_bars_round_trip_through_parquet_and_csv(tmp_path):
    bars = make_bars(n_bars=20)
    bars.to_parquet(tmp_path / "bars.parquet")
    csv = bars.assign(timestamp=bars["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    csv.to_csv(tmp_path / "bars.csv", index=False)
    from_parquet = BarFileSource(tmp_path / "bars.parquet").read()
    from_csv = BarFileSource(tmp_path / "bars.csv").read()
    pd.testing.assert_frame_equal(from_parquet, from_csv, check_dtype=False)
    assert str(from_csv["timestamp"].dt.tz) == "UTC"


@pytest.mark.parametrize(("column", "value", "message"), [
    ("close", np.nan, "missing or infinite price"),
    ("open", 0.0, "price <= 0"),
    ("low", -1.0, "price <= 0"),
    ("volume", -5.0, "volume is missing"),
    ("high", 1e-3, "high/low do not bound"),
])
def test_bad_values_are_refused_naming_row_and_symbol(column, value, message):
    bars = make_bars(n_bars=10)
    bars.loc[7, column] = value
    with pytest.raises(DataError, match=message) as err:
        validate_bars(bars, source="bars.csv")
    assert "bars.csv: row 7" in str(err.value)
    assert repr(bars.loc[7, "symbol"]) in str(err.value)


def test_missing_columns_are_listed():
    with pytest.raises(DataError, match=r"missing columns \['volume'\]"):
        validate_bars(make_bars(n_bars=5).drop(columns="volume"), source="x")


def test_duplicate_timestamp_symbol_is_refused():
    bars = make_bars(n_bars=5)
    doubled = pd.concat([bars, bars.iloc[[3]]])
    with pytest.raises(DataError, match=r"duplicate \(timestamp, symbol\)"):
        validate_bars(doubled, source="x")


def test_naive_timestamps_are_refused_and_offsets_converted():
    bars = make_bars(n_bars=5)
    with pytest.raises(DataError, match="naive timestamps"):
        validate_bars(bars.assign(timestamp=bars["timestamp"].dt.tz_localize(None)), source="x")
    naive_text = bars.assign(timestamp=bars["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    with pytest.raises(DataError, match="has no time zone"):
        validate_bars(naive_text, source="x")
    new_york = validate_bars(bars.assign(timestamp=bars["timestamp"].dt.tz_convert("America/New_York")), "x")
    assert (new_york["timestamp"] == bars["timestamp"]).all()


def test_resample_aggregates_one_minute_bars_by_close_time():
    minute = make_bars(n_bars=9)
    minute["timestamp"] = pd.Timestamp("2026-01-05", tz="UTC") + pd.Timedelta("1min") * (
        minute.groupby("symbol").cumcount() + 1)
    panel = resample_bars(minute, UNIVERSE, BarSpec(interval="3min"))
    assert list(panel.times) == [pd.Timestamp("2026-01-05 00:03", tz="UTC") + STEP * i for i in range(3)]
    first = minute[minute["symbol"] == "AAA"].iloc[:3]
    assert panel.open[0, 0] == first["open"].iloc[0]
    assert panel.high[0, 0] == first["high"].max()
    assert panel.low[0, 0] == first["low"].min()
    assert panel.close[0, 0] == first["close"].iloc[-1]
    assert panel.volume[0, 0] == pytest.approx(first["volume"].sum())


def test_open_labelled_candles_shift_to_close_time():
    bars = make_bars(n_bars=6)
    as_open = bars.assign(timestamp=bars["timestamp"] - STEP)
    by_close = resample_bars(bars, UNIVERSE, BarSpec())
    by_open = resample_bars(as_open, UNIVERSE, BarSpec(), label="open")
    assert (by_close.times == by_open.times).all()
    np.testing.assert_array_equal(by_close.close, by_open.close)


def test_gaps_forward_fill_close_with_zero_volume_and_stale_flag():
    bars = make_bars(n_bars=50)
    gap = bars[(bars["symbol"] == "BBB") & bars["timestamp"].isin(bars["timestamp"].unique()[10:12])]
    panel = resample_bars(bars.drop(index=gap.index), UNIVERSE, BarSpec(max_missing_fraction=0.1))
    j = UNIVERSE.index("BBB")
    assert panel.stale[10:12, j].all() and not panel.stale[:10, j].any() and not panel.stale[12:, j].any()
    assert (panel.close[10:12, j] == panel.close[9, j]).all()
    assert (panel.high[10:12, j] == panel.close[9, j]).all()
    assert (panel.volume[10:12, j] == 0).all()
    assert np.isfinite(panel.close).all() and (panel.close > 0).all()


def test_asset_over_missing_limit_is_refused_by_name():
    bars = make_bars(n_bars=100)
    sparse = bars[~((bars["symbol"] == "CCC") & (bars.groupby("symbol").cumcount() % 4 == 1))]
    with pytest.raises(DataError, match=r"CCC \(25.0% of 100 bars missing\)"):
        resample_bars(sparse, UNIVERSE, BarSpec(max_missing_fraction=0.05))


def test_universe_mismatch_is_refused():
    bars = make_bars(n_bars=10)
    with pytest.raises(DataError, match=r"symbols \['CCC'\] are not in the universe"):
        resample_bars(bars, Universe(symbols=("AAA", "BBB")), BarSpec())
    with pytest.raises(DataError, match=r"universe symbols \['DDD'\] have no bars"):
        resample_bars(bars, Universe(symbols=("AAA", "BBB", "CCC", "DDD")), BarSpec())


def test_file_source_filters_and_refuses_unknown_symbols(tmp_path):
    make_bars(n_bars=10).to_parquet(tmp_path / "bars.parquet")
    source = BarFileSource(tmp_path / "bars.parquet")
    start = pd.Timestamp("2026-01-05 00:09", tz="UTC")
    loaded = source.load(["AAA"], start=start)
    assert set(loaded["symbol"]) == {"AAA"} and loaded["timestamp"].min() == start
    with pytest.raises(DataError, match=r"symbols \['ZZZ'\] have no bars"):
        source.load(["ZZZ"])
    with pytest.raises(DataError, match="file not found"):
        BarFileSource(tmp_path / "nope.parquet").read()
