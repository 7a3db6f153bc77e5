"""Check an export against the PyTorch model it came from: every graph on the same inputs.

The inputs differ from those the graphs were traced with (another batch size, prompt and decoder
lengths, a padded prompt), so the dynamic axes and masks are exercised too; the decoder is checked
on a first step of two tokens (the merged graph's no-cache branch) and a next step of one (its
cache branch), logits and cached keys/values alike.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from florence2.image import ImageProcessor
from florence2.model.florence2 import Florence2Model
from florence2.onnx_model import load_onnx_model


def check_export(
    folder: str | os.PathLike, model: Florence2Model, variant: str = "fp32", seed: int = 0
) -> dict[str, float]:
    """The largest absolute difference between each graph's outputs and the PyTorch model's (fp32)."""
    onnx_model = load_onnx_model(
        folder, dtype="float16" if variant == "fp16" else None, quantize="int8" if variant == "int8" else None
    )
    model = model.float().eval()
    text = model.config.text
    generator = torch.Generator().manual_seed(seed)
    height, width = ImageProcessor.from_pretrained(folder).size
    rows, prompt = 3, 5
    ids = torch.randint(0, text.vocab_size, (rows, prompt), generator=generator)
    mask = torch.ones(rows, prompt, dtype=torch.long)
    mask[-1, 3:] = 0
    differences = {}
    with torch.inference_mode():
        pixels = torch.randn(1, 3, height, width, generator=generator)
        features = model.encode_image(pixels)
        differences["vision_encoder"] = _difference(features, onnx_model.encode_image(pixels))
        embeds = model.language_model.embed(ids)
        differences["embed_tokens"] = _difference(embeds, onnx_model.embed(ids))
        features = features.expand(rows, -1, -1)
        memory, memory_mask = model.encode(features, ids, mask)
        differences["encoder_model"] = _difference(memory, onnx_model.encode(features, ids, mask)[0])
        cache = model.new_cache(memory, memory_mask, 8)
        onnx_cache = onnx_model.new_cache(memory, memory_mask, 8)
        decoder = []
        for steps in (2, 1):
            tokens = torch.randint(0, text.vocab_size, (rows, steps), generator=generator)
            logits = model.decode(tokens, memory, memory_mask, cache)
            decoder.append(_difference(logits, onnx_model.decode(tokens, memory, memory_mask, onnx_cache)))
            for layer in range(text.decoder_layers):
                ours = (cache.self_k[layer], cache.self_v[layer], cache.cross_k[layer], cache.cross_v[layer])
                theirs = onnx_cache.layer(layer)
                for a, b in zip(ours, theirs):
                    decoder.append(_difference(a[:, :, : b.shape[2]], b))
        differences["decoder_model_merged"] = max(decoder)
    return differences


def _difference(reference: torch.Tensor, other: torch.Tensor | np.ndarray) -> float:
    other = torch.as_tensor(np.asarray(other)).float()
    if tuple(other.shape) != tuple(reference.shape):
        raise AssertionError(f"shape {tuple(other.shape)} != {tuple(reference.shape)}")
    return float((reference.float() - other).abs().max())
