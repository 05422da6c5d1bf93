"""`nfc predict` for a model trained on exchange sessions (XNYS daily and 30-minute bars): the back-fill steps the
sessions' bars and equals `nfc backtest --package` bit for bit; a live run on a weekend or holiday is not stale
because the market is shut; an asset's age counts the session bars it missed, not the nights between them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pymongo
import pytest
from builders import package_backtest, tiny_package
from click.testing import CliRunner

from neuralfusion.errors import DataError
from neuralfusion.specs import BarSpec
from neuralfusion.synth import SynthConfig
from nfc.cli import main
from serving.live_sources import check_staleness, live_as_of_bar
from serving.store import DEFAULT_COLLECTION

NY = "America/New_York"
# the packages share the tiny package's version: their predictions go to a database of their own
PREDICTIONS_DB = "calendar_predictions"


def ny(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=NY).tz_convert("UTC")


# the daily package is built from 1,100 days (the synthetic market's own splits need them): ~50 s, so slow
@pytest.fixture(scope="module", params=[pytest.param(("1D", 1100), marks=pytest.mark.slow), ("30min", 150)],
                ids=["XNYS-1D", "XNYS-30min"])
def xnys(request, tmp_path_factory):
    """A tiny package trained on the synthetic equity market's XNYS sessions, with its data folder."""
    interval, days = request.param
    config = SynthConfig(n_assets=6, days=days, calendar="XNYS", interval=interval, seed=5, start="2025-01-02T00:00Z",
                         asset_news_per_day=0.5, distractor_news_per_day=1.0,
                         leak_news_per_day=0.3)
    return interval, tiny_package(tmp_path_factory.getbasetemp() / f"xnys-{interval}", config)


def test_a_backfill_on_the_sessions_equals_the_package_backtest_bit_for_bit(xnys, mongo_uri, tmp_path):
    interval, artifacts = xnys
    backtest, logits, weights = package_backtest(artifacts.package, artifacts.data)
    times = backtest.times[backtest.anchors]
    [every] = np.unique(np.diff(backtest.anchors))
    result = CliRunner().invoke(main, [
        "--log-level", "WARNING", "predict", "--json", "--data", str(artifacts.data),
        "--model-path", str(artifacts.package),
        "--start", times[0].isoformat(), "--end", times[-1].isoformat(), "--every", str(every),
        "--request-id", f"xnys-{interval}", "--state-dir", str(tmp_path)],
        env={"NFC_MONGO_URI": mongo_uri, "NFC_MONGO_DB": PREDICTIONS_DB})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stored"] == len(times) > 3
    served = summary["predictions"]
    assert [pd.Timestamp(p["as_of"]) for p in served] == list(times)  # session bars only, never a shut market's
    symbols = backtest.symbols
    served_weights = np.array([[p["weights"][s] for s in symbols] for p in served])
    np.testing.assert_array_equal(weights, backtest.model.anchor_weights)
    with pymongo.MongoClient(mongo_uri) as client:
        documents = list(client[PREDICTIONS_DB][DEFAULT_COLLECTION].find(
            {"request_id": {"$regex": f"^xnys-{interval}-"}}).sort("as_of", 1))
    served_logits = np.array([[d["logits"][s] for s in symbols] for d in documents])
    # the same windows, normaliser and graphs; the one rounding left is the encoder's: it runs length-sorted
    # batches of the texts it is given (the back-fill: the windows' news; the backtest: the folder's), and a
    # text's vector moves by float rounding with its batch-mates. Measured: 30-minute bit-identical; daily (110
    # texts a window) vectors within 1.2e-7, weights within 3.0e-8, 11 of 96 weights one float32 step apart
    np.testing.assert_allclose(served_weights, backtest.model.anchor_weights, rtol=0, atol=1e-6)
    np.testing.assert_allclose(served_logits, logits, rtol=0, atol=1e-5)


