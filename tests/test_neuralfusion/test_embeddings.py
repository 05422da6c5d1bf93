"""The torch-free embedding cache (parquet, MongoDB) and per-bar aggregation."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from pymongo import MongoClient

from neuralfusion import embeddings
from neuralfusion.embeddings import (
    MongoEmbeddingCache,
    ParquetEmbeddingCache,
    embed_cached,
    mean_embeddings,
    read_embeddings,
    text_sha256,
    write_embeddings,
    write_table_atomic,
)

FP = "f" * 64


class FakeEncoder:
    """Deterministic vectors from the text hash; records every text it is asked to encode."""

    def __init__(self, dim: int = 4, fail_after: int | None = None) -> None:
        self.dim = dim
        self.seen: list[str] = []
        self.fail_after = fail_after

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise RuntimeError("encoder crashed")
        self.seen.extend(texts)
        seeds = [int(text_sha256(t)[:8], 16) for t in texts]
        vectors = np.stack([np.random.default_rng(s).normal(size=self.dim) for s in seeds]).astype(np.float32)
        return vectors, np.array([len(t.split()) + 2 for t in texts])


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_text_sha256_is_the_hex_digest_of_utf8():
    assert text_sha256("Zürich rallies") == hashlib.sha256("Zürich rallies".encode()).hexdigest()


def test_parquet_cache_round_trips_vectors_and_counts(tmp_path):
    cache = ParquetEmbeddingCache(tmp_path / "cache.parquet")
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    assert cache.put(FP, ["a", "b"], vectors, np.array([5, 9])) == 2
    got = cache.get(FP, ["b", "a", "missing"])
    assert set(got) == {"a", "b"}
    np.testing.assert_array_equal(got["b"][0], vectors[1])
    assert got["a"][1] == 5


def test_parquet_cache_keeps_fingerprints_apart_and_ignores_known_keys(tmp_path):
    cache = ParquetEmbeddingCache(tmp_path / "cache.parquet")
    cache.put(FP, ["a"], np.ones((1, 2)), np.array([3]))
    assert cache.put(FP, ["a", "a"], np.zeros((2, 2)), np.array([4, 4])) == 0
    np.testing.assert_array_equal(cache.get(FP, ["a"])["a"][0], [1.0, 1.0])  # first write wins
    assert cache.get("0" * 64, ["a"]) == {}


def test_parquet_cache_refuses_nan_and_writes_nothing(tmp_path):
    cache = ParquetEmbeddingCache(tmp_path / "cache.parquet")
    with pytest.raises(ValueError, match="NaN"):
        cache.put(FP, ["a"], np.array([[np.nan, 1.0]]), np.array([2]))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cache.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="delete it to rebuild"):
        ParquetEmbeddingCache(path).get(FP, ["a"])


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    cache = ParquetEmbeddingCache(tmp_path / "cache.parquet")
    cache.put(FP, ["a"], np.ones((1, 2)), np.array([3]))
    before = (tmp_path / "cache.parquet").read_bytes()

    def half_write(table, where):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(embeddings.pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        cache.put(FP, ["b"], np.ones((1, 2)), np.array([3]))
    assert (tmp_path / "cache.parquet").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_second_run_computes_nothing(tmp_path):
    texts = ["Acme beats estimates", "Globex misses", "Acme beats estimates", "Initech holds meeting"]
    cache = ParquetEmbeddingCache(tmp_path / "cache.parquet")
    first_encoder, second_encoder = FakeEncoder(), FakeEncoder()
    first = embed_cached(texts, FP, first_encoder, [cache])
    second = embed_cached(texts, FP, second_encoder, [cache])
    assert (first.n_computed, first.n_cached) == (3, 0)  # the duplicate text is encoded once
    assert sorted(first_encoder.seen) == sorted(set(texts))
    assert (second.n_computed, second.n_cached, second_encoder.seen) == (0, 3, [])
    np.testing.assert_array_equal(first.vectors, second.vectors)
    np.testing.assert_array_equal(first.vectors[0], first.vectors[2])
    assert first.vectors.dtype == np.float32 and first.vectors.shape == (4, 4)
    np.testing.assert_array_equal(second.n_tokens, [5, 4, 5, 5])


def test_new_texts_only_are_computed_and_reported_before_encoding(tmp_path):
    cache = ParquetEmbeddingCache(tmp_path / "cache.parquet")
    embed_cached(["old one"], FP, FakeEncoder(), [cache])
    encoder, announced = FakeEncoder(), []
    result = embed_cached(["old one", "new one", "new two"], FP, encoder, [cache], on_missing=announced.append)
    assert announced == [2] and encoder.seen == ["new one", "new two"] and result.n_cached == 1


def test_interrupted_run_keeps_finished_chunks(tmp_path):
    cache = ParquetEmbeddingCache(tmp_path / "cache.parquet")
    texts = [f"article {i}" for i in range(5)]
    with pytest.raises(RuntimeError, match="crashed"):
        embed_cached(texts, FP, FakeEncoder(fail_after=2), [cache], chunk_size=2)
    assert set(cache.get(FP, [text_sha256(t) for t in texts])) == {text_sha256(t) for t in texts[:2]}
    assert leftovers(tmp_path) == []
    resumed = FakeEncoder()
    embed_cached(texts, FP, resumed, [cache], chunk_size=2)
    assert resumed.seen == texts[2:]


def test_non_string_text_is_refused_before_anything_runs(tmp_path):
    encoder = FakeEncoder()
    with pytest.raises(TypeError, match="text 1 is int"):
        embed_cached(["fine", 7], FP, encoder, [ParquetEmbeddingCache(tmp_path / "c.parquet")])
    assert encoder.seen == [] and list(tmp_path.iterdir()) == []


def test_embeddings_file_round_trips_with_fingerprint(tmp_path):
    path = tmp_path / "out" / "emb.parquet"
    vectors = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    write_embeddings(path, ["n1", "n2", "n3"], vectors, np.array([10, 20, 30]), FP, {"nfc.pooling": "mean"})
    ids, got, meta = read_embeddings(path)
    assert ids == ["n1", "n2", "n3"]
    np.testing.assert_array_equal(got, vectors)
    assert meta["nfc.encoder_fingerprint"] == FP and meta["nfc.dim"] == "5" and meta["nfc.pooling"] == "mean"
    assert pq.read_table(path)["n_tokens"].to_pylist() == [10, 20, 30]
    assert leftovers(path.parent) == []


def test_write_table_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "t.parquet"
    write_table_atomic(pq.read_table(_one_row_file(tmp_path)), path)
    write_table_atomic(pq.read_table(_one_row_file(tmp_path, value="second")), path)
    assert pq.read_table(path)["x"].to_pylist() == ["second"]


def _one_row_file(folder, value: str = "first"):
    import pyarrow as pa

    source = folder / f"src-{value}.parquet"
    pq.write_table(pa.table({"x": [value]}), source)
    return source


def test_mean_embeddings_means_articles_per_bar_and_masks_empty_bars():
    index = np.array([0, 2, 2, -1, 4])
    vectors = np.array([[1, 1], [2, 0], [4, 2], [100, 100], [3, 3]], dtype=np.float32)
    means, mask = mean_embeddings(index, vectors, n_groups=5)
    np.testing.assert_array_equal(means, [[1, 1], [0, 0], [3, 1], [0, 0], [3, 3]])
    np.testing.assert_array_equal(mask, [1, 0, 1, 0, 1])
    assert means.dtype == np.float32 and mask.dtype == np.float32


def test_mean_embeddings_with_no_news_is_all_masked():
    means, mask = mean_embeddings(np.zeros(0, dtype=int), np.zeros((0, 3)), n_groups=4)
    assert means.shape == (4, 3) and not mask.any()


@pytest.mark.parametrize(
    ("index", "vectors", "n_bars", "message"),
    [
        ([0, 5], np.ones((2, 2)), 5, "outside"),
        ([-2], np.ones((1, 2)), 5, "outside"),
        ([0, 1], np.ones((3, 2)), 5, "must match"),
        ([0.5], np.ones((1, 2)), 5, "integers"),
        ([0], np.full((1, 2), np.nan), 5, "NaN"),
    ],
)
def test_mean_embeddings_rejects_bad_input(index, vectors, n_bars, message):
    with pytest.raises(ValueError, match=message):
        mean_embeddings(np.array(index), vectors, n_bars)


@pytest.mark.mongo
def test_mongo_cache_is_idempotent_and_backfills_the_parquet_cache(mongo_uri, tmp_path):
    with MongoClient(mongo_uri) as client:
        collection = client["nfc_test"]["embeddings"]
        mongo = MongoEmbeddingCache(collection)
        texts = ["Acme beats", "Globex misses"]
        first = embed_cached(texts, FP, FakeEncoder(), [ParquetEmbeddingCache(tmp_path / "a.parquet"), mongo])
        assert collection.count_documents({"fingerprint": FP}) == 2
        assert mongo.put(FP, [text_sha256(texts[0])], first.vectors[:1], np.array([4])) == 0
        # a fresh parquet cache is filled from MongoDB; nothing is recomputed
        fresh = ParquetEmbeddingCache(tmp_path / "b.parquet")
        encoder = FakeEncoder()
        second = embed_cached(texts, FP, encoder, [fresh, mongo])
        assert encoder.seen == [] and second.n_cached == 2
        np.testing.assert_array_equal(second.vectors, first.vectors)
        assert len(fresh.get(FP, [text_sha256(t) for t in texts])) == 2
        unique = [list(spec["key"]) for spec in collection.index_information().values() if spec.get("unique")]
        assert [("text_sha256", 1), ("fingerprint", 1)] in unique
