"""A vendor's files as they come -> `nfc data import` -> a clean folder; and the refusals that must stay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import nfc, write_vendor_files

from neuralfusion.data.bars import validate_bars
from neuralfusion.dataset import load_data_dir

IMPORT = ["--calendar", "XNYS", "--interval", "1D", "--timezone", "America/New_York",
          "--bar-column", "Date=timestamp", "--bar-column", "Ticker=symbol",
          "--news-column", "Published=published_at", "--news-column", "Headline=title",
          "--news-column", "Summary=body"]


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    return write_vendor_files(tmp_path_factory.mktemp("vendor"))


def test_import_writes_a_clean_xnys_folder_and_says_what_it_repaired(vendor, tmp_path, caplog):
    out = tmp_path / "data"
    code, output = nfc("data", "import", "--bars", str(vendor.prices), "--news", str(vendor.news), "--out", str(out),
                       *IMPORT)
    assert code == 0, output
    assert f"repaired: {vendor.ulp_misses} bars: high/low missed open/close" in output
    assert "naive timestamps read as America/New_York" in output
    assert "items naming ON only as the common word 'ON'" in output
    data = load_data_dir(out)
    assert data.n_bars == len(vendor.sessions) == 502  # every XNYS session of 2024-2025, nothing else
    assert not data.panel.stale.any()
    pd.testing.assert_index_equal(data.panel.times, vendor.sessions, check_names=False)
    assert data.bars_per_year == 251.0
    counts = {s: sum(s in named for named in data.aligned.symbols) for s in data.universe.symbols}
    assert counts == vendor.cashtag_items  # the word "on" never counts as ON Semiconductor
    assert vendor.word_on_items > 100
    code, summary = nfc("data", "summary", str(out))
    assert code == 0 and "0.00% stale" in summary


def test_folder_reads_the_vendor_files_in_place_with_the_same_settings(vendor, tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "universe.json").write_text(
        '{"symbols": ["AAPL", "JPM", "KO", "MSFT", "NVDA", "ON", "PFE", "XOM"], "interval": "1D", '
        '"calendar": "XNYS", "timezone": "America/New_York", '
        f'"files": {{"bars": "{vendor.prices}", "news": "{vendor.news}"}}, '
        '"columns": {"bars": {"Date": "timestamp", "Ticker": "symbol"}, '
        '"news": {"Published": "published_at", "Headline": "title", "Summary": "body"}}}')
    data = load_data_dir(folder)
    assert data.n_bars == 502 and data.widened_bars == vendor.ulp_misses
    assert data.aligned.bare_word_refused == {"ON": vendor.word_on_items}


def test_naive_times_without_a_declared_zone_are_refused_and_nothing_is_written(vendor, tmp_path):
    out = tmp_path / "data"
    no_zone = [a for a in IMPORT if a not in ("--timezone", "America/New_York")]
    code, output = nfc("data", "import", "--bars", str(vendor.prices), "--news", str(vendor.news), "--out", str(out),
                       *no_zone)
    assert code != 0
    assert "prices.csv: row 0: column 'timestamp'" in output and "declare the zone" in output
    assert not out.exists() and not out.with_name("data.partial").exists()


def test_a_high_beyond_the_rounding_tolerance_is_a_data_error_naming_row_and_symbol(vendor, tmp_path):
    prices = pd.read_csv(vendor.prices)
    prices.loc[7, "High"] = max(prices.loc[7, "Open"], prices.loc[7, "Close"]) * (1 - 1e-6)
    bad = tmp_path / "prices.csv"
    prices.to_csv(bad, index=False, float_format="%.17g")
    out = tmp_path / "data"
    code, output = nfc("data", "import", "--bars", str(bad), "--news", str(vendor.news), "--out", str(out), *IMPORT)
    assert code != 0
    assert "row 7: high/low do not bound open and close" in output and repr(prices.loc[7, "Ticker"]) in output
    assert not out.exists()


def test_ohlc_tolerance_is_relative_and_counted():
    frame = pd.DataFrame({"timestamp": ["2024-01-02T21:00:00Z"] * 2, "symbol": ["A", "B"], "open": [100.0, 50.0],
                          "high": [np.nextafter(101.0, 0), 51.0], "low": [99.0, 49.0], "close": [101.0, 50.5],
                          "volume": [1.0, 1.0]})
    clean = validate_bars(frame, "f.csv")
    assert clean.attrs["widened_bars"] == 1 and clean.loc[0, "high"] == 101.0
    frame.loc[1, "low"] = 50.0 * (1 + 2e-9)
    with pytest.raises(ValueError, match=r"f\.csv: row 1: high/low do not bound .* symbol 'B'"):
        validate_bars(frame, "f.csv")


def test_vendor_column_names_match_ignoring_case_and_clashes_are_refused(tmp_path):
    from neuralfusion.data.columns import standard_columns
    from neuralfusion.errors import DataError

    frame = pd.DataFrame({"Timestamp": [1], "SYMBOL": ["A"], " Close ": [1.0], "Adj Close": [1.0]})
    assert list(standard_columns(frame, ("timestamp", "symbol", "close"), {}, "f")) == [
        "timestamp", "symbol", "close", "Adj Close"]
    with pytest.raises(DataError, match=r"\['Adj Close', ' Close '\] all read as 'close'"):
        standard_columns(frame, ("timestamp", "symbol", "close"), {"Adj Close": "close"}, "f")
    with pytest.raises(DataError, match="names columns \\['Date'\\] that are not in the file"):
        standard_columns(frame, ("timestamp",), {"Date": "timestamp"}, "f")


def test_a_wall_time_that_occurs_twice_is_refused_with_its_row():
    from neuralfusion.errors import DataError
    from neuralfusion.timeutil import to_utc

    values = pd.Series(["2024-11-03 00:30:00", "2024-11-03 01:30:00"])
    with pytest.raises(DataError, match=r"row 1: .*occurs twice in America/New_York"):
        to_utc(values, column="published_at", source="news.csv", timezone="America/New_York")
    assert to_utc(values[:1], column="t", source="s", timezone="America/New_York").iat[0] == pd.Timestamp(
        "2024-11-03 04:30", tz="UTC")


def test_csv_news_reads_ticker_lists_and_blank_cells(tmp_path):
    from neuralfusion.data.news import read_news

    path = tmp_path / "news.csv"
    pd.DataFrame({"Id": ["a", "b", "c"], "Published": ["2024-01-02T15:00:00Z"] * 3, "Headline": ["x", "y", "z"],
                  "Tickers": ["ON;AAPL", "", '["MSFT"]']}).to_csv(path, index=False)
    news = read_news(path, columns={"Published": "published_at", "Headline": "title", "Tickers": "symbols"})
    assert list(news["symbols"]) == [["ON", "AAPL"], None, ["MSFT"]]