def test_an_as_of_time_off_the_sessions_is_refused_naming_the_last_close(xnys, mongo_uri, tmp_path):
    interval, artifacts = xnys
    saturday = pd.read_parquet(artifacts.data / "bars.parquet")["timestamp"].max().normalize() + pd.Timedelta("1D")
    while saturday.day_of_week != 5:
        saturday -= pd.Timedelta("1D")
    as_of = saturday + pd.Timedelta("15h")
    result = CliRunner().invoke(main, [
        "--log-level", "WARNING", "predict", "--json", "--data", str(artifacts.data),
        "--model-path", str(artifacts.package),
        "--as-of", as_of.isoformat(), "--state-dir", str(tmp_path)], env={"NFC_MONGO_URI": mongo_uri})
    last_close = BarSpec(interval=interval, calendar="XNYS").clock.last_close(as_of)
    assert last_close.tz_convert(NY).day_of_week < 5 and as_of - last_close >= pd.Timedelta("18h")
    assert result.exit_code == 1 and f"not on the {interval} XNYS bar grid" in result.output
    assert f"closed at {last_close.isoformat()}" in result.output


@pytest.mark.parametrize("interval", ["1D", "30min"])
def test_a_shut_market_is_not_a_stale_feed(interval):
    clock = BarSpec(interval=interval, calendar="XNYS").clock
    limit = pd.Timedelta("15min")
    thursday = ny("2025-07-03 13:00")  # the early close before Independence Day (Friday 4 July shut)
    for now in (ny("2025-07-04 12:00"), ny("2025-07-05 23:00"), ny("2025-07-07 09:40")):
        assert live_as_of_bar(clock, thursday, now, limit) == thursday  # holiday, weekend, Monday before the open
    with pytest.raises(DataError, match="the bar feed is behind"):  # Thursday's bars only on Saturday: stale
        live_as_of_bar(clock, ny("2025-07-02 16:00"), ny("2025-07-05 12:00"), limit)
    with pytest.raises(DataError, match="no bar; the bar closing at"):
        live_as_of_bar(clock, pd.NaT, ny("2025-07-05 12:00"), limit)
    # a feed that delivers within the limit is not behind: 5 minutes after the close the previous bar still serves
    previous = clock.earlier(ny("2025-07-07 16:00"), 1)
    assert live_as_of_bar(clock, previous, ny("2025-07-07 16:05"), limit) == previous
    with pytest.raises(DataError, match="over the staleness limit of 0 days 00:15:00"):
        live_as_of_bar(clock, previous, ny("2025-07-07 16:20"), limit)
    # a bar still filling is not used: a 1-minute candle at 15:47 completes the 15:30 bar (daily: Thursday's)
    assert live_as_of_bar(clock, ny("2025-07-07 15:47"), ny("2025-07-07 15:50"), pd.Timedelta("1D")) == (
        ny("2025-07-07 15:30") if interval == "30min" else thursday)


def test_an_assets_age_counts_the_session_bars_it_missed_not_the_weekend():
    clock = BarSpec(interval="1D", calendar="XNYS").clock
    sessions = clock.closes(ny("2025-06-30 00:00"), ny("2025-07-08 00:00"))  # Mon 30 Jun .. Mon 7 Jul
    monday = ny("2025-07-07 16:00")
    bars = pd.DataFrame({"timestamp": [*sessions, *sessions[sessions < ny("2025-07-03 00:00")]],
                         "symbol": ["AAA"] * len(sessions) + ["BBB"] * int((sessions < ny("2025-07-03 00:00")).sum())})
    check_staleness(bars[bars["timestamp"] < monday], ("AAA",), [monday], pd.Timedelta("1D"), clock, "bars")
    with pytest.raises(DataError, match=r"BBB \(last bar 2 days 00:00:00 before\)") as err:
        check_staleness(bars, ("AAA", "BBB"), [monday], pd.Timedelta("1D"), clock, "bars")
    assert "AAA" not in str(err.value)  # AAA has every session; the holiday weekend does not age it
