"""The article vector cache of an encoder worker: texts seen before are not encoded again.

Keys are `text_sha256(text)` and the ONNX encoder's key (`NewsEncoder.vector_key`: the package's encoder
fingerprint, the execution provider and the graph variant), so a vector is only reused by the same graph on the
same kind of device. Layers, consulted in order by `neuralfusion.embeddings.embed_cached` (which also encodes each
distinct text of a batch once):

1. an in-memory LRU of at most NFC_VECTOR_CACHE_SIZE vectors per worker (0: no cache at all);
2. with NFC_VECTOR_CACHE_MONGO=1, the `news_embeddings` collection of NFC_MONGO_DB at NFC_MONGO_URI (the one
   `nfc embed` fills; its PyTorch vectors sit under the PyTorch fingerprint and are not these), shared by the
   workers and kept across restarts. MongoDB trouble never fails an encode: the layer is skipped and logged.

Rounding: a text's vector depends on its batch-mates only through float summation order. A vector taken from the
cache was computed in another batch than a fresh one would be, so the two differ by ~1e-7; the weights computed
from them agree to <= 1e-6 (measured on the test package: docs/DESIGN.md, serving).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from pymongo.errors import PyMongoError

from neuralfusion.embeddings import EmbeddingCache, MongoEmbeddingCache, embed_cached, text_sha256
from neuralfusion.redact import encode_userinfo
from serving.memo import BoundedMemo
from serving.settings import ServeSettings

__all__ = ["CachedEncoder", "KnownVectors", "LruEmbeddingCache", "TolerantCache", "vector_cache"]

log = logging.getLogger(__name__)


class LruEmbeddingCache:
    """At most `capacity` (vector, token count) entries in memory, least recently used dropped first
    (thread-safe: a worker's batches run in BentoML's thread pool)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an LRU cache needs a capacity >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: BoundedMemo[tuple[str, str], tuple[np.ndarray, int]] = BoundedMemo(capacity)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
        return {key: entry for (_, key), entry in self._entries.found((fingerprint, key) for key in hashes).items()}

    def put(self, fingerprint: str, hashes: Sequence[str], vectors: np.ndarray, n_tokens: np.ndarray) -> int:
        # a copy of each row: a view would keep the whole batch's array alive. A text already held keeps its vector:
        # another batch's differs by ~1e-7, and every hit should read the same one
        return self._entries.put_many((((fingerprint, key), (np.array(vectors[i], dtype=np.float32), int(n_tokens[i])))
                                       for i, key in enumerate(hashes)), replace=False)


