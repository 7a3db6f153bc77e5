"""Export a checkpoint to ONNX: the graphs transformers.js and ONNX Runtime run, beside the
tokenizer, preprocessor and generation configs, so the folder is a complete model.

>>> from florence2 import export_onnx
>>> export_onnx("florence2-onnx", "path/to/checkpoint", quantize="int8")   # no model: the embedded one

The layout (file names, inputs, outputs) is described in :mod:`florence2.onnx_model`, which runs
such a folder (``Florence2.from_pretrained(folder, backend="onnxruntime")``). Graphs are traced
from our PyTorch model with the TorchScript-based exporter, batch and sequence axes dynamic (the
image size is the preprocessor's); the decoder's two halves are merged into one graph
(:mod:`florence2.export.merge`); ``quantize="int8"`` adds ONNX Runtime's dynamic int8 quantization of
every matrix product (``_int8`` files) and ``dtype="fp16"`` float16 graphs (``_fp16`` files,
float32 at their inputs and outputs). Every export is checked against the PyTorch model before it is kept
(:mod:`florence2.export.check`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from florence2.config import DecodingOptions, TextConfig
from florence2.errors import CheckpointError, Florence2Error
from florence2.export.graphs import DecoderStep, EmbedTokens, TextEncoder, VisionEncoder, traceable
from florence2.export.merge import merge_decoders
from florence2.image import ImageProcessor
from florence2.layouts import WRITTEN_LAYOUT
from florence2.model.florence2 import Florence2Model
from florence2.onnx_model import (
    GRAPHS,
    MANIFEST,
    ONNX_FOLDER,
    VARIANT_SUFFIXES,
    cache_names,
    graph_path,
    write_manifest,
)
from florence2.pipeline import Florence2, default_model_path
from florence2.quantization import is_quantized
from florence2.tasks import TASKS
from florence2.tokenizer import Florence2Tokenizer
from florence2.weights import load_model, read_generation_settings, resolve_checkpoint

__all__ = ["DEFAULT_OPSET", "DTYPES", "QUANTIZATIONS", "ExportError", "export_onnx"]

DEFAULT_OPSET = 17
QUANTIZATIONS = ("int8",)
DTYPES = ("fp32", "fp16")
_DTYPE_NAMES = {"fp32": "fp32", "float32": "fp32", "fp16": "fp16", "float16": "fp16"}
# ONNX Runtime's dynamic quantization of these ops; convolutions stay float (their integer kernels
# take uint8 weights only), as do the embeddings and layer norms, as in florence2.quantization
_INT8_OPS = ["MatMul", "Gemm"]


class ExportError(Florence2Error, ValueError):
    """An export cannot be written: bad options, an unsuitable model or output folder."""


def export_onnx(
    out: str | os.PathLike,
    model: str | os.PathLike | Florence2 | None = None,
    *,
    quantize: str | None = None,
    dtype: str | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> Path:
    """Write ``model`` (a checkpoint folder of either layout, a hub id, a loaded :class:`Florence2`;
    None: the embedded model) as an ONNX folder ``out`` and return its path.

    quantize: ``"int8"`` adds the ``_int8`` graphs (ONNX Runtime dynamic quantization).
    dtype: ``"fp16"`` adds the ``_fp16`` graphs. The fp32 graphs are always written: the other
        variants are made from them, and transformers.js loads them by default.
    check: compare every fp32 graph with the PyTorch model on fresh inputs
        (:func:`florence2.export.check.check_export`) and refuse an export that differs by more than
        1e-3; the differences are recorded in ``onnx/florence2_onnx.json``.

    ``out`` must not exist, be empty, or hold an earlier export (which is replaced). The folder is
    written beside ``out`` and moved into place when complete.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}; choose from {', '.join(QUANTIZATIONS)}")
    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise ExportError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    _require_extra()
    variants = ["fp32"] + (["int8"] if quantize else []) + (["fp16"] if dtype and _DTYPE_NAMES[dtype] == "fp16" else [])
    out = Path(out)
    _check_target(out)
    torch_model, image_processor, tokenizer, decoding = _source(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / ONNX_FOLDER).mkdir()
        with tempfile.TemporaryDirectory(prefix="florence2-onnx-") as work:
            _export_graphs(torch_model, image_processor.size, tmp, Path(work), opset)
            for variant in variants:
                _write_variant(tmp, Path(work), variant, _merged_output_shapes(torch_model.config.text))
        num_image_tokens = torch_model.config.num_image_tokens(image_processor.size)
        _write_configs(tmp, torch_model, image_processor, tokenizer, decoding, num_image_tokens)
        manifest: dict[str, Any] = {
            "format": "florence2-onnx",
            "version": 1,
            "variants": variants,
            "parameters": sum(p.numel() for p in torch_model.parameters()),
            "opset": opset,
            "exported_with": {"torch": torch.__version__.split("+")[0]},
        }
        if check:
            from florence2.export.check import check_export

            differences = check_export(tmp, torch_model)
            manifest["max_abs_difference"] = differences
            worst = max(differences.values())
            if worst > 1e-3:
                raise ExportError(
                    f"the exported graphs differ from the PyTorch model by up to {worst:.1e}: {differences}"
                )
        write_manifest(tmp, manifest)
        for file in tmp.rglob("*"):
            file.chmod(0o755 if file.is_dir() else 0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _require_extra() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ExportError(
            f"exporting to ONNX needs onnx and onnxruntime: pip install 'florence2[onnx]' ({error})"
        ) from None


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / ONNX_FOLDER / MANIFEST).is_file())):
        raise ExportError(f"{out} exists and is not an earlier export: give a new or empty folder")


