"""Model configuration: frozen dataclasses, a small table of named variants, and readers/writers for
the ``config.json`` of both public checkpoint layouts.

* Original Microsoft layout (``microsoft/Florence-2-*``, remote code): ``vision_config`` uses
  ``dim_embed``, nested ``image_pos_embed`` / ``visual_temporal_embedding`` dicts, ``model_type`` "davit".
* Native transformers layout (``florence-community/*``, transformers >= 4.56): ``vision_config`` uses
  ``embed_dim``, ``max_position_embeddings`` / ``max_temporal_embeddings``; ``text_config`` is a plain
  ``BartConfig``.

Both are read into the same :class:`Florence2Config`; checkpoints we write use the native layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from florence2.errors import CheckpointError


@dataclass(frozen=True)
class VisionConfig:
    """DaViT image encoder. Per-stage tuples have one entry per stage."""

    embed_dims: tuple[int, ...] = (128, 256, 512, 1024)
    depths: tuple[int, ...] = (1, 1, 9, 1)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    num_groups: tuple[int, ...] = (4, 8, 16, 32)
    patch_size: tuple[int, ...] = (7, 3, 3, 3)
    patch_stride: tuple[int, ...] = (4, 2, 2, 2)
    patch_padding: tuple[int, ...] = (3, 1, 1, 1)
    patch_prenorm: tuple[bool, ...] = (False, True, True, True)
    window_size: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    in_channels: int = 3
    max_pos_embeddings: int = 50  # learned 2D positions: at most 50x50 output grid
    max_temporal_embeddings: int = 100

    def __post_init__(self) -> None:
        n = len(self.embed_dims)
        per_stage = (
            "depths",
            "num_heads",
            "num_groups",
            "patch_size",
            "patch_stride",
            "patch_padding",
            "patch_prenorm",
        )
        bad = [name for name in per_stage if len(getattr(self, name)) != n]
        if bad:
            raise CheckpointError(f"vision config: {', '.join(bad)} must have {n} entries (one per stage)")

    @property
    def out_dim(self) -> int:
        return self.embed_dims[-1]

    @property
    def total_stride(self) -> int:
        stride = 1
        for s in self.patch_stride:
            stride *= s
        return stride


@dataclass(frozen=True)
class TextConfig:
    """BART-style post-LayerNorm encoder-decoder with tied input/output embeddings."""

    vocab_size: int = 51289
    d_model: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 12
    decoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    decoder_ffn_dim: int = 3072
    max_position_embeddings: int = 1024
    activation_function: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    scale_embedding: bool = False
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2


@dataclass(frozen=True)
class Florence2Config:
    """Vision tower + projector + language model. ``projection_dim`` must equal ``text.d_model``."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = 51289  # only used by the native layout's ``<image>`` placeholder

    def __post_init__(self) -> None:
        if self.text.d_model <= 0 or self.text.d_model % self.text.encoder_attention_heads:
            raise CheckpointError("text config: d_model must be a positive multiple of the attention heads")

    @property
    def projection_dim(self) -> int:
        return self.text.d_model

    def num_image_tokens(self, image_size: tuple[int, int]) -> int:
        """Image tokens for an input of (height, width) pixels: one global-mean token + the grid."""
        h, w = image_size
        for k, s, p in zip(self.vision.patch_size, self.vision.patch_stride, self.vision.patch_padding):
            h = (h + 2 * p - k) // s + 1
            w = (w + 2 * p - k) // s + 1
        return 1 + h * w

    def replace(self, **changes: Any) -> Florence2Config:
        return dataclasses.replace(self, **changes)


VARIANTS: dict[str, Florence2Config] = {
    # Florence-2-base, 231M parameters
    "base": Florence2Config(),
    # Florence-2-large, 770M parameters
    "large": Florence2Config(
        vision=VisionConfig(embed_dims=(256, 512, 1024, 2048), num_heads=(8, 16, 32, 64), num_groups=(8, 16, 32, 64)),
        text=TextConfig(
            d_model=1024,
            encoder_layers=12,
            decoder_layers=12,
            encoder_attention_heads=16,
            decoder_attention_heads=16,
            encoder_ffn_dim=4096,
            decoder_ffn_dim=4096,
        ),
    ),
    # the embedded model's architecture (about 3M parameters with its 1624-token vocabulary): three
    # DaViT stages, 3 + 3 layers of width 128; no dropout, since the synthetic stream never repeats
    "small": Florence2Config(
        vision=VisionConfig(
            embed_dims=(32, 64, 128),
            depths=(1, 1, 2),
            num_heads=(2, 4, 8),
            num_groups=(2, 4, 8),
            patch_size=(7, 3, 3),
            patch_stride=(4, 2, 2),
            patch_padding=(3, 1, 1),
            patch_prenorm=(False, True, True),
            window_size=4,
            drop_path_rate=0.0,
        ),
        text=TextConfig(
            d_model=128,
            encoder_layers=3,
            decoder_layers=3,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=512,
            decoder_ffn_dim=512,
            max_position_embeddings=512,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        ),
    ),
    # the smallest thing that is still every part of the model: tests and quick benchmark runs
    "tiny": Florence2Config(
        vision=VisionConfig(
            embed_dims=(16, 32),
            depths=(1, 2),
            num_heads=(1, 2),
            num_groups=(1, 2),
            patch_size=(7, 3),
            patch_stride=(4, 2),
            patch_padding=(3, 1),
            patch_prenorm=(False, True),
            window_size=3,
        ),
        text=TextConfig(
            d_model=24,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=128,
        ),
    ),
}


