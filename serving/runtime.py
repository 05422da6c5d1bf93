"""ONNX Runtime inference for a model package, without torch: texts -> article vectors, bars + news -> weights.

The package (neuralfusion/manifest.py) is the contract with training: its hashes are verified before any graph
is opened, features and windows come from the same `neuralfusion` functions training used
(`market_data`, `grid_inputs`), and the tokenizer is the package's own `tokenizer.json` read with the
`tokenizers` library, truncating exactly as the training tokenizer did (ids incl. [CLS]/[SEP] cut to
`max_length`).

    runtime = PortfolioRuntime.load("runs/demo/package")
    [record] = runtime.predict_requests([PredictRequest.model_validate(payload)])

Execution providers: the device is decided once per process before any graph opens (serving.providers: CUDA
only when a CUDA session on a one-node graph really runs on CUDA). On CUDA the encoder runs its fp16 graph when
the package has one (published only when its end-to-end parity held at export) and the fusion graph its fp32
graph; on the CPU both run the ORT-optimised fp32 ("cpu") graphs when this onnxruntime version wrote them, else
the exported fp32 graphs. The fusion graph always runs in float32. Each graph reports the provider its session
uses and why (`GraphSession.info`, /model_info).

Batch invariance: every sample is computed from its own window only; batching changes the floating-point
summation order, not the inputs (measured differences ~1e-7, far below the fp32 parity tolerance of 1e-5).
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from neuralfusion.data.bars import BarPanel
from neuralfusion.data.news import article_text
from neuralfusion.dataset import market_data, panel_market_data
from neuralfusion.errors import DataError
from neuralfusion.features import FEATURE_NAMES
from neuralfusion.inputs import BAR_POOLED_INPUT_NAMES, INPUT_LAYOUT, INPUT_NAMES, GridInputs, grid_inputs, pool_news
from neuralfusion.manifest import PackageError, PackageManifest
from serving.bar_grid import clean_panel
from serving.column_checks import RequestFrames
from serving.errors import RequestError
from serving.model_store import load_verified_manifest
from serving.providers import CPU, CUDA, DeviceError, ExecutionChoice, choose_device
from serving.request_checks import as_frames, check_request_against_model
from serving.schemas import PredictRequest
from serving.store import PredictionRecord

__all__ = [
    "FUSION_OUTPUTS",
    "BatchStats",
    "EncodedTexts",
    "GraphSession",
    "NewsEncoder",
    "PortfolioRuntime",
    "PreparedRequest",
    "check_input_layout",
    "graph_variant",
    "open_session",
]

log = logging.getLogger(__name__)

FUSION_OUTPUTS = ("logits", "weights")


class BatchStats:
    """How many batches and rows a graph ran, and how often each batch size occurred (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sizes: Counter[int] = Counter()

    def record(self, rows: int) -> None:
        with self._lock:
            self._sizes[rows] += 1

    def snapshot(self) -> dict[str, Any]:
        """{batches, rows, max_rows, sizes: {rows: count}} at this moment."""
        with self._lock:
            sizes = dict(sorted(self._sizes.items()))
        return {"batches": sum(sizes.values()), "rows": sum(n * c for n, c in sizes.items()),
                "max_rows": max(sizes, default=0), "sizes": {str(n): c for n, c in sizes.items()}}


@dataclass(frozen=True)
class GraphSession:
    """An open package graph: its session, the variant it runs, and why it runs where it runs."""

    graph: str  # "encoder" or "fusion"
    variant: str  # "fp32", "cpu" or "fp16" (encoder only)
    session: ort.InferenceSession
    reason: str  # why this provider: the device decision (serving.providers) and anything after it

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def info(self) -> dict[str, str]:
        """{provider, variant, reason}: what /model_info reports per graph."""
        return {"provider": self.provider, "variant": self.variant, "reason": self.reason}


def graph_variant(manifest: PackageManifest, graph: str, choice: ExecutionChoice, variant: str | None = None) -> str:
    """The variant of `graph` to run on `choice.device`, or the one NFC_ORT_VARIANT names (`variant`).

    The fusion graph always runs in float32 (a float16 fusion graph flips top-k selections), so "fp16" means the
    encoder's fp16 graph, on CUDA only. CUDA runs the exported fp32 graphs otherwise; the CPU the ORT-optimised
    "cpu" graphs when this onnxruntime version wrote them, else the exported fp32 graphs.
    """
    if variant == "fp16" and choice.device != "cuda":
        raise DeviceError(f"NFC_ORT_VARIANT=fp16 runs only on CUDA; this process runs on the CPU ({choice.reason}): "
                          "unset NFC_ORT_VARIANT or use fp32/cpu")
    if variant is not None and not (variant == "fp16" and graph == "fusion"):
        return variant
    if choice.device == "cpu":
        return _cpu_variant(manifest)
    if graph == "encoder" and "fp16" in manifest.data["graphs"]["encoder"]["variants"]:
        return "fp16"
    return "fp32"


def open_session(manifest: PackageManifest, graph: str, choice: ExecutionChoice, variant: str | None = None,
                 threads: int | None = None) -> GraphSession:
    """A session for `graph` ("encoder" or "fusion") of the package on the device `choice` decided.

    The variant is `graph_variant`'s. A float16 graph is opened only when CUDA ran the probe graph; if a CUDA
    session still does not run on CUDA, the graph is reopened as the CPU variant on the CPU alone (a float16
    graph never runs on the CPU provider). The inputs and outputs must be those the manifest declares.
    """
    chosen = graph_variant(manifest, graph, choice, variant)
    session = _session(manifest.graph_path(graph, chosen), list(choice.providers), chosen, threads)
    reason = choice.reason
    if choice.device == "cuda" and session.get_providers()[0] != CUDA:
        fallback = _cpu_variant(manifest)
        reason = (f"CUDA ran the probe graph but ONNX Runtime did not use it for {graph} (providers "
                  f"{session.get_providers()}): running the {fallback} variant on the CPU")
        log.warning("%s", reason)
        session = _session(manifest.graph_path(graph, fallback), [CPU], fallback, threads)
        chosen = fallback
    declared = manifest.data["graphs"][graph]
    for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        expected = [entry["name"] for entry in declared[kind]]
        if [value.name for value in actual] != expected:
            raise PackageError(f"{graph} graph has {kind} {[v.name for v in actual]}, the manifest declares {expected}")
    log.info("%s graph: %s variant on %s (%s)", graph, chosen, session.get_providers()[0], reason)
    return GraphSession(graph=graph, variant=chosen, session=session, reason=reason)


def _cpu_variant(manifest: PackageManifest) -> str:
    """The ORT-optimised "cpu" graph when this onnxruntime made it, else the exported fp32 graph: offline
    optimisations are only meant for the onnxruntime version that wrote them."""
    made_by = manifest.data["onnx"].get("onnxruntime")
    if made_by == ort.__version__:
        return "cpu"
    log.info("the package's CPU graphs were optimised by onnxruntime %s, this is %s: using the fp32 graphs",
             made_by, ort.__version__)
    return "fp32"


def _session(path: Path, providers: list[str], variant: str, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # CUDA's start was checked by the probe (serving.providers), which logs
    # float16 graphs stop at the extended level: ORT's CPU layout optimisations (ORT_ENABLE_ALL) crashed the
    # process on a float16 graph (manifest "runtime" notes); on CUDA they have nothing to do
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if variant == "fp16"
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if threads:
        options.intra_op_num_threads = threads
    # idle intra-op threads otherwise busy-wait after every run, taking the cores from the request handling
    # (validation, features) that runs between graph calls in the same process (docs/BENCHMARKS.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no retry on the CPU when CUDA fails at creation or in a run: ONNX Runtime would rerun this graph there
    return ort.InferenceSession(str(path), options, providers=providers, enable_fallback=0)


@dataclass(frozen=True)
class EncodedTexts:
    """Article vectors in input order, with each text's token count before truncation."""

    vectors: np.ndarray  # (M, D) float32
    n_tokens: np.ndarray  # (M,) int64
    n_truncated: int  # texts longer than max_length tokens, cut to it


class NewsEncoder:
    """The package's tokenizer and encoder graph: texts -> pooled float32 vectors, run in length-sorted batches.

    A batch holds at most `max_batch_texts` texts and `max_batch_tokens` padded tokens; padding is masked
    inside the graph, so a text's vector does not depend on its batch-mates beyond float rounding.
    """

    def __init__(self, manifest: PackageManifest, device: str = "auto", variant: str | None = None,
                 threads: int | None = None, max_batch_texts: int = 32, max_batch_tokens: int = 32_768) -> None:
        settings = manifest.data["encoder"]
        self.max_length = int(settings["max_length"])
        self.dim = int(settings["dim"])
        self.pad_token_id = int(settings["pad_token_id"])
        self.max_batch_texts = max_batch_texts
        self.max_batch_tokens = max_batch_tokens
        tokenizer_path = manifest.root / settings["tokenizer"]
        # two instances: truncation is tokenizer state, and counting needs the untruncated length
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_length)
        self._counter = Tokenizer.from_file(str(tokenizer_path))
        self._counter.no_padding()
        self._counter.no_truncation()
        self.graph = open_session(manifest, "encoder", choose_device(device), variant, threads)
        self.session = self.graph.session
        # what a cached vector of this encoder is keyed by: the same weights run by another provider or graph
        # variant give other roundings (fp16 quite other ones), so those are part of the key
        self.vector_key = f"{settings['fingerprint']}:onnx:{self.graph.provider}:{self.graph.variant}"
        self._inputs = [value.name for value in self.session.get_inputs()]
        self.stats = BatchStats()
        self._truncated = 0
        self._lock = threading.Lock()

    @property
    def provider(self) -> str:
        return self.graph.provider

    @property
    def truncated_texts(self) -> int:
        """Texts cut to max_length since this encoder was made."""
        return self._truncated

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids cut to max_length (special tokens included) and each text's untruncated token count."""
        ids = [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]
        n_tokens = np.array([len(x) for x in ids], dtype=np.int64)
        at_limit = np.flatnonzero(n_tokens >= self.max_length)
        if len(at_limit):
            full = self._counter.encode_batch([texts[i] for i in at_limit])
            n_tokens[at_limit] = [len(encoding.ids) for encoding in full]
        return ids, n_tokens

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        """(M, D) float32 vectors in the order of `texts`; truncations are counted and logged."""
        ids, n_tokens = self.tokenize(texts)
        vectors = np.zeros((len(ids), self.dim), dtype=np.float32)
        truncated = int((n_tokens > self.max_length).sum())
        if truncated:
            with self._lock:
                self._truncated += truncated
            log.warning("%d of %d texts exceed max_length=%d tokens and were truncated (longest %d)",
                        truncated, len(ids), self.max_length, int(n_tokens.max()))
        for batch in self._batches([len(x) for x in ids]):
            length = max(len(ids[i]) for i in batch)
            input_ids = np.full((len(batch), length), self.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(batch), length), dtype=np.int64)
            for row, i in enumerate(batch):
                input_ids[row, :len(ids[i])] = ids[i]
                mask[row, :len(ids[i])] = 1
            vectors[batch] = self.session.run(None, dict(zip(self._inputs, (input_ids, mask), strict=True)))[0]
            self.stats.record(len(batch))
        if not np.isfinite(vectors).all():
            raise RuntimeError("the encoder graph produced NaN/inf vectors; the model package is broken")
        return EncodedTexts(vectors=vectors, n_tokens=n_tokens, n_truncated=truncated)

    def _batches(self, lengths: list[int]) -> list[np.ndarray]:
        """Indices grouped by ascending length, each group within the text and padded-token budgets."""
        order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
        batches: list[np.ndarray] = []
        start = 0
        while start < len(order):
            stop = start + 1  # lengths ascend, so the padded size of [start, stop) is lengths[order[stop-1]]
            while (stop < len(order) and stop - start < self.max_batch_texts
                   and (stop + 1 - start) * lengths[order[stop]] <= self.max_batch_tokens):
                stop += 1
            batches.append(order[start:stop])
            start = stop
        return batches


