"""Tiny random-weight Florence-2 checkpoints built on the fly, in both public layouts.

The original Microsoft key names are spelled out here independently of ``florence2.weights`` (from
the reference's key listing), so the loader's renames are checked against an independent source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from florence2.config import Florence2Config, variant
from florence2.layouts import config_to_original_dict
from florence2.model.florence2 import Florence2Model
from florence2.weights import native_state_dict, save_model


def tiny_config(vocab_size: int = 300, max_positions: int = 128) -> Florence2Config:
    """The ``tiny`` variant with the tests' small vocabulary (``<image>`` its last id)."""
    return variant("tiny", vocab_size=vocab_size, max_positions=max_positions, image_token_id=vocab_size - 1)


def random_model(config: Florence2Config, seed: int = 0, std: float = 0.3) -> Florence2Model:
    """A model whose every parameter is drawn from N(0, std) (LayerNorms included, so no layer is
    an identity that could hide a wiring mistake)."""
    torch.manual_seed(seed)
    model = Florence2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def to_original_key(key: str) -> str:
    """Our key -> the original remote-code key (reference §2.1)."""
    if key.startswith("vision_tower."):
        key = re.sub(r"^vision_tower\.convs\.(\d+)\.conv\.", r"vision_tower.convs.\1.proj.", key)
        key = re.sub(r"\.conv([12])\.", r".conv\1.fn.dw.", key)
        key = re.sub(r"spatial_block\.norm1\.", "spatial_block.window_attn.norm.", key)
        key = re.sub(r"channel_block\.norm1\.", "channel_block.channel_attn.norm.", key)
        key = re.sub(r"\.window_attn\.(qkv|proj)\.", r".window_attn.fn.\1.", key)
        key = re.sub(r"\.channel_attn\.(qkv|proj)\.", r".channel_attn.fn.\1.", key)
        key = re.sub(r"\.norm2\.", ".ffn.norm.", key)
        key = re.sub(r"\.ffn\.fc([12])\.", r".ffn.fn.net.fc\1.", key)
        return key
    if key.startswith("multi_modal_projector."):
        key = key.removeprefix("multi_modal_projector.")
        return key.replace("image_position_embed.", "image_pos_embed.")
    if key.startswith("language_model."):
        return "language_model.model." + key.removeprefix("language_model.")
    raise AssertionError(key)


def original_state_dict(model: Florence2Model) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        if key == "multi_modal_projector.image_projection.weight":
            out["image_projection"] = value.t().contiguous()
        else:
            out[to_original_key(key)] = value.clone()
    shared = out["language_model.model.shared.weight"]
    # the remote code's state dict carries every tied copy and a zero logits bias
    out["language_model.model.encoder.embed_tokens.weight"] = shared.clone()
    out["language_model.model.decoder.embed_tokens.weight"] = shared.clone()
    out["language_model.lm_head.weight"] = shared.clone()
    out["language_model.final_logits_bias"] = torch.zeros(1, shared.shape[0])
    return out


def write_original(model: Florence2Model, folder: Path, fmt: str = "bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = original_state_dict(model)
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config_to_original_dict(model.config), indent=2))
    return folder


def write_native(model: Florence2Model, folder: Path) -> Path:
    return save_model(model, folder)


__all__ = ["native_state_dict", "original_state_dict", "random_model", "tiny_config", "write_native", "write_original"]