def variant(
    name: str,
    *,
    vocab_size: int | None = None,
    max_positions: int | None = None,
    image_token_id: int | None = None,
) -> Florence2Config:
    """The named configuration of :data:`VARIANTS`, with another vocabulary or position count.

    ``image_token_id`` (the native layout's ``<image>`` placeholder) defaults to one past the
    vocabulary when ``vocab_size`` is given, as transformers' Florence-2 tokenizer adds it."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; choose from {sorted(VARIANTS)}")
    config = VARIANTS[name]
    text = config.text
    if vocab_size is not None:
        text = dataclasses.replace(text, vocab_size=vocab_size)
    if max_positions is not None:
        text = dataclasses.replace(text, max_position_embeddings=max_positions)
    if image_token_id is None:
        image_token_id = vocab_size if vocab_size is not None else config.image_token_id
    return config.replace(text=text, image_token_id=image_token_id)


# ---------------------------------------------------------------------------------------------
# config.json of both layouts
# ---------------------------------------------------------------------------------------------

_TEXT_FIELDS = {f.name for f in dataclasses.fields(TextConfig)}


def _tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def config_from_dict(data: dict[str, Any]) -> Florence2Config:
    """Read the ``config.json`` of either public layout (detected by ``dim_embed`` vs ``embed_dim``)."""
    if not isinstance(data, dict) or "vision_config" not in data or "text_config" not in data:
        raise CheckpointError("config.json must have 'vision_config' and 'text_config' sections")
    v = data["vision_config"] or {}
    t = data["text_config"] or {}
    if "dim_embed" in v:  # original Microsoft layout
        dims = v["dim_embed"]
        max_pos = (v.get("image_pos_embed") or {}).get("max_pos_embeddings", 50)
        max_temporal = (v.get("visual_temporal_embedding") or {}).get("max_temporal_embeddings", 100)
        sources = v.get("image_feature_source", ["spatial_avg_pool", "temporal_avg_pool"])
        if list(sources) != ["spatial_avg_pool", "temporal_avg_pool"]:
            raise CheckpointError(f"unsupported image_feature_source {sources}")
        pos_type = (v.get("image_pos_embed") or {}).get("type", "learned_abs_2d")
        temporal_type = (v.get("visual_temporal_embedding") or {}).get("type", "COSINE")
        if pos_type != "learned_abs_2d" or temporal_type != "COSINE":
            raise CheckpointError(f"unsupported image embeddings {pos_type!r}/{temporal_type!r}")
    elif "embed_dim" in v:  # native transformers layout
        dims = v["embed_dim"]
        max_pos = v.get("max_position_embeddings", 50)
        max_temporal = v.get("max_temporal_embeddings", 100)
    else:
        raise CheckpointError("vision_config has neither 'dim_embed' (original) nor 'embed_dim' (native)")
    defaults = VisionConfig()
    try:
        vision = VisionConfig(
            embed_dims=_tuple(dims),
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
            max_pos_embeddings=int(max_pos),
            max_temporal_embeddings=int(max_temporal),
        )
        text = TextConfig(**{k: t[k] for k in _TEXT_FIELDS if k in t})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"malformed config.json: {e}") from e
    if t.get("normalize_before") or t.get("add_final_layer_norm"):
        raise CheckpointError("pre-LayerNorm BART variants are not Florence-2 checkpoints")
    projection_dim = v.get("projection_dim", data.get("projection_dim", text.d_model))
    if projection_dim != text.d_model:
        raise CheckpointError(f"projection_dim {projection_dim} != text d_model {text.d_model}")
    return Florence2Config(vision=vision, text=text, image_token_id=int(data.get("image_token_id", 51289)))


def config_to_native_dict(config: Florence2Config) -> dict[str, Any]:
    """The ``config.json`` that ``transformers.Florence2ForConditionalGeneration`` reads."""
    v, t = config.vision, config.text
    text = {k: getattr(t, k) for k in sorted(_TEXT_FIELDS)}
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
    text = {k: getattr(t, k) for k in sorted(_TEXT_FIELDS)}
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
            "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
        },
    }
