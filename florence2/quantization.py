"""Fewer bytes per weight for CPU inference: int8 dynamic quantization of the linear layers.

Greedy decoding on a CPU is bound by reading the decoder and the output head once per token, so
storing those weights as int8 (4x fewer bytes than fp32) makes each token cheaper. Every
``nn.Linear`` of the language model (attention and MLP projections of encoder and decoder), the
tied output head (a separate int8 copy of the token embedding; the embedding itself stays fp32),
the image projection and, optionally, the vision tower becomes PyTorch's dynamically quantized
linear layer: int8 weights with one scale per tensor, activations quantized on the fly per batch,
int32 accumulation (fbgemm/x86 kernels). Convolutions, layer norms and embeddings stay fp32.

The accuracy cost is measured by ``benchmarks/bench_inference.py --int8`` (image-feature cosine
similarity, generated-token agreement with fp32) and reported in the README. GPUs use fp16/bf16
(``dtype=``) instead. A quantized model is for inference only: save the float model.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from florence2.model.florence2 import Florence2Model

QUANTIZATION_MODES = ("int8",)


def quantize_int8(model: Florence2Model, vision: bool = True) -> Florence2Model:
    """Quantize ``model``'s linear layers to int8 in place (CPU, fp32 model) and return it.

    Args:
        model: a float32 model on the CPU, in eval mode.
        vision: also quantize the vision tower's linear layers (attention and MLP of DaViT).
    """
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError(
            f"int8 quantization needs a float32 model on the CPU (got {model.dtype} on {model.device}); "
            "on a GPU use dtype=float16 or bfloat16"
        )
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:  # pragma: no cover - depends on the torch build
        raise RuntimeError("this PyTorch build has no dynamic quantization (torch.ao.quantization)") from e
    language = model.language_model
    _plain_linears(model)
    head = nn.Linear(language.shared.embedding_dim, language.shared.num_embeddings, bias=False)
    head.weight = language.shared.weight  # shares storage until quantized
    language.head = head
    targets = [language, model.multi_modal_projector] + ([model.vision_tower] if vision else [])
    with warnings.catch_warnings():  # the eager quantization API warns that it is being migrated
        warnings.simplefilter("ignore")
        for module in targets:
            quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model.eval()


def _plain_linears(module: nn.Module) -> None:
    """Make every ``nn.Linear`` subclass a plain ``nn.Linear`` holding the same tensors: the
    quantized layers are made only from exact ``nn.Linear`` modules."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and type(child) is not nn.Linear:
            plain = copy.copy(child)  # the same parameters; only the class (its forward) changes
            plain.__class__ = nn.Linear
            setattr(module, name, plain)
        else:
            _plain_linears(child)


def is_quantized(model: nn.Module) -> bool:
    """True when any layer of ``model`` holds quantized weights."""
    return any("quantized" in type(m).__module__ for m in model.modules())
