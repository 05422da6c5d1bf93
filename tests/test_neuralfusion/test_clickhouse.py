"""ClickHouse bar source against a real clickhouse-server (Debian's 18.16) on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from builders import START, make_bars
from live_servers import CLICKHOUSE_PASSWORD

from neuralfusion.data.bars import BarFileSource, resample_bars
from neuralfusion.data.clickhouse import BarColumnMap, ClickHouseBarSource, quote_identifier
from neuralfusion.errors import DataError
from neuralfusion.redact import encode_userinfo
from neuralfusion.specs import BarSpec, Universe

MINUTE = pd.Timedelta("1min")
SYMBOLS = ("AAA", "BBB", "CCC")
# a table with its own column names, as a deployment's mapping would describe it
COLUMNS = BarColumnMap(timestamp="ts_open", symbol="ticker", volume="base_volume")


def one_minute_candles(n_minutes: int = 120) -> pd.DataFrame:
    """1-minute bars labelled by close time, START + 1..n minutes."""
    bars = make_bars(SYMBOLS, n_bars=n_minutes, seed=3)
    return bars.assign(timestamp=START + MINUTE * ((bars["timestamp"] - START) / pd.Timedelta("3min")))


@pytest.fixture(scope="module")
def candles(clickhouse_server) -> Iterator[tuple[ClickHouseBarSource, pd.DataFrame]]:
    """The candles in a `market.candles_test` table keyed by candle open time, and a source reading it."""
    from clickhouse_driver import Client

    client = Client.from_url(encode_userinfo(clickhouse_server.url))
    client.execute("CREATE DATABASE IF NOT EXISTS market")
    client.execute("DROP TABLE IF EXISTS market.candles_test")
    client.execute("CREATE TABLE market.candles_test (ticker String, ts_open DateTime('UTC'), open Float64, "
                   "high Float64, low Float64, close Float64, base_volume Float64) "
                   "ENGINE = MergeTree() ORDER BY (ticker, ts_open)")
    frame = one_minute_candles()
    rows = [(r.symbol, (r.timestamp - MINUTE).to_pydatetime(), r.open, r.high, r.low, r.close, r.volume)
            for r in frame.itertuples()]
    client.execute("INSERT INTO market.candles_test (ticker, ts_open, open, high, low, close, base_volume) VALUES",
                   rows)
    with ClickHouseBarSource(client, "market.candles_test", COLUMNS, label="open", candle="1min") as source:
        yield source, frame


def test_load_is_time_ranged_and_relabels_candles_by_close_time(candles):
    source, frame = candles
    start, end = START + 10 * MINUTE, START + 40 * MINUTE
    loaded = source.load(["AAA", "CCC"], start, end)
    expected = frame[frame["symbol"].isin(["AAA", "CCC"]) & (frame["timestamp"] > start)
                     & (frame["timestamp"] <= end)].reset_index(drop=True)
    pd.testing.assert_frame_equal(loaded, expected, check_dtype=False)
    assert loaded["timestamp"].min() == start + MINUTE and loaded["timestamp"].max() == end
    assert str(loaded["timestamp"].dt.tz) == "UTC" and len(loaded) == 2 * 30


def test_resampled_like_a_file_source(candles, tmp_path):
    source, frame = candles
    frame.to_parquet(tmp_path / "bars.parquet")
    spec, universe = BarSpec(interval="3min"), Universe(symbols=SYMBOLS)
    end = START + 120 * MINUTE
    from_clickhouse = resample_bars(source.load(list(SYMBOLS), START, end), universe, spec)
    from_file = resample_bars(BarFileSource(tmp_path / "bars.parquet").read(), universe, spec)
    assert from_clickhouse.n_bars == 40 and list(from_clickhouse.times) == list(from_file.times)
    for name in ("open", "high", "low", "close", "volume", "stale"):
        np.testing.assert_array_equal(getattr(from_clickhouse, name), getattr(from_file, name))


def test_symbols_are_query_parameters_not_sql(candles):
    source, _ = candles
    hostile = "AAA') OR 1=1 --"
    with pytest.raises(DataError, match="no bars for") as err:
        source.load([hostile], START, START + 60 * MINUTE)
    assert "market.candles_test" in str(err.value)
    with pytest.raises(DataError, match=r"symbols \['ZZZ'\] have no bars"):
        source.load(["AAA", "ZZZ"], START, START + 60 * MINUTE)


@pytest.mark.parametrize("name", ["candles; DROP TABLE x", "a.b.c", "`x`", "", "1abc"])
def test_configured_names_must_be_identifiers(name):
    with pytest.raises(ValueError, match="not a valid ClickHouse identifier"):
        quote_identifier(name)
    with pytest.raises(ValueError, match="not a valid ClickHouse identifier"):
        ClickHouseBarSource(object(), "market.candles", BarColumnMap(close=name or "-"))


def test_column_map_parses_overrides_and_refuses_unknown_fields():
    assert BarColumnMap.parse("timestamp=ts_open, symbol=ticker") == BarColumnMap(timestamp="ts_open",
                                                                                  symbol="ticker")
    with pytest.raises(ValueError, match="field=name"):
        BarColumnMap.parse("price=px")


def test_a_failed_query_is_a_data_error_without_the_password(clickhouse_server):
    with (ClickHouseBarSource.from_url(clickhouse_server.url, "market.no_such_table") as source,
          pytest.raises(DataError, match="query failed") as err):
        source.load(["AAA"], START, START + MINUTE)
    assert "market.no_such_table" in str(err.value) and CLICKHOUSE_PASSWORD not in str(err.value)


def test_times_without_a_zone_are_refused(candles):
    source, _ = candles
    with pytest.raises(ValueError, match="has no time zone"):
        source.load(["AAA"], pd.Timestamp("2026-01-05"), START + MINUTE)
