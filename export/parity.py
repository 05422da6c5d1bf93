"""ONNX Runtime vs PyTorch: parity of outputs and batch invariance, with stated tolerances.

A comparison passes when max |ort - torch| <= atol + rtol * max |torch| over the whole output
(`Tolerance.bound`). fp32 graphs (exported and CPU-optimised) must agree to 1e-5 + 2e-6 * max |torch|;
measured on the test models they agree to about 1e-6. The relative part is for outputs far from 1: an
MLM-pretrained encoder's standardised vectors (training/encoder_standardise.py) reach |v| ~15 on the generated
batches, and its 2048-token batches differed by 1.1-2.0e-5 (~1.3e-6 of max |v|), over an absolute 1e-5.
fp16 graphs get their own bound, 5e-3 + 5e-3 * max |torch| (about 1.5e-2 for outputs of size ~2): measured on
the test models the errors are ~5e-4 (encoder vectors) and ~1.3e-3 (fusion logits), float16's 3 significant digits.

Top-k weights are compared only where the choice is well defined: on samples whose margin between
the k-th and (k+1)-th largest |logit| exceeds the logits' bound, the selected assets and signs must
be identical and the weights within the bound; closer calls may legitimately flip.

That is why the fusion graph is only ever published in float32 (float16 logits flipped real
portfolios on windows this margin rule skips), and why the fp16 encoder is judged end to end
(`encoder_end_to_end`): its article vectors and the fp32 encoder's, on the real articles of real
windows, each go through the fp32 fusion graph, and the fraction of the windows that read news whose
book (the top-k assets and their signs) is unchanged must reach `Fp16Criteria.min_agreement` (0.99),
the vectors' cosine `min_cosine` (0.999) and their max abs error the fp16 tolerance. Agreement alone
is weak on a model that barely reads the news (the 1-epoch test model kept 97-98% of its books with
unrelated vectors), so the vector checks stay. Without CUDA this runs on the CPU provider
(`FP16_MEASURED_ON`); CUDA's float16 kernels round differently, so it is an estimate.

PyTorch references are the code paths that made the training data and the run: `NfcEncoder.forward_pooled`
(not the export wrapper) for articles, `CgaModel` in eval mode for windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from export.onnx_export import open_session
from neuralfusion.data.news import article_text
from neuralfusion.dataset import MarketData
from neuralfusion.features import FeatureNormalizer
from neuralfusion.inputs import INPUT_NAMES, grid_inputs
from neuralfusion.model_config import CgaConfig
from neuralfusion.specs import WindowSpec
from neuralfusion.windows import usable_anchors
from training.encoder import NfcEncoder
from training.model import CgaModel, cga_example_inputs

__all__ = [
    "FP16_CRITERIA",
    "FP16_MEASURED_ON",
    "TOLERANCES",
    "EncoderBatch",
    "EndToEnd",
    "Fp16Criteria",
    "FusionBatch",
    "ParityResult",
    "Tolerance",
    "encoder_batch_invariance",
    "encoder_cases",
    "encoder_end_to_end",
    "encoder_parity",
    "fusion_batch_invariance",
    "fusion_cases",
    "fusion_parity",
    "package_parity",
    "period_shifted_market",
    "tolerance_for",
    "variant_session",
]

EncoderBatch = tuple[np.ndarray, np.ndarray]  # (B, T) int64 input_ids, (B, T) int64 attention_mask
FusionBatch = dict[str, np.ndarray]  # the float32 windows of INPUT_NAMES


@dataclass(frozen=True)
class Tolerance:
    """max |got - expected| <= atol + rtol * max |expected|."""

    atol: float
    rtol: float = 0.0

    def bound(self, expected: np.ndarray) -> float:
        return self.atol + self.rtol * float(np.abs(expected).max(initial=0.0))


# keyed by the graph variant's precision; "cpu" (the ORT-optimised fp32 graph) uses "fp32"
TOLERANCES: dict[str, Tolerance] = {"fp32": Tolerance(atol=1e-5, rtol=2e-6),
                                    "fp16": Tolerance(atol=5e-3, rtol=5e-3)}


@dataclass(frozen=True)
class ParityResult:
    """One comparison: what was compared, the errors, the bound it had to meet, and the verdict."""

    check: str  # e.g. "encoder parity", "fusion weights", "fusion batch invariance"
    graph: str  # the ONNX file
    case: str  # the inputs, e.g. "generated batch 7"
    max_abs: float
    max_rel: float  # max_abs / max |expected|
    bound: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result(check: str, graph: str, case: str, got: np.ndarray, expected: np.ndarray, bound: float,
            detail: str = "") -> ParityResult:
    if got.shape != expected.shape:
        return ParityResult(check, graph, case, float("inf"), float("inf"), bound, False,
                            f"shape {got.shape} != expected {expected.shape}")
    error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    max_abs = float(error.max(initial=0.0)) if np.isfinite(got).all() else float("inf")
    scale = float(np.abs(expected).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else max_abs
    return ParityResult(check, graph, case, max_abs, max_rel, bound, max_abs <= bound, detail)


def _compare(check: str, graph: str, case: str, got: np.ndarray, expected: np.ndarray,
             tolerance: Tolerance) -> ParityResult:
    return _result(check, graph, case, got, expected, tolerance.bound(expected))


def _compare_weights(graph: str, case: str, got: np.ndarray, expected: np.ndarray, logits: np.ndarray, k: int,
                     bound: float) -> ParityResult:
    """Top-k weights on samples whose k-th vs (k+1)-th |logit| margin exceeds `bound` (module docstring)."""
    n_assets = logits.shape[-1]
    if k < n_assets:
        ranked = -np.sort(-np.abs(logits), axis=-1)  # (B, N) descending
        clear = ranked[:, k - 1] - ranked[:, k] > bound
    else:
        clear = np.ones(len(logits), dtype=bool)
    same_book = np.array_equal(np.sign(got[clear]), np.sign(expected[clear]))
    detail = f"{int(clear.sum())}/{len(clear)} samples with a clear top-{k} margin"
    result = _result("fusion weights", graph, case, got[clear], expected[clear], bound, detail)
    if same_book:
        return result
    return ParityResult(**{**result.to_dict(), "passed": False, "detail": detail + "; selected assets differ"})


# ---- encoder -----------------------------------------------------------------------------------------


def encoder_cases(encoder: NfcEncoder, seed: int = 0) -> list[tuple[str, EncoderBatch]]:
    """Generated token batches: batch 1, 7 (mixed lengths, so padding is exercised) and 64 short rows, and
    the longest articles the encoder takes (above BigBird's 704-token block-sparse switch when it can)."""
    rng = np.random.default_rng(seed)
    tokenizer = encoder.tokenizer
    specials = set(tokenizer.all_special_ids)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in specials])

    def batch(lengths: Sequence[int]) -> EncoderBatch:
        ids = [[tokenizer.cls_token_id, *rng.choice(vocab, n - 2).tolist(), tokenizer.sep_token_id] for n in lengths]
        input_ids, mask = encoder.pad_batch(ids)
        return input_ids.cpu().numpy(), mask.cpu().numpy()

    longest = encoder.max_length
    long_lengths = [longest, max(2, longest - 37)]
    cases = [("generated batch 1", batch([min(24, longest)])),
             ("generated batch 7, mixed lengths", batch(rng.integers(2, min(128, longest) + 1, 7).tolist())),
             ("generated batch 64, short", batch(rng.integers(2, min(32, longest) + 1, 64).tolist())),
             (f"generated batch 2, {longest} tokens", batch(long_lengths))]
    if longest > 704:
        cases.append(("generated batch 3, 705-800 tokens", batch([min(n, longest) for n in (705, 768, 800)])))
    return cases


