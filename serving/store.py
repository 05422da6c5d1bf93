"""MongoDB prediction store: one document per (model_version, as_of), written idempotently.

A unique index on (model_version, as_of) makes repeats harmless, and a prediction is only reported stored
once MongoDB acknowledged the write (write concern "majority"). Writes are `$setOnInsert` upserts, so a
repeat never overwrites the first answer for a bar; each document carries the request id and the sha256 of
the request's inputs, so a repeat is told apart from another request for the same key: `save` reports a
repeat with the same inputs as ALREADY_PRESENT and one with other inputs as CONFLICT, each with the record
MongoDB holds. `as_of` is the UTC close time of the as-of bar, stored as a BSON date (millisecond precision).

The URI comes from the caller (the service reads `NFC_MONGO_URI`); pymongo gets it with its user info
percent-encoded, so a password may hold any character (parsing rules: neuralfusion/redact.py). Error messages
name the operation only (they may reach an API caller); the server's log gets the details, with the URI
redacted and the driver's message scrubbed of the password.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, UpdateOne, WriteConcern
from pymongo.errors import BulkWriteError, ConfigurationError, ConnectionFailure, PyMongoError

from neuralfusion.redact import encode_userinfo, redact_uri, scrub, uri_secrets

__all__ = [
    "DEFAULT_COLLECTION",
    "DEFAULT_DATABASE",
    "MAX_HISTORY_LIMIT",
    "MAX_KEY_CHARS",
    "HistoryPage",
    "PredictionRecord",
    "PredictionStore",
    "SaveOutcome",
    "SaveResult",
    "StoreError",
    "StoreUnavailable",
]

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "neuralfusion"
DEFAULT_COLLECTION = "predictions"
MAX_HISTORY_LIMIT = 1000
MAX_KEY_CHARS = 128  # model versions and request ids: far below MongoDB's 16 MB document limit
_UNIQUE_INDEX = "model_version_as_of"
_DUPLICATE_KEY = 11000
_NEWEST_FIRST = [("as_of", DESCENDING), ("model_version", ASCENDING)]
_NO_ID = {"_id": False}


class StoreError(RuntimeError):
    """A store operation failed; the message names the server (password redacted) and what to do."""


class StoreUnavailable(StoreError):
    """MongoDB could not be reached in time: no prediction of the failed call was stored."""


def _utc(value: datetime, name: str) -> tuple[datetime, bool]:
    """`value` as a plain UTC datetime (pandas Timestamps included), and whether it had sub-millisecond
    digits, which BSON dates drop; naive times are refused."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a time-zone aware datetime, got {value!r}")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name} {value.isoformat()} is out of range") from None
    plain = datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, tzinfo=UTC)
    return plain, bool(utc.microsecond % 1000 or getattr(utc, "nanosecond", 0))


def _key_time(value: datetime, name: str) -> datetime:
    """A time that is part of a document's key: refused with sub-millisecond digits, as a truncated key
    would never match its own repeat."""
    utc, finer = _utc(value, name)
    if finer:
        raise ValueError(f"{name} {value.isoformat()} has sub-millisecond digits; BSON dates keep milliseconds")
    return utc