class TolerantCache:
    """A cache layer whose failures (MongoDB unreachable, a write refused) are logged and read as a miss."""

    def __init__(self, inner: EmbeddingCache, name: str) -> None:
        self.inner = inner
        self.name = name
        self.failures = 0

    def get(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
        try:
            return self.inner.get(fingerprint, hashes)
        except PyMongoError as err:
            self._failed("read", err)
            return {}

    def put(self, fingerprint: str, hashes: Sequence[str], vectors: np.ndarray, n_tokens: np.ndarray) -> int:
        try:
            return self.inner.put(fingerprint, hashes, vectors, n_tokens)
        except PyMongoError as err:
            self._failed("write", err)
            return 0

    def _failed(self, what: str, err: PyMongoError) -> None:
        self.failures += 1
        log.warning("vector cache %s: %s failed (%s); encoding without it", self.name, what, type(err).__name__)


class CachedEncoder:
    """An encoder worker's texts -> vectors through the cache layers (module docstring); counts hits and misses
    in distinct texts per call."""

    def __init__(self, encoder: Any, capacity: int, mongo_collection: Any | None = None) -> None:
        """`mongo_collection`: a pymongo collection whose client `close()` closes."""
        self.encoder = encoder  # serving.runtime.NewsEncoder
        self._collection = mongo_collection
        self.lru = LruEmbeddingCache(capacity) if capacity else None
        self.mongo = (TolerantCache(_LazyMongoCache(mongo_collection), "MongoDB news_embeddings")
                      if capacity and mongo_collection is not None else None)
        self.layers: list[EmbeddingCache] = [layer for layer in (self.lru, self.mongo) if layer is not None]
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float32 vectors in the order of `texts`."""
        if not self.layers:
            encoded = self.encoder.encode(texts)
            with self._lock:
                self.misses += len(texts)
            return encoded.vectors
        result = embed_cached(texts, self.encoder.vector_key, self._encode, self.layers)
        with self._lock:
            self.hits += result.n_cached
            self.misses += result.n_computed
        return result.vectors.reshape(len(texts), self.encoder.dim)

    def close(self) -> None:
        """Close the MongoDB layer's client (the worker stops)."""
        if self._collection is not None:
            self._collection.database.client.close()

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.encoder.encode(texts)
        return encoded.vectors, encoded.n_tokens

    def info(self) -> dict[str, Any]:
        """What /model_info reports: capacity, entries held, hits and misses (distinct texts), MongoDB use."""
        lru, mongo = self.lru, self.mongo
        return {"capacity": 0 if lru is None else lru.capacity, "size": 0 if lru is None else len(lru),
                "hits": self.hits, "misses": self.misses, "mongo": mongo is not None,
                "mongo_failures": 0 if mongo is None else mongo.failures}


class KnownVectors:
    """A portfolio worker's memo of the vectors the encoder service answered it (an LRU of `capacity`, 0: none):
    a request whose texts were all seen makes no encoder call at all, the others send only their new distinct
    texts. Keyed by text hash and the served package's encoder fingerprint (a swapped model misses); the vectors
    are the encoder service's, so they round as its cache does (another batch: ~1e-7)."""

    def __init__(self, capacity: int) -> None:
        self.lru = LruEmbeddingCache(capacity) if capacity else None

    async def vectors(self, fingerprint: str, texts: Sequence[str], dim: int,
                      encode: Callable[[list[str]], Awaitable[Any]]) -> np.ndarray:
        """(len(texts), dim) float32 vectors of `texts`; `encode(new_texts)` asks the encoder service."""
        hashes = [text_sha256(text) for text in texts]
        found = self.lru.get(fingerprint, hashes) if self.lru is not None else {}
        text_of = dict(zip(hashes, texts, strict=True))
        new = [key for key in text_of if key not in found]
        if new:
            fresh = np.asarray(await encode([text_of[key] for key in new]), dtype=np.float32).reshape(len(new), dim)
            if self.lru is not None:  # token counts are the encoder's to report: none kept here
                self.lru.put(fingerprint, new, fresh, np.zeros(len(new), np.int64))
            found = {**found, **{key: (fresh[i], 0) for i, key in enumerate(new)}}
        return np.stack([found[key][0] for key in hashes]) if hashes else np.zeros((0, dim), np.float32)


def vector_cache(encoder: Any, settings: ServeSettings) -> CachedEncoder:
    """The encoder worker's cache as NFC_VECTOR_CACHE_SIZE and NFC_VECTOR_CACHE_MONGO say (module docstring)."""
    collection = None
    if settings.vector_cache_size and settings.vector_cache_mongo:
        from pymongo import MongoClient

        client: MongoClient[Any] = MongoClient(encode_userinfo(settings.mongo_uri),
                                               serverSelectionTimeoutMS=settings.mongo_timeout_ms)
        collection = client[settings.mongo_db]["news_embeddings"]
    return CachedEncoder(encoder, settings.vector_cache_size, collection)


class _LazyMongoCache:
    """MongoEmbeddingCache made on first use, so a MongoDB that is down when the worker starts (creating the
    index needs it) only costs misses until it answers."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self._cache: MongoEmbeddingCache | None = None

    def _open(self) -> MongoEmbeddingCache:
        if self._cache is None:
            self._cache = MongoEmbeddingCache(self.collection)
        return self._cache

    def get(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
        return self._open().get(fingerprint, hashes)

    def put(self, fingerprint: str, hashes: Sequence[str], vectors: np.ndarray, n_tokens: np.ndarray) -> int:
        return self._open().put(fingerprint, hashes, vectors, n_tokens)