def _torch_pooled(encoder: NfcEncoder, batch: EncoderBatch) -> np.ndarray:
    with torch.inference_mode():
        ids, mask = (torch.as_tensor(x, device=encoder.device) for x in batch)
        return encoder.forward_pooled(ids, mask).cpu().numpy()


def encoder_parity(graph: str, session: ort.InferenceSession, tolerance: Tolerance, case: str, batch: EncoderBatch,
                   expected: np.ndarray) -> ParityResult:
    """Pooled vectors of the ONNX encoder vs `expected` (`NfcEncoder.forward_pooled` on the same batch)."""
    ids, mask = batch
    got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return _compare("encoder parity", graph, case, got, expected, tolerance)


def encoder_batch_invariance(graph: str, session: ort.InferenceSession, tolerance: Tolerance, case: str,
                             batch: EncoderBatch) -> ParityResult:
    """Each row run alone at its own (unpadded) length vs inside the padded batch, both in ONNX Runtime."""
    ids, mask = batch
    together = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    alone = []
    for row in range(len(ids)):
        length = int(mask[row].sum())
        alone.append(session.run(None, {"input_ids": ids[row:row + 1, :length],
                                    "attention_mask": mask[row:row + 1, :length]})[0])
    return _compare("encoder batch invariance", graph, case, together, np.concatenate(alone), tolerance)


