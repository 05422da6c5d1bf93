"""ONNX Runtime vs PyTorch eager latency for the news encoder and the fusion model, side by side in one run.

    python bench/bench_onnx.py                       # default-size encoder + CGA model, this CPU's threads
    python bench/bench_onnx.py --threads 2 --repeats 30
    python bench/bench_onnx.py --package runs/demo/package --model runs/demo/model
    python bench/bench_onnx.py --encoder-batches 1 32 --fusion-batches 1 32 256   # skip the slow encoder x256
    python bench/bench_onnx.py --device cuda           # GPU: torch eager fp32 vs ORT CUDA fp32 and fp16

Without --package it builds the default models in a temporary folder: the offline default BigBird
(EncoderSetupConfig: 4 layers, hidden 256, random init, tokenizer trained on the synthetic news) and a
random-init CgaModel of the default config (12 assets, L=80), and exports them with export.onnx_export.
Encoder inputs are real synthetic articles (batch padded to its longest article, as serving does), so
the sequence length is the one real articles have. Each row is the median of --repeats runs after a
warm-up (batches over 32: a quarter of them, at least 3; the `runs` column); torch and the tuned ONNX Runtime
session use the same number of intra-op threads. ORT columns on the CPU:
  default: the exported graph, default SessionOptions (all optimisations, ORT's own thread count);
  tuned:   the package's offline-optimised `.cpu.onnx` graph, intra_op_num_threads = torch's threads,
           all optimisations, idle threads not spinning (on a CPU shared with other work, spinning
           threads steal the cores; on a dedicated machine leave spinning on).
With --device cuda (needs a CUDA torch and onnxruntime-gpu, the `gpu` extra) torch runs fp32 eager on the GPU
with its inputs already there, and ORT runs the fp32 graph (default) and what the server runs on CUDA (tuned:
the encoder's fp16 graph, the fusion graph's fp32 one, which is never float16) on the CUDAExecutionProvider from
host numpy inputs, so ORT's times include the copies. CUDA is checked first the way the server checks it
(serving.providers: a probe graph), so no graph meant for the GPU is opened on the CPU.
The three paths are timed in interleaved rounds, so load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

# before torch loads OpenMP: spinning OpenMP threads stall torch on a busy small CPU (as `nfc` does)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnxruntime as ort
import torch
from machine import machine, machine_line, markdown_table

from export.onnx_export import (
    CgaOnnxWrapper,
    convert_fp16,
    export_encoder,
    export_fusion,
    open_session,
    optimize_for_cpu,
)
from export.package import graph_files
from neuralfusion.data.news import article_text
from neuralfusion.manifest import load_manifest
from neuralfusion.model_config import CgaConfig
from neuralfusion.synth import SynthConfig, generate_market
from serving.providers import CPU, CUDA, DeviceError, choose_device
from training.encoder import NfcEncoder
from training.encoder_init import init_encoder
from training.model import CgaModel, cga_example_inputs
from training.runs import load_run


def median_ms(fns: list[Callable[[], object]], repeats: int, warmup: int = 3) -> list[float]:
    """Median milliseconds of each function, timed in interleaved rounds so that load from other processes
    on a shared CPU falls on all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def synthetic_articles(seed: int) -> list[str]:
    news = generate_market(SynthConfig(seed=seed)).news
    return [article_text(item["title"], item.get("body") or "") for item in news]


def build_models(workdir: Path, texts: list[str], device: str) -> tuple[NfcEncoder, CgaModel, dict[str, Path]]:
    """The default-size encoder and CGA model, exported and CPU-optimised (the encoder in fp16 for CUDA) into
    `workdir`."""
    encoder = NfcEncoder.load(init_encoder(texts, workdir / "encoder"), device=device, dtype="float32")
    torch.manual_seed(0)
    model = CgaModel(CgaConfig(n_assets=12, embed_dim=encoder.dim)).eval()
    paths = {"encoder": export_encoder(encoder, workdir / "encoder.onnx"),
             "fusion": export_fusion(model, workdir / "fusion.onnx")}
    variant, make = ("fp16", convert_fp16) if device == "cuda" else ("cpu", optimize_for_cpu)
    for graph in ("encoder", "fusion"):
        if variant in graph_files(graph):
            paths[f"{graph}.{variant}"] = make(paths[graph], workdir / graph_files(graph)[variant])
    return encoder, model.to(device), paths


def load_package(package: Path, run_dir: Path, device: str) -> tuple[NfcEncoder, CgaModel, dict[str, Path]]:
    manifest = load_manifest(package)
    spec = manifest.data["encoder"]
    encoder = NfcEncoder.load(manifest.data["source"]["encoder"], attention_type=spec["attention_type"],
                              pooling=spec["pooling"], max_length=spec["max_length"], device=device, dtype="float32")
    model = CgaModel.from_checkpoint(load_run(run_dir).weights_path).to(device)
    paths = {graph: manifest.graph_path(graph) for graph in ("encoder", "fusion")}
    paths.update({f"{graph}.{variant}": manifest.graph_path(graph, variant) for graph in ("encoder", "fusion")
                  for variant in ("cpu", "fp16") if variant in manifest.data["graphs"][graph]["variants"]})
    return encoder, model, paths


