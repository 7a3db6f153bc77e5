"""BART-style post-LayerNorm transformer encoder-decoder (the Florence-2 language model).

The token embedding ``shared`` is tied across encoder input, decoder input and the output head, so
the encoder and decoder take embeddings rather than ids. Learned positions carry BART's offset of 2.

Decoding uses :class:`KVCache`: a preallocated self-attention cache per decoder layer plus the
cross-attention keys/values, which are computed once from the encoder output.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from florence2.config import TextConfig
from florence2.model import kernels

_POSITION_OFFSET = 2  # BART reserves the first two rows of its position tables

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


def run_layer(layer: Callable[..., torch.Tensor], *args, checkpointed: bool = False) -> torch.Tensor:
    """``layer(*args)``; with ``checkpointed`` (and gradients on) its activations are recomputed in the
    backward pass instead of stored. The RNG state is replayed, so dropout masks and results match."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


# Products of at most this many rows (incremental decoding: one row per sequence or beam) take the
# route measured faster on this machine (florence2.model.kernels); 0 sends every product to F.linear.
_FEW_ROWS = kernels.FEW_ROWS_MAX


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; few-row products by the measured route (:func:`kernels.linear`)."""
    return kernels.linear(x, weight, bias, _FEW_ROWS)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) computed with :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, T, D = x.shape
    return x.view(B, T, num_heads, D // num_heads).transpose(1, 2)  # (B, nh, T, hd)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = Linear(dim, dim)
        self.k_proj = Linear(dim, dim)
        self.v_proj = Linear(dim, dim)
        self.out_proj = Linear(dim, dim)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _split_heads(self.k_proj(x), self.num_heads), _split_heads(self.v_proj(x), self.num_heads)

    def attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """x: (B, T, D) queries; k, v: (B, nh, S, hd); mask: bool, True = attend, broadcast to (B, nh, T, S)."""
        q = _split_heads(self.q_proj(x), self.num_heads)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        B, _, T, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        k, v = self.project_kv(x)
        return self.attend(x, k, v, mask, is_causal)


class _PostNormLayer(nn.Module):
    """Shared by encoder and decoder layers: the position-wise feed-forward sublayer."""

    fc1: nn.Linear
    fc2: nn.Linear
    final_layer_norm: nn.LayerNorm
    dropout: float
    activation_dropout: float
    act: Callable[[torch.Tensor], torch.Tensor]

    def _init_ffn(self, c: TextConfig, hidden: int) -> None:
        self.dropout = c.dropout
        self.activation_dropout = c.activation_dropout
        self.act = _ACTIVATIONS[c.activation_function]
        self.fc1 = Linear(c.d_model, hidden)
        self.fc2 = Linear(hidden, c.d_model)
        self.final_layer_norm = nn.LayerNorm(c.d_model)

    def _residual(self, norm: nn.LayerNorm, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return norm(x + F.dropout(h, self.dropout, self.training))

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.act(self.fc1(x)), self.activation_dropout, self.training)
        return self._residual(self.final_layer_norm, x, self.fc2(h))


class EncoderLayer(_PostNormLayer):
    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c.d_model, c.encoder_attention_heads, c.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model)
        self._init_ffn(c, c.encoder_ffn_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self._residual(self.self_attn_layer_norm, x, self.self_attn(x, mask))
        x = self._ffn(x)
        if x.dtype == torch.float16:  # as BART: keep fp16 activations finite
            bound = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-bound, bound)
        return x


class DecoderLayer(_PostNormLayer):
    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c.d_model, c.decoder_attention_heads, c.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model)
        self.encoder_attn = Attention(c.d_model, c.decoder_attention_heads, c.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(c.d_model)
        self._init_ffn(c, c.decoder_ffn_dim)

    def forward(
        self,
        x: torch.Tensor,
        self_kv: tuple[torch.Tensor, torch.Tensor],
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        memory_mask: torch.Tensor | None,
        self_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = self._residual(
            self.self_attn_layer_norm, x, self.self_attn.attend(x, *self_kv, mask=self_mask, is_causal=is_causal)
        )
        x = self._residual(self.encoder_attn_layer_norm, x, self.encoder_attn.attend(x, *cross_kv, mask=memory_mask))
        return self._ffn(x)

    def forward_full(
        self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        """A full causal pass without a cache: keys and values projected here from ``x`` and ``memory``."""
        self_kv = self.self_attn.project_kv(x)
        return self(x, self_kv, self.encoder_attn.project_kv(memory), memory_mask, is_causal=is_causal)


class KVCache:
    """Decoder state for incremental decoding of ``batch`` sequences up to ``max_length`` tokens.

    ``self_k[i]``/``self_v[i]``: (batch, nh, capacity, hd) buffers filled up to ``length``; the
    capacity starts small and doubles when a step needs more (up to ``max_length``), so memory
    follows the answer's length rather than the longest possible one, at an amortised O(1) copy cost.
    ``cross_k[i]``/``cross_v[i]``: (batch, nh, S, hd), projected once from the encoder output.
    """

    def __init__(
        self,
        self_k: list[torch.Tensor],
        self_v: list[torch.Tensor],
        cross_k: list[torch.Tensor],
        cross_v: list[torch.Tensor],
        memory_mask: torch.Tensor | None,
        max_length: int | None = None,
    ) -> None:
        self.self_k, self.self_v = self_k, self_v
        self.cross_k, self.cross_v = cross_k, cross_v
        self.memory_mask = memory_mask
        self.max_length = max_length if max_length is not None else (self_k[0].shape[2] if self_k else 0)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.self_k[0].shape[2] if self.self_k else 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (batch, nh, T, hd) of ``layer`` after the cached prefix; return the layer's
        keys and values so far. ``length`` moves on once every layer has appended (see ``advance``)."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.self_k[layer][:, :, self.length : end] = k
        self.self_v[layer][:, :, self.length : end] = v
        return self.self_k[layer][:, :, :end], self.self_v[layer][:, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def _grow(self, needed: int) -> None:
        if needed > self.max_length:
            raise ValueError(f"decoder cache holds {self.max_length} tokens, {needed} requested")
        capacity = min(self.max_length, max(needed, 2 * self.capacity))
        for buffers in (self.self_k, self.self_v):
            for i, old in enumerate(buffers):
                new = old.new_empty(*old.shape[:2], capacity, old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                buffers[i] = new

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search: each surviving beam takes its parent's history).

        Beams are reordered within their batch item only, so the cross-attention state, identical
        for all beams of an item, never moves."""
        for buf in (*self.self_k, *self.self_v):
            buf[:, :, : self.length].copy_(buf[:, :, : self.length].index_select(0, index))


