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
from dataclasses import dataclass, field, fields, replace
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
# Decoding settings
# ---------------------------------------------------------------------------------------------

# the decoding settings a checkpoint's generation_config.json may carry (and override defaults with)
CHECKPOINT_SETTINGS = ("num_beams", "no_repeat_ngram_size", "length_penalty", "early_stopping")


@dataclass(frozen=True)
class DecodingOptions:
    """Decoding settings. Defaults are the official Florence-2 generation config."""

    num_beams: int = 3
    max_new_tokens: int = 1024
    no_repeat_ngram_size: int = 3
    length_penalty: float = 1.0
    early_stopping: bool = True
    # token ids and the position limit come from the model's TextConfig (``for_model``)
    decoder_start_token_id: int = TextConfig.decoder_start_token_id
    bos_token_id: int | None = TextConfig.bos_token_id  # forced as the first generated token
    eos_token_id: int = TextConfig.eos_token_id  # ends a sequence; forced as the last token at max_length
    pad_token_id: int = TextConfig.pad_token_id
    max_length: int = TextConfig.max_position_embeddings  # decoder positions, start token included

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError("num_beams must be >= 1")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.no_repeat_ngram_size < 0:
            raise ValueError("no_repeat_ngram_size must be >= 0")

    @classmethod
    def for_model(cls, config: Florence2Config, **overrides) -> DecodingOptions:
        """Options with the model's special-token ids and position limit, then ``overrides``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown decoding option(s) {unknown}; valid: {sorted(known)}")
        t = config.text
        base = cls(
            decoder_start_token_id=t.decoder_start_token_id,
            bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id,
            max_length=t.max_position_embeddings,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def settings_from_generation_config(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The decoding settings a checkpoint's ``generation_config.json`` may set (:data:`CHECKPOINT_SETTINGS`)."""
        return {k: data[k] for k in CHECKPOINT_SETTINGS if k in data and data[k] is not None}

    def generation_config(self) -> dict[str, Any]:
        """The ``generation_config.json`` of a checkpoint decoded with these options (transformers' keys)."""
        return {
            "bos_token_id": self.bos_token_id,
            "decoder_start_token_id": self.decoder_start_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "forced_bos_token_id": self.bos_token_id,
            "forced_eos_token_id": self.eos_token_id,
            "early_stopping": self.early_stopping,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "num_beams": self.num_beams,
        }

    @property
    def total_length(self) -> int:
        """Decoder length bound: start token + new tokens, within the decoder's positions."""
        return min(1 + self.max_new_tokens, self.max_length)


# --- the options of every command that loads a model ----------------------------------------------

DTYPE_CHOICES = ("float32", "float16", "bfloat16", "auto")


def add_device_arguments(parser: Any) -> None:
    """``--device`` and ``--dtype`` on an argparse parser (``florence2 predict``, ``serve``, ``label``)."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default cpu)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_CHOICES,
        help="auto: bfloat16 where the CPU (AMX, AVX512-BF16) or GPU has it natively, else float32 (old GPUs: float16)",
    )