# ---- fusion ------------------------------------------------------------------------------------------


def period_shifted_market(config: CgaConfig, batch_size: int, seed: int = 0) -> np.ndarray:
    """(B, L, N, F) market windows made of sinusoids whose periods are not the model's TimesNet periods,
    a different mix per sample, plus noise: a graph that froze the example's spectrum would show it."""
    rng = np.random.default_rng(seed)
    others = [p for p in range(2, config.lookback + 1) if p not in config.periods] or [config.lookback]
    t = np.arange(config.lookback)[None, :, None, None]  # (1, L, 1, 1)
    shape = (batch_size, 1, config.n_assets, config.n_features)
    period = rng.choice(others, size=shape).astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, size=shape)
    amplitude = rng.uniform(0.5, 3.0, size=shape)
    market = amplitude * np.sin(2 * np.pi * t / period + phase)  # (B, L, N, F)
    market += 0.1 * rng.standard_normal(market.shape)
    return market.astype(np.float32)


def fusion_cases(config: CgaConfig, seed: int = 0) -> list[tuple[str, FusionBatch]]:
    """Generated windows at batch 1, 7 and 64, and batch 7 with market periods unlike the model's."""
    def generated(size: int, offset: int) -> FusionBatch:
        inputs = cga_example_inputs(config, size, seed=seed + offset)
        return {name: x.numpy() for name, x in zip(INPUT_NAMES, inputs, strict=True)}

    cases = [(f"generated batch {size}", generated(size, size)) for size in (1, 7, 64)]
    shifted = generated(7, 100)
    shifted["market"] = period_shifted_market(config, 7, seed=seed)
    cases.append(("batch 7, market periods unlike the model's", shifted))
    return cases


def _torch_fusion(model: CgaModel, feeds: FusionBatch) -> tuple[np.ndarray, np.ndarray]:
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(**{name: torch.as_tensor(x, device=device) for name, x in feeds.items()})
    return out.logits.cpu().numpy(), out.weights.cpu().numpy()


def fusion_parity(graph: str, session: ort.InferenceSession, tolerance: Tolerance, case: str, feeds: FusionBatch,
                  expected: tuple[np.ndarray, np.ndarray], k: int) -> list[ParityResult]:
    """Logits and top-k weights of the ONNX fusion graph vs `expected` (`CgaModel` in eval mode on `feeds`)."""
    logits, weights = session.run(None, feeds)
    expected_logits, expected_weights = expected
    logit_result = _compare("fusion logits", graph, case, logits, expected_logits, tolerance)
    return [logit_result, _compare_weights(graph, case, weights, expected_weights, expected_logits, k,
                                           logit_result.bound)]


def fusion_batch_invariance(graph: str, session: ort.InferenceSession, tolerance: Tolerance, case: str,
                            feeds: FusionBatch) -> ParityResult:
    """Each window run alone vs inside the batch, both in ONNX Runtime (logits)."""
    together = session.run(None, feeds)[0]
    size = len(next(iter(feeds.values())))
    alone = np.concatenate([session.run(None, {n: x[i:i + 1] for n, x in feeds.items()})[0] for i in range(size)])
    return _compare("fusion batch invariance", graph, case, together, alone, tolerance)


# ---- a whole package ---------------------------------------------------------------------------------


def tolerance_for(variant: str) -> Tolerance:
    """fp16 graphs have their own tolerance; the exported and the CPU-optimised fp32 graphs share fp32's."""
    return TOLERANCES["fp16" if variant == "fp16" else "fp32"]


def variant_session(path: Path, variant: str) -> ort.InferenceSession:
    """A CPU session for a package graph, its threads not spinning between runs (PyTorch shares the cores here).
    fp16 graphs get the basic level only: ONNX Runtime's CPU layout optimisations (ORT_ENABLE_ALL) crashed the
    process (segfault) on a trained fp16 fusion graph, and the fp16 encoder opens and runs at every level."""
    level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if variant == "fp16" else None
    return open_session(path, level=level, spinning=False)