def _source(model: Any) -> tuple[Florence2Model, ImageProcessor, Florence2Tokenizer | None, DecodingOptions]:
    """The float32 PyTorch model to trace, its image processor, its tokenizer (None when the
    checkpoint has none) and its decoding settings."""
    if isinstance(model, Florence2):
        torch_model = model.model
        if not isinstance(torch_model, Florence2Model) or is_quantized(torch_model):
            raise ExportError("export a float PyTorch model: load the checkpoint without quantize= or another backend")
        if torch_model.dtype != torch.float32 or torch_model.device.type != "cpu" or torch_model.training:
            torch_model = copy.deepcopy(torch_model).float().cpu().eval()  # the caller's model stays as it is
        processor = model.processor
        return (
            torch_model,
            processor.image_processor,
            processor.tokenizer,
            DecodingOptions.for_model(torch_model.config, **model.generation_defaults),
        )
    folder = default_model_path() if model is None else resolve_checkpoint(model)
    torch_model = load_model(folder, device="cpu", dtype=torch.float32)
    try:
        tokenizer = Florence2Tokenizer.from_pretrained(folder)
    except CheckpointError:
        tokenizer = None  # graphs and configs only; the folder then needs the tokenizer files added
    decoding = DecodingOptions.for_model(torch_model.config, **read_generation_settings(folder))
    return torch_model, ImageProcessor.from_pretrained(folder), tokenizer, decoding


# --- graphs ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice, and tracer warnings about the model's
        # shape checks, which are constant for the traced shapes and hold for any other
        warnings.simplefilter("ignore")
        with torch.no_grad(), traceable():
            yield


def _export(module: torch.nn.Module, inputs: tuple, path: Path, names: dict[str, dict[int, str]], opset: int) -> None:
    """Trace ``module`` on ``inputs`` into ``path``. ``names``: the graph's inputs then outputs, in
    order, each with its dynamic axes."""
    count = len(inputs)
    torch.onnx.export(
        module,
        inputs,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=list(names)[:count],
        output_names=list(names)[count:],
        dynamic_axes={name: axes for name, axes in names.items() if axes},
        do_constant_folding=True,
    )


def _export_graphs(model: Florence2Model, image_size: tuple[int, int], folder: Path, work: Path, opset: int) -> None:
    """Trace the fp32 vision encoder, token embedding and text encoder into ``folder/onnx``, and the
    decoder's two halves (without and with a cache) into ``work``."""
    model = model.eval()
    text = model.config.text
    heads, head_dim = text.decoder_attention_heads, text.d_model // text.decoder_attention_heads
    rows, steps, length, cached = 2, 3, 7, 4  # traced batch, decoder tokens, encoder tokens, cached tokens
    batch = {0: "batch_size"}
    tokens = {0: "batch_size", 1: "sequence_length"}
    encoder = {0: "batch_size", 1: "encoder_sequence_length"}
    decoder = {0: "batch_size", 1: "decoder_sequence_length"}
    past = cache_names("past_key_values", text.decoder_layers)
    present = cache_names("present", text.decoder_layers)
    embeds = torch.randn(rows, length, text.d_model)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, -2:] = 0
    caches = [torch.randn(rows, heads, cached if ".decoder." in n else length, head_dim) for n in past]

    def cache_axes(names: list[str], self_length: str, cross_length: str) -> dict[str, dict[int, str]]:
        return {n: {0: "batch_size", 2: self_length if ".decoder." in n else cross_length} for n in names}

    with _quiet_tracing():
        pixels = torch.randn(rows, 3, *image_size)
        names = {"pixel_values": batch, "image_features": batch}
        _export(VisionEncoder(model), (pixels,), graph_path(folder, "vision_encoder"), names, opset)
        ids = torch.randint(0, text.vocab_size, (rows, steps))
        names = {"input_ids": tokens, "inputs_embeds": tokens}
        _export(EmbedTokens(model), (ids,), graph_path(folder, "embed_tokens"), names, opset)
        names = {"inputs_embeds": encoder, "attention_mask": encoder, "last_hidden_state": encoder}
        _export(TextEncoder(model), (embeds, mask), graph_path(folder, "encoder_model"), names, opset)
        names = {"inputs_embeds": decoder, "encoder_hidden_states": encoder, "encoder_attention_mask": encoder}
        names |= {"logits": decoder, **cache_axes(present, "decoder_sequence_length", "encoder_sequence_length")}
        inputs = (torch.randn(rows, steps, text.d_model), embeds, mask)
        _export(DecoderStep(model, with_past=False), inputs, work / "decoder_model.onnx", names, opset)
        names = {"inputs_embeds": decoder, "encoder_attention_mask": encoder}
        names |= cache_axes(past, "past_decoder_sequence_length", "encoder_sequence_length_out")
        names |= {"logits": decoder, **cache_axes(present, "present_decoder_sequence_length", "empty")}
        inputs = (torch.randn(rows, 2, text.d_model), mask, *caches)
        _export(DecoderStep(model, with_past=True), inputs, work / "decoder_with_past_model.onnx", names, opset)


