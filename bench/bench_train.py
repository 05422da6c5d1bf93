"""Training throughput of the default CGA model on the default synthetic market: windows/s on CPU or CUDA.

    python bench/bench_train.py                              # CPU, the demo's data and embeddings
    python bench/bench_train.py --device cuda                # on a GPU machine
    python bench/bench_train.py --steps 50 --epoch           # also one full `nfc train` epoch
    python bench/bench_train.py --data DIR --embeddings FILE --threads 2 --set batch_size=128

Reads the data folder and embeddings `nfc demo` wrote (runs/demo: the default `nfc synth` market and its
`nfc embed` vectors), builds the default model config exactly as `nfc train` does (`prepare`,
`model_config_for`), and times, on --steps shuffled training batches after --warmup ones:
  inputs: the batch's windows and targets cut from the grid and moved to the device (what the training
          loop does per step; no DataLoader);
  step:   forward + loss + backward + gradient clipping + AdamW step on ready tensors (the pure step);
and with --epoch one real epoch of `training.train.train_model` (batch building, steps, the validation
walk-forward), whose windows/s is the number `nfc train` logs. --device cpu hides CUDA from this process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from machine import load_average, machine, machine_line, markdown_table

DEMO = Path("runs/demo")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEMO / "data", help="data folder (bars.parquet, news.jsonl)")
    parser.add_argument("--embeddings", type=Path, default=DEMO / "embeddings.parquet", help="`nfc embed` output")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--epoch", action="store_true", help="also time one full epoch of train_model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for path in (args.data / "bars.parquet", args.embeddings):
        if not path.exists():
            parser.error(f"{path} is missing: run `nfc demo --out runs/demo` first, or pass --data and --embeddings")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # train_model takes CUDA whenever torch sees it
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `nfc` does: spinning OpenMP threads stall a busy CPU

    import numpy as np
    import torch

    from neuralfusion.dataset import load_data_dir
    from neuralfusion.overrides import apply_overrides
    from neuralfusion.specs import PortfolioSpec, WindowSpec
    from neuralfusion.train_config import TrainConfig
    from neuralfusion.windows import target_windows
    from training.model import CgaModel
    from training.train import flush_subnormals_on_cpu, model_config_for, prepare, to_tensors, train_model

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here (CPU build or no GPU); use --device cpu")
    train = apply_overrides(TrainConfig(), args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    flush_subnormals_on_cpu(device)  # as train_model does
    window, portfolio = WindowSpec(), PortfolioSpec()
    prepared = prepare(load_data_dir(args.data), args.embeddings, window)
    config = model_config_for(prepared, window, portfolio, train, "cga", {})
    torch.manual_seed(train.seed)
    model = CgaModel(config).to(device).train()
    optimizer = model.configure_optimizers(train.weight_decay, train.lr, (train.beta1, train.beta2))
    anchors = np.random.default_rng(train.seed).permutation(prepared.splits.train[:: train.train_stride])
    n_batches = args.warmup + args.steps
    if n_batches * train.batch_size > len(anchors):
        sys.exit(f"{n_batches} batches of {train.batch_size} need more than the {len(anchors)} training windows")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def make_inputs(i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = anchors[i * train.batch_size:(i + 1) * train.batch_size]
        targets = target_windows(prepared.data.returns, batch, window.horizon)
        return (to_tensors(prepared.grid.windows(batch, window.lookback), device),
                torch.as_tensor(targets, dtype=torch.float32, device=device))

    def step(inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> None:
        out = model(**inputs, targets=targets)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()

    info = machine()  # the load when the timing starts; load_after when it ends
    input_ms, step_ms = [], []
    for i in range(n_batches):
        start = time.perf_counter()
        inputs, targets = make_inputs(i)
        sync()
        built = time.perf_counter()
        step(inputs, targets)
        sync()
        if i >= args.warmup:
            input_ms.append(1000 * (built - start))
            step_ms.append(1000 * (time.perf_counter() - built))

    info["load_after"] = load_average()
    n_params = sum(p.numel() for p in model.parameters())
    inputs_med, step_med = statistics.median(input_ms), statistics.median(step_ms)
    results = {
        "machine": info, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch_size": train.batch_size, "parameters": n_params, "steps": args.steps,
        "input_ms": round(inputs_med, 2), "step_ms": round(step_med, 2),
        "steps_per_s": round(1000 / step_med, 2), "step_windows_per_s": round(train.batch_size * 1000 / step_med, 1),
        "loop_windows_per_s": round(train.batch_size * 1000 / (inputs_med + step_med), 1),
    }
    rows = [["inputs (windows + targets -> device)", f"{inputs_med:.1f}", ""],
            ["step (fwd + bwd + clip + AdamW)", f"{step_med:.1f}", f"{results['step_windows_per_s']:.0f}"],
            ["inputs + step", f"{inputs_med + step_med:.1f}", f"{results['loop_windows_per_s']:.0f}"]]
    if args.epoch:
        result = train_model(prepared, config, TrainConfig(**{**train.to_dict(), "epochs": 1}), window, portfolio,
                             progress=False)
        epoch_windows = len(prepared.splits.train[:: train.train_stride])
        results["epoch"] = {"seconds": round(result.seconds, 1), "windows": epoch_windows,
                            "windows_per_s": round(result.windows_per_second, 1)}
        per_batch = 1000 * result.seconds / math.ceil(epoch_windows / train.batch_size)
        rows.append([f"one `nfc train` epoch: {epoch_windows} windows in {result.seconds:.1f} s (incl. validation)",
                     f"{per_batch:.1f}", f"{result.windows_per_second:.0f}"])
    print(f"training throughput, {device} (torch {torch.__version__}, {torch.get_num_threads()} threads), "
          f"default CGA model ({n_params:,} parameters), batch {train.batch_size}, median of {args.steps} steps; "
          f"{machine_line(info)}\n")
    print(markdown_table(["what", "ms per batch", "windows/s"], rows))
    print(f"\nsteps/s (pure step): {results['steps_per_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
