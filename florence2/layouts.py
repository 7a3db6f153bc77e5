"""Checkpoint layouts: every way a Florence-2 checkpoint is written, in one registry.

A layout says how its ``config.json`` reads and writes, how its tensor names map to ours, and how
to recognise it: by a sentinel tensor name in the weights, by a sentinel key in ``vision_config``,
and by the module paths its PEFT adapters use. Two layouts exist:

* ``original``: Microsoft's remote-code checkpoints (``microsoft/Florence-2-*``):
  ``vision_config.dim_embed``, nested ``image_pos_embed`` / ``visual_temporal_embedding`` dicts;
  tensors ``vision_tower.convs.0.proj.weight``, ``image_projection``, ``language_model.model...``,
  converted by an ordered list of renames.
* ``native``: transformers' own Florence-2 (``florence-community/*``, transformers >= 4.56):
  ``vision_config.embed_dim``, ``max_position_embeddings`` / ``max_temporal_embeddings``;
  ``text_config`` a plain ``BartConfig``; tensor names are ours behind a ``model.`` prefix.
  Checkpoints written here use this layout.

To support another layout, write its four functions here and add one :class:`CheckpointLayout`
to :data:`LAYOUTS`; the loader (:mod:`florence2.weights`), the config reader and the PEFT adapter
reader (:mod:`florence2.train.lora`) all find it there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from florence2.config import Florence2Config, TextConfig, VisionConfig
from florence2.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CheckpointLayout:
    """One checkpoint layout: how to recognise it, read its config, and rename its tensors to ours."""

    name: str
    description: str
    state_sentinels: tuple[str, ...]  # a tensor name that only this layout's weights contain
    vision_sentinel: str  # a ``vision_config`` key that only this layout's config.json contains
    owns_module: Callable[[str], bool]  # True for a module path of its models (as PEFT adapters name them)
    read_vision: Callable[[dict[str, Any]], dict[str, Any]]  # vision_config -> VisionConfig fields
    write_config: Callable[[Florence2Config], dict[str, Any]]  # our config -> its config.json
    convert_state: Callable[[StateDict], StateDict]  # its tensor names -> ours


# --- config.json ---------------------------------------------------------------------------------

_TEXT_FIELDS = {f.name for f in dataclasses.fields(TextConfig)}
_POOLING = ["spatial_avg_pool", "temporal_avg_pool"]


def _tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _original_vision(v: dict[str, Any]) -> dict[str, Any]:
    sources = v.get("image_feature_source", _POOLING)
    if list(sources) != _POOLING:
        raise CheckpointError(f"unsupported image_feature_source {sources}")
    positions = v.get("image_pos_embed") or {}
    temporal = v.get("visual_temporal_embedding") or {}
    pos_type, temporal_type = positions.get("type", "learned_abs_2d"), temporal.get("type", "COSINE")
    if pos_type != "learned_abs_2d" or temporal_type != "COSINE":
        raise CheckpointError(f"unsupported image embeddings {pos_type!r}/{temporal_type!r}")
    return {
        "embed_dims": v["dim_embed"],
        "max_pos_embeddings": positions.get("max_pos_embeddings", 50),
        "max_temporal_embeddings": temporal.get("max_temporal_embeddings", 100),
    }


def _native_vision(v: dict[str, Any]) -> dict[str, Any]:
    return {
        "embed_dims": v["embed_dim"],
        "max_pos_embeddings": v.get("max_position_embeddings", 50),
        "max_temporal_embeddings": v.get("max_temporal_embeddings", 100),
    }


def _vision_config(v: dict[str, Any], layout_fields: dict[str, Any]) -> VisionConfig:
    defaults = VisionConfig()
    return VisionConfig(
        embed_dims=_tuple(layout_fields["embed_dims"]),
        depths=_tuple(v.get("depths", defaults.depths)),
        num_heads=_tuple(v.get("num_heads", defaults.num_heads)),
        num_groups=_tuple(v.get("num_groups", v.get("num_heads", defaults.num_groups))),
        patch_size=_tuple(v.get("patch_size", defaults.patch_size)),
        patch_stride=_tuple(v.get("patch_stride", defaults.patch_stride)),
        patch_padding=_tuple(v.get("patch_padding", defaults.patch_padding)),
        patch_prenorm=tuple(bool(x) for x in _tuple(v.get("patch_prenorm", defaults.patch_prenorm))),
        window_size=int(v.get("window_size", defaults.window_size)),
        mlp_ratio=float(v.get("mlp_ratio", defaults.mlp_ratio)),
        qkv_bias=bool(v.get("qkv_bias", defaults.qkv_bias)),
        drop_path_rate=float(v.get("drop_path_rate", defaults.drop_path_rate)),
        in_channels=int(v.get("in_channels", defaults.in_channels)),
        max_pos_embeddings=int(layout_fields["max_pos_embeddings"]),
        max_temporal_embeddings=int(layout_fields["max_temporal_embeddings"]),
    )


def config_from_dict(data: dict[str, Any]) -> Florence2Config:
    """Read the ``config.json`` of any registered layout (recognised by its ``vision_config``)."""
    if not isinstance(data, dict) or "vision_config" not in data or "text_config" not in data:
        raise CheckpointError("config.json must have 'vision_config' and 'text_config' sections")
    v = data["vision_config"] or {}
    t = data["text_config"] or {}
    layout = config_layout(data)
    try:
        vision = _vision_config(v, layout.read_vision(v))
        text = TextConfig(**{k: t[k] for k in _TEXT_FIELDS if k in t})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"malformed config.json: {e}") from e
    if t.get("normalize_before") or t.get("add_final_layer_norm"):
        raise CheckpointError("pre-LayerNorm BART variants are not Florence-2 checkpoints")
    projection_dim = v.get("projection_dim", data.get("projection_dim", text.d_model))
    if projection_dim != text.d_model:
        raise CheckpointError(f"projection_dim {projection_dim} != text d_model {text.d_model}")
    return Florence2Config(vision=vision, text=text, image_token_id=int(data.get("image_token_id", 51289)))


def _text_dict(t: TextConfig) -> dict[str, Any]:
    return {k: getattr(t, k) for k in sorted(_TEXT_FIELDS)}


def config_to_native_dict(config: Florence2Config) -> dict[str, Any]:
    """The ``config.json`` that ``transformers.Florence2ForConditionalGeneration`` reads."""
    v, t = config.vision, config.text
    text = _text_dict(t)
    text.update(
        model_type="bart", forced_eos_token_id=t.eos_token_id, tie_word_embeddings=True, is_encoder_decoder=True
    )
    return {
        "architectures": ["Florence2ForConditionalGeneration"],
        "model_type": "florence2",
        "image_token_id": config.image_token_id,
        "is_encoder_decoder": True,
        "tie_word_embeddings": True,
        "text_config": text,
        "vision_config": {
            "model_type": "florence_vision",
            "in_channels": v.in_channels,
            "depths": list(v.depths),
            "patch_size": list(v.patch_size),
            "patch_stride": list(v.patch_stride),
            "patch_padding": list(v.patch_padding),
            "patch_prenorm": list(v.patch_prenorm),
            "embed_dim": list(v.embed_dims),
            "num_heads": list(v.num_heads),
            "num_groups": list(v.num_groups),
            "window_size": v.window_size,
            "drop_path_rate": v.drop_path_rate,
            "mlp_ratio": v.mlp_ratio,
            "qkv_bias": v.qkv_bias,
            "activation_function": "gelu",
            "projection_dim": config.projection_dim,
            "max_position_embeddings": v.max_pos_embeddings,
            "max_temporal_embeddings": v.max_temporal_embeddings,
        },
    }


def config_to_original_dict(config: Florence2Config) -> dict[str, Any]:
    """The ``config.json`` of the original Microsoft remote-code layout (used to test that loader)."""
    v, t = config.vision, config.text
    text = _text_dict(t)
    text.update(
        model_type="florence2_language",
        forced_bos_token_id=t.bos_token_id,
        forced_eos_token_id=t.eos_token_id,
        no_repeat_ngram_size=3,
        early_stopping=True,
        num_beams=3,
    )
    return {
        "architectures": ["Florence2ForConditionalGeneration"],
        "model_type": "florence2",
        "projection_dim": config.projection_dim,
        "vocab_size": t.vocab_size,
        "ignore_index": -100,
        "is_encoder_decoder": True,
        "text_config": text,
        "vision_config": {
            "model_type": "davit",
            "drop_path_rate": v.drop_path_rate,
            "patch_size": list(v.patch_size),
            "patch_stride": list(v.patch_stride),
            "patch_padding": list(v.patch_padding),
            "patch_prenorm": list(v.patch_prenorm),
            "enable_checkpoint": False,
            "dim_embed": list(v.embed_dims),
            "num_heads": list(v.num_heads),
            "num_groups": list(v.num_groups),
            "depths": list(v.depths),
            "window_size": v.window_size,
            "projection_dim": config.projection_dim,
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": v.max_temporal_embeddings},
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": v.max_pos_embeddings},
            "image_feature_source": list(_POOLING),
        },
    }


# --- tensor names ----------------------------------------------------------------------------------

# original remote-code names -> ours, applied in order as regex substitutions
_ORIGINAL_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^vision_tower\.convs\.(\d+)\.proj\.", r"vision_tower.convs.\1.conv."),
    (r"\.conv([12])\.fn\.dw\.", r".conv\1."),
    (r"\.(window_attn|channel_attn)\.norm\.", r".norm1."),
    (r"\.(window_attn|channel_attn)\.fn\.", r".\1."),
    (r"\.ffn\.norm\.", r".norm2."),
    (r"\.ffn\.fn\.net\.", r".ffn."),
    (r"^image_proj_norm\.", r"multi_modal_projector.image_proj_norm."),
    (r"^image_pos_embed\.", r"multi_modal_projector.image_position_embed."),
    (r"^visual_temporal_embed\.", r"multi_modal_projector.visual_temporal_embed."),
    (r"^language_model\.model\.", r"language_model."),
    (r"^language_model\.lm_head\.", r"lm_head."),
)


def convert_original(state: StateDict) -> StateDict:
    """Original Microsoft layout -> ours."""
    out: StateDict = {}
    for key, value in state.items():
        if key == "image_projection":
            # stored as a (D_vision, D_text) matrix used as x @ W; ours is a Linear weight (out, in)
            out["multi_modal_projector.image_projection.weight"] = value.t().contiguous()
            continue
        if key == "language_model.final_logits_bias":
            # a zero buffer in every released checkpoint; a non-zero one would change the logits
            if value.abs().max() != 0:
                raise CheckpointError(
                    "language_model.final_logits_bias is non-zero; such checkpoints are not supported"
                )
            continue
        for pattern, repl in _ORIGINAL_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def convert_native(state: StateDict) -> StateDict:
    """Native transformers layout -> ours (strip the ``model.`` prefix)."""
    return {k.removeprefix("model."): v for k, v in state.items()}


# --- the registry ------------------------------------------------------------------------------------

LAYOUTS: dict[str, CheckpointLayout] = {
    layout.name: layout
    for layout in (
        CheckpointLayout(
            name="original",
            description="Microsoft's remote-code checkpoints (microsoft/Florence-2-*)",
            state_sentinels=("image_projection",),
            vision_sentinel="dim_embed",
            owns_module=lambda path: not path.startswith("model."),
            read_vision=_original_vision,
            write_config=config_to_original_dict,
            convert_state=convert_original,
        ),
        CheckpointLayout(
            name="native",
            description="transformers' Florence2ForConditionalGeneration (florence-community/*); written here",
            state_sentinels=(
                "model.language_model.shared.weight",
                "model.multi_modal_projector.image_projection.weight",
            ),
            vision_sentinel="embed_dim",
            owns_module=lambda path: path.startswith("model."),
            read_vision=_native_vision,
            write_config=config_to_native_dict,
            convert_state=convert_native,
        ),
    )
}

WRITTEN_LAYOUT = LAYOUTS["native"]  # the layout of every checkpoint this package writes


def _expected(what: str) -> str:
    return " or ".join(f"{what(layout)!r} ({layout.name})" for layout in LAYOUTS.values())


def state_layout(state: StateDict) -> CheckpointLayout:
    """The layout whose sentinel tensor name ``state`` contains."""
    for layout in LAYOUTS.values():
        if any(key in state for key in layout.state_sentinels):
            return layout
    raise CheckpointError(
        f"unrecognised checkpoint layout: expected {_expected(lambda lay: lay.state_sentinels[0])}; "
        f"first keys: {sorted(state)[:5]}"
    )


def config_layout(data: dict[str, Any]) -> CheckpointLayout:
    """The layout whose sentinel key the ``vision_config`` of a config.json holds."""
    vision = data.get("vision_config") or {}
    for layout in LAYOUTS.values():
        if layout.vision_sentinel in vision:
            return layout
    raise CheckpointError(f"vision_config has neither {_expected(lambda lay: lay.vision_sentinel)}")


def module_path_layout(path: str) -> CheckpointLayout:
    """The layout a module path (as a PEFT adapter names it) is written in."""
    # the written layout's test first: its rule is the narrower one
    for layout in (WRITTEN_LAYOUT, *LAYOUTS.values()):
        if layout.owns_module(path):
            return layout
    raise CheckpointError(f"module path {path!r} belongs to no checkpoint layout")


def convert_state_dict(state: StateDict) -> StateDict:
    """Tensors of any registered layout -> our names."""
    return state_layout(state).convert_state(state)


def detect_layout(state: StateDict) -> str:
    """The name of the layout of ``state`` (``"original"`` or ``"native"``)."""
    return state_layout(state).name
