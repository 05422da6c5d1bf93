"""Publish the latest weights to Redis (optional extra `live`: the `redis` client), as the seed's loop did.

One JSON document per publish, written to a key (SET, so a consumer that starts late reads the latest) and
sent on a channel (PUBLISH, so subscribers hear about it at once), in one MULTI/EXEC transaction. The URL
(`NFC_REDIS_URL`, e.g. `redis://:password@host:6379/0`) may hold a password; errors show it redacted.
"""

from __future__ import annotations

import json
from typing import Any

from serving.store import PredictionRecord, redact_uri

__all__ = ["PublishError", "RedisPublisher", "weights_message"]


class PublishError(RuntimeError):
    """Redis did not take the message; the text names the server (password hidden)."""


def weights_message(record: PredictionRecord) -> str:
    """The published JSON: model version, as-of time (ISO 8601, UTC), weights and logits per symbol."""
    return json.dumps({"model_version": record.model_version, "as_of": record.as_of.isoformat(),
                       "symbols": list(record.symbols), "weights": record.weights, "logits": record.logits,
                       "horizon_bars": record.horizon_bars, "request_id": record.request_id}, sort_keys=True)


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
            self._client = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=10)
        return self._client

    def publish(self, record: PredictionRecord) -> int | None:
        """Send `record`; return how many subscribers received it on the channel (0 without a channel), or
        None when the key already holds exactly this message (a repeated run publishes nothing)."""
        message = weights_message(record)
        try:
            client = self._redis()
            if self.key and client.get(self.key) == message.encode():
                return None
            pipe = client.pipeline(transaction=True)
            if self.key:
                pipe.set(self.key, message)
            if self.channel:
                pipe.publish(self.channel, message)
            replies = pipe.execute()
        except Exception as err:  # redis-py's connection, auth and response errors
            raise PublishError(f"could not publish to Redis at {redact_uri(self.url)}: "
                               f"{type(err).__name__}: {err}") from None
        return int(replies[-1]) if self.channel else 0

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
