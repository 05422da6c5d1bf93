"""The model package a portfolio worker serves: loading it, and swapping it without a restart.

With NFC_RELOAD_INTERVAL_S set, each portfolio worker resolves the store tag NFC_MODEL (e.g.
`neuralfusion:latest`: the newest entry labelled promoted, serving/model_store.py) that often and, when it
names another version, loads and verifies that package beside the current one and then replaces the runtime
in one assignment. A batch reads the runtime once and uses it
from preparation to the stored record, so every answer comes from one version and names it. A package that
fails to load, or whose encoder differs from the one the encoder service runs (that would need a restart), is
refused with the reason in the log and in /model_info, and the current one stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio.to_thread
import bentoml

from serving.model_store import resolve_model_tag
from serving.settings import ServeSettings

with bentoml.importing():  # runtime-only: `bentoml build` works without onnxruntime installed
    from serving.runtime import PortfolioRuntime

__all__ = ["ServedModel", "load_package"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_package(settings: ServeSettings, build: Callable[[Path], T],
                 folder: Path | None = None) -> tuple[T | None, str | None]:
    """`build(package folder)`, or (None, why) when the package is missing, altered or unreadable: the
    service then stays up but not ready, and says why, instead of crashing its worker in a restart loop.
    The folder is `folder`, else NFC_MODEL_PATH, else the store entry NFC_MODEL resolves to (`resolve_model_tag`)."""
    try:
        # the store is read only here, when a package is loaded: `name:latest` is the newest promoted entry
        if folder is None:
            folder = Path(settings.model_path) if settings.model_path else Path(
                bentoml.models.get(resolve_model_tag(settings.model)).path)
        return build(folder), None
    except Exception as err:  # any failure to load means "not ready", with the reason
        reason = f"{type(err).__name__}: {err}"
        log.error("model not loaded, the service will not become ready: %s", reason)
        return None, reason


class ServedModel:
    """The runtime one portfolio worker serves (None while none loaded, `error` says why) and its swaps.

    `encoder_fingerprint()` answers the fingerprint of the encoder the encoder service runs (or raises).
    """

    def __init__(self, settings: ServeSettings, encoder_fingerprint: Callable[[], Awaitable[str]]) -> None:
        self.settings = settings
        self._encoder_fingerprint = encoder_fingerprint
        self.runtime, self.error = load_package(settings, self.build)
        self.refused: str | None = None  # "<tag>: <why>" of the last swap refused

    def build(self, folder: Path) -> PortfolioRuntime:
        return PortfolioRuntime.load(folder, self.settings.device, self.settings.ort_variant,
                                     self.settings.ort_threads, with_encoder=False)

    async def follow_tag(self, interval_s: float) -> None:
        """Every `interval_s`, swap in the package NFC_MODEL resolves to when it is another version."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                resolved = await anyio.to_thread.run_sync(resolve_model_tag, self.settings.model)  # newest promoted
                model = await anyio.to_thread.run_sync(bentoml.models.get, resolved)
                await self.swap_to(str(model.tag), Path(model.path))
            except Exception as err:  # e.g. the store unreadable for a moment: keep serving, try again next time
                log.warning("checking %s for a model swap failed: %s", self.settings.model, err)

    async def swap_to(self, tag: str, folder: Path) -> bool:
        """Load and verify the package in `folder` (model-store `tag`) and make it the served runtime; False
        when that version is already served or was refused (reason in the log and /model_info)."""
        current = self.runtime
        version = bentoml.Tag.from_str(tag).version
        if (current is not None and version == current.version) or (self.refused or "").startswith(f"{tag}: "):
            return False
        runtime, error = await anyio.to_thread.run_sync(load_package, self.settings, self.build, folder)
        if runtime is not None:
            error = await self.encoder_mismatch(runtime)
        if runtime is None or error is not None:
            self.refused = f"{tag}: {error}"
            log.error("model swap to %s refused, still serving %s: %s", tag,
                      current.version if current else "nothing", error)
            return False
        self.runtime, self.error = runtime, None  # one assignment: a batch holds the runtime it started with
        log.info("model swapped: now serving %s (was %s)", tag, current.version if current else "nothing")
        return True

    async def encoder_mismatch(self, runtime: PortfolioRuntime) -> str | None:
        """Why `runtime` cannot run with the encoder service's encoder, or None when it can."""
        wanted = runtime.manifest.data["encoder"]["fingerprint"]
        try:
            running = await self._encoder_fingerprint()
        except Exception as err:  # the encoder service not answering, or without a model
            return f"the encoder service cannot confirm its encoder ({err})"
        if running != wanted:
            return (f"its encoder (fingerprint {wanted[:12]}) is not the one the encoder service runs "
                    f"({running[:12]}); restart the service to change the encoder")
        return None
