"""News encoder throughput, and how much sentiment its embeddings carry.

    python bench/bench_encoder.py                         # articles/s at 128 and 512 tokens, default encoder
    python bench/bench_encoder.py --lengths 128 512 1024 --attention original_full block_sparse
    python bench/bench_encoder.py --probe                 # held-out linear-probe accuracy, before/after tuning
    python bench/bench_encoder.py --pretrain --days 20 --set hidden_size=64 --set num_hidden_layers=2
                                                          # MLM without labels: held-out loss and probe

Speed runs the offline default encoder (EncoderSetupConfig: 4 layers, hidden 256, random init) on
articles truncated to exactly L tokens, fp32 on CPU (bf16/fp16 on CUDA), side by side in one process.
block_sparse needs L > (5 + 2*3)*64 = 704 tokens to be sparse at all; shorter inputs are padded past it.
The probe fine-tunes on 80% of the default synthetic news and fits a logistic regression on the
embeddings of those articles, scored on the 20% held out (never seen by the tokenizer or the tuning);
once on all of them, and once on 5 per class (the synthetic news reuses templates, so a full probe can
memorise them even from a random-init encoder; the few-shot probe shows what tuning added).
--pretrain splits the synthetic news in time: tokenizer and masked-language-model pretraining see only
the first 70% (by publication time; the last 10% of those is the held-out MLM set), and the probes are
fitted on those articles' labels and scored on the later 30%, for the random-init and the pretrained
encoder. No label is used in pretraining.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.encoder import ATTENTION_TYPES, NfcEncoder
from training.encoder_finetune import SentimentTrainConfig, probe_accuracy, train_sentiment
from training.encoder_init import EncoderSetupConfig, init_encoder
from training.encoder_pretrain import PretrainConfig, pretrain_encoder

FEW_SHOT = 5  # labelled embeddings per class for the few-shot probe
PRETRAIN_SHOTS = (5, 20)  # --pretrain: few-shot probes at these labelled embeddings per class
WORDS = ("shares", "rally", "after", "the", "company", "beats", "estimates", "while", "analysts", "raise",
         "targets", "guidance", "cut", "warns", "of", "weak", "demand", "in", "europe", "asia", "margins",
         "shrink", "and", "costs", "keep", "rising")


def random_texts(n: int, words: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) for _ in range(n)]


def bench_speed(lengths: list[int], attention: list[str], n: int, batch_size: int, workdir: Path) -> None:
    logging.getLogger("training.encoder").setLevel(logging.ERROR)  # truncation to L is the point here
    encoder_dir = init_encoder(random_texts(200, 50, seed=0), workdir / "encoder")
    texts = random_texts(n, max(lengths) * 2, seed=1)  # every text is truncated to exactly L tokens
    print(f"{'attention':<14}{'tokens':>8}{'articles/s':>12}{'tokens/s':>11}   "
          f"(n={n}, batch {batch_size}, {torch.get_num_threads()} threads)")
    for attention_type in attention:
        for length in lengths:
            try:
                encoder = NfcEncoder.load(encoder_dir, attention_type=attention_type, max_length=length)
            except ValueError as err:
                print(f"{attention_type:<14}{length:>8}  skipped: {err}")
                continue
            encoder.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
            start = time.perf_counter()
            encoder.encode(texts, batch_size=batch_size)
            rate = n / (time.perf_counter() - start)
            print(f"{attention_type:<14}{length:>8}{rate:>12.1f}{rate * length:>11.0f}")


def bench_probe(seed: int, workdir: Path) -> None:
    from neuralfusion.synth import SynthConfig, generate_market

    news = generate_market(SynthConfig(seed=seed)).news
    texts = [f"{r['title']}\n\n{r['body']}".strip() for r in news]
    labels = np.array([r["planted"]["sentiment"] for r in news])
    held_out = np.arange(len(texts)) % 5 == 0
    fit_texts = [t for t, h in zip(texts, held_out, strict=True) if not h]
    encoder = NfcEncoder.load(init_encoder(fit_texts, workdir / "encoder"), max_length=256)

    def accuracy() -> tuple[float, float]:
        vectors = encoder.encode(texts, batch_size=32)
        split = (vectors[~held_out], labels[~held_out], vectors[held_out], labels[held_out])
        return probe_accuracy(*split, seed=seed), probe_accuracy(*split, seed=seed, per_class=FEW_SHOT)

    before = accuracy()
    start = time.perf_counter()
    train_sentiment(encoder, fit_texts, list(labels[~held_out]), SentimentTrainConfig(seed=seed), progress=True)
    minutes = (time.perf_counter() - start) / 60
    after = accuracy()
    majority = np.unique(labels[held_out], return_counts=True)[1].max() / held_out.sum()
    print(f"held-out linear probe on {held_out.sum()} of {len(texts)} synthetic articles (seed {seed}), "
          f"majority class {majority:.3f}, fine-tune {minutes:.1f} min")
    print(f"{'encoder':<16}{'full probe':>12}{f'{FEW_SHOT}-shot probe':>16}")
    for name, (full, few) in (("random-init", before), ("sentiment-tuned", after)):
        print(f"{name:<16}{full:>12.3f}{few:>16.3f}")


def bench_pretrain(seed: int, days: int, epochs: int, setup: EncoderSetupConfig, workdir: Path) -> None:
    from neuralfusion.synth import SynthConfig, generate_market

    news = generate_market(SynthConfig(seed=seed, days=days)).news  # in publication order
    texts = [f"{r['title']}\n\n{r['body']}".strip() for r in news]
    labels = np.array([r["planted"]["sentiment"] for r in news])
    n_fit = int(len(texts) * 0.7)
    early = np.arange(len(texts)) < n_fit
    init_dir = init_encoder(texts[:n_fit], workdir / "init", setup)
    config = PretrainConfig(epochs=epochs, max_length=128, batch_size=32, learning_rate=1e-3, seed=seed)

    def probes(path: Path) -> tuple[float, ...]:
        vectors = NfcEncoder.load(path, max_length=128).encode(texts, batch_size=32)
        split = (vectors[early], labels[early], vectors[~early], labels[~early])
        return (probe_accuracy(*split, seed=seed),
                *(probe_accuracy(*split, seed=seed, per_class=n, draws=20) for n in PRETRAIN_SHOTS))

    before = probes(init_dir)
    start = time.perf_counter()
    result = pretrain_encoder(str(init_dir), texts[:n_fit], workdir / "mlm", config, progress=True)
    minutes = (time.perf_counter() - start) / 60
    after = probes(workdir / "mlm")
    majority = np.unique(labels[~early], return_counts=True)[1].max() / (~early).sum()
    print(f"MLM pretraining on {result.n_train} synthetic articles ({days} days, seed {seed}), {result.steps} steps "
          f"in {minutes:.1f} min; encoder {setup.num_hidden_layers} layers x {setup.hidden_size}")
    print(f"held-out MLM loss on the {result.n_heldout} latest pre-cut-off articles: "
          f"{result.heldout_loss_before:.3f} -> " + " -> ".join(f"{h['heldout_loss']:.3f}" for h in result.history))
    print(f"sentiment probes fitted on the first {n_fit} articles, scored on the later {(~early).sum()} "
          f"(majority class {majority:.3f}; no labels in pretraining)")
    print(f"{'encoder':<16}{'full probe':>12}" + "".join(f"{f'{n}-shot probe':>16}" for n in PRETRAIN_SHOTS)
          + "   (n-shot: mean of 20 draws)")
    for name, scores in (("random-init", before), ("MLM-pretrained", after)):
        print(f"{name:<16}{scores[0]:>12.3f}" + "".join(f"{score:>16.3f}" for score in scores[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--attention", nargs="+", choices=ATTENTION_TYPES, default=["original_full"])
    parser.add_argument("--n", type=int, default=64, help="articles per measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--probe", action="store_true", help="measure sentiment in the embeddings instead")
    parser.add_argument("--pretrain", action="store_true", help="measure MLM pretraining (held-out loss, probes)")
    parser.add_argument("--days", type=int, default=20, help="--pretrain: days of synthetic news")
    parser.add_argument("--epochs", type=int, default=3, help="--pretrain: MLM epochs")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="--pretrain: override an EncoderSetupConfig field")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if args.pretrain:
            from neuralfusion.overrides import apply_overrides

            setup = apply_overrides(EncoderSetupConfig(seed=args.seed), args.sets)
            bench_pretrain(args.seed, args.days, args.epochs, setup, Path(tmp))
        elif args.probe:
            bench_probe(args.seed, Path(tmp))
        else:
            bench_speed(args.lengths, args.attention, args.n, args.batch_size, Path(tmp))


if __name__ == "__main__":
    main()
