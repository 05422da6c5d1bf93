"""Which ONNX Runtime execution provider this process runs the model on, decided before any model graph opens.

ONNX Runtime does not fail when CUDA cannot start (onnxruntime-gpu on a host without a usable GPU, driver or
CUDA libraries): it logs "Failed to create CUDAExecutionProvider" and opens the session on the CPU, so a graph
meant for the GPU then runs on the CPU provider, and a float16 graph there can crash the whole process while
the session is still being optimised, before `get_providers()` could be asked. So CUDA is tried first on a
graph of one node (`PROBE_GRAPH`, y = x + x): only when that session really runs on CUDA and computes the right
answer does the model run on CUDA; otherwise everything runs on the CPU provider alone, with the CPU graphs.

    choice = choose_device("auto")      # ExecutionChoice(device="cpu", providers=("CPUExecutionProvider",), ...)

`device="cuda"` without a usable CUDA is a `DeviceError` saying why (the service stays up, not ready, and
says so); `"auto"` falls back to the CPU and `choice.reason` says why, for the log and /model_info.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

__all__ = ["CPU", "CUDA", "DEVICES", "PROBE_GRAPH", "DeviceError", "ExecutionChoice", "choose_device", "probe_cuda"]

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# ONNX model, IR 7, opset 13: graph "cuda_probe", y = Add(x, x) on float32[1]. Serving does not depend on the
# `onnx` package and the bento packs only serving's .py files, so the 72 bytes live here; the tests rebuild them
# with onnx.helper and compare.
PROBE_GRAPH = bytes.fromhex(
    "08073a3e0a0e0a01780a01781201792203416464120a637564615f70726f62655a0f0a0178120a0a08080112040a020801620f0a"
    "0179120a0a08080112040a02080142040a00100d")


class DeviceError(RuntimeError):
    """The device asked for (NFC_DEVICE, NFC_ORT_VARIANT) cannot run here; the message says why and what to set."""


@dataclass(frozen=True)
class ExecutionChoice:
    """The device the model runs on, the providers its sessions get (in order), and why."""

    device: str  # "cuda" or "cpu"
    providers: tuple[str, ...]
    reason: str


def probe_cuda(available: Sequence[str]) -> str | None:
    """None when a CUDA session on PROBE_GRAPH runs on CUDA and computes 2x, else why CUDA is not usable.

    `available` is what this onnxruntime build offers (`ort.get_available_providers()`); a build without CUDA
    is not probed. ONNX Runtime's own fallbacks (retrying on the CPU when CUDA fails) are switched off, and its
    log stays at warning level so the line naming the missing library or driver is printed."""
    if CUDA not in available:
        return f"onnxruntime {ort.__version__} has no {CUDA} (a CPU build; the 'gpu' extra installs onnxruntime-gpu)"
    try:
        with warnings.catch_warnings(record=True) as raised:
            warnings.simplefilter("always")
            session = ort.InferenceSession(PROBE_GRAPH, providers=[CUDA, CPU], enable_fallback=0)
        for warning in raised:
            log.warning("onnxruntime, opening the CUDA probe: %s", warning.message)
        in_use = session.get_providers()
        if not in_use or in_use[0] != CUDA:
            return (f"ONNX Runtime could not start {CUDA} (session providers {in_use}; its log above names the "
                    "missing GPU, driver or CUDA/cuDNN library)")
        x = np.array([1.5], dtype=np.float32)
        [y] = session.run(None, {"x": x})
    except Exception as err:  # any failure of the probe means "not usable": its message is the reason
        return f"the CUDA probe failed: {type(err).__name__}: {err}"
    if not np.array_equal(y, x + x):
        return f"the CUDA probe computed {y.tolist()} for 1.5 + 1.5"
    return None


@functools.cache
def _decide(device: str, available: tuple[str, ...]) -> ExecutionChoice:
    if device == "cpu":
        return ExecutionChoice("cpu", (CPU,), "NFC_DEVICE=cpu")
    why_not = probe_cuda(available)
    if why_not is None:
        return ExecutionChoice("cuda", (CUDA, CPU), f"NFC_DEVICE={device}: CUDA ran the probe graph")
    if device == "cuda":
        raise DeviceError(f"NFC_DEVICE=cuda but CUDA is not usable here: {why_not}; install a working GPU "
                          "driver and CUDA, or set NFC_DEVICE=auto or cpu to serve on the CPU")
    # a CPU build is the expected case on CPU hosts; a GPU build that cannot start CUDA is worth a warning
    log.log(logging.WARNING if CUDA in available else logging.INFO, "NFC_DEVICE=auto: serving on the CPU because %s",
            why_not)
    return ExecutionChoice("cpu", (CPU,), f"cuda unavailable, fell back to the CPU: {why_not}")


def choose_device(device: str = "auto", available: Sequence[str] | None = None) -> ExecutionChoice:
    """The device for `device` ("auto", "cpu", "cuda"), probed once per process and `available` list
    (default: this onnxruntime build's providers). DeviceError when "cuda" cannot run."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return _decide(device, tuple(ort.get_available_providers() if available is None else available))