def _bound_time(value: datetime | None, name: str) -> datetime | None:
    """A query bound on millisecond as_of values: rounding up to the millisecond selects the same documents."""
    if value is None:
        return None
    utc, finer = _utc(value, name)
    try:
        return utc.replace(microsecond=utc.microsecond // 1000 * 1000) + timedelta(milliseconds=1) if finer else utc
    except OverflowError:
        raise ValueError(f"{name} {value.isoformat()} is out of range") from None


@dataclass(frozen=True)
class PredictionRecord:
    """One stored prediction: portfolio weights and logits per symbol at the close of the as-of bar."""

    model_version: str
    as_of: datetime  # UTC close time of the as-of bar
    symbols: tuple[str, ...]
    weights: dict[str, float]
    logits: dict[str, float]
    horizon_bars: int
    request_id: str
    inputs_sha256: str | None = None  # of the request's canonical inputs (serving.request_checks.inputs_sha256)
    created_at: datetime | None = field(default=None, compare=False)  # set by the store; ignored by save

    def __post_init__(self) -> None:
        # values may arrive as numpy scalars, which BSON cannot encode: normalise to Python types here
        symbols = tuple(str(s) for s in self.symbols)
        for name in ("model_version", "request_id"):
            if not 0 < len(getattr(self, name)) <= MAX_KEY_CHARS:
                raise ValueError(f"{name} must have 1 to {MAX_KEY_CHARS} characters")
        bad = [s for s in symbols if not s or "." in s or s.startswith("$")]
        if bad:
            raise ValueError(f"symbols {bad} cannot be MongoDB field names (empty, '.' or leading '$')")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"symbols repeat: {list(symbols)}")
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "as_of", _key_time(self.as_of, "as_of"))
        object.__setattr__(self, "horizon_bars", int(self.horizon_bars))
        for name in ("weights", "logits"):
            values: Mapping[str, Any] = getattr(self, name)
            if set(values) != set(symbols):
                raise ValueError(f"{name} are keyed by {sorted(values)}, expected the symbols {list(symbols)}")
            floats = {s: float(values[s]) for s in symbols}
            if not all(math.isfinite(v) for v in floats.values()):
                raise ValueError(f"{name} hold NaN/inf: {floats}")
            object.__setattr__(self, name, floats)

    def with_inputs(self, inputs_sha256: str) -> PredictionRecord:
        """This prediction, made from the inputs whose canonical hash is `inputs_sha256`."""
        return replace(self, inputs_sha256=inputs_sha256)

    def to_document(self, created_at: datetime) -> dict[str, Any]:
        return {"model_version": self.model_version, "as_of": self.as_of, "symbols": list(self.symbols),
                "weights": self.weights, "logits": self.logits, "horizon_bars": self.horizon_bars,
                "request_id": self.request_id, "inputs_sha256": self.inputs_sha256, "created_at": created_at}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> PredictionRecord:
        return cls(model_version=doc["model_version"], as_of=doc["as_of"], symbols=tuple(doc["symbols"]),
                   weights=doc["weights"], logits=doc["logits"], horizon_bars=doc["horizon_bars"],
                   request_id=doc["request_id"], inputs_sha256=doc.get("inputs_sha256"),
                   created_at=doc.get("created_at"))


class SaveOutcome(StrEnum):
    """What `save` did with one prediction; MongoDB holds a prediction for its key after each of them."""

    STORED = "stored"  # newly written and acknowledged
    ALREADY_PRESENT = "already present"  # a repeat with the same inputs (or inputs not hashed): kept as it was
    CONFLICT = "conflict"  # another request's prediction, from other inputs, holds the key: nothing written


@dataclass(frozen=True)
class SaveResult:
    """The outcome of saving the prediction of (model_version, as_of), and the record MongoDB holds for it."""

    model_version: str
    as_of: datetime
    outcome: SaveOutcome
    held: PredictionRecord


@dataclass(frozen=True)
class HistoryPage:
    """Predictions newest first; pass `next_before` as `before` for the next page (None: no more)."""

    items: list[PredictionRecord]
    next_before: datetime | None


