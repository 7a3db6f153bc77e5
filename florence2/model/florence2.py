"""The Florence-2 model: DaViT -> projector -> [image tokens ; prompt] -> BART encoder-decoder -> logits.

``Florence2Model.forward(pixel_values, input_ids, decoder_input_ids)`` gives logits for teacher
forcing (and a loss when ``labels`` are given); ``encode_image``, ``encode``, ``new_cache`` and
``decode`` are the steps :mod:`florence2.generation` drives to decode. ``input_ids`` are the
prompt's ids (``<s> prompt </s>``) without any image placeholders: the image tokens are prepended
inside the model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from florence2.config import Florence2Config, VisionConfig
from florence2.model.davit import DaViT
from florence2.model.kernels import run_images
from florence2.model.language import KVCache, LanguageModel


class LearnedPosition2D(nn.Module):
    """Learned absolute 2D positions: channel vector = [column_embedding[x] ; row_embedding[y]]."""

    def __init__(self, dim: int, max_positions: int) -> None:
        super().__init__()
        self.row_embeddings = nn.Embedding(max_positions, dim // 2)
        self.column_embeddings = nn.Embedding(max_positions, dim - dim // 2)

    def forward(self, height: int, width: int) -> torch.Tensor:
        n = self.row_embeddings.num_embeddings
        if height > n or width > n:
            raise ValueError(f"image feature grid {height}x{width} exceeds the {n}x{n} learned positions")
        cols = self.column_embeddings.weight[:width]  # (W, D/2)
        rows = self.row_embeddings.weight[:height]  # (H, D/2)
        return torch.cat([cols[None].expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1)


class CosineTemporalEmbedding(nn.Module):
    """Fixed sinusoidal frame embeddings (even channels sin, odd cos). A still image is frame 0."""

    def __init__(self, dim: int, max_frames: int) -> None:
        super().__init__()
        self.register_buffer("pos_idx_to_embed", sinusoid_table(max_frames, dim))


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """(length, dim) table: column 2i = sin(t * w_i), column 2i+1 = cos(t * w_i), w_i = 10000^(-i/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / half))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None, :]
    table = torch.zeros(length, dim)
    table[:, 0 : 2 * half : 2] = torch.sin(angles)
    table[:, 1 : 2 * half : 2] = torch.cos(angles)
    return table


class Projector(nn.Module):
    """Vision token map (B, h, w, Dv) -> (B, 1 + h*w, D): add 2D positions and the frame-0 temporal
    embedding, prepend the mean over all positions, project to the text width, LayerNorm."""

    def __init__(self, vision: VisionConfig, dim: int) -> None:
        super().__init__()
        self.image_position_embed = LearnedPosition2D(vision.out_dim, vision.max_pos_embeddings)
        self.visual_temporal_embed = CosineTemporalEmbedding(vision.out_dim, vision.max_temporal_embeddings)
        self.image_projection = nn.Linear(vision.out_dim, dim, bias=False)
        self.image_proj_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, C = x.shape
        x = x + self.image_position_embed(h, w).to(x.dtype)
        x = x.reshape(B, h * w, C) + self.visual_temporal_embed.pos_idx_to_embed[0].to(x.dtype)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1 + h*w, C)
        return self.image_proj_norm(self.image_projection(x))


@dataclass
class Seq2SeqOutput:
    logits: torch.Tensor  # (B, L, V)
    loss: torch.Tensor | None = None