def package_parity(encoder: NfcEncoder, model: CgaModel, graphs: dict[str, dict[str, Path]],
                   encoder_inputs: Sequence[tuple[str, EncoderBatch]],
                   fusion_inputs: Sequence[tuple[str, FusionBatch]]) -> list[ParityResult]:
    """Every variant of both graphs (`graphs[graph][variant]` = file) against PyTorch on the given inputs,
    plus batch invariance on every input of 2 to 16 rows. PyTorch runs once per input."""
    pooled = [_torch_pooled(encoder, batch) for _, batch in encoder_inputs]
    fused = [_torch_fusion(model, feeds) for _, feeds in fusion_inputs]
    results: list[ParityResult] = []
    for variant, path in graphs["encoder"].items():
        session, tolerance = variant_session(path, variant), tolerance_for(variant)
        for (case, batch), expected in zip(encoder_inputs, pooled, strict=True):
            results.append(encoder_parity(path.name, session, tolerance, case, batch, expected))
            if 2 <= len(batch[0]) <= 16:
                results.append(encoder_batch_invariance(path.name, session, tolerance, case, batch))
    for variant, path in graphs["fusion"].items():
        session, tolerance = variant_session(path, variant), tolerance_for(variant)
        for (case, feeds), expected in zip(fusion_inputs, fused, strict=True):
            results += fusion_parity(path.name, session, tolerance, case, feeds, expected, model.config.top_k)
            if 2 <= len(feeds["market"]) <= 16:
                results.append(fusion_batch_invariance(path.name, session, tolerance, case, feeds))
    return results


# ---- the fp16 encoder, end to end ----------------------------------------------------------------------

FP16_MEASURED_ON = ("CPUExecutionProvider at ORT_ENABLE_BASIC (export runs without CUDA); CUDA's float16 kernels "
                    "round differently, so the numbers estimate the GPU's")


@dataclass(frozen=True)
class Fp16Criteria:
    """When an fp16 encoder graph may be published (module docstring). The thresholds are ours: at most one real
    window in a hundred may hold another book than the fp32 pipeline (flips happen where two assets' |logits|
    nearly tie); float16 rounding left cosines within 5e-7 of 1 on the measured packages, so 0.999 catches a
    broken graph, not rounding."""

    min_agreement: float = 0.99  # fraction of the real windows with news whose top-k book is unchanged
    min_cosine: float = 0.999  # smallest cosine between an article's fp16 and fp32 vectors
    max_windows: int = 2048  # real windows checked at most, evenly spaced over the data
    tolerance: Tolerance = field(default_factory=lambda: TOLERANCES["fp16"])  # on the vectors' max abs error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FP16_CRITERIA = Fp16Criteria()


@dataclass(frozen=True)
class EndToEnd:
    """The fp16 encoder against the fp32 one on real data: article vectors, then the portfolios they lead to."""

    articles: int
    max_abs: float  # largest |fp16 - fp32| over all vector components
    bound: float  # the fp16 tolerance's bound on max_abs
    min_cosine: float  # smallest per-article cosine
    windows: int  # real windows checked
    news_windows: int  # of those, windows that read at least one article (the others cannot differ)
    same_book: int  # news windows whose top-k assets and signs are identical
    max_weight_diff: float  # largest |weight difference| over all windows and assets

    @property
    def agreement(self) -> float:
        """Fraction of the windows with news whose book is unchanged."""
        return self.same_book / self.news_windows if self.news_windows else 0.0

    def failures(self, criteria: Fp16Criteria) -> list[str]:
        """Why the fp16 encoder fails `criteria`; empty when it passes."""
        if not self.news_windows or not self.articles:
            return [f"no real data to measure on ({self.news_windows} of {self.windows} windows read news, "
                    f"{self.articles} articles)"]
        reasons = []
        if self.agreement < criteria.min_agreement:
            reasons.append(f"top-k agreement {self.agreement:.4f} ({self.same_book}/{self.news_windows} windows with "
                           f"news) < {criteria.min_agreement}")
        if self.min_cosine < criteria.min_cosine:
            reasons.append(f"article vector cosine {self.min_cosine:.7f} < {criteria.min_cosine}")
        if self.max_abs > self.bound:
            reasons.append(f"article vector max abs error {self.max_abs:.3g} > {self.bound:.3g}")
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement}


