"""Serving configuration from `NFC_*` environment variables (docs/DESIGN.md, serving), checked in one place.

| variable                    | default              | meaning                                                      |
|-----------------------------|----------------------|--------------------------------------------------------------|
| NFC_MODEL                   | neuralfusion:latest  | BentoML model-store tag of the model package                 |
| NFC_MODEL_PATH              | (unset)              | a package folder instead of the store (then NFC_MODEL unused) |
| NFC_MONGO_URI               | mongodb://127.0.0.1:27017/ | where predictions are stored                           |
| NFC_MONGO_DB                | neuralfusion         | database of the `predictions` collection                     |
| NFC_API_KEY                 | (unset: open)        | key required on every route but /livez, /readyz, /metrics    |
| NFC_API_KEY_READS           | key                  | open: /latest, /history, /model_info, /docs.json without key |
| NFC_MAX_BODY_BYTES          | (request limits)     | larger bodies are answered 413 before they are read          |
| NFC_BODY_TIMEOUT_S          | 20                   | a body not complete this long after its headers: 408         |
| NFC_AS_OF_LEAD_BARS         | 1                    | the last bar may close at most this many bars after now      |
| NFC_GRPC_PORT               | (unset: no gRPC)     | port of the gRPC server each worker starts                   |
| NFC_GRPC_HOST               | 0.0.0.0              | address it binds                                             |
| NFC_DEVICE                  | auto                 | auto (CUDA when it runs a probe graph, else CPU), cpu, cuda  |
| NFC_ORT_VARIANT             | (per device)         | fp32, cpu or fp16 (the encoder's, CUDA only) graphs          |
| NFC_ORT_THREADS             | (ORT default)        | intra-op threads per ONNX Runtime session                    |
| NFC_WORKERS                 | 1                    | worker processes of the portfolio service                    |
| NFC_ENCODER_WORKERS         | 1                    | worker processes of the encoder service                      |
| NFC_FUSION_WORKERS          | 1                    | worker processes of the fusion service                       |
| NFC_PREPARE_THREADS         | 2                    | threads a portfolio worker checks and prepares requests in   |
| NFC_PREDICT_MAX_BATCH       | 32                   | most requests merged into one fusion run; 1: no batching     |
| NFC_PREDICT_MAX_LATENCY_MS  | 30000                | batching deadline; BentoML answers 503 when it cannot be met |
| NFC_ENCODER_MAX_BATCH       | 256                  | most texts merged into one encoder call; 1: no batching      |
| NFC_ENCODER_MAX_LATENCY_MS  | 30000                | the encoder's batching deadline                              |
| NFC_TIMEOUT_S               | 60                   | request timeout of the services                              |
| NFC_RELOAD_INTERVAL_S       | (unset: never)       | poll NFC_MODEL this often; swap in the version it resolves to |
| NFC_MONGO_TIMEOUT_MS        | 2000                 | wait for an unreachable MongoDB before answering 503          |
| NFC_PACKAGE_PUBLIC_KEY      | (unset: no check)    | Ed25519 key (PEM or path): load only packages it signed       |
| NFC_VECTOR_CACHE_SIZE       | 4096                 | vectors an encoder worker and a portfolio worker keep; 0: none |
| NFC_VECTOR_CACHE_MONGO      | 0                    | 1: also keep them in NFC_MONGO_DB.news_embeddings (shared)    |
| NFC_BARS_DIR                | (unset)              | /predict/at reads bars (and news) from this data folder       |
| NFC_CLICKHOUSE_URL          | (unset)              | or bars from ClickHouse: clickhouse://user:pw@host:9000/db    |
| NFC_CLICKHOUSE_TABLE        | market.candles       | its table; NFC_CLICKHOUSE_COLUMNS maps columns (as nfc predict) |
| NFC_CLICKHOUSE_LABEL        | open                 | a row's time is its candle's open or close time               |
| NFC_CLICKHOUSE_CANDLE       | 1min                 | length of one table row's candle                              |
| NFC_NEWS_MONGO_URI          | (unset)              | its news from MongoDB (else the folder's, else NFC_MONGO_URI) |
| NFC_NEWS_DB                 | news                 | its database; NFC_NEWS_COLLECTION (news), NFC_NEWS_FIELDS map |
| NFC_MAX_STALENESS           | 15min                | /predict/at refuses an asset whose last bar is older than this |

Request size limits (NFC_MAX_BARS, NFC_MAX_NEWS, NFC_MAX_TEXT_CHARS) live in `serving.schemas.RequestLimits`;
the default NFC_MAX_BODY_BYTES is the largest body those limits allow (`RequestLimits.max_body_bytes`).
The deadlines are maxima, not waits: batches are sent as soon as BentoML's dispatcher expects no gain from
waiting; a deadline that is too short turns load into 503 answers, so set it from the latency target.
Model swaps (NFC_RELOAD_INTERVAL_S, model-store tags only): see the docstring of serving/model_swap.py.
The vector cache (NFC_VECTOR_CACHE_*) and its rounding: serving/vector_cache.py. Predictions by reference
(/predict/at, NFC_BARS_DIR or NFC_CLICKHOUSE_*, NFC_NEWS_*): serving/by_reference.py; the ClickHouse and news
variables are those of `nfc predict`, so the job and the service read the same sources with one configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

__all__ = ["DEFAULT_MODEL_TAG", "DEFAULT_MONGO_URI", "ServeSettings"]

DEFAULT_MODEL_TAG = "neuralfusion:latest"
DEFAULT_MONGO_URI = "mongodb://127.0.0.1:27017/"
_DEVICES = ("auto", "cpu", "cuda")
_VARIANTS = ("fp32", "cpu", "fp16")
_KEY_READS = ("key", "open")
_ZERO_ALLOWED = frozenset({"vector_cache_size"})  # 0 turns the feature off
_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@dataclass(frozen=True)
class ServeSettings:
    """Everything a serving process reads from its environment (module table)."""

    model: str = DEFAULT_MODEL_TAG
    model_path: str | None = None
    mongo_uri: str = DEFAULT_MONGO_URI
    mongo_db: str = "neuralfusion"
    api_key: str | None = field(default=None, repr=False)  # a secret: never in logs or reprs
    api_key_reads: str = "key"
    max_body_bytes: int | None = None
    body_timeout_s: int = 20
    as_of_lead_bars: int = 1
    grpc_port: int | None = None
    grpc_host: str = "0.0.0.0"  # noqa: S104 - a server binds all interfaces unless told otherwise, like BentoML's HTTP
    device: str = "auto"
    ort_variant: str | None = None
    ort_threads: int | None = None
    workers: int = 1
    encoder_workers: int = 1
    fusion_workers: int = 1
    # requests checked and prepared at once per worker: Python code that holds the GIL most of the time, so more
    # threads only take turns at it (one worker at 64 in flight: anyio's default of 40 cost ~1.3x the CPU a request)
    prepare_threads: int = 2
    predict_max_batch: int = 32
    predict_max_latency_ms: int = 30_000
    encoder_max_batch: int = 256
    encoder_max_latency_ms: int = 30_000
    timeout_s: int = 60
    reload_interval_s: int | None = None
    mongo_timeout_ms: int = 2000
    package_public_key: str | None = field(default=None, repr=False)  # PEM text or path (serving/model_store.py)
    vector_cache_size: int = 4096
    vector_cache_mongo: bool = False
    bars_dir: str | None = None
    clickhouse_url: str | None = field(default=None, repr=False)  # may hold a password
    clickhouse_table: str = "market.candles"
    clickhouse_columns: str = ""
    clickhouse_label: str = "open"
    clickhouse_candle: str = "1min"
    news_mongo_uri: str | None = field(default=None, repr=False)  # may hold a password
    news_db: str = "news"
    news_collection: str = "news"
    news_fields: str = ""
    max_staleness: str = "15min"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServeSettings:
        """Settings from `NFC_<FIELD>` variables; a malformed value is an error naming the variable."""
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f"NFC_{f.name.upper()}"
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            if "int" in str(f.type):  # annotations are strings here: "int" or "int | None"
                least = 0 if f.name in _ZERO_ALLOWED else 1
                if not raw.isdigit() or int(raw) < least:
                    raise ValueError(f"{name}={raw!r} must be a {'non-negative' if least == 0 else 'positive'} integer")
                values[f.name] = int(raw)
            elif f.type == "bool":
                if raw.lower() not in _BOOLEANS:
                    raise ValueError(f"{name}={raw!r} must be 1 or 0")
                values[f.name] = _BOOLEANS[raw.lower()]
            else:
                values[f.name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.device not in _DEVICES:
            raise ValueError(f"NFC_DEVICE={settings.device!r} must be one of {_DEVICES}")
        if settings.api_key_reads not in _KEY_READS:
            raise ValueError(f"NFC_API_KEY_READS={settings.api_key_reads!r} must be one of {_KEY_READS}")
        if settings.ort_variant is not None and settings.ort_variant not in _VARIANTS:
            raise ValueError(f"NFC_ORT_VARIANT={settings.ort_variant!r} must be one of {_VARIANTS}")
        if settings.reload_interval_s is not None and settings.model_path:
            raise ValueError("NFC_RELOAD_INTERVAL_S follows a model-store tag (NFC_MODEL); unset NFC_MODEL_PATH")
        if settings.package_public_key is not None:
            from neuralfusion.signing import SignatureError, load_public_key

            try:
                load_public_key(settings.package_public_key)
            except SignatureError as err:
                raise ValueError(f"NFC_PACKAGE_PUBLIC_KEY: {err}") from None
        if settings.grpc_port is not None and settings.grpc_port > 65535:
            raise ValueError(f"NFC_GRPC_PORT={settings.grpc_port} is not a TCP port")
        if settings.bars_dir and settings.clickhouse_url:
            raise ValueError("NFC_BARS_DIR and NFC_CLICKHOUSE_URL both name a bar source for /predict/at; set one")
        if settings.clickhouse_label not in ("open", "close"):
            raise ValueError(f"NFC_CLICKHOUSE_LABEL={settings.clickhouse_label!r} must be open or close")
        for name in ("clickhouse_candle", "max_staleness"):
            if not _positive_duration(getattr(settings, name)):
                raise ValueError(f"NFC_{name.upper()}={getattr(settings, name)!r} must be a duration like 15min")
        return settings

    @property
    def bar_source_configured(self) -> bool:
        """Whether /predict/at has a bar source (NFC_BARS_DIR or NFC_CLICKHOUSE_URL)."""
        return bool(self.bars_dir or self.clickhouse_url)

    @property
    def reads_need_key(self) -> bool:
        """Whether the read routes (/latest, /history, /model_info, the OpenAPI) need the key."""
        return self.api_key is not None and self.api_key_reads == "key"


def _positive_duration(text: str) -> bool:
    import pandas as pd

    try:
        return pd.Timedelta(text) > pd.Timedelta(0)
    except ValueError:
        return False
