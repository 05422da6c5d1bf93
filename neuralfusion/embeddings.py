"""News embeddings without torch: the cache (parquet, optionally MongoDB) and their means per group.

An embedding is keyed by (sha256 of the article text, encoder fingerprint), so the same text read
by the same encoder (weights, tokenizer, pooling, max length, attention type) is computed once,
whichever file or run it came from. Files are replaced atomically: a crash leaves the old file or
the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "EmbeddingCache",
    "EmbeddingResult",
    "MongoEmbeddingCache",
    "ParquetEmbeddingCache",
    "embed_cached",
    "mean_embeddings",
    "open_caches",
    "read_embeddings",
    "text_sha256",
    "write_embeddings",
    "write_table_atomic",
]

logger = logging.getLogger(__name__)

# An encoder as the cache sees it: texts -> ((M, D) float32 vectors, (M,) token counts before truncation)
EncodeFn = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


def text_sha256(text: str) -> str:
    """Cache key of an article: hex sha256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_table_atomic(table: pa.Table, path: Path | str) -> None:
    """Write a parquet file via a temporary file in the same folder and `os.replace`.

    Readers see the previous file or the complete new one; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a random sibling name rather than mkstemp, so the file gets the usual umask permissions, not 0600
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _vector_column(vectors: np.ndarray) -> pa.Array:
    """(M, D) float32 -> a list<float32> column without a Python loop."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    offsets = np.arange(len(vectors) + 1, dtype=np.int32) * np.int32(vectors.shape[1])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(vectors.reshape(-1)))


