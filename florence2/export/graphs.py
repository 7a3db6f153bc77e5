"""The PyTorch modules that are traced into the exported graphs: thin views of a
:class:`~florence2.model.florence2.Florence2Model` that call its own submodules, so an export
computes what the model computes.

The decoder is traced twice (:class:`DecoderStep`): without a cache (cross-attention keys and values
projected from the encoder output) and with one (everything read from ``past_key_values``); the two
graphs are then merged into one (:mod:`florence2.export.merge`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from florence2.model import language
from florence2.model.florence2 import Florence2Model


class VisionEncoder(nn.Module):
    """pixel_values (B, 3, H, W) -> image_features (B, N_img, D): DaViT and the projector."""

    def __init__(self, model: Florence2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.multi_modal_projector(self.model.vision_tower(pixel_values))


class EmbedTokens(nn.Module):
    """input_ids (B, T) -> inputs_embeds (B, T, D): the shared token embedding (and its scale)."""

    def __init__(self, model: Florence2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.embed(input_ids)


class TextEncoder(nn.Module):
    """inputs_embeds (B, S, D) + attention_mask (B, S) -> last_hidden_state (B, S, D)."""

    def __init__(self, model: Florence2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.encoder(inputs_embeds, attention_mask)


class DecoderStep(nn.Module):
    """One decoder call in the transformers.js layout.

    Without past (``with_past=False``): (inputs_embeds, encoder_hidden_states, encoder_attention_mask)
    -> logits and, per layer, self-attention key/value and cross-attention key/value.
    With past: (inputs_embeds, encoder_attention_mask, past_key_values...) -> logits, the grown
    self-attention keys/values and, for the cross-attention outputs, empty tensors: a caller keeps the
    cross-attention keys/values of the first step (as transformers.js and optimum's exports do).

    The decoder's own layers do the work; this is :meth:`Decoder.forward` with the cache passed in
    and out as tensors (keys/values concatenated, not written in place) and a causal mask offset by
    the cached length, so one graph serves any number of new tokens after any prefix."""

    def __init__(self, model: Florence2Model, with_past: bool) -> None:
        super().__init__()
        self.model = model
        self.with_past = with_past

    def forward(self, inputs_embeds: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lm = self.model.language_model
        decoder = lm.decoder
        if self.with_past:
            encoder_attention_mask, *past = rest
            start = past[0].shape[2]
        else:
            memory, encoder_attention_mask = rest
            start = 0
        steps = inputs_embeds.shape[1]
        offset = language._POSITION_OFFSET + start
        x = decoder.layernorm_embedding(inputs_embeds + decoder.embed_positions.weight[offset : offset + steps])
        memory_mask = encoder_attention_mask[:, None, None, :].bool()
        # query i sits at position start + i and sees every key up to it
        self_mask = torch.arange(start + steps)[None, :] <= (torch.arange(steps) + start)[:, None]
        outputs = []
        for i, layer in enumerate(decoder.layers):
            k, v = layer.self_attn.project_kv(x)
            if self.with_past:
                k, v = torch.cat([past[4 * i], k], dim=2), torch.cat([past[4 * i + 1], v], dim=2)
                cross_k, cross_v = past[4 * i + 2], past[4 * i + 3]
            else:
                cross_k, cross_v = layer.encoder_attn.project_kv(memory)
            x = layer(x, (k, v), (cross_k, cross_v), memory_mask, self_mask)
            outputs += [k, v, cross_k[:, :, :0], cross_v[:, :, :0]] if self.with_past else [k, v, cross_k, cross_v]
        return (lm.logits(x), *outputs)


@contextlib.contextmanager
def traceable() -> Iterator[None]:
    """Every linear layer as ``F.linear`` while tracing: the CPU route for products of a few rows
    (:func:`florence2.model.language.linear`) reshapes by the traced batch's row count, which a
    graph with dynamic axes must not bake in."""
    saved = language._FEW_ROWS
    language._FEW_ROWS = 0
    try:
        yield
    finally:
        language._FEW_ROWS = saved
