"""Decoding: greedy and beam search over the Florence-2 decoder, with logit filters.

Generation knows nothing about text: it takes the encoder memory and returns token ids (and the
log-probabilities of the chosen tokens, for confidence scores). The decoding rules reproduce
transformers' ``generate`` for this model, so the same weights give the same ids:

* the decoder starts from ``decoder_start_token_id`` (2, ``</s>``);
* filters, in order: no-repeat n-gram ban, forced BOS at the first step, forced EOS at the last;
* beam search keeps ``2 * num_beams`` candidates a step, finishes a hypothesis when it emits EOS or
  reaches ``max_length``, scores it by ``sum(log p) / generated_length ** length_penalty``, and with
  ``early_stopping=True`` stops an item once ``num_beams`` hypotheses are finished.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from florence2.config import Florence2Config

if TYPE_CHECKING:
    from florence2.model.florence2 import Florence2Model

_NEG = -1.0e9  # "impossible" score used by the reference beam search bookkeeping


@dataclass(frozen=True)
class DecodingOptions:
    """Decoding settings. Defaults are the official Florence-2 generation config."""

    num_beams: int = 3
    max_new_tokens: int = 1024
    no_repeat_ngram_size: int = 3
    length_penalty: float = 1.0
    early_stopping: bool = True
    decoder_start_token_id: int = 2
    bos_token_id: int | None = 0  # forced as the first generated token
    eos_token_id: int = 2  # ends a sequence; forced as the last token when max_length is reached
    pad_token_id: int = 1
    max_length: int = 1024  # decoder positions, start token included

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

    @property
    def total_length(self) -> int:
        """Decoder length bound: start token + new tokens, within the decoder's positions."""
        return min(1 + self.max_new_tokens, self.max_length)


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (B, L) ids starting with the decoder start token, padded with pad
    token_logprobs: torch.Tensor  # (B, L) log p of each token under the model (0 for the start token)
    sequence_scores: torch.Tensor  # (B,) final hypothesis score (beam: length-normalised; greedy: mean)


# --- logit filters -------------------------------------------------------------------------------