@dataclass(frozen=True)
class PreparedRequest:
    """A request checked against the model and reduced to the model's window: the market inputs, and the article
    texts the window reads with the window bar each belongs to and the assets each names (their vectors come from
    the encoder; `PortfolioRuntime.inputs` pools them per asset as training did)."""

    request_id: str
    as_of: datetime  # UTC close time of the window's last bar
    market: np.ndarray = field(repr=False)  # (L, N, F) float32, normalised features
    text_bars: np.ndarray  # (M,) int64: the window bar (0..L-1) of each text
    text_assets: np.ndarray = field(repr=False)  # (M, N) bool: the text names asset n (none: market-wide news)
    texts: list[str] = field(repr=False)


def check_input_layout(manifest: PackageManifest) -> None:
    """Refuse a package whose fusion graph does not read the inputs this server feeds, naming both layouts."""
    declared = manifest.data["graphs"]["fusion"]
    names = tuple(e["name"] for e in declared["inputs"]), tuple(e["name"] for e in declared["outputs"])
    if names[0] == BAR_POOLED_INPUT_NAMES:
        raise PackageError(f"model {manifest.version} is from before per-asset news: its fusion graph reads one news "
                           f"vector pooled over all of a bar's news {BAR_POOLED_INPUT_NAMES} (news_emb (B, L, D)); "
                           f"this server feeds {INPUT_LAYOUT}. Retrain the run with this version and export it again")
    if names != (INPUT_NAMES, FUSION_OUTPUTS):
        raise PackageError(f"fusion graph reads {names[0]} and writes {names[1]}; this server feeds "
                           f"{INPUT_LAYOUT} and reads {FUSION_OUTPUTS}")