class PredictionStore:
    """Predictions in one MongoDB collection through pymongo's asyncio client.

    Create it inside the event loop that uses it (a BentoML startup hook) and `await close()` it.
    `server_selection_timeout_ms` bounds how long a call waits for an unreachable server before
    `StoreUnavailable`; `socket_timeout_ms` bounds connecting and each network read after that.
    `client_options` go to pymongo as they are, e.g. `event_listeners` for command metrics.
    """

    def __init__(self, uri: str, database: str = DEFAULT_DATABASE, collection: str = DEFAULT_COLLECTION, *,
                 server_selection_timeout_ms: int = 2000, socket_timeout_ms: int = 10_000,
                 client_options: Mapping[str, Any] | None = None) -> None:
        self.uri = redact_uri(uri)
        self._secrets = uri_secrets(uri)
        try:
            self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                # not timeoutMS: pymongo then waits for a server that long, ignoring serverSelectionTimeoutMS
                encode_userinfo(uri), tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=server_selection_timeout_ms,
                connectTimeoutMS=socket_timeout_ms, socketTimeoutMS=socket_timeout_ms, appname="neuralfusion-serving",
                **(client_options or {}))
        except (ConfigurationError, ValueError) as err:  # pymongo raises both for malformed URIs
            raise ValueError(f"invalid MongoDB URI or options for {self.uri}: {self._scrub(err)}") from None
        self._collection = self._client[database].get_collection(
            collection, write_concern=WriteConcern(w="majority"))
        self.namespace = f"{database}.{collection}"

    async def __aenter__(self) -> PredictionStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn pymongo errors into StoreError/StoreUnavailable naming only `action`; the log gets the server
        (URI redacted) and the driver's message (password scrubbed)."""
        try:
            yield
        except ConnectionFailure as err:  # also ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout
            log.warning("MongoDB at %s is unavailable (%s): %s: %s", self.uri, action, type(err).__name__,
                        self._scrub(err))
            raise StoreUnavailable(f"MongoDB is unavailable ({action})") from None
        except PyMongoError as err:
            log.error("MongoDB at %s failed (%s): %s: %s", self.uri, action, type(err).__name__, self._scrub(err))
            raise StoreError(f"MongoDB failed ({action}: {type(err).__name__})") from None
        except (KeyError, TypeError, ValueError) as err:  # pymongo's handshake on a server answering off-spec
            log.error("MongoDB at %s failed (%s), the driver raised %s: %s", self.uri, action, type(err).__name__,
                      self._scrub(err))
            raise StoreError(f"MongoDB failed ({action}: the driver raised {type(err).__name__})") from None

    async def ping(self) -> None:
        """Round trip to the server, for readiness checks; raises StoreUnavailable when it is unreachable."""
        with self._errors("ping"):
            await self._client.admin.command("ping")

    async def ensure_indexes(self) -> None:
        """The unique (model_version, as_of) index that makes saves idempotent, and one for newest-first scans."""
        with self._errors("creating indexes"):
            await self._collection.create_index([("model_version", ASCENDING), ("as_of", ASCENDING)],
                                                unique=True, name=_UNIQUE_INDEX)
            await self._collection.create_index(_NEWEST_FIRST, name="as_of_newest_first")
        log.info("prediction store ready: %s at %s", self.namespace, self.uri)

    async def save(self, predictions: Sequence[PredictionRecord]) -> list[SaveResult]:
        """Write `predictions` in one unordered bulk write; per prediction, whether it was newly stored, already
        present from the same inputs, or in conflict with another request's, and the record MongoDB holds.
        Raises StoreError (nothing is reported stored) unless every write was acknowledged."""
        if not predictions:
            return []
        now = datetime.now(UTC)
        created_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        ops = [UpdateOne({"model_version": p.model_version, "as_of": p.as_of},
                         {"$setOnInsert": p.to_document(created_at)}, upsert=True) for p in predictions]
        with self._errors(f"saving {len(ops)} predictions"):
            try:
                result = await self._collection.bulk_write(ops, ordered=False)
            except BulkWriteError as err:
                details = err.details
            else:
                if not result.acknowledged:
                    raise StoreError(f"MongoDB did not acknowledge the write of {len(ops)} predictions")
                details = result.bulk_api_result
        # a duplicate-key error is a concurrent writer inserting the same key first: the prediction is present
        failed = [e for e in details["writeErrors"] if e["code"] != _DUPLICATE_KEY]
        if failed or details["writeConcernErrors"]:
            first = (failed or details["writeConcernErrors"])[0]
            log.error("MongoDB at %s refused writes: %s", self.uri, self._scrub(first.get("errmsg")))
            raise StoreError(f"MongoDB did not acknowledge {len(failed) or len(ops)} of {len(ops)} predictions; "
                             "saving them again is safe (writes are idempotent)")
        stored = {u["index"] for u in details["upserted"]}
        held = await self._held([p for i, p in enumerate(predictions) if i not in stored])
        log.debug("saved %d predictions to %s: %d new", len(ops), self.namespace, len(stored))
        return [SaveResult(p.model_version, p.as_of, SaveOutcome.STORED, p) if i in stored else
                _repeat(p, held[(p.model_version, p.as_of)]) for i, p in enumerate(predictions)]

    async def _held(self, predictions: Sequence[PredictionRecord]) -> dict[tuple[str, datetime], PredictionRecord]:
        """The records MongoDB holds for the keys of `predictions`."""
        if not predictions:
            return {}
        keys = [{"model_version": p.model_version, "as_of": p.as_of} for p in predictions]
        with self._errors(f"reading {len(keys)} stored predictions"):
            docs = await self._collection.find({"$or": keys}, projection=_NO_ID).to_list()
        held = {(d["model_version"], _utc(d["as_of"], "as_of")[0]): PredictionRecord.from_document(d) for d in docs}
        missing = [k for k in keys if (k["model_version"], k["as_of"]) not in held]
        if missing:  # a key the write reported present is gone: never answer "stored" for it
            raise StoreError(f"MongoDB lost {len(missing)} predictions between writing and reading them back")
        return held

    async def latest(self, model_version: str | None = None) -> PredictionRecord | None:
        """The prediction with the newest as_of, of `model_version` or of any version; None when there is none."""
        query = _query(model_version)  # a bad argument is a ValueError, not a store failure
        with self._errors("reading the latest prediction"):
            doc = await self._collection.find_one(query, projection=_NO_ID, sort=_NEWEST_FIRST)
        return None if doc is None else PredictionRecord.from_document(doc)

    async def get(self, model_version: str, as_of: datetime) -> PredictionRecord | None:
        """The stored prediction of `model_version` for the bar `as_of` (the first one written), or None."""
        query = {"model_version": str(model_version), "as_of": _key_time(as_of, "as_of")}
        with self._errors("reading a prediction"):
            doc = await self._collection.find_one(query, projection=_NO_ID)
        return None if doc is None else PredictionRecord.from_document(doc)

    async def history(self, start: datetime | None, end: datetime | None, model_version: str | None = None,
                      limit: int = 100, before: datetime | None = None) -> HistoryPage:
        """Predictions with start <= as_of < end (and as_of < before), newest first, at most `limit` a page.

        The cursor is an as_of, so a page never splits the predictions of several model versions that
        share one as_of: it stops before them, or, when they alone exceed `limit`, holds all of them.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}, got {limit!r}")
        lower, end_utc, before_utc = (_bound_time(start, "start"), _bound_time(end, "end"),
                                      _bound_time(before, "before"))
        if lower is not None and end_utc is not None and lower >= end_utc:
            raise ValueError(f"start {lower.isoformat()} must be before end {end_utc.isoformat()}")
        upper = min((t for t in (end_utc, before_utc) if t is not None), default=None)
        query = _query(model_version, lower, upper)
        with self._errors("reading prediction history"):
            docs = await self._find(query, limit + 1)
            if len(docs) <= limit:
                return HistoryPage([PredictionRecord.from_document(d) for d in docs], None)
            boundary = docs[limit]["as_of"]  # the first prediction that does not fit
            page = [d for d in docs[:limit] if d["as_of"] != boundary]
            more = True
            if not page:
                page = await self._find({**_query(model_version), "as_of": boundary}, 0)
                more = await self._collection.find_one(_query(model_version, lower, boundary)) is not None
        return HistoryPage([PredictionRecord.from_document(d) for d in page], page[-1]["as_of"] if more else None)

    async def _find(self, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        return await self._collection.find(query, projection=_NO_ID, sort=_NEWEST_FIRST, limit=limit).to_list()

    def _scrub(self, message: object) -> str:
        """`message` without the URI's password (pymongo's InvalidURI quotes the whole URI)."""
        return scrub(message, self._secrets)


def _repeat(new: PredictionRecord, held: PredictionRecord) -> SaveResult:
    """A prediction whose key MongoDB already held: the same inputs (or unhashed ones) or a conflict."""
    same = new.inputs_sha256 is None or held.inputs_sha256 == new.inputs_sha256
    return SaveResult(new.model_version, new.as_of, SaveOutcome.ALREADY_PRESENT if same else SaveOutcome.CONFLICT,
                      held)


def _query(model_version: str | None, lower: datetime | None = None, upper: datetime | None = None) -> dict[str, Any]:
    """A filter built from values only (no string interpolation): model version and lower <= as_of < upper."""
    if model_version is not None and not 0 < len(str(model_version)) <= MAX_KEY_CHARS:
        raise ValueError(f"model_version must have 1 to {MAX_KEY_CHARS} characters")
    query: dict[str, Any] = {} if model_version is None else {"model_version": str(model_version)}
    bounds = {op: t for op, t in (("$gte", lower), ("$lt", upper)) if t is not None}
    if bounds:
        query["as_of"] = bounds
    return query
