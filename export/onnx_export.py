"""torch -> ONNX for the news encoder and the fusion model, plus the derived ONNX Runtime variants.

Both graphs are exported with `torch.onnx.export(dynamo=True)` at opset 18 and checked afterwards:
the exporter can silently freeze a dynamic axis to the example's size (it does so, without an error,
for block-sparse BigBird's sequence axis), so every export asserts that the named axes are still
symbolic in the saved graph.

- Encoder: BigBird + pooling (masked mean, or [CLS]) in one graph, (B, T) int64 ids and mask ->
  (B, D) float32 `pooled`, batch and sequence dynamic. Only full attention ("original_full") is
  exported: block-sparse exports only at a static length, and its output depends on the padded
  length, so a static graph would not reproduce the embeddings the model was trained on.
- Fusion: `CgaOnnxWrapper`, the float32 windows of `neuralfusion.inputs.INPUT_NAMES` -> `logits`, `weights`
  (B, N), batch dynamic.

Variants (all from the fp32 graph): `*.cpu.onnx` is the graph after ONNX Runtime's extended
optimisations (fusions such as SkipLayerNormalization, FastGelu, FusedMatMul), saved through
`SessionOptions.optimized_model_filepath`. Extended, not "all": the layout optimisations of the
top level are specific to the CPU they ran on, so serving enables them online (ORT_ENABLE_ALL at
session start is cheap on an already-fused graph). `encoder.fp16.onnx` is for CUDA: weights and
compute in float16, inputs and outputs kept float32 so callers see one interface; it has its own
tolerance and is published only when it passes it end to end (export/package.py). The fusion graph
gets no float16 variant: it is small, and float16 logits flip top-k selections.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch import Tensor, nn

from neuralfusion.inputs import INPUT_NAMES
from training.encoder import NfcEncoder, pool_hidden
from training.model import CgaModel, cga_example_inputs

__all__ = [
    "OPSET",
    "CgaOnnxWrapper",
    "ExportError",
    "NfcEncoderOnnxWrapper",
    "check_graph",
    "convert_fp16",
    "export_encoder",
    "export_fusion",
    "graph_signature",
    "open_session",
    "optimize_for_cpu",
]

OPSET = 18
# third-party warnings the dynamo exporter raises on these models (torch 2.13); pytest turns warnings into errors
_EXPORT_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, "_check_is_size will be removed"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    (UserWarning, "The tensor attributes .*_flat_weights.* were assigned"),
    (UserWarning, "# The axis name: .* will not be used"),
    (UserWarning, "The .grad attribute of a Tensor that is not a leaf Tensor"),
)


class ExportError(RuntimeError):
    """An export that would not compute what PyTorch computes; the message says why."""


class NfcEncoderOnnxWrapper(nn.Module):
    """BigBird and the encoder's pooling as one graph: (B, T) ids + mask -> (B, D) float32 `pooled`."""

    input_names = ("input_ids", "attention_mask")
    # never "embedding": BigBird has an internal node of that name and ONNX Runtime rejects the duplicate
    output_names = ("pooled",)

    def __init__(self, encoder: NfcEncoder) -> None:
        super().__init__()
        if encoder.attention_type != "original_full":
            raise ExportError(f"encoder {encoder.source!r} uses {encoder.attention_type!r} attention, which exports "
                              "only at a static sequence length and then differs from PyTorch at other lengths; "
                              "re-embed the news with --attention-type original_full and retrain to export")
        if encoder.dtype != torch.float32:
            raise ExportError(f"export the encoder in float32 (it computes in {encoder.dtype}); the fp16 variant is "
                              "derived from the float32 graph")
        self.model = encoder.model
        self.pooling = encoder.pooling
        self.eval()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:  # (B, T), (B, T) -> (B, D)
        # a float mask inside the graph: torch 2.13's exporter fails on BigBird's `1.0 - int_mask` (the ONNX
        # input stays int64)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask.float()).last_hidden_state
        return pool_hidden(hidden, attention_mask, self.pooling)