class PortfolioRuntime:
    """A verified model package ready to predict: the fusion graph, and optionally the news encoder.

    `prepare` refuses requests the model cannot answer (RequestError, a client error); `predict` turns
    prepared requests and their article vectors into one prediction each, running the fusion graph once
    for the whole batch.
    """

    def __init__(self, manifest: PackageManifest, fusion: GraphSession, encoder: NewsEncoder | None = None) -> None:
        check_input_layout(manifest)
        if tuple(manifest.data["features"]["names"]) != FEATURE_NAMES:
            raise PackageError(f"the model was trained on features {manifest.data['features']['names']}; this "
                               f"server computes {list(FEATURE_NAMES)}: serve it with the code version it was "
                               "trained with")
        self.manifest = manifest
        self.graph = fusion
        self.session = fusion.session
        self.encoder = encoder
        self.universe = manifest.universe
        self.bar_spec = manifest.bar_spec
        self.lookback = manifest.window.lookback
        self.horizon = manifest.window.horizon
        self.normaliser = manifest.normaliser
        self.embed_dim = int(manifest.data["encoder"]["dim"])
        # features are NaN during the warm-up, so the window's first bar needs that many bars before it
        self.bars_needed = int(manifest.data["features"]["warmup_bars"]) + self.lookback
        self.stats = BatchStats()

    @classmethod
    def load(cls, pkg_dir: Path | str, device: str = "auto", variant: str | None = None, threads: int | None = None,
             with_encoder: bool = True) -> PortfolioRuntime:
        """Verify the package (hashes, paths; signature with NFC_PACKAGE_PUBLIC_KEY), decide the device
        (serving.providers), then open its graphs; PackageError names what is wrong with the package, DeviceError
        what is wrong with NFC_DEVICE/NFC_ORT_VARIANT here."""
        manifest = load_verified_manifest(pkg_dir)
        check_input_layout(manifest)  # before any graph opens
        fusion = open_session(manifest, "fusion", choose_device(device), variant, threads)
        encoder = NewsEncoder(manifest, device, variant, threads) if with_encoder else None
        return cls(manifest, fusion, encoder)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def provider(self) -> str:
        return self.graph.provider

    def prepare(self, request: PredictRequest | RequestFrames, panel: BarPanel | None = None) -> PreparedRequest:
        """Check `request` (a /predict body, or the frames of any body format) against the model and reduce it to
        the model's window; a RequestError says what to fix. Bars that sit on the model's grid, complete, are read
        straight into its panel (serving.bar_grid.clean_panel; the by-reference grid hands its own as `panel`);
        any others are checked against the model and gridded by `resample_bars`, which gives the same panel for
        such bars."""
        frames = as_frames(request)
        panel = panel or clean_panel(frames.bars, self.universe.symbols, self.bar_spec.clock, self.bars_needed)
        if panel is None:
            bars, news = check_request_against_model(frames, self.universe.symbols, self.bars_needed,
                                                     self.bar_spec.clock)
        else:
            news = frames.news
        try:
            data = market_data(bars, news, self.universe, self.bar_spec, source="request") if panel is None else \
                panel_market_data(panel, news, self.universe, self.bar_spec, source="request")
            anchor = data.n_bars - 1
            # article vectors cannot make a window invalid: zeros stand in for them in the window's checks
            window = grid_inputs(data, np.zeros((len(data.news), self.embed_dim), np.float32),
                                 self.normaliser).windows(np.array([anchor]), self.lookback)
        except DataError as err:
            raise RequestError(str(err)) from None
        first = anchor - self.lookback + 1
        rows = np.flatnonzero(data.aligned.bar >= first)  # the news of the window's bars, the only ones read
        titles, bodies = data.news["title"].to_numpy(), data.news["body"].to_numpy()  # a column read costs ~20 µs
        texts = [article_text(titles[i], bodies[i]) for i in rows]
        return PreparedRequest(request_id=request.request_id or uuid.uuid4().hex,
                               as_of=data.panel.times[anchor].to_pydatetime(), market=window["market"][0],
                               text_bars=np.asarray(data.aligned.bar[rows] - first, dtype=np.int64),
                               text_assets=data.aligned.assets[rows], texts=texts)

    def job_parts(self, item: PreparedRequest, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """What `window_inputs` builds one request's fusion inputs from: the window's market features and its texts'
        bars, assets and vectors. The portfolio service sends these to the fusion service rather than the inputs:
        ~L·N·F + M·D floats instead of the dense per-asset news grid of L·N·D."""
        if len(vectors) != len(item.texts):
            raise ValueError(f"{len(vectors)} article vectors for {len(item.texts)} texts")
        return {"market": item.market, "text_bars": item.text_bars, "text_assets": item.text_assets,
                "vectors": vectors.reshape(len(vectors), self.embed_dim)}

    def window_inputs(self, market: np.ndarray, text_bars: np.ndarray, text_assets: np.ndarray,
                      vectors: np.ndarray) -> dict[str, np.ndarray]:
        """The fusion graph's inputs for one window (no batch axis): the texts' vectors pooled per asset and bar by
        the same `pool_news` and windowed by the same `GridInputs` as training."""
        news = pool_news(text_bars, text_assets, vectors, self.lookback)
        window = GridInputs(news=news, market=market).windows(np.array([self.lookback - 1]), self.lookback)
        return {name: values[0] for name, values in window.items()}

    def inputs(self, item: PreparedRequest, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """The fusion graph's inputs for one prepared request (no batch axis), given the vectors of its texts."""
        return self.window_inputs(**self.job_parts(item, vectors))

    def run(self, inputs: Sequence[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """(logits, weights), each (B, N), of one fusion run over the windows `inputs` (from `inputs()`)."""
        feed = {name: np.ascontiguousarray(np.stack([item[name] for item in inputs]), dtype=np.float32)
                for name in INPUT_NAMES}
        logits, weights = self.session.run(list(FUSION_OUTPUTS), feed)
        self.stats.record(len(inputs))
        if not (np.isfinite(logits).all() and np.isfinite(weights).all()):
            raise RuntimeError("the fusion graph produced NaN/inf; the model package is broken")
        return logits, weights

    def record(self, item: PreparedRequest, logits: np.ndarray, weights: np.ndarray) -> PredictionRecord:
        """The prediction of one prepared request from its row of a fusion run."""
        symbols = self.universe.symbols
        return PredictionRecord(model_version=self.version, as_of=item.as_of, symbols=symbols,
                                weights=dict(zip(symbols, weights.tolist(), strict=True)),
                                logits=dict(zip(symbols, logits.tolist(), strict=True)),
                                horizon_bars=self.horizon, request_id=item.request_id)

    def predict(self, prepared: Sequence[PreparedRequest], vectors: np.ndarray) -> list[PredictionRecord]:
        """One prediction per prepared request, in one fusion run; `vectors` (M, D) are the article vectors of
        all their texts, in order (the first request's texts first)."""
        counts = [len(item.texts) for item in prepared]
        if len(vectors) != sum(counts):
            raise ValueError(f"{len(vectors)} article vectors for {sum(counts)} texts")
        if not prepared:
            return []
        bounds = itertools.pairwise(np.cumsum([0, *counts]))
        logits, weights = self.run([self.inputs(item, vectors[start:stop])
                                    for item, (start, stop) in zip(prepared, bounds, strict=True)])
        return [self.record(item, logits[i], weights[i]) for i, item in enumerate(prepared)]

    def predict_requests(self, requests: Sequence[PredictRequest]) -> list[PredictionRecord]:
        """Prepare, encode and predict in this process (needs the encoder): the path without a server."""
        if self.encoder is None:
            raise RuntimeError("this runtime was loaded without its encoder (with_encoder=False)")
        prepared = [self.prepare(request) for request in requests]
        return self.predict(prepared, self.encoder.encode([text for item in prepared for text in item.texts]).vectors)