def _window_news(data: MarketData, anchors: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of data.news on a bar that some window ending at `anchors` reads, and per window its article count."""
    bars = np.asarray(data.aligned.bar)
    on_grid = bars >= 0
    edges = np.zeros(data.n_bars + 1, dtype=np.int64)
    np.add.at(edges, anchors - lookback + 1, 1)
    np.add.at(edges, anchors + 1, -1)
    read = np.cumsum(edges)[:-1] > 0
    rows = np.flatnonzero(on_grid & read[np.where(on_grid, bars, 0)])
    before = np.concatenate([[0], np.cumsum(np.bincount(bars[on_grid], minlength=data.n_bars))])  # articles < bar
    return rows, before[anchors + 1] - before[anchors - lookback + 1]


def _encode(encoder: NfcEncoder, sessions: Sequence[ort.InferenceSession], texts: Sequence[str],
            batch_size: int = 32) -> list[np.ndarray]:
    """(M, D) vectors of `texts` from each session, run in length-sorted batches (the package's tokenizer)."""
    ids, _ = encoder.tokenize(texts) if texts else ([], None)
    out = [np.zeros((len(ids), encoder.dim), dtype=np.float32) for _ in sessions]
    order = np.argsort([len(x) for x in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        input_ids, mask = (x.cpu().numpy() for x in encoder.pad_batch([ids[i] for i in rows]))
        for vectors, session in zip(out, sessions, strict=True):
            vectors[rows] = session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
    return out


def _fused_weights(fusion: ort.InferenceSession, data: MarketData, vectors: np.ndarray,
                   normaliser: FeatureNormalizer, anchors: np.ndarray, lookback: int, chunk: int = 256) -> np.ndarray:
    grid = grid_inputs(data, vectors, normaliser)
    weights = []
    for start in range(0, len(anchors), chunk):
        feeds = grid.windows(anchors[start:start + chunk], lookback)
        weights.append(fusion.run(["weights"], {name: x.astype(np.float32) for name, x in feeds.items()})[0])
    return np.concatenate(weights) if weights else np.zeros((0, data.universe.n_assets), np.float32)


def encoder_end_to_end(encoder: NfcEncoder, reference: ort.InferenceSession, candidate: ort.InferenceSession,
                       fusion: ort.InferenceSession, data: MarketData, normaliser: FeatureNormalizer,
                       window: WindowSpec, warmup_bars: int, criteria: Fp16Criteria = FP16_CRITERIA) -> EndToEnd:
    """`candidate` (the fp16 encoder graph) vs `reference` (the fp32 one) on the articles that real windows of
    `data` read, and the portfolios the fp32 `fusion` graph makes of each; at most `criteria.max_windows`
    windows, evenly spaced over the usable anchors. Agreement counts the windows that read news only: the others
    get identical inputs either way."""
    anchors = usable_anchors(data.n_bars, warmup_bars, window)
    anchors = anchors[np.unique(np.linspace(0, len(anchors) - 1, min(len(anchors), criteria.max_windows)).astype(int))]
    rows, per_window = _window_news(data, anchors, window.lookback)
    texts = [article_text(data.news["title"].iat[i], data.news["body"].iat[i]) for i in rows]
    expected, got = _encode(encoder, (reference, candidate), texts)
    error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    cosine = np.sum(got.astype(np.float64) * expected, axis=1) / np.where(norms > 0, norms, 1.0)
    books = []
    for vectors in (expected, got):
        all_vectors = np.zeros((len(data.news), encoder.dim), dtype=np.float32)
        all_vectors[rows] = vectors
        books.append(_fused_weights(fusion, data, all_vectors, normaliser, anchors, window.lookback))
    same = np.all(np.sign(books[0]) == np.sign(books[1]), axis=1)[per_window > 0]
    return EndToEnd(articles=len(rows), max_abs=float(error.max(initial=0.0)),
                    bound=criteria.tolerance.bound(expected), min_cosine=float(cosine.min(initial=1.0)),
                    windows=len(anchors), news_windows=len(same), same_book=int(same.sum()),
                    max_weight_diff=float(np.abs(books[0] - books[1]).max(initial=0.0)))