class CgaOnnxWrapper(nn.Module):
    """The fusion model with a plain-tensor interface: the float32 windows of INPUT_NAMES -> (logits, weights), no
    loss: news_emb (B, L, N, D), coverage (B, L, N), market_news_emb (B, L, D), market_news_mask (B, L), market
    (B, L, N, F).

    Wrapping puts the model in eval mode: an export is an inference graph (no dropout).
    """

    input_names = INPUT_NAMES
    output_names = ("logits", "weights")

    def __init__(self, model: CgaModel) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, news_emb: Tensor, coverage: Tensor, market_news_emb: Tensor, market_news_mask: Tensor,
                market: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(news_emb, coverage, market_news_emb, market_news_mask, market)
        return out.logits, out.weights  # (B, N), (B, N)


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names: Sequence[str],
            output_names: Sequence[str], dynamic_shapes: dict[str, dict[int, torch.export.Dim]],
            external_data: bool | None) -> Path:
    """Export with dynamo at OPSET, save, check the axes. external_data: True, False, or None for torch's
    rule (external only above protobuf's 2 GB limit)."""
    with warnings.catch_warnings():
        for category, message in _EXPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        program = torch.onnx.export(module, args, input_names=list(input_names), output_names=list(output_names),
                                    opset_version=OPSET, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    verbose=False, optimize=True)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path, external_data=external_data)
    axes = {name: tuple(dims) for name, dims in dynamic_shapes.items()}
    _assert_symbolic(path, axes)
    return path


def export_encoder(encoder: NfcEncoder, path: Path, external_data: bool | None = None) -> Path:
    """Export the encoder (pooling included) to `path`; batch and sequence axes stay dynamic."""
    wrapper = NfcEncoderOnnxWrapper(encoder)
    config = encoder.model.config
    # two rows of different lengths, so padding and the mask are traced as in real batches
    length = min(48, encoder.max_length)
    ids, mask = encoder.pad_batch([[config.pad_token_id + 1] * length, [config.pad_token_id + 1] * (length // 2)])
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", min=2, max=min(encoder.max_length, config.max_position_embeddings))
    axes = {name: {0: batch, 1: sequence} for name in wrapper.input_names}
    return _export(wrapper, (ids.cpu(), mask.cpu()), path, wrapper.input_names, wrapper.output_names, axes,
                   external_data)


def export_fusion(model: CgaModel, path: Path, external_data: bool | None = None) -> Path:
    """Export the fusion model (eval mode, logits + top-k weights) to `path`; the batch axis stays dynamic."""
    wrapper = CgaOnnxWrapper(model)
    batch = torch.export.Dim("batch")
    axes = {name: {0: batch} for name in wrapper.input_names}
    example = tuple(x.to(next(model.parameters()).device) for x in cga_example_inputs(model.config, 3))
    return _export(wrapper, example, path, wrapper.input_names, wrapper.output_names, axes, external_data)


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _assert_symbolic(path: Path, axes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise if any named input axis of the saved graph became a fixed size (a silent exporter specialisation)."""
    signature = graph_signature(path)
    shapes = {entry["name"]: entry["shape"] for entry in signature["inputs"]}
    frozen = [f"{name}[{axis}]={shapes[name][axis]}" for name, dims in axes.items() for axis in dims
              if not isinstance(shapes[name][axis], str)]
    if frozen:
        raise ExportError(f"{path.name}: the exporter fixed dynamic axes to the example's size ({', '.join(frozen)}); "
                          "the graph would only accept that size")


def graph_signature(path: Path) -> dict[str, list[dict[str, object]]]:
    """Inputs and outputs of an ONNX file: [{name, dtype, shape}], symbolic dims as their names."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, object]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            out.append({"name": value.name, "dtype": dtype, "shape": shape})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def check_graph(path: Path) -> None:
    """The ONNX checker with shape inference, by path so external data and > 2 GB graphs are read too."""
    onnx.checker.check_model(str(path), full_check=True)


def open_session(path: Path, threads: int | None = None, level: ort.GraphOptimizationLevel | None = None,
                 spinning: bool = True, optimized_path: Path | None = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session (all optimisations unless `level`); `optimized_path` saves the graph
    after optimisation (offline mode). spinning=False stops idle threads busy-waiting for the next run,
    which helps when other work shares the cores and costs a little latency."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # constant-folding notes about fp16 nodes are noise, errors still raise
    options.graph_optimization_level = level or ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        if _uses_external_data(onnx.load(str(path), load_external_data=False)):
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             optimized_path.name + ".data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimize_for_cpu(src: Path, dst: Path) -> Path:
    """Save `src` after ONNX Runtime's extended graph optimisations for the CPU provider (module docstring)."""
    open_session(src, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, optimized_path=dst)
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """A float16 copy of `src` with float32 inputs and outputs (weights outside the file if `src`'s are)."""
    model = onnx.load(str(src))
    external = _uses_external_data(onnx.load(str(src), load_external_data=False))
    half = ir.from_proto(convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=external))
    half.graph.sort()  # the converter appends its input casts last; the ONNX checker wants topological order
    onnx.save_model(ir.to_proto(half), str(dst), save_as_external_data=external, location=dst.name + ".data")
    return dst
