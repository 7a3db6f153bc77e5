"""An exported folder run by ONNX Runtime behind the same model interface as the PyTorch model.

``florence2 export onnx`` (:mod:`florence2.export.onnx`) writes a folder in the layout that
transformers.js and the community Florence-2 exports use::

    config.json  generation_config.json  preprocessor_config.json  tokenizer files
    onnx/vision_encoder.onnx        pixel_values (B, 3, H, W) -> image_features (B, N_img, D)
    onnx/embed_tokens.onnx          input_ids (B, T) -> inputs_embeds (B, T, D)
    onnx/encoder_model.onnx         inputs_embeds (B, S, D), attention_mask (B, S) -> last_hidden_state
    onnx/decoder_model_merged.onnx  inputs_embeds, encoder_hidden_states, encoder_attention_mask,
                                    past_key_values.{i}.{decoder,encoder}.{key,value}, use_cache_branch
                                    -> logits (B, T, V), present.{i}.{decoder,encoder}.{key,value}
    onnx/florence2_onnx.json        what was exported (variants, parameter count, opset)

plus ``_int8`` and ``_fp16`` variants of each graph when exported (transformers.js' ``dtype``
suffixes). :class:`OnnxFlorence2` implements what :mod:`florence2.generation` and the predictor need
(``encode_image``, ``encode``, ``new_cache``, ``decode``, ``config``, ``device``, ``dtype``,
``parameters``), so generation, scores and parsing are the same code on either backend. Tensors
cross the interface as torch tensors (numpy views, no copies on the CPU); no torch module is built.
ONNX Runtime is imported when a folder is loaded (``pip install 'florence2[onnx]'``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florence2.config import Florence2Config
from florence2.errors import CheckpointError, Florence2Error, read_checkpoint_json
from florence2.layouts import config_from_dict

__all__ = [
    "GRAPHS",
    "MANIFEST",
    "ONNX_FOLDER",
    "VARIANT_SUFFIXES",
    "OnnxCache",
    "OnnxFlorence2",
    "cache_names",
    "graph_path",
    "load_onnx_model",
    "variant_for",
]

ONNX_FOLDER = "onnx"
MANIFEST = "florence2_onnx.json"  # inside ONNX_FOLDER
# the graphs of an export, by the file names transformers.js loads
GRAPHS = ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged")
# variant -> file-name suffix (transformers.js' dtype suffixes: dtype "fp32", "int8", "fp16")
VARIANT_SUFFIXES = {"fp32": "", "int8": "_int8", "fp16": "_fp16"}
_ONNX_EXTRA = "pip install 'florence2[onnx]'"


def graph_path(folder: str | os.PathLike, graph: str, variant: str = "fp32") -> Path:
    """``folder/onnx/<graph><suffix>.onnx``."""
    return Path(folder) / ONNX_FOLDER / f"{graph}{VARIANT_SUFFIXES[variant]}.onnx"


def cache_names(prefix: str, num_layers: int) -> list[str]:
    """Decoder cache inputs (``past_key_values``) or outputs (``present``), in graph order: per layer
    its self-attention key and value (``decoder``), then its cross-attention key and value (``encoder``)."""
    return [
        f"{prefix}.{layer}.{part}.{kind}"
        for layer in range(num_layers)
        for part in ("decoder", "encoder")
        for kind in ("key", "value")
    ]


def variant_for(dtype: torch.dtype | str | None = None, quantize: str | None = None) -> str:
    """The exported variant that serves ``dtype`` / ``quantize``: fp32, fp16 or int8."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    floats = {"float32": "fp32", "fp32": "fp32", "float16": "fp16", "fp16": "fp16", "half": "fp16"}
    if name not in floats:
        raise ValueError(f"an ONNX export runs in float32 or float16 (an exported variant), not {name!r}")
    if quantize is None:
        return floats[name]
    if quantize != "int8":
        raise ValueError(f"unknown quantization {quantize!r}; the ONNX export has 'int8'")
    if floats[name] != "fp32":
        raise ValueError("int8 graphs take float32 inputs; leave dtype out with quantize='int8'")
    return "int8"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise Florence2Error(f"running an ONNX export needs ONNX Runtime: {_ONNX_EXTRA} ({error})") from None
    return onnxruntime


