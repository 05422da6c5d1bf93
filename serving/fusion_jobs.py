"""What the portfolio service hands to the batched fusion service: one request's window parts, as arrays.

The portfolio service (the entry) checks and prepares each request in its own thread, gets its article vectors
from the encoder service, and sends the window's parts (market features, and its texts' bars, assets and vectors:
`PortfolioRuntime.job_parts`, far smaller than the dense per-asset news grid) with the package they were prepared
with; the fusion service builds the fusion inputs from them (`PortfolioRuntime.window_inputs`, the code the
offline path runs) and, an inner service never on the public port, merges concurrent jobs into one fusion run of
that same package and answers logits and weights per job. A job names its package folder
and version, so a batch never mixes versions and a model swap in the entry is followed by the fusion service on
its next job.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from serving.errors import Unavailable

if TYPE_CHECKING:  # onnxruntime is a runtime-only dependency (`bentoml build` works without it)
    from serving.runtime import PortfolioRuntime

__all__ = ["FusionJob", "FusionOutcome", "RuntimeCache"]

log = logging.getLogger(__name__)


class FusionJob(BaseModel):
    """One prepared request's window parts (`PortfolioRuntime.job_parts`: market features, its texts' bars,
    assets and vectors; C order, no batch axis) and the package that prepared it."""

    package: str = Field(description="Folder of the model package the inputs were prepared with.")
    version: str = Field(description="Its version: the fusion service refuses a folder holding another one.")
    shapes: dict[str, list[int]] = Field(description="Shape of each part.")
    dtypes: dict[str, str] = Field(description="numpy dtype of each part, e.g. '<f4'.")
    arrays: dict[str, bytes] = Field(description="Raw bytes of each part.")

    @classmethod
    def of(cls, package: Path, version: str, parts: dict[str, np.ndarray]) -> FusionJob:
        arrays = {name: np.ascontiguousarray(value) for name, value in parts.items()}
        return cls(package=str(package), version=version, shapes={n: list(a.shape) for n, a in arrays.items()},
                   dtypes={n: a.dtype.str for n, a in arrays.items()},
                   arrays={n: a.tobytes() for n, a in arrays.items()})

    def parts(self) -> dict[str, np.ndarray]:
        return {name: np.frombuffer(raw, dtype=np.dtype(self.dtypes[name])).reshape(self.shapes[name])
                for name, raw in self.arrays.items()}


class FusionOutcome(BaseModel):
    """Logits and weights in the model's symbol order, or why the job failed (`error`, with an HTTP status)."""

    logits: list[float] | None = None
    weights: list[float] | None = None
    status: int = 200
    error: str | None = None


class RuntimeCache:
    """Runtimes by package folder, loaded on first use with `load(folder)`; the `keep` most recent stay open
    (the current package, and the previous one while jobs prepared before a swap drain)."""

    def __init__(self, load: Callable[[Path], PortfolioRuntime], keep: int = 2) -> None:
        self._load = load
        self._keep = keep
        self._runtimes: OrderedDict[str, PortfolioRuntime] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, package: str, version: str) -> PortfolioRuntime:
        """The runtime of `package`; Unavailable when it cannot be loaded or holds another version than `version`."""
        async with self._lock:  # one load at a time: concurrent batches of a new package wait for the first
            runtime = self._runtimes.get(package)
            if runtime is None:
                try:
                    runtime = await asyncio.to_thread(self._load, Path(package))
                except Exception as err:
                    log.error("the fusion service cannot load %s: %s: %s", package, type(err).__name__, err)
                    raise Unavailable(f"the fusion service cannot load model {version}: {type(err).__name__}: "
                                      f"{err}") from None
                self._runtimes[package] = runtime
                while len(self._runtimes) > self._keep:
                    self._runtimes.popitem(last=False)
            self._runtimes.move_to_end(package)
        if runtime.version != version:
            raise Unavailable(f"the package at {package} holds model {runtime.version}, not {version}; retry")
        return runtime
