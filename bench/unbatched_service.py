"""The portfolio service with its predict queue unbatched: the batch-size-1 baseline of bench_serving.py.

    NFC_PREDICT_MAX_BATCH=1 bentoml serve bench.unbatched_service:PortfolioService --working-dir .

BentoML refuses `max_batch_size=1` (its validator wants > 1), so serving.service cannot start with
NFC_PREDICT_MAX_BATCH=1. This module imports serving.service with `bentoml.api` wrapped so that an API
declared batchable with max_batch_size=1 is declared not batchable: each /predict and gRPC call then runs
`predict_batch` with its own one-job list (one fusion run, one store write per request), exactly what a
batch size of 1 means. Everything else is serving.service unchanged. Once serving.service itself turns
batching off for NFC_PREDICT_MAX_BATCH=1, the wrapper changes nothing.
"""

from __future__ import annotations

from typing import Any

import bentoml

_api = bentoml.api


def _api_unbatched_at_one(func: Any = None, /, **params: Any) -> Any:
    if params.get("batchable") and params.get("max_batch_size") == 1:
        params = {k: v for k, v in params.items() if k not in ("batchable", "max_batch_size", "max_latency_ms")}
    return _api(func, **params) if func is not None else _api(**params)


bentoml.api = _api_unbatched_at_one

from serving.service import EncoderService, PortfolioService  # noqa: E402 - after the wrapper, on purpose

__all__ = ["EncoderService", "PortfolioService"]