class Encoder(nn.Module):
    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.dropout = c.dropout
        self.embed_positions = nn.Embedding(c.max_position_embeddings + _POSITION_OFFSET, c.d_model)
        self.layernorm_embedding = nn.LayerNorm(c.d_model)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """inputs_embeds: (B, S, D); attention_mask: (B, S), 1 = real token. Returns (B, S, D)."""
        S = inputs_embeds.shape[1]
        pos = self.embed_positions.weight[_POSITION_OFFSET : _POSITION_OFFSET + S]
        x = self.layernorm_embedding(inputs_embeds + pos)
        x = F.dropout(x, self.dropout, self.training)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        checkpointed = self.gradient_checkpointing and self.training
        for layer in self.layers:
            x = run_layer(layer, x, mask, checkpointed=checkpointed)
        return x


class Decoder(nn.Module):
    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.config = c
        self.dropout = c.dropout
        self.embed_positions = nn.Embedding(c.max_position_embeddings + _POSITION_OFFSET, c.d_model)
        self.layernorm_embedding = nn.LayerNorm(c.d_model)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.gradient_checkpointing = False

    def new_cache(
        self, memory: torch.Tensor, memory_mask: torch.Tensor | None, max_length: int, initial_length: int = 64
    ) -> KVCache:
        """Precompute cross-attention keys/values of ``memory`` (B, S, D) and allocate self-attention
        buffers for ``initial_length`` decoder tokens, growing on demand up to ``max_length``."""
        B = memory.shape[0]
        nh = self.config.decoder_attention_heads
        hd = self.config.d_model // nh
        cross = [layer.encoder_attn.project_kv(memory) for layer in self.layers]
        capacity = min(max_length, initial_length)
        new = lambda: memory.new_empty(B, nh, capacity, hd)  # noqa: E731
        n = len(self.layers)
        mask = None if memory_mask is None else memory_mask[:, None, None, :].bool()
        self_k, self_v = [new() for _ in range(n)], [new() for _ in range(n)]
        return KVCache(self_k, self_v, [k for k, _ in cross], [v for _, v in cross], mask, max_length)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """inputs_embeds: (B, T, D) decoder token embeddings. Without a cache: a full causal pass over
        ``memory`` (B, S, D). With a cache: the T new tokens continue the cached prefix, which grows."""
        T = inputs_embeds.shape[1]
        start = 0 if cache is None else cache.length
        if start + T > self.config.max_position_embeddings:
            raise ValueError(f"decoder length {start + T} exceeds {self.config.max_position_embeddings} positions")
        pos = self.embed_positions.weight[_POSITION_OFFSET + start : _POSITION_OFFSET + start + T]
        x = self.layernorm_embedding(inputs_embeds + pos)
        x = F.dropout(x, self.dropout, self.training)
        if cache is None:
            mask = None if memory_mask is None else memory_mask[:, None, None, :].bool()
            checkpointed = self.gradient_checkpointing and self.training
            for layer in self.layers:
                x = run_layer(layer.forward_full, x, memory, mask, T > 1, checkpointed=checkpointed)
            return x
        end = start + T
        # one new token sees the whole prefix; a chunk after a prefix needs an offset causal mask
        self_mask = None
        if T > 1 and start > 0:
            q_pos = torch.arange(start, end, device=x.device)[:, None]
            self_mask = torch.arange(end, device=x.device)[None, :] <= q_pos
        for i, layer in enumerate(self.layers):
            self_kv = cache.append(i, *layer.self_attn.project_kv(x))
            cross_kv = (cache.cross_k[i], cache.cross_v[i])
            x = layer(x, self_kv, cross_kv, cache.memory_mask, self_mask, is_causal=T > 1 and start == 0)
        cache.advance(T)
        return x


class LanguageModel(nn.Module):
    """Token embedding (``shared``) + encoder + decoder; the output head reuses ``shared``."""

    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.config = c
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self.shared = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        # The output head is ``shared`` (tied). A separate module may replace it at inference time
        # (an int8 copy, see florence2.quantization); it is not part of the checkpoint.
        self.head: nn.Module | None = None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.shared(ids) * self.embed_scale

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return self.head(hidden)
        return linear(hidden, self.shared.weight)
