"""Builders shared by the tests: small hand-made markets (fast, explicit, independent of the synthetic
generator) and the tiny real model package (synthetic data, tiny BigBird, 1-epoch run, ONNX export)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from nfc.cli import main

START = pd.Timestamp("2026-01-05 00:00", tz="UTC")
NO_SHIFT = pd.Timedelta(0)
STEP = pd.Timedelta("3min")


def make_bars(symbols: tuple[str, ...] = ("AAA", "BBB", "CCC"), n_bars: int = 400, seed: int = 0) -> pd.DataFrame:
    """A random walk per symbol in the long bar format, one row per 3-minute bar close."""
    return walk_bars(START + STEP * np.arange(1, n_bars + 1), symbols, seed)


def session_times(calendar: str = "XNYS", interval: str = "1D", start: str = "2024-01-01",
                  end: str = "2025-12-31") -> pd.DatetimeIndex:
    """Close times of every bar of an exchange calendar whose session date is in start..end."""
    from neuralfusion.calendar import calendar_bars

    first, last = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    closes = calendar_bars(calendar, pd.Timedelta(interval), first, last).closes
    sessions = closes.tz_convert("America/New_York" if calendar == "XNYS" else "UTC").tz_localize(None).normalize()
    return closes[(sessions >= first.tz_localize(None)) & (sessions <= last.tz_localize(None))]


def walk_bars(times: pd.DatetimeIndex, symbols: tuple[str, ...] = ("AAA", "BBB", "CCC"),
              seed: int = 0) -> pd.DataFrame:
    """A random walk per symbol in the long bar format, one row per bar close in `times`."""
    rng = np.random.default_rng(seed)
    rows = []
    n_bars = len(times)
    for j, symbol in enumerate(symbols):
        close = 100.0 * (j + 1) * np.exp(np.cumsum(rng.normal(0, 0.002, n_bars)))
        open_ = np.concatenate([[close[0]], close[:-1]])
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.001, n_bars))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.001, n_bars))
        volume = rng.uniform(100, 1000, n_bars)
        rows.append(pd.DataFrame({"timestamp": times, "symbol": symbol, "open": open_, "high": high,
                                  "low": low, "close": close, "volume": volume}))
    return pd.concat(rows).sort_values(["timestamp", "symbol"]).reset_index(drop=True)


def make_news(symbols: tuple[str, ...] = ("AAA", "BBB", "CCC"), n_items: int = 60, n_bars: int = 400,
              seed: int = 0, start: pd.Timestamp = START, span: pd.Timedelta | None = None) -> pd.DataFrame:
    """News at random seconds (round the clock, weekends too) over `span` from `start` (default: the 3-minute
    bars of make_bars), each naming one symbol."""
    rng = np.random.default_rng(seed)
    span = STEP * n_bars if span is None else span
    seconds = np.sort(rng.uniform(0, span.total_seconds(), n_items)).round()
    named = rng.choice(symbols, n_items)
    return pd.DataFrame({
        "id": [f"n{i:04d}" for i in range(n_items)],
        "published_at": start + pd.to_timedelta(seconds, unit="s"),
        "title": [f"{s} headline {i}" for i, s in enumerate(named)],
        "body": [f"Body text about {s}." for s in named],
        "symbols": [[s] for s in named],
    })


VENDOR_TICKERS = ("AAPL", "MSFT", "NVDA", "ON", "JPM", "XOM", "KO", "PFE")
VENDOR_NAMES = {"AAPL": "Apple", "MSFT": "Microsoft", "NVDA": "Nvidia", "ON": "onsemi", "JPM": "JPMorgan",
                "XOM": "Exxon", "KO": "Coca-Cola", "PFE": "Pfizer"}


@dataclass(frozen=True)
class VendorFiles:
    prices: Path
    news: Path
    sessions: pd.DatetimeIndex  # XNYS session closes (UTC) the prices cover
    ulp_misses: int  # bars whose high (or low) misses the body by one ULP
    cashtag_items: dict[str, int]  # per ticker: items whose text names it with a cashtag
    word_on_items: int  # items using the word "on" with no $ON


def write_vendor_files(folder: Path, start: str = "2024-01-01", end: str = "2025-12-31", seed: int = 0,
                       news_per_day: float = 3.0) -> VendorFiles:
    """What a US-equity vendor ships: prices.csv with capitalised names (Date, Ticker, Open, High, Low, Close,
    Adj Close, Volume), naive New York session dates, a few highs/lows one ULP inside the body; news.csv (ID,
    Published as naive New York times round the clock, Headline, Summary) naming tickers by cashtag only, plus
    headlines that use the word "on"."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sessions = session_times("XNYS", "1D", start, end)
    bars = walk_bars(sessions, VENDOR_TICKERS, seed)
    misses = rng.choice(len(bars), 6, replace=False)
    high, low = bars["high"].to_numpy().copy(), bars["low"].to_numpy().copy()
    body_high = np.maximum(bars["open"], bars["close"]).to_numpy()
    body_low = np.minimum(bars["open"], bars["close"]).to_numpy()
    high[misses[:3]] = np.nextafter(body_high[misses[:3]], 0)
    low[misses[3:]] = np.nextafter(body_low[misses[3:]], np.inf)
    local_date = bars["timestamp"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d")
    pd.DataFrame({"Date": local_date, "Ticker": bars["symbol"], "Open": bars["open"], "High": high, "Low": low,
                  "Close": bars["close"], "Adj Close": bars["close"], "Volume": bars["volume"].round()}
                 ).to_csv(folder / "prices.csv", index=False, float_format="%.17g")
    span = (sessions[-1] - sessions[0]) + pd.Timedelta("2D")
    n_items = int(news_per_day * span / pd.Timedelta("1D"))
    seconds = np.sort(rng.uniform(0, span.total_seconds(), n_items)).round()
    published = (sessions[0] - pd.Timedelta("1D") + pd.to_timedelta(seconds, unit="s")).tz_convert("America/New_York")
    # a naive time in the hour that occurs twice when DST ends is ambiguous (and refused): a vendor would not
    # know either, so the generated file avoids it
    fall_back = (published.month == 11) & (published.day_of_week == 6) & (published.day <= 7) & (published.hour == 1)
    published, n_items = published[~fall_back], int((~fall_back).sum())
    named = rng.choice(VENDOR_TICKERS, n_items)
    word_on = rng.random(n_items) < 0.25
    headlines, summaries = [], []
    for ticker, on in zip(named, word_on, strict=True):
        if on:
            headlines.append("Markets turn on rate-cut hopes")
            summaries.append("Stocks moved on the Fed minutes; traders focus on jobs data.")
        else:
            headlines.append(f"{VENDOR_NAMES[ticker]} shares move after results")
            summaries.append(f"${ticker} reported quarterly numbers.")
    pd.DataFrame({"ID": [f"v{i:06d}" for i in range(n_items)],
                  "Published": published.tz_localize(None).strftime("%Y-%m-%d %H:%M:%S"),
                  "Headline": headlines, "Summary": summaries}).to_csv(folder / "news.csv", index=False)
    cashtags = {t: int(((named == t) & ~word_on).sum()) for t in VENDOR_TICKERS}
    return VendorFiles(prices=folder / "prices.csv", news=folder / "news.csv", sessions=sessions, ulp_misses=6,
                       cashtag_items=cashtags, word_on_items=int(word_on.sum()))


# the tiny BigBird: full attention up to 1024 tokens, so parity is tested above BigBird's 704-token switch
TINY_ENCODER = {"vocab_size": 400, "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 1024, "block_size": 16, "num_random_blocks": 2}
TINY_RUN = ["--lookback", "16", "--horizon", "8", "--model-set", "d_model=16", "--model-set", "n_heads=2",
            "--set", "epochs=1", "--set", "batch_size=32", "--set", "train_stride=8",
            "--set", "threads=1"]
FP32_ATOL = 1e-5  # the stated fp32 tolerance for logits and pooled vectors (export.parity.TOLERANCES)


@dataclass(frozen=True)
class TinyArtifacts:
    data: Path
    encoder: Path
    embeddings: Path
    run: Path
    package: Path


def nfc(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--log-level", "WARNING", *args])
    return result.exit_code, result.output


def tiny_encoder(data: Path, out: Path, seed: int = 0, cutoff: str | None = None) -> Path:
    """The tiny BigBird, its tokenizer trained on the news of data folder `data` published before `cutoff`
    (default: the folder's training end, as `nfc encoder init` does), with its text record."""
    from neuralfusion.data.news import article_text, read_news
    from neuralfusion.encoder_text import resolve_cutoff, stage_record, texts_before
    from training.encoder_init import EncoderSetupConfig, init_encoder

    news = read_news(data / "news.jsonl")
    cutoff_at = resolve_cutoff(cutoff, data / "news.jsonl")
    news = news[texts_before(news["published_at"], cutoff_at).to_numpy()]
    texts = [article_text(t, b) for t, b in zip(news["title"], news["body"], strict=True)]
    return init_encoder(texts, out, EncoderSetupConfig(**TINY_ENCODER, seed=seed),
                        stage_record("init", news["published_at"], cutoff_at))


def no_text_record() -> dict[str, str]:
    """Embeddings-file metadata saying the vectors' encoder read no text (random test vectors): never a leak."""
    import json

    from neuralfusion.encoder_text import RECORD_KEY, stage_record

    return {RECORD_KEY: json.dumps(stage_record("init", pd.Series([], dtype="datetime64[ns, UTC]"), None))}


def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    """Synthetic data, tiny encoder, its embeddings, a 1-epoch run and its package; built once per session
    (cached under the session's base temp folder, which both test modules share)."""
    from neuralfusion.synth import SynthConfig

    # 6 assets and the default top_k=4: the book is a real choice, so top-k parity is not trivial
    return tiny_package(tmp_path_factory.getbasetemp() / "export-tiny", SynthConfig(n_assets=6, days=3, seed=5))


def package_backtest(package: Path, data: Path):
    """`nfc backtest --package` of `package` on the data folder `data`, and the package's logits and weights at
    the backtest's anchors computed again through the runtime: what a back-fill of those bars must equal."""
    from neuralfusion.dataset import load_data_dir
    from serving.package_backtest import package_weights, run_package_backtest
    from serving.runtime import PortfolioRuntime

    backtest = run_package_backtest(package, data)
    runtime = PortfolioRuntime.load(package)
    logits, weights = package_weights(runtime, load_data_dir(data, universe=runtime.universe), backtest.anchors)
    return backtest, logits, weights


def tiny_package(root: Path, config, train_args: tuple[str, ...] = ()) -> TinyArtifacts:
    """`config`'s synthetic market (a neuralfusion.synth.SynthConfig) and the tiny model trained on it
    (`tiny_model`) under `root`; reused when `root` already holds them."""
    from neuralfusion.synth import generate_market, write_market

    if (root / "pkg").is_dir():
        return TinyArtifacts(root / "data", root / "encoder", root / "emb.parquet", root / "run", root / "pkg")
    shutil.rmtree(root, ignore_errors=True)
    write_market(generate_market(config), root / "data")
    return tiny_model(root, root / "data", train_args)


def tiny_model(root: Path, data: Path, train_args: tuple[str, ...] = ()) -> TinyArtifacts:
    """The tiny encoder fitted to `data`'s news, its embeddings, a tiny run (TINY_RUN plus `train_args`) and its
    package, written under `root`, as a user makes them from a data folder with nfc commands."""
    artifacts = TinyArtifacts(data, root / "encoder", root / "emb.parquet", root / "run", root / "pkg")
    tiny_encoder(artifacts.data, artifacts.encoder)
    steps = [("embed", "--news", str(artifacts.data / "news.jsonl"), "--out", str(artifacts.embeddings),
              "--encoder", str(artifacts.encoder), "--max-length", "1024"),
             ("train", "--data", str(artifacts.data), "--embeddings", str(artifacts.embeddings), "--out",
              str(artifacts.run), *TINY_RUN, *train_args),
             ("export", "--model", str(artifacts.run), "--out", str(artifacts.package), "--version", "0.1.0-test",
              "--external-data", "--no-bentoml")]
    for args in steps:
        code, output = nfc(*args)
        assert code == 0, output
    return artifacts


def seed_news_documents(news: pd.DataFrame, shift: pd.Timedelta = NO_SHIFT) -> list[dict]:
    """News in the seed's MongoDB shape (_id, releasedAt, title, content, assets[].symbol), `shift` later."""
    documents = []
    for item in news.itertuples():
        doc = {"_id": item.id, "releasedAt": (item.published_at + shift).to_pydatetime(), "title": item.title,
               "content": item.body}
        if item.symbols is not None:
            doc["assets"] = [{"symbol": s} for s in item.symbols]
        documents.append(doc)
    return documents


def fill_candle_table(clickhouse_url: str, table: str, bars: pd.DataFrame, step: pd.Timedelta,
                      shift: pd.Timedelta = NO_SHIFT, label: str = "close") -> None:
    """A seed-shaped ClickHouse candle table `market.<table>` (symbol, candle_time, OHLCV), made afresh from
    `bars` moved `shift` later, each row labelled by its candle's open or close time."""
    from clickhouse_driver import Client

    from neuralfusion.redact import encode_userinfo

    opened = step if label == "open" else pd.Timedelta(0)
    rows = [(r.symbol, (r.timestamp + shift - opened).to_pydatetime(), r.open, r.high, r.low, r.close, r.volume)
            for r in bars.itertuples()]
    client = Client.from_url(encode_userinfo(clickhouse_url))
    try:
        client.execute("CREATE DATABASE IF NOT EXISTS market")
        client.execute(f"DROP TABLE IF EXISTS market.{table}")
        client.execute(f"CREATE TABLE market.{table} (symbol String, candle_time DateTime('UTC'), open Float64, "
                       "high Float64, low Float64, close Float64, volume Float64) ENGINE = MergeTree() "
                       "ORDER BY (symbol, candle_time)")
        client.execute(f"INSERT INTO market.{table} (symbol, candle_time, open, high, low, close, volume) VALUES",
                       rows)
    finally:
        client.disconnect()