def _providers(ort: Any, device: str | torch.device | None) -> list[str]:
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    wanted = {"cuda": "CUDAExecutionProvider"}.get(kind)
    available = ort.get_available_providers()
    if wanted is None or wanted not in available:
        raise Florence2Error(
            f"ONNX Runtime here has no provider for device {kind!r} (available: {', '.join(available)}); "
            "install the onnxruntime build for it (e.g. onnxruntime-gpu) or use device='cpu'"
        )
    return [wanted, "CPUExecutionProvider"]


@dataclass
class OnnxCache:
    """Decoder state of :class:`OnnxFlorence2`: per layer the self-attention keys/values so far and
    the cross-attention keys/values (computed by the first step), as numpy arrays (N, nh, L, hd).

    ``memory`` and ``mask`` are the encoder output and its mask, converted once for every step."""

    memory: np.ndarray
    mask: np.ndarray
    max_length: int
    self_kv: list[np.ndarray] | None = None  # [k0, v0, k1, v1, ...]
    cross_kv: list[np.ndarray] | None = None
    length: int = 0

    def layer(self, index: int) -> list[np.ndarray]:
        """Layer ``index``'s self-attention key and value, then its cross-attention key and value."""
        return [*self.self_kv[2 * index : 2 * index + 2], *self.cross_kv[2 * index : 2 * index + 2]]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep row ``rows[i]`` as row ``i`` (beam search). The cross-attention state is the same for
        every beam of an item, and beams move within their item only, so it stays where it is."""
        if self.self_kv is not None:
            index = rows.cpu().numpy()
            self.self_kv = [kv[index] for kv in self.self_kv]


class OnnxFlorence2:
    """Florence-2 on ONNX Runtime sessions: the steps :mod:`florence2.generation` drives, with the
    PyTorch model's signatures (torch tensors in and out)."""

    backend = "onnxruntime"

    def __init__(
        self,
        config: Florence2Config,
        sessions: dict[str, Any],
        variant: str,
        parameters: int = 0,
        providers: list[str] | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.variant = variant
        self.providers = providers or ["CPUExecutionProvider"]
        self._parameters = parameters
        text = config.text
        self._heads = text.decoder_attention_heads
        self._head_dim = text.d_model // text.decoder_attention_heads
        self._past = cache_names("past_key_values", text.decoder_layers)

    # --- what the predictor reads ------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the tensors this model returns live (ONNX Runtime hands results back on the CPU)."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The graphs' arithmetic (every variant takes and returns float32 tensors)."""
        return torch.float16 if self.variant == "fp16" else torch.float32

    def parameters(self) -> list[torch.Tensor]:
        """One storage-less tensor with as many elements as the exported model has parameters."""
        return [torch.empty(self._parameters, device="meta")]

    def eval(self) -> OnnxFlorence2:
        return self

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, feeds)

    def _array(self, tensor: torch.Tensor, dtype: Any) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)

    # --- encoding ------------------------------------------------------------------------------

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized pixels -> (B, N_img, D) image tokens."""
        (features,) = self._run("vision_encoder", {"pixel_values": self._array(pixel_values, np.float32)})
        return torch.from_numpy(features)

    def embed(self, ids: torch.Tensor) -> np.ndarray:
        (embeds,) = self._run("embed_tokens", {"input_ids": self._array(ids, np.int64)})
        return embeds

    def encode(
        self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text encoder over ``[image tokens ; prompt]``: memory (B, N_img + T, D) and its mask
        (B, N_img + T), or None when nothing is padded (as the PyTorch model returns them)."""
        n_img, total = image_features.shape[1], image_features.shape[1] + input_ids.shape[1]
        limit = self.config.text.max_position_embeddings
        if total > limit:
            raise ValueError(
                f"{n_img} image tokens + {input_ids.shape[1]} prompt tokens exceed the encoder's {limit} positions"
            )
        embeds = np.concatenate([self._array(image_features, np.float32), self.embed(input_ids)], axis=1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = np.concatenate(
            [np.ones((input_ids.shape[0], n_img), dtype=np.int64), self._array(attention_mask, np.int64)], axis=1
        )
        (hidden,) = self._run("encoder_model", {"inputs_embeds": embeds, "attention_mask": mask})
        return torch.from_numpy(hidden), (None if mask.all() else torch.from_numpy(mask))

    # --- decoding ------------------------------------------------------------------------------

    def new_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor | None, max_length: int) -> OnnxCache:
        rows, length = memory.shape[:2]
        mask = np.ones((rows, length), np.int64) if memory_mask is None else self._array(memory_mask, np.int64)
        return OnnxCache(self._array(memory, np.float32), mask, max_length)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        cache: OnnxCache | None = None,
    ) -> torch.Tensor:
        """(N, L) decoder ids continuing the cached prefix -> (N, L, V) logits. The first step runs the
        merged decoder's no-cache branch (cross-attention keys/values computed from ``memory``), the
        next ones its cache branch."""
        if cache is None:
            cache = self.new_cache(memory, memory_mask, self.config.text.max_position_embeddings)
        steps = decoder_input_ids.shape[1]
        if cache.length + steps > min(cache.max_length, self.config.text.max_position_embeddings):
            raise ValueError(f"decoder length {cache.length + steps} exceeds the cache's {cache.max_length} positions")
        rows = decoder_input_ids.shape[0]
        started = cache.self_kv is not None
        if started:
            past = [kv for layer in range(len(cache.self_kv) // 2) for kv in cache.layer(layer)]
        else:
            empty = np.zeros((rows, self._heads, 0, self._head_dim), np.float32)
            past = [empty] * len(self._past)
        feeds = {
            "inputs_embeds": self.embed(decoder_input_ids),
            "encoder_hidden_states": cache.memory,
            "encoder_attention_mask": cache.mask,
            "use_cache_branch": np.array([started]),
            **dict(zip(self._past, past)),
        }
        logits, *present = self._run("decoder_model_merged", feeds)
        cache.self_kv = [kv for i in range(0, len(present), 4) for kv in present[i : i + 2]]
        if not started:
            cache.cross_kv = [kv for i in range(2, len(present), 4) for kv in present[i : i + 2]]
        cache.length += steps
        return torch.from_numpy(logits)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """``onnx/florence2_onnx.json`` of an export ({} for a folder written by another exporter)."""
    path = Path(folder) / ONNX_FOLDER / MANIFEST
    return read_checkpoint_json(path) if path.is_file() else {}


def load_onnx_model(
    folder: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
) -> OnnxFlorence2:
    """Open the graphs of an exported folder in ONNX Runtime sessions.

    dtype: float32 (default) or float16 choose the ``fp32`` or ``_fp16`` graphs; quantize ``"int8"``
        the ``_int8`` graphs. device: ``cpu`` (default) or ``cuda`` (the onnxruntime-gpu build).
    The sessions use as many threads as PyTorch does (``torch.set_num_threads`` before loading).

    Raises:
        CheckpointError: the folder lacks the chosen variant's graphs or a readable config.json.
        Florence2Error: ONNX Runtime is not installed, or has no provider for ``device``.
    """
    folder = Path(folder)
    variant = variant_for(dtype, quantize)
    paths = [graph_path(folder, graph, variant) for graph in GRAPHS]
    missing = [str(p.relative_to(folder)) for p in paths if not p.is_file()]
    if missing:
        present = [v for v in VARIANT_SUFFIXES if all(graph_path(folder, g, v).is_file() for g in GRAPHS)]
        if present:
            hint = f"it holds the {', '.join(present)} graphs; choose one with dtype/quantize"
        elif (folder / "config.json").is_file():
            hint = (
                f"to run this checkpoint on ONNX Runtime, export it: florence2 export onnx --model {folder} --out OUT"
            )
        else:
            hint = "write one with: florence2 export onnx --out OUT [--model CHECKPOINT]"
        raise CheckpointError(
            f"{folder} is not an ONNX export with {variant} graphs: missing {', '.join(missing)}; {hint}"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"no config.json in {folder}")
    config = config_from_dict(read_checkpoint_json(config_path))
    ort = _ort()
    providers = _providers(ort, device)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers and the like are not for users
    options.intra_op_num_threads = torch.get_num_threads()  # one knob for both backends
    sessions = {}
    for graph, path in zip(GRAPHS, paths):
        try:
            sessions[graph] = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise CheckpointError(f"ONNX Runtime cannot load {path}: {error}") from error
    parameters = int(read_manifest(folder).get("parameters", 0))
    return OnnxFlorence2(config, sessions, variant, parameters, providers)


def write_manifest(folder: str | os.PathLike, data: dict[str, Any]) -> Path:
    path = Path(folder) / ONNX_FOLDER / MANIFEST
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
