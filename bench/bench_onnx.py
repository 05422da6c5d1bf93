"""ONNX Runtime vs PyTorch eager latency for the news encoder and the fusion model, side by side in one run.

    python bench/bench_onnx.py                       # default-size encoder + CGA model, this CPU's threads
    python bench/bench_onnx.py --threads 2 --repeats 30
    python bench/bench_onnx.py --package runs/demo/package --model runs/demo/model

Without --package it builds the default models in a temporary folder: the offline default BigBird
(EncoderSetupConfig: 4 layers, hidden 256, random init, tokenizer trained on the synthetic news) and a
random-init CgaModel of the default config (12 assets, L=80), and exports them with export.onnx_export.
Encoder inputs are real synthetic articles (batch padded to its longest article, as serving does), so
the sequence length is the one real articles have. Each row is the median of --repeats runs after a
warm-up; torch and the tuned ONNX Runtime session use the same number of intra-op threads. ORT columns:
  default: the exported graph, default SessionOptions (all optimisations, ORT's own thread count);
  tuned:   the package's offline-optimised `.cpu.onnx` graph, intra_op_num_threads = torch's threads,
           all optimisations, idle threads not spinning (on a CPU shared with other work, spinning
           threads steal the cores; on a dedicated machine leave spinning on).
The three paths are timed in interleaved rounds, so load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
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

from export.manifest import load_manifest
from export.onnx_export import export_encoder, export_fusion, open_session, optimize_for_cpu
from export.package import graph_files
from neuralfusion.data.news import article_text
from neuralfusion.model_config import CgaConfig
from neuralfusion.synth import SynthConfig, generate_market
from training.encoder import NfcEncoder
from training.encoder_setup import init_encoder
from training.model import CgaModel, CgaOnnxWrapper, cga_example_inputs
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


def build_models(workdir: Path, texts: list[str]) -> tuple[NfcEncoder, CgaModel, dict[str, Path]]:
    """The default-size encoder and CGA model, exported and CPU-optimised into `workdir`."""
    encoder = NfcEncoder.load(init_encoder(texts, workdir / "encoder"), device="cpu", dtype="float32")
    torch.manual_seed(0)
    model = CgaModel(CgaConfig(n_assets=12, embed_dim=encoder.dim)).eval()
    paths = {"encoder": export_encoder(encoder, workdir / "encoder.onnx"),
             "fusion": export_fusion(model, workdir / "fusion.onnx")}
    for graph in ("encoder", "fusion"):
        paths[f"{graph}.cpu"] = optimize_for_cpu(paths[graph], workdir / graph_files(graph)["cpu"])
    return encoder, model, paths


def load_package(package: Path, run_dir: Path) -> tuple[NfcEncoder, CgaModel, dict[str, Path]]:
    manifest = load_manifest(package)
    spec = manifest.data["encoder"]
    encoder = NfcEncoder.load(manifest.data["source"]["encoder"], attention_type=spec["attention_type"],
                              pooling=spec["pooling"], max_length=spec["max_length"], device="cpu", dtype="float32")
    model = CgaModel.from_checkpoint(load_run(run_dir).weights_path)
    paths = {graph: manifest.graph_path(graph) for graph in ("encoder", "fusion")}
    paths.update({f"{graph}.cpu": manifest.graph_path(graph, "cpu") for graph in ("encoder", "fusion")})
    return encoder, model, paths


def sessions(paths: dict[str, Path], graph: str, threads: int) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """(default, tuned) sessions for one graph (module docstring)."""
    default = ort.InferenceSession(str(paths[graph]), providers=["CPUExecutionProvider"])
    return default, open_session(paths[f"{graph}.cpu"], threads=threads, spinning=False)


def bench_row(name: str, batch: int, shape: str, torch_fn: Callable[[], object], feeds: dict[str, np.ndarray],
              default: ort.InferenceSession, tuned: ort.InferenceSession, repeats: int) -> None:
    """Time one input on the three paths and print a row with the speed-ups over torch."""
    with torch.inference_mode():
        torch_ms, default_ms, tuned_ms = median_ms(
            [torch_fn, lambda: default.run(None, feeds), lambda: tuned.run(None, feeds)], repeats)
    print(f"{name:<8}{batch:>6}  {shape:<14}{torch_ms:>10.2f}{default_ms:>12.2f}{tuned_ms:>10.2f}"
          f"{torch_ms / default_ms:>9.2f}x{torch_ms / tuned_ms:>8.2f}x")


def bench_encoder(encoder: NfcEncoder, paths: dict[str, Path], texts: list[str], threads: int, repeats: int) -> None:
    default, tuned = sessions(paths, "encoder", threads)
    ids, n_tokens = encoder.tokenize(texts)
    print(f"articles: median {np.median(n_tokens):.0f} tokens, 90th percentile {np.percentile(n_tokens, 90):.0f}, "
          f"longest {n_tokens.max()}")
    for batch in (1, 32):
        input_ids, mask = encoder.pad_batch(ids[:batch])
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
        bench_row("encoder", batch, f"T={input_ids.shape[1]}", partial(encoder.forward_pooled, input_ids, mask),
                  feeds, default, tuned, repeats)


def bench_fusion(model: CgaModel, paths: dict[str, Path], threads: int, repeats: int) -> None:
    default, tuned = sessions(paths, "fusion", threads)
    config = model.config
    for batch in (1, 32, 256):
        inputs = cga_example_inputs(config, batch, seed=batch)
        feeds = {name: x.numpy() for name, x in zip(CgaOnnxWrapper.input_names, inputs, strict=True)}
        bench_row("fusion", batch, f"L={config.lookback} N={config.n_assets}", partial(model, *inputs), feeds,
                  default, tuned, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="a model package to time (needs --model)")
    parser.add_argument("--model", type=Path, help="the run folder the package was exported from")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for both (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    texts = synthetic_articles(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if args.package:
            if not args.model:
                parser.error("--package needs --model RUN (the PyTorch side of the comparison)")
            encoder, model, paths = load_package(args.package, args.model)
        else:
            encoder, model, paths = build_models(Path(tmp), texts)
        print(f"torch {torch.__version__} eager vs onnxruntime {ort.__version__}, {threads} intra-op threads, "
              f"median of {args.repeats} runs (ms)")
        print(f"{'model':<8}{'batch':>6}  {'shape':<14}{'torch':>10}{'ort default':>12}{'ort tuned':>10}"
              f"{'speed-up':>10}{'tuned':>9}")
        bench_encoder(encoder, paths, texts, threads, args.repeats)
        bench_fusion(model, paths, threads, args.repeats)


if __name__ == "__main__":
    main()