def _vectors_from_column(column: pa.ChunkedArray | pa.Array, source: str) -> np.ndarray:
    """list<float32> column -> (M, D) float32; rows of different lengths are an error."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float32()))
    lengths = column.value_lengths().to_numpy(zero_copy_only=False) if len(column) else np.zeros(0, int)
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError(f"{source}: vectors of different lengths {sorted(set(lengths.tolist()))[:5]}")
    dim = int(lengths[0]) if len(lengths) else 0
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), dim)


def _check_vectors(vectors: np.ndarray, n_rows: int, what: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != n_rows:
        raise ValueError(f"{what}: expected ({n_rows}, D) vectors, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{what}: vectors contain NaN or inf; refusing to cache them")
    return vectors


class EmbeddingCache(Protocol):
    """What `embed_cached` needs from a cache layer."""

    def get(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
        """Known entries among `hashes`: text_sha256 -> (vector, token count)."""
        ...

    def put(self, fingerprint: str, hashes: Sequence[str], vectors: np.ndarray, n_tokens: np.ndarray) -> int:
        """Store entries (existing keys are kept as they are); return how many were new."""
        ...


class ParquetEmbeddingCache:
    """One parquet file with columns text_sha256, fingerprint, n_tokens, vector (list<float32>).

    Every `put` rewrites the file atomically, so concurrent readers never see a partial file; two
    writers racing lose at most the other's new rows (recomputed next time), never consistency.
    """

    schema = pa.schema([("text_sha256", pa.string()), ("fingerprint", pa.string()),
                        ("n_tokens", pa.int64()), ("vector", pa.list_(pa.float32()))])

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _read(self) -> pa.Table:
        if not self.path.exists():
            return self.schema.empty_table()
        try:
            table = pq.read_table(self.path)
        except (OSError, pa.ArrowException) as err:
            raise ValueError(f"embedding cache {self.path} is unreadable ({err}); "
                             "delete it to rebuild") from None
        missing = sorted(set(self.schema.names) - set(table.column_names))
        if missing:
            raise ValueError(f"embedding cache {self.path} lacks columns {missing}; delete it to rebuild")
        return table.select(self.schema.names).cast(self.schema)

    def get(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
        table = self._read()
        mask = pc.and_(pc.equal(table["fingerprint"], fingerprint),
                       pc.is_in(table["text_sha256"], pa.array(list(hashes), pa.string())))
        hits = table.filter(mask)
        vectors = _vectors_from_column(hits["vector"], str(self.path))
        keys = hits["text_sha256"].to_pylist()
        counts = hits["n_tokens"].to_numpy()
        return {key: (vectors[i], int(counts[i])) for i, key in enumerate(keys)}

    def put(self, fingerprint: str, hashes: Sequence[str], vectors: np.ndarray, n_tokens: np.ndarray) -> int:
        vectors = _check_vectors(vectors, len(hashes), f"embedding cache {self.path}")
        table = self._read()
        mine = table.filter(pc.equal(table["fingerprint"], fingerprint))
        known = set(mine["text_sha256"].to_pylist())
        first: dict[str, int] = {}
        for i, key in enumerate(hashes):
            if key not in known and key not in first:
                first[key] = i
        if not first:
            return 0
        new_keys, new = list(first), list(first.values())
        added = pa.table({
            "text_sha256": pa.array(new_keys, pa.string()),
            "fingerprint": pa.array([fingerprint] * len(new), pa.string()),
            "n_tokens": pa.array(np.asarray(n_tokens, dtype=np.int64)[new]),
            "vector": _vector_column(vectors[new]),
        }, schema=table.schema)
        write_table_atomic(pa.concat_tables([table, added]), self.path)
        return len(new)


class MongoEmbeddingCache:
    """A MongoDB collection with one document per (text_sha256, fingerprint) and a unique index on it.

    Vectors are stored as little-endian float32 bytes (BSON binary) with their dimension. Writes are
    upserts with `$setOnInsert`, so repeated or concurrent puts are idempotent. The collection is
    injected (a pymongo `Collection`), so callers choose client, database and credentials.
    """

    # keep each `$in` query and bulk write a modest size for any server
    chunk = 1000

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.collection.create_index([("text_sha256", 1), ("fingerprint", 1)], unique=True)

    def get(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
        found: dict[str, tuple[np.ndarray, int]] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), self.chunk):
            query = {"fingerprint": fingerprint, "text_sha256": {"$in": unique[start:start + self.chunk]}}
            projection = {"_id": 0, "text_sha256": 1, "vector": 1, "dim": 1, "n_tokens": 1}
            for doc in self.collection.find(query, projection):
                vector = np.frombuffer(bytes(doc["vector"]), dtype="<f4").astype(np.float32)
                if len(vector) != doc["dim"]:
                    raise ValueError(f"mongodb embedding {doc['text_sha256']}: "
                                     f"{len(vector)} values, dim {doc['dim']}")
                found[doc["text_sha256"]] = (vector, int(doc["n_tokens"]))
        return found

    def put(self, fingerprint: str, hashes: Sequence[str], vectors: np.ndarray, n_tokens: np.ndarray) -> int:
        from bson import Binary
        from pymongo import UpdateOne

        vectors = _check_vectors(vectors, len(hashes), "mongodb embedding cache")
        first = {key: i for i, key in reversed(list(enumerate(hashes)))}
        ops = [UpdateOne({"text_sha256": key, "fingerprint": fingerprint},
                         {"$setOnInsert": {"vector": Binary(vectors[i].astype("<f4").tobytes()),
                                           "dim": int(vectors.shape[1]), "n_tokens": int(n_tokens[i])}},
                         upsert=True)
               for key, i in first.items()]
        inserted = 0
        for start in range(0, len(ops), self.chunk):
            result = self.collection.bulk_write(ops[start:start + self.chunk], ordered=False)
            inserted += result.upserted_count
        return inserted


@contextmanager
def open_caches(cache_path: Path, mongo_uri: str | None = None, mongo_db: str = "neuralfusion",
                mongo_collection: str = "news_embeddings") -> Iterator[list[EmbeddingCache]]:
    """The parquet cache, then the MongoDB one when a URI is given (its client closed on exit)."""
    caches: list[EmbeddingCache] = [ParquetEmbeddingCache(cache_path)]
    with ExitStack() as stack:
        if mongo_uri:
            from pymongo import MongoClient
            from pymongo.errors import PyMongoError

            try:
                client = stack.enter_context(MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000))
                caches.append(MongoEmbeddingCache(client[mongo_db][mongo_collection]))
            except PyMongoError as err:  # the URI may hold credentials: never echo it
                raise ConnectionError(f"MongoDB embedding cache {mongo_db}.{mongo_collection}: {err}") from None
            logger.info("mongodb cache: %s.%s", mongo_db, mongo_collection)
        yield caches


@dataclass(frozen=True)
class EmbeddingResult:
    """Vectors for the requested texts, in their order, and where they came from."""

    vectors: np.ndarray  # (M, D) float32
    n_tokens: np.ndarray  # (M,) int64, tokens before truncation
    n_cached: int  # distinct texts found in a cache
    n_computed: int  # distinct texts the encoder ran on


def embed_cached(texts: Sequence[str], fingerprint: str, encode: EncodeFn, caches: Iterable[EmbeddingCache],
                 chunk_size: int = 1024, on_missing: Callable[[int], Any] | None = None) -> EmbeddingResult:
    """Embed `texts`, computing only what no cache holds for this encoder `fingerprint`.

    Caches are consulted in order; a hit in a later cache is copied into the earlier ones. Identical
    texts are encoded once. New vectors are stored after every `chunk_size` texts, so an interrupted
    run keeps its finished chunks. `on_missing(n)` learns how many distinct texts will be computed
    (e.g. a progress bar's total) before the first one is.
    """
    caches = list(caches)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"text {bad[0]} is {type(texts[bad[0]]).__name__}, not str ({len(bad)} such)")
    keys = [text_sha256(t) for t in texts]
    unique = list(dict.fromkeys(keys))
    found: dict[str, tuple[np.ndarray, int]] = {}
    for level, cache in enumerate(caches):
        missing = [k for k in unique if k not in found]
        if not missing:
            break
        hits = cache.get(fingerprint, missing)
        if hits and level:
            hit_keys = list(hits)
            for earlier in caches[:level]:
                earlier.put(fingerprint, hit_keys, np.stack([hits[k][0] for k in hit_keys]),
                            np.array([hits[k][1] for k in hit_keys]))
        found.update(hits)
    n_cached = len(found)
    text_of = dict(zip(keys, texts, strict=True))
    todo = [k for k in unique if k not in found]
    if on_missing is not None:
        on_missing(len(todo))
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        vectors, counts = encode([text_of[k] for k in chunk])
        vectors = _check_vectors(vectors, len(chunk), "encoder output")
        for cache in caches:
            cache.put(fingerprint, chunk, vectors, counts)
        found.update({k: (vectors[i], int(counts[i])) for i, k in enumerate(chunk)})
    if not keys:
        return EmbeddingResult(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), 0, 0)
    dims = {len(found[k][0]) for k in unique}
    if len(dims) != 1:
        raise ValueError(f"vectors for fingerprint {fingerprint[:12]} have different sizes {sorted(dims)}")
    return EmbeddingResult(vectors=np.stack([found[k][0] for k in keys]).astype(np.float32, copy=False),
                           n_tokens=np.array([found[k][1] for k in keys], dtype=np.int64),
                           n_cached=n_cached, n_computed=len(todo))


def write_embeddings(path: Path | str, ids: Sequence[str], vectors: np.ndarray, n_tokens: np.ndarray,
                     fingerprint: str, metadata: dict[str, str] | None = None) -> None:
    """The `nfc embed` output: one row per article (id, n_tokens, vector), written atomically.

    The encoder fingerprint and `metadata` go into the parquet schema metadata, so a reader can check
    which encoder made the file.
    """
    vectors = _check_vectors(vectors, len(ids), f"embeddings for {path}")
    meta = {"nfc.encoder_fingerprint": fingerprint, "nfc.dim": str(vectors.shape[1]), **(metadata or {})}
    table = pa.table({"id": pa.array(list(ids), pa.string()),
                      "n_tokens": pa.array(np.asarray(n_tokens, dtype=np.int64)),
                      "vector": _vector_column(vectors)})
    write_table_atomic(table.replace_schema_metadata({k: str(v) for k, v in meta.items()}), path)


def read_embeddings(path: Path | str) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Read an `nfc embed` file: (ids, (M, D) float32 vectors, schema metadata incl. the fingerprint)."""
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table["id"].to_pylist(), _vectors_from_column(table["vector"], str(path)), meta


def mean_embeddings(group: np.ndarray, vectors: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean vector of each group and a mask of the groups that have one (how news is pooled, docs/MODEL.md).

    group: (M,) int, the group of each vector (a bar, or a (bar, asset) pair), -1 for "in no group" (ignored).
    vectors: (M, D). Returns means (n_groups, D) float32 (zeros where a group has no vector; the model puts
    its learned [NO_NEWS] vector there using the mask) and mask (n_groups,) float32, 1.0 where it has one.
    """
    index = np.asarray(group)
    vectors = np.asarray(vectors, dtype=np.float32)
    if index.ndim != 1 or vectors.ndim != 2 or len(index) != len(vectors):
        raise ValueError(f"group (M,) and vectors (M, D) must match, got {index.shape} and {vectors.shape}")
    if n_groups < 0:
        raise ValueError(f"n_groups must be >= 0, got {n_groups}")
    if len(index) and not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"group must be integers, got dtype {index.dtype}")
    out_of_range = (index < -1) | (index >= n_groups)
    if out_of_range.any():
        raise ValueError(f"group {int(index[out_of_range][0])} outside [-1, {n_groups}) "
                         f"({int(out_of_range.sum())} such items)")
    member = index >= 0
    if not np.isfinite(vectors[member]).all():
        raise ValueError("vectors contain NaN or inf")
    sums = np.zeros((n_groups, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, index[member], vectors[member])
    counts = np.bincount(index[member], minlength=n_groups).astype(np.float64)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means.astype(np.float32), (counts > 0).astype(np.float32)
