"""The encoder worker's article vector cache (serving/vector_cache.py): LRU bounds, batch dedup, the MongoDB
layer, and the rounding level: a cached vector comes from another batch than a fresh one, and the weights from
either agree to 1e-6."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
from pymongo import MongoClient

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import article_text, read_news
from serving.client import predict_payload
from serving.runtime import PortfolioRuntime
from serving.schemas import PredictRequest
from serving.settings import ServeSettings
from serving.vector_cache import CachedEncoder, KnownVectors, LruEmbeddingCache, vector_cache

WEIGHTS_ATOL = 1e-6  # the documented rounding level of a cache hit (docs/DESIGN.md, serving)


@pytest.fixture(scope="module")
def runtime(tiny) -> PortfolioRuntime:
    return PortfolioRuntime.load(tiny.package)


@pytest.fixture(scope="module")
def texts(tiny) -> list[str]:
    news = read_news(tiny.data / "news.jsonl")
    return [article_text(title, body) for title, body in zip(news["title"], news["body"], strict=True)]


def test_the_lru_keeps_the_most_recently_used_entries_up_to_its_capacity():
    cache = LruEmbeddingCache(2)
    vectors, counts = np.eye(3, dtype=np.float32), np.array([3, 4, 5])
    assert cache.put("fp", ["a", "b"], vectors[:2], counts[:2]) == 2
    assert set(cache.get("fp", ["a"])) == {"a"}  # "a" is now the most recent
    assert cache.put("fp", ["c"], vectors[2:], counts[2:]) == 1
    assert len(cache) == 2 and set(cache.get("fp", ["a", "b", "c"])) == {"a", "c"}  # "b" was dropped
    assert cache.get("other-encoder", ["a"]) == {}  # keyed by the encoder too
    vector, n_tokens = cache.get("fp", ["c"])["c"]
    np.testing.assert_array_equal(vector, vectors[2])
    assert n_tokens == 5
    assert cache.put("fp", ["c"], vectors[:1], counts[:1]) == 0  # held already: the first vector stays
    np.testing.assert_array_equal(cache.get("fp", ["c"])["c"][0], vectors[2])
    with pytest.raises(ValueError, match="capacity >= 1"):
        LruEmbeddingCache(0)


def test_repeated_texts_are_encoded_once_and_then_come_from_the_cache(runtime, texts):
    cached = CachedEncoder(runtime.encoder, capacity=1000)
    batch = texts[:5] + texts[:5]  # a batch that repeats each text
    first = cached.encode(batch)
    assert first.shape == (10, runtime.embed_dim)
    np.testing.assert_array_equal(first[:5], first[5:])
    assert (cached.hits, cached.misses) == (0, 5)  # distinct texts, each encoded once
    again = cached.encode(texts[:5])
    np.testing.assert_array_equal(again, first[:5])  # the very vectors computed before
    assert cached.info() == {"capacity": 1000, "size": 5, "hits": 5, "misses": 5, "mongo": False,
                             "mongo_failures": 0}


def test_a_capacity_of_zero_encodes_every_time(runtime, texts):
    cached = CachedEncoder(runtime.encoder, capacity=0)
    cached.encode(texts[:3])
    cached.encode(texts[:3])
    assert cached.info()["hits"] == 0 and cached.info()["misses"] == 6 and cached.info()["capacity"] == 0


def test_a_cached_vector_gives_the_weights_of_a_fresh_one_within_the_documented_rounding(runtime, tiny, texts):
    """Vectors encoded in one large batch (then cached) against each request's texts encoded alone: the vectors
    differ by float rounding only, and the weights by at most WEIGHTS_ATOL."""
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    news = read_news(tiny.data / "news.jsonl")
    times = np.sort(bars["timestamp"].unique())
    step = pd.Timedelta(runtime.bar_spec.interval)
    prepared = [runtime.prepare(PredictRequest.model_validate(predict_payload(
        bars, news, pd.Timestamp(times[k]), runtime.bars_needed, step, news_bars=runtime.lookback)))
        for k in range(len(times) - 1, len(times) - 400, -9)]
    prepared = [item for item in prepared if item.texts]
    assert len(prepared) >= 10
    cached = CachedEncoder(runtime.encoder, capacity=4096)
    cached.encode(texts)  # every text computed in one batch with all the others
    hit = np.concatenate([cached.encode(item.texts) for item in prepared])
    fresh = np.concatenate([runtime.encoder.encode(item.texts).vectors for item in prepared])
    assert cached.misses == len(set(texts))  # everything after the first batch was a hit
    vector_diff = float(np.abs(hit - fresh).max())
    assert vector_diff < 1e-5
    weights_hit = np.array([list(r.weights.values()) for r in runtime.predict(prepared, hit)])
    weights_fresh = np.array([list(r.weights.values()) for r in runtime.predict(prepared, fresh)])
    np.testing.assert_allclose(weights_hit, weights_fresh, rtol=0, atol=WEIGHTS_ATOL)


def test_the_mongodb_layer_serves_a_second_worker_and_its_outage_only_costs_misses(runtime, texts, mongo_uri):
    settings = ServeSettings(mongo_uri=mongo_uri, mongo_db="nfc_vector_cache_test", vector_cache_size=100,
                             vector_cache_mongo=True)
    with MongoClient(mongo_uri) as client:
        client.drop_database("nfc_vector_cache_test")
    first = vector_cache(runtime.encoder, settings)
    second = vector_cache(runtime.encoder, settings)  # another worker: an empty LRU
    down = vector_cache(runtime.encoder, ServeSettings(mongo_uri="mongodb://127.0.0.1:9/", mongo_timeout_ms=200,
                                                      vector_cache_size=100, vector_cache_mongo=True))
    try:
        vectors = first.encode(texts[:4])
        np.testing.assert_array_equal(second.encode(texts[:4]), vectors)
        assert (second.hits, second.misses) == (4, 0) and second.info()["mongo"] is True
        np.testing.assert_allclose(down.encode(texts[:4]), vectors, rtol=0, atol=1e-5)
        assert down.misses == 4 and down.info()["mongo_failures"] >= 1
    finally:
        for cache in (first, second, down):
            cache.close()
    with MongoClient(mongo_uri) as client:
        keys = {doc["fingerprint"] for doc in client["nfc_vector_cache_test"]["news_embeddings"].find()}
    assert keys == {runtime.encoder.vector_key}  # the ONNX graph's key, never the PyTorch encoder's alone


def test_cache_settings_are_checked():
    assert ServeSettings.from_env({"NFC_VECTOR_CACHE_SIZE": "0"}).vector_cache_size == 0
    assert ServeSettings.from_env({"NFC_VECTOR_CACHE_MONGO": "1"}).vector_cache_mongo is True
    with pytest.raises(ValueError, match="NFC_VECTOR_CACHE_SIZE='-1' must be a non-negative integer"):
        ServeSettings.from_env({"NFC_VECTOR_CACHE_SIZE": "-1"})
    with pytest.raises(ValueError, match="NFC_VECTOR_CACHE_MONGO='maybe' must be 1 or 0"):
        ServeSettings.from_env({"NFC_VECTOR_CACHE_MONGO": "maybe"})


def test_a_portfolio_worker_asks_the_encoder_only_for_texts_it_has_not_seen():
    asked: list[list[str]] = []

    async def encode(texts: list[str]) -> np.ndarray:
        asked.append(list(texts))
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    known = KnownVectors(capacity=3)
    first = asyncio.run(known.vectors("fp", ["a", "bb", "a"], 2, encode))
    assert asked == [["a", "bb"]] and first.tolist() == [[1, 1], [2, 1], [1, 1]]  # a distinct text once
    again = asyncio.run(known.vectors("fp", ["bb", "a"], 2, encode))
    assert asked == [["a", "bb"]] and again.tolist() == [[2, 1], [1, 1]]  # all known: no call
    asyncio.run(known.vectors("other", ["a"], 2, encode))  # another encoder's vectors are not these
    asyncio.run(known.vectors("fp", ["cccc", "dd"], 2, encode))  # capacity 3: the least recent go
    assert asked[1:] == [["a"], ["cccc", "dd"]]
    asyncio.run(known.vectors("fp", ["bb"], 2, encode))
    assert asked[-1] == ["bb"]
    none = KnownVectors(capacity=0)
    asyncio.run(none.vectors("fp", ["a"], 2, encode))
    asyncio.run(none.vectors("fp", ["a"], 2, encode))
    assert asked[-2:] == [["a"], ["a"]]  # size 0: nothing kept
    assert none.lru is None and asyncio.run(none.vectors("fp", [], 2, encode)).shape == (0, 2)