def cuda_session(path: Path) -> ort.InferenceSession:
    """A CUDA session (CUDA was probed in `main`); ORT's retry on the CPU is off, and the provider is checked."""
    session = ort.InferenceSession(str(path), providers=[CUDA, CPU], enable_fallback=0)
    if session.get_providers()[0] != CUDA:
        sys.exit(f"onnxruntime {ort.__version__} cannot run on CUDA here (providers {session.get_providers()}): "
                 "install onnxruntime-gpu (the `gpu` extra) for a CUDA build matching the driver")
    return session


def sessions(paths: dict[str, Path], graph: str, threads: int,
             device: str) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """(default, tuned) sessions for one graph (module docstring)."""
    if device == "cuda":  # the fusion graph has no fp16 variant: the server runs its fp32 graph on CUDA too
        return cuda_session(paths[graph]), cuda_session(paths.get(f"{graph}.fp16", paths[graph]))
    default = ort.InferenceSession(str(paths[graph]), providers=["CPUExecutionProvider"])
    return default, open_session(paths[f"{graph}.cpu"], threads=threads, spinning=False)


def synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """`fn` that returns only once the GPU has finished its work (CUDA kernels run asynchronously)."""
    if device != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize())


def runs_for(batch: int, repeats: int) -> int:
    """Fewer rounds for big batches (seconds each for the encoder on a small CPU), at least 3."""
    return repeats if batch <= 32 else max(3, repeats // 4)


def bench_row(name: str, batch: int, shape: str, torch_fn: Callable[[], object], feeds: dict[str, np.ndarray],
              default: ort.InferenceSession, tuned: ort.InferenceSession, repeats: int) -> None:
    """Time one input on the three paths and print a row with the speed-ups over torch."""
    with torch.inference_mode():
        torch_ms, default_ms, tuned_ms = median_ms(
            [torch_fn, lambda: default.run(None, feeds), lambda: tuned.run(None, feeds)], repeats,
            warmup=min(3, repeats))
    print(f"| {name} | {batch} | {shape} | {repeats} | {torch_ms:.2f} | {default_ms:.2f} | {tuned_ms:.2f} "
          f"| {torch_ms / default_ms:.2f}x | {torch_ms / tuned_ms:.2f}x |", flush=True)


def bench_encoder(encoder: NfcEncoder, paths: dict[str, Path], ids: list[list[int]], threads: int, repeats: int,
                  batches: list[int], device: str) -> None:
    """Rows for the first `batch` articles (token ids), padded to the longest of them."""
    default, tuned = sessions(paths, "encoder", threads, device)
    if max(batches, default=0) > len(ids):
        sys.exit(f"encoder batch {max(batches)} is larger than the {len(ids)} synthetic articles")
    for batch in batches:
        input_ids, mask = encoder.pad_batch(ids[:batch])
        feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": mask.cpu().numpy()}
        bench_row("encoder", batch, f"T={input_ids.shape[1]}",
                  synced(partial(encoder.forward_pooled, input_ids, mask), device), feeds, default, tuned,
                  runs_for(batch, repeats))


def bench_fusion(model: CgaModel, paths: dict[str, Path], threads: int, repeats: int, batches: list[int],
                 device: str) -> None:
    default, tuned = sessions(paths, "fusion", threads, device)
    config = model.config
    for batch in batches:
        inputs = cga_example_inputs(config, batch, seed=batch)
        feeds = {name: x.numpy() for name, x in zip(CgaOnnxWrapper.input_names, inputs, strict=True)}
        on_device = [x.to(device) for x in inputs]
        bench_row("fusion", batch, f"L={config.lookback} N={config.n_assets}",
                  synced(partial(model, *on_device), device), feeds, default, tuned, runs_for(batch, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="a model package to time (needs --model)")
    parser.add_argument("--model", type=Path, help="the run folder the package was exported from")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for both (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--encoder-batches", type=int, nargs="*", default=[1, 32, 256])
    parser.add_argument("--fusion-batches", type=int, nargs="*", default=[1, 32, 256])
    args = parser.parse_args()
    if args.package and not args.model:
        parser.error("--package needs --model RUN (the PyTorch side of the comparison)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (CPU build or no GPU)")
    if args.device == "cuda":
        try:
            choose_device("cuda")
        except DeviceError as err:
            parser.error(f"--device cuda: {err}")
    if min(args.encoder_batches + args.fusion_batches, default=1) < 1:
        parser.error("batch sizes must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    texts = synthetic_articles(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if args.package:
            encoder, model, paths = load_package(args.package, args.model, args.device)
        else:
            encoder, model, paths = build_models(Path(tmp), texts, args.device)
        ids, n_tokens = encoder.tokenize(texts)
        print(f"{machine_line(machine())}; torch {torch.__version__} eager vs onnxruntime {ort.__version__} on "
              f"{args.device}, {threads} intra-op threads; median ms. Articles: median {np.median(n_tokens):.0f} "
              f"tokens, 90th percentile {np.percentile(n_tokens, 90):.0f}, longest {n_tokens.max()}\n")
        tuned = "ort served" if args.device == "cuda" else "ort tuned"
        print(markdown_table(["model", "batch", "shape", "runs", "torch", "ort default", tuned,
                              "speed-up", f"{tuned} speed-up"], []), flush=True)
        bench_encoder(encoder, paths, ids, threads, args.repeats, args.encoder_batches, args.device)
        bench_fusion(model, paths, threads, args.repeats, args.fusion_batches, args.device)


if __name__ == "__main__":
    main()
