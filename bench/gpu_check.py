"""The GPU, measured: ONNX Runtime CUDA parity and speed against torch eager on the same GPU, and served req/s.

    bench/gpu_check.sh                    # installs what is missing from bench/wheels, then runs this
    python bench/gpu_check.py --out runs/bench/gpu [--no-serving] [--repeats 20]

Needs a CUDA torch and onnxruntime-gpu (the `gpu` extra). torch is imported before onnxruntime and
`onnxruntime.preload_dlls()` is called, so ONNX Runtime's CUDA provider loads the CUDA and cuDNN libraries that
torch's wheels brought. Prints one markdown table (also written to --out as gpu_check.md and gpu_check.json):

  parity      the default-size encoder (4 x 256 BigBird, random init) and CGA model (12 assets, L=80),
              exported like `nfc export`; ORT CUDA fp32 encoder and fusion, and the fp16 encoder, against torch
              fp32 on the GPU (TF32 off on both sides) on export.parity's generated cases; max abs error and
              the bound it must meet (export.parity.TOLERANCES)
  encoder     sequences/s at batch 1, 32, 256 and 128, 512 tokens: torch eager fp32 and bf16, ORT CUDA fp32
              and fp16 (inputs already on the GPU for torch, host numpy for ORT, so ORT pays the copies)
  base shape  the same at 512 tokens, batch 32 and 64, for a BigBird-base-shaped encoder (12 x 768), the shape
              of the reference numbers in docs/BENCHMARKS.md (--no-base leaves it out)
  served      bench/bench_serving.py --device cuda on the demo-shaped package: rows with batching and at batch
              size 1 (rows-b1), interleaved, at concurrency 1, 8 and 64, and raw ONNX Runtime
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch  # before onnxruntime: its CUDA provider loads the CUDA libraries torch's wheels brought

# isort: split
import numpy as np
import onnxruntime as ort
from bench_onnx import build_models, cuda_session, median_ms, synced, synthetic_articles
from machine import machine, machine_line, markdown_table

from export.onnx_export import convert_fp16, export_encoder
from export.parity import TOLERANCES, encoder_cases, encoder_parity, fusion_cases, fusion_parity
from serving.providers import DeviceError, choose_device
from training.encoder import NfcEncoder
from training.encoder_init import EncoderSetupConfig, init_encoder

log = logging.getLogger("gpu_check")

BATCHES = (1, 32, 256)
LENGTHS = (128, 512)
BASE_BATCHES = (32, 64)
BASE_SHAPE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
ROOT = Path(__file__).resolve().parent


def cuda_ready() -> str | None:
    """None when torch and ONNX Runtime both run on CUDA here, else why not."""
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    try:
        choose_device("cuda")
    except DeviceError as err:
        return f"onnxruntime {ort.__version__}: {err}"
    return None


def parity_rows(encoder: NfcEncoder, model: Any, paths: dict[str, Path]) -> list[list[Any]]:
    """Worst case per graph variant: (what, max abs, bound, passed)."""
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    options = {"use_tf32": "0"}
    rows = []
    for name, path in (("encoder fp32", paths["encoder"]), ("encoder fp16", paths["encoder.fp16"])):
        session = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", options)], enable_fallback=0)
        tolerance = TOLERANCES["fp16" if "fp16" in name else "fp32"]
        results = []
        for case, batch in encoder_cases(encoder, seed=1):
            with torch.inference_mode():
                expected = encoder.forward_pooled(*(torch.as_tensor(x, device="cuda") for x in batch)).cpu().numpy()
            results.append(encoder_parity(path.name, session, tolerance, case, batch, expected))
        worst = max(results, key=lambda r: r.max_abs / r.bound)
        rows.append([f"parity {name}", f"max abs {worst.max_abs:.2e}", f"bound {worst.bound:.1e}",
                     "pass" if all(r.passed for r in results) else f"FAIL ({worst.case})"])
    session = ort.InferenceSession(str(paths["fusion"]), providers=[("CUDAExecutionProvider", options)],
                                   enable_fallback=0)
    results = []
    for case, feeds in fusion_cases(model.config, seed=1):
        with torch.inference_mode():
            out = model(**{k: torch.as_tensor(x, device="cuda") for k, x in feeds.items()})
        expected = out.logits.cpu().numpy(), out.weights.cpu().numpy()
        results += fusion_parity(paths["fusion"].name, session, TOLERANCES["fp32"], case, feeds, expected,
                                 model.config.top_k)
    worst = max(results, key=lambda r: r.max_abs / r.bound)
    rows.append(["parity fusion fp32 (logits, weights)", f"max abs {worst.max_abs:.2e}", f"bound {worst.bound:.1e}",
                 "pass" if all(r.passed for r in results) else f"FAIL ({worst.check}, {worst.case})"])
    torch.backends.cuda.matmul.allow_tf32 = True
    return rows


def encoder_rows(encoder: NfcEncoder, paths: dict[str, Path], label: str, batches: tuple[int, ...],
                 lengths: tuple[int, ...], repeats: int) -> list[list[Any]]:
    """Sequences/s of torch eager fp32 and bf16 and ORT CUDA fp32 and fp16 on full-length random token rows."""
    fp32, fp16 = cuda_session(paths["encoder"]), cuda_session(paths["encoder.fp16"])
    rng = np.random.default_rng(0)
    rows = []
    for length in lengths:
        for batch in batches:
            ids = rng.integers(5, len(encoder.tokenizer), (batch, length), dtype=np.int64)
            mask = np.ones_like(ids)
            feeds = {"input_ids": ids, "attention_mask": mask}
            on_gpu = torch.as_tensor(ids, device="cuda"), torch.as_tensor(mask, device="cuda")

            def eager(dtype: torch.dtype, on_gpu: tuple[torch.Tensor, torch.Tensor] = on_gpu) -> None:
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    encoder.model(input_ids=on_gpu[0], attention_mask=on_gpu[1])

            fns = [synced(lambda: eager(torch.float32), "cuda"), synced(lambda: eager(torch.bfloat16), "cuda"),
                   lambda feeds=feeds: fp32.run(None, feeds), lambda feeds=feeds: fp16.run(None, feeds)]
            ms = median_ms(fns, repeats if batch <= 32 else max(3, repeats // 4))
            seqs = [1000 * batch / m for m in ms]
            rows.append([f"{label} seq/s, batch {batch}, {length} tokens",
                         f"torch fp32 {seqs[0]:,.0f} / bf16 {seqs[1]:,.0f}",
                         f"ORT fp32 {seqs[2]:,.0f} / fp16 {seqs[3]:,.0f}",
                         f"fp16 / torch bf16: {seqs[3] / seqs[1]:.2f}x"])
    return rows


def base_shape_encoder(workdir: Path, texts: list[str]) -> tuple[NfcEncoder, dict[str, Path]]:
    """A BigBird-base-shaped random-init encoder, exported in fp32 and fp16."""
    folder = init_encoder(texts, workdir / "base-encoder", EncoderSetupConfig(**BASE_SHAPE))
    encoder = NfcEncoder.load(folder, device="cuda", dtype="float32")
    fp32 = export_encoder(encoder, workdir / "base-encoder.onnx")
    return encoder, {"encoder": fp32, "encoder.fp16": convert_fp16(fp32, workdir / "base-encoder.fp16.onnx")}


# entry workers of each served server: enough to prepare requests for the GPU, few enough to start quickly (each
# opens its own CUDA session of the fusion graph)
SERVED_WORKERS = 4


def served_rows(out: Path) -> list[list[Any]]:
    """bench_serving.py on CUDA: rows with batching and at batch size 1, and raw ORT (every text, and each distinct
    text once), at concurrency 1/8/64."""
    command = [sys.executable, str(ROOT / "bench_serving.py"), "--device", "cuda", "--modes", "rows", "rows-b1", "raw",
               "raw-cached", "--concurrency", "1", "8", "64", "--rounds", "2", "--burst-factor", "1",
               "--workers", str(SERVED_WORKERS), "--out", str(out)]
    log.info("$ %s", " ".join(command))
    subprocess.run(command, check=True)
    levels = json.loads((out / "results.json").read_text())["levels"]
    rps = {(lv["mode"], lv["concurrency"]): lv["rps"] for lv in levels}
    rows = []
    for c in (1, 8, 64):
        batching, single, raw = rps.get(("rows", c)), rps.get(("rows-b1", c)), rps.get(("raw", c))
        ratio = f"{batching / single:.2f}x" if batching and single else "n/a"
        rows.append([f"served req/s, concurrency {c}", f"batching {batching} / batch size 1 {single}",
                     f"raw ORT {raw} (each text once: {rps.get(('raw-cached', c))})",
                     f"batching / batch size 1: {ratio}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gpu"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-base", action="store_true", help="leave out the BigBird-base-shaped rows")
    parser.add_argument("--no-serving", action="store_true", help="leave out the served req/s rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ort.preload_dlls()  # the CUDA and cuDNN libraries of the nvidia-* wheels (those torch uses)
    reason = cuda_ready()
    if reason is not None:
        sys.exit(f"no CUDA run possible here: {reason}")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0)
    header = (f"{device}; torch {torch.__version__}, onnxruntime {ort.__version__}; host {machine_line(machine())}")
    rows: list[list[Any]] = []
    texts = synthetic_articles(0)
    with tempfile.TemporaryDirectory() as tmp:
        encoder, model, paths = build_models(Path(tmp), texts, "cuda")
        rows += parity_rows(encoder, model, paths)
        rows += encoder_rows(encoder, paths, "encoder 4x256", BATCHES, LENGTHS, args.repeats)
        if not args.no_base:
            base, base_paths = base_shape_encoder(Path(tmp), texts)
            rows += encoder_rows(base, base_paths, "encoder base 12x768", BASE_BATCHES, (512,), args.repeats)
    if not args.no_serving:
        rows += served_rows(args.out / "serving")
    table = markdown_table(["what", "torch / first", "ONNX Runtime / second", "verdict / ratio"], rows)
    print(f"\n{header}\n\n{table}")
    (args.out / "gpu_check.md").write_text(f"{header}\n\n{table}\n")
    (args.out / "gpu_check.json").write_text(json.dumps({"device": device, "header": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
