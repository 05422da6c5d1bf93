"""Shared fixtures: a clean environment for every test and a real MongoDB wire server on loopback."""

from __future__ import annotations

import os

# Before any test imports torch or huggingface_hub: both read these once at import time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see nfc/cli.py: spinning OpenMP threads stall
os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a model hub
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nfc.embedded_mongo import EmbeddedMongo

pytest_plugins = [
    "live_servers",  # clickhouse_server, redis_url: the live pipeline's servers
    "serving_servers",  # reliable, second_package: `nfc serve` under load, faults and model swaps
]

if TYPE_CHECKING:
    from builders import TinyArtifacts


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NFC_* setting leaks in from the shell, and nothing reaches a model hub."""
    for name in list(os.environ):
        if name.startswith("NFC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of an nx-27017 server started for this test session and stopped after it."""
    server = EmbeddedMongo(Path(tmp_path_factory.mktemp("mongo")))
    with server:
        yield server.uri


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    """The tiny real model package (synthetic data, tiny BigBird, 1-epoch run, ONNX export), built once per
    session and shared by the export and serving tests. Fields: .package (the folder), .data (its data
    folder), .encoder, .embeddings (the run's PyTorch embeddings), .run."""
    from builders import tiny_artifacts

    return tiny_artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny models: on a shared 2-core CPU they run far faster than on two busy
    threads, with the same float sums in every run. Module-scoped, so module fixtures are built under it too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