def _merged_output_shapes(text: TextConfig) -> dict[str, list[str | int]]:
    """The merged decoder's output dimensions (its branches give the cross-attention outputs
    different lengths: the encoder's, or 0)."""
    heads = text.decoder_attention_heads
    shapes: dict[str, list[str | int]] = {"logits": ["batch_size", "decoder_sequence_length", text.vocab_size]}
    for name in cache_names("present", text.decoder_layers):
        length = "present_decoder_sequence_length" if ".decoder." in name else "encoder_sequence_length_out"
        shapes[name] = ["batch_size", heads, length, text.d_model // heads]
    return shapes


def _write_variant(folder: Path, work: Path, variant: str, shapes: dict[str, list[str | int]]) -> None:
    """The ``variant`` graphs. fp32: the traced ones, the decoder's halves merged. int8: ONNX
    Runtime's dynamic quantization (int8 weights, one scale per tensor, activations quantized per
    call) of the fp32 graphs. fp16: float16 weights and arithmetic with float32 inputs and outputs
    (ONNX Runtime's float16 converter), so every variant takes and returns the same types. The
    decoder's halves are converted apart, then merged."""
    import onnx

    halves = [work / "decoder_model.onnx", work / "decoder_with_past_model.onnx"]
    if variant != "fp32":
        convert = _to_int8 if variant == "int8" else _to_fp16
        for graph in GRAPHS[:-1]:
            convert(graph_path(folder, graph), graph_path(folder, graph, variant))
        for i, half in enumerate(halves):
            halves[i] = half.with_name(f"{half.stem}{VARIANT_SUFFIXES[variant]}.onnx")
            convert(half, halves[i])
    merged = merge_decoders(*(onnx.load(str(half)) for half in halves), shapes)
    onnx.save(merged, str(graph_path(folder, "decoder_model_merged", variant)))


def _to_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_logging():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=_INT8_OPS)


def _to_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet_logging():
        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """ONNX Runtime's converters log advice (pre-processing, shape inference) to the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# --- configs --------------------------------------------------------------------------------------


def _write_configs(
    folder: Path,
    model: Florence2Model,
    image_processor: ImageProcessor,
    tokenizer: Florence2Tokenizer | None,
    decoding: DecodingOptions,
    num_image_tokens: int,
) -> None:
    """config.json (native layout), generation_config.json, the tokenizer files and a
    preprocessor_config.json that also carries the task tables transformers.js' processor reads."""
    (folder / "config.json").write_text(json.dumps(WRITTEN_LAYOUT.write_config(model.config), indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(decoding.generation_config(), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    path = image_processor.save_pretrained(folder, image_seq_length=num_image_tokens)
    config = json.loads(path.read_text())
    config.update(transformers_js_tasks())
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def transformers_js_tasks() -> dict[str, dict[str, str]]:
    """The task tables of the original Florence-2 processor, which transformers.js reads from
    ``preprocessor_config.json``: prompts of the tasks without and with an input, and result types."""
    return {
        "task_prompts_without_inputs": {t.token: t.prompt for t in TASKS.values() if t.input == "none"},
        "task_prompts_with_input": {t.token: t.prompt for t in TASKS.values() if t.input != "none"},
        "tasks_answer_post_processing_type": {t.token: t.result_type for t in TASKS.values()},
    }