def ban_repeated_ngrams(tokens: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid any token that would complete an n-gram already present in ``tokens`` (N, T).

    Vectorised: every window of the history whose first n-1 tokens equal the last n-1 tokens bans
    its final token."""
    T = tokens.shape[1]
    if n <= 0 or T < n:
        return scores
    windows = tokens.unfold(1, n, 1)  # (N, T-n+1, n)
    prefix = tokens[:, T - n + 1 :]  # (N, n-1)
    hit = (windows[..., :-1] == prefix[:, None, :]).all(-1)  # (N, T-n+1)
    V = scores.shape[1]
    banned = torch.zeros(scores.shape[0], V + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(hit, windows[..., -1].clamp(max=V), V), True)
    return scores.masked_fill(banned[:, :V], float("-inf"))


def force_token(scores: torch.Tensor, token: int) -> torch.Tensor:
    """Only ``token`` stays possible (score 0, everything else -inf)."""
    forced = torch.full_like(scores, float("-inf"))
    forced[:, token] = 0.0
    return forced


def apply_filters(tokens: torch.Tensor, scores: torch.Tensor, options: DecodingOptions) -> torch.Tensor:
    """tokens: (N, T) decoder ids so far; scores: (N, V) next-token scores."""
    T = tokens.shape[1]
    scores = ban_repeated_ngrams(tokens, scores, options.no_repeat_ngram_size)
    if T == 1 and options.bos_token_id is not None:
        scores = force_token(scores, options.bos_token_id)
    if T == options.total_length - 1:
        scores = force_token(scores, options.eos_token_id)
    return scores


# --- search ---------------------------------------------------------------------------------------


def generate(
    model: Florence2Model, memory: torch.Tensor, memory_mask: torch.Tensor | None, options: DecodingOptions
) -> GenerationOutput:
    """Decode from encoder ``memory`` (B, S, D) (``memory_mask`` (B, S), 1 = real token, or None)."""
    if options.num_beams == 1:
        return greedy_search(model, memory, memory_mask, options)
    return beam_search(model, memory, memory_mask, options)


def greedy_search(
    model: Florence2Model, memory: torch.Tensor, memory_mask: torch.Tensor | None, options: DecodingOptions
) -> GenerationOutput:
    B = memory.shape[0]
    L = options.total_length
    cache = model.language_model.decoder.new_cache(memory, memory_mask, L)
    tokens = memory.new_full((B, L), options.pad_token_id, dtype=torch.long)
    tokens[:, 0] = options.decoder_start_token_id
    logprobs = memory.new_zeros((B, L), dtype=torch.float32)
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    lengths = torch.zeros(B, dtype=torch.long, device=memory.device)
    cur = 1
    while cur < L:
        logits = model.decode(tokens[:, cur - 1 : cur], memory, memory_mask, cache)[:, -1].float()
        scores = apply_filters(tokens[:, :cur], logits, options)
        nxt = scores.argmax(-1)
        nxt = torch.where(done, options.pad_token_id, nxt)
        tokens[:, cur] = nxt
        lp = F.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0]
        logprobs[:, cur] = torch.where(done, 0.0, lp)
        lengths += ~done
        done |= nxt == options.eos_token_id
        cur += 1
        if bool(done.all()):
            break
    return GenerationOutput(tokens[:, :cur], logprobs[:, :cur], logprobs[:, :cur].sum(1) / lengths)


def beam_search(
    model: Florence2Model, memory: torch.Tensor, memory_mask: torch.Tensor | None, options: DecodingOptions
) -> GenerationOutput:
    """Vectorised beam search: all beams of all items go through the decoder as one batch."""
    B, K = memory.shape[0], options.num_beams
    L = options.total_length
    C = 2 * K  # candidates kept per step: enough for K to survive even if K of them end
    dev = memory.device
    # every beam of an item shares the item's memory
    memory = memory.repeat_interleave(K, dim=0)
    memory_mask = None if memory_mask is None else memory_mask.repeat_interleave(K, dim=0)
    cache = model.language_model.decoder.new_cache(memory, memory_mask, L)

    # running hypotheses (B, K, L) and their scores; only beam 0 is live at the start
    run_tokens = torch.full((B, K, L), options.pad_token_id, dtype=torch.long, device=dev)
    run_tokens[:, :, 0] = options.decoder_start_token_id
    run_lp = torch.zeros((B, K, L), dtype=torch.float32, device=dev)
    run_scores = torch.full((B, K), _NEG, device=dev)
    run_scores[:, 0] = 0.0
    # finished hypotheses, best first
    fin_tokens = run_tokens.clone()
    fin_lp = run_lp.clone()
    fin_scores = torch.full((B, K), _NEG, device=dev)
    fin_done = torch.zeros((B, K), dtype=torch.bool, device=dev)
    fin_len = torch.zeros((B, K), dtype=torch.long, device=dev)
    can_improve = torch.ones((B, 1), dtype=torch.bool, device=dev)
    top_k_slot = torch.arange(C, device=dev) < K  # only the best K candidates may finish

    cur = 1
    while cur < L:
        flat = run_tokens.view(B * K, L)[:, :cur]
        logits = model.decode(flat[:, -1:], memory, memory_mask, cache)[:, -1].float()
        raw_lp = F.log_softmax(logits, -1)
        lp = apply_filters(flat, raw_lp, options)
        V = lp.shape[-1]
        total = (lp.view(B, K, V) + run_scores[:, :, None]).view(B, K * V)
        cand_scores, cand_idx = total.topk(C, dim=1)  # (B, C)
        parent, token = cand_idx // V, cand_idx % V
        cand_tokens = run_tokens.gather(1, parent[:, :, None].expand(-1, -1, L)).clone()
        cand_tokens[:, :, cur] = token
        cand_lp = run_lp.gather(1, parent[:, :, None].expand(-1, -1, L)).clone()
        cand_lp[:, :, cur] = raw_lp.view(B, K * V).gather(1, cand_idx)
        ends = (token == options.eos_token_id) | (cur + 1 >= L)

        # the best K candidates that did not end keep running
        keep = (cand_scores + ends.float() * _NEG).topk(K, dim=1).indices
        run_tokens = cand_tokens.gather(1, keep[:, :, None].expand(-1, -1, L))
        run_lp = cand_lp.gather(1, keep[:, :, None].expand(-1, -1, L))
        run_scores = (cand_scores + ends.float() * _NEG).gather(1, keep)
        src_parent = parent.gather(1, keep)  # (B, K) beam each survivor extends

        # candidates among the best K that ended join the finished set if they score high enough
        newly = ends & top_k_slot[None, :]
        norm = cand_scores / float(cur) ** options.length_penalty  # cur = tokens generated incl. this one
        full = fin_done.all(1, keepdim=True) & options.early_stopping
        norm = norm + full.float() * _NEG + (~can_improve).float() * _NEG + (~newly).float() * _NEG
        merged_scores = torch.cat([fin_scores, norm], 1)
        best = merged_scores.topk(K, dim=1).indices
        fin_scores = merged_scores.gather(1, best)
        fin_tokens = torch.cat([fin_tokens, cand_tokens], 1).gather(1, best[:, :, None].expand(-1, -1, L))
        fin_lp = torch.cat([fin_lp, cand_lp], 1).gather(1, best[:, :, None].expand(-1, -1, L))
        fin_len = torch.cat([fin_len, torch.full_like(cand_scores, cur + 1, dtype=torch.long)], 1).gather(1, best)
        fin_done = torch.cat([fin_done, newly], 1).gather(1, best)

        rows = (src_parent + torch.arange(B, device=dev)[:, None] * K).view(-1)
        if not torch.equal(rows, torch.arange(B * K, device=dev)):  # often every beam keeps its own history
            cache.reorder(rows)
        cur += 1

        # can a running beam still beat the worst finished one? (the reference's heuristic)
        best_running = run_scores[:, :1] / float(cur - 1) ** options.length_penalty
        worst = torch.where(fin_done, fin_scores.min(1, keepdim=True).values, torch.full_like(fin_scores, _NEG))
        can_improve = can_improve & (best_running > worst).any(1, keepdim=True)
        all_full = bool(fin_done.all()) and options.early_stopping
        if not bool(can_improve.any()) or all_full or bool(ends.all()):
            break

    # hypotheses are stored padded past their own end; crop to the longest best one
    length = int(fin_len[:, 0].max())
    return GenerationOutput(fin_tokens[:, 0, :length], fin_lp[:, 0, :length], fin_scores[:, 0])
