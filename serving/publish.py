"""Publish the latest weights to Redis (optional extra `live`: the `redis` client), as the seed's loop did.

One JSON document per publish, written to a key (SET, so a consumer that starts late reads the latest) and
sent on a channel (PUBLISH, so subscribers hear about it at once), in one MULTI/EXEC transaction. The key
only moves forward: a publish for an older as-of bar than the key holds (a back-fill, `--as-of` an older
bar) changes neither the key nor the channel, checked under WATCH so concurrent publishers cannot race. The URL
(`NFC_REDIS_URL`, e.g. `redis://:password@host:6379/0`) may hold a password
(any character: neuralfusion/redact.py); errors show it redacted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from neuralfusion.redact import encode_userinfo, redact_uri, scrub
from serving.store import PredictionRecord

__all__ = ["PublishError", "Published", "RedisPublisher", "weights_message"]


class PublishError(RuntimeError):
    """Redis did not take the message; the text names the server (password hidden)."""


def weights_message(record: PredictionRecord) -> str:
    """The published JSON: model version, as-of time (ISO 8601, UTC), weights and logits per symbol."""
    return json.dumps({"model_version": record.model_version, "as_of": record.as_of.isoformat(),
                       "symbols": list(record.symbols), "weights": record.weights, "logits": record.logits,
                       "horizon_bars": record.horizon_bars, "request_id": record.request_id}, sort_keys=True)


@dataclass(frozen=True)
class Published:
    """What a publish did: "published", "unchanged" (the key held this message) or "older" (the key holds a
    newer bar, left as it is); `receivers` on the channel; `key_as_of` the bar the key holds afterwards."""

    status: str
    receivers: int
    key_as_of: datetime | None


class RedisPublisher:
    """SET `key` and PUBLISH on `channel` (either may be None to skip it) on the Redis at `url`."""

    def __init__(self, url: str, key: str | None = "nfc:weights:latest", channel: str | None = "nfc:weights",
                 client: Any = None) -> None:
        if not key and not channel:
            raise ValueError("give a Redis key, a channel or both to publish to")
        self.url, self.key, self.channel = url, key, channel
        self._client = client

    def _redis(self) -> Any:
        if self._client is None:
            try:
                import redis
            except ImportError:
                raise RuntimeError("publishing to Redis needs the live extra: "
                                   "pip install 'neuralfusioncore[live]'") from None
            self._client = redis.Redis.from_url(encode_userinfo(self.url), socket_timeout=10, socket_connect_timeout=10)
        return self._client

    def publish(self, record: PredictionRecord) -> Published:
        """Send `record` unless the key holds a newer as-of bar (the key only moves forward) or this very
        message (a repeated run publishes nothing). The check and the write are one WATCH/MULTI transaction,
        so a concurrent publisher of a newer bar is never overwritten."""
        message = weights_message(record)
        try:
            client = self._redis()
            from redis.exceptions import WatchError

            while True:
                with client.pipeline(transaction=True) as pipe:
                    try:
                        held = self._held(pipe)
                        if held is not None and held[1] == message:
                            return Published("unchanged", 0, held[0])
                        if held is not None and held[0] is not None and held[0] > record.as_of:
                            return Published("older", 0, held[0])
                        pipe.multi()
                        if self.key:
                            pipe.set(self.key, message)
                        if self.channel:
                            pipe.publish(self.channel, message)
                        replies = pipe.execute()
                    except WatchError:
                        continue  # another publisher wrote the key between our read and write: decide again
                return Published("published", int(replies[-1]) if self.channel else 0, record.as_of)
        except Exception as err:  # redis-py's connection, auth and response errors
            raise PublishError(f"could not publish to Redis at {redact_uri(self.url)}: "
                               f"{type(err).__name__}: {scrub(err, uris=[self.url])}") from None

    def _held(self, pipe: Any) -> tuple[datetime | None, str] | None:
        """(as-of, message) the key holds now, watched until the transaction; None without a key or value.
        A value that is not our JSON (as-of None) may be replaced."""
        if not self.key:
            return None
        pipe.watch(self.key)
        raw = pipe.get(self.key)
        if raw is None:
            return None
        text = raw.decode(errors="replace")
        try:
            as_of = datetime.fromisoformat(json.loads(text)["as_of"])
        except (ValueError, KeyError, TypeError):
            return None, text
        return as_of, text

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