class Florence2Model(nn.Module):
    """Florence-2 encoder-decoder. Submodule names follow the native transformers layout."""

    def __init__(self, config: Florence2Config) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = DaViT(config.vision)
        self.multi_modal_projector = Projector(config.vision, config.projection_dim)
        self.language_model = LanguageModel(config.text)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> Florence2Model:
        """Initialise for training from scratch (BART/DaViT practice): linear and embedding weights
        ~ N(0, std), biases 0, LayerNorms 1/0, convolutions PyTorch's default; the temporal table is fixed.
        PyTorch's default N(0, 1) embeddings would make the tied output head's logits huge."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, nn.Conv2d):
                module.reset_parameters()
        pad = self.config.text.pad_token_id
        self.language_model.shared.weight[pad].zero_()
        table = self.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed
        table.copy_(sinusoid_table(*table.shape))
        return self

    @torch.no_grad()
    def resize_token_embeddings(self, num_tokens: int) -> Florence2Model:
        """Grow the tied token embedding (and output head) to ``num_tokens`` rows; the old rows are
        kept, new rows are zero (fill them before training). ``config.text.vocab_size`` follows, and
        an ``image_token_id`` outside the old vocabulary (the ``<image>`` placeholder one past it)
        moves to one past the new one."""
        old = self.language_model.shared
        if num_tokens < old.num_embeddings:
            raise ValueError(f"the embedding has {old.num_embeddings} rows; it only grows, got {num_tokens}")
        if num_tokens == old.num_embeddings:
            return self
        new = nn.Embedding(num_tokens, old.embedding_dim, padding_idx=old.padding_idx)
        new.to(device=old.weight.device, dtype=old.weight.dtype)
        new.weight.zero_()
        new.weight[: old.num_embeddings] = old.weight
        new.weight.requires_grad_(old.weight.requires_grad)
        self.language_model.shared = new
        text = dataclasses.replace(self.config.text, vocab_size=num_tokens)
        image_token_id = self.config.image_token_id
        if image_token_id >= old.num_embeddings:
            image_token_id = num_tokens
        self.config = self.config.replace(text=text, image_token_id=image_token_id)
        self.language_model.config = text
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> Florence2Model:
        """Recompute the activations of DaViT blocks and encoder/decoder layers in the backward pass
        (training only): less memory, about a third more compute, the same numbers."""
        for module in (self.vision_tower, self.language_model.encoder, self.language_model.decoder):
            module.gradient_checkpointing = enabled
        return self

    @property
    def device(self) -> torch.device:
        return self.language_model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.shared.weight.dtype

    # --- encoding ------------------------------------------------------------------------------

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized pixels -> (B, N_img, D) image tokens (N_img = 577 at 768x768).

        In CPU inference a batch goes through the vision tower as one batch or one image at a time,
        whichever was measured faster on this machine for such a batch (:func:`kernels.run_images`):
        large images were faster one at a time on one CPU (their first stages hold large
        activations), small images gain from batching everywhere measured."""
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return run_images(lambda chunk: self.multi_modal_projector(self.vision_tower(chunk)), pixel_values)

    def encode(
        self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the language encoder over ``[image tokens ; prompt]``.

        image_features: (B, N_img, D); input_ids: (B, T) prompt ids; attention_mask: (B, T), 1 = real.
        Returns memory (B, N_img + T, D) and its mask (B, N_img + T), or None when nothing is padded.
        """
        n_img = image_features.shape[1]
        total = n_img + input_ids.shape[1]
        limit = self.config.text.max_position_embeddings
        if total > limit:
            raise ValueError(
                f"{n_img} image tokens + {input_ids.shape[1]} prompt tokens exceed the encoder's {limit} positions"
            )
        x = torch.cat([image_features.to(self.dtype), self.language_model.embed(input_ids)], dim=1)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            ones = attention_mask.new_ones(attention_mask.shape[0], n_img)
            mask = torch.cat([ones, attention_mask], dim=1)
        return self.language_model.encoder(x, mask), mask

    # --- decoding ------------------------------------------------------------------------------

    def new_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor | None, max_length: int) -> KVCache:
        """An empty decoder cache for ``memory``'s rows, for up to ``max_length`` decoder positions."""
        return self.language_model.decoder.new_cache(memory, memory_mask, max_length)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """(B, L) decoder ids -> (B, L, V) logits; with ``cache`` the ids continue the cached prefix."""
        x = self.language_model.embed(decoder_input_ids)
        h = self.language_model.decoder(x, memory, memory_mask, cache)
        return self.language_model.logits(h)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Seq2SeqOutput:
        """Teacher-forced pass. ``labels`` (B, L) with -100 at ignored positions give a mean
        cross-entropy ``loss``; without ``decoder_input_ids`` they are the labels shifted right once
        behind the decoder start token (pad where a label is -100)."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels")
            decoder_input_ids = shift_right(
                labels, self.config.text.decoder_start_token_id, self.config.text.pad_token_id
            )
        memory, memory_mask = self.encode(self.encode_image(pixel_values), input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, memory, memory_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return Seq2SeqOutput(logits=logits, loss=loss)


def shift_right(labels: torch.Tensor, start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``[start, labels[:-1]]`` with -100 replaced by pad."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 0] = start_token_id
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)
