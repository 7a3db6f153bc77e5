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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from florence2.config import DecodingOptions, Florence2Config

__all__ = [
    "DecoderCache",
    "DecodingOptions",
    "EncoderDecoder",
    "GenerationOutput",
    "Seq2SeqDecoder",
    "StepHook",
    "beam_search",
    "generate",
    "greedy_search",
    "search",
]


class DecoderCache(Protocol):
    """A decoder's key/value cache for a batch of rows."""

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep row ``rows[i]`` as row ``i`` (beam search moves each beam's history with it)."""


class Seq2SeqDecoder(Protocol):
    """What the search needs of a model: a cache, and next-token logits given the last ids.

    :class:`~florence2.model.florence2.Florence2Model` is one; any backend that runs the same decoder
    (e.g. another runtime's sessions behind these two methods) is another."""

    def new_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor | None, max_length: int) -> DecoderCache: ...

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        cache: DecoderCache | None,
    ) -> torch.Tensor:
        """(N, L) ids continuing the cached prefix -> (N, L, V) logits."""
        ...


class EncoderDecoder(Seq2SeqDecoder, Protocol):
    """A whole Florence-2: images and prompt ids to encoder memory, then the decoder above."""

    config: Florence2Config

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def encode(
        self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


_NEG = -1.0e9  # "impossible" score used by the reference beam search bookkeeping

# on_step(tokens, finished) -> rows to stop, or None: see :func:`search`
StepHook = Callable[[torch.Tensor | None, torch.Tensor], Any]


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


@torch.inference_mode()
def generate(
    model: EncoderDecoder,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **decoding: Any,
) -> torch.Tensor:
    """Token ids (B, L) from images and prompt ids, starting with the decoder start token, as
    transformers' ``model.generate`` gives them.

    ``input_ids``: the prompts' ids (``<s> prompt </s>``, right-padded, no image placeholders);
    ``decoding``: fields of :class:`DecodingOptions` (num_beams, max_new_tokens,
    no_repeat_ngram_size, length_penalty, early_stopping, ...)."""
    options = DecodingOptions.for_model(model.config, **decoding)
    memory, memory_mask = model.encode(model.encode_image(pixel_values), input_ids, attention_mask)
    return search(model, memory, memory_mask, options).sequences


def search(
    model: Seq2SeqDecoder,
    memory: torch.Tensor,
    memory_mask: torch.Tensor | None,
    options: DecodingOptions,
    on_step: StepHook | None = None,
) -> GenerationOutput:
    """Decode from encoder ``memory`` (B, S, D) (``memory_mask`` (B, S), 1 = real token, or None).

    ``on_step(tokens, finished)``, when given, is called after every decoding step (and costs
    nothing when not given):

    * greedy search: ``tokens`` (B,) are the ids the step chose for each row (``pad`` for rows that
      had already finished), ``finished`` (B,) bool says which rows are finished after it (the
      hook must not modify either);
    * beam search: ``tokens`` is None (the best hypothesis is only known at the end) and
      ``finished`` (B,) says which items can no longer change.

    The hook may return a (B,) bool tensor (or sequence) of rows to stop: each is marked finished
    as it stands (its sequence ends where it is, without EOS) and the search ends when no row is
    left. Returning None stops nothing; a hook that never stops a row changes no generated id.
    """
    if options.num_beams == 1:
        return greedy_search(model, memory, memory_mask, options, on_step)
    return beam_search(model, memory, memory_mask, options, on_step)


def _stopped(on_step: StepHook, tokens: torch.Tensor | None, finished: torch.Tensor) -> torch.Tensor | None:
    """The rows the hook asks to stop, as a bool tensor on ``finished``'s device (None: none)."""
    stop = on_step(tokens, finished)
    if stop is None:
        return None
    return torch.as_tensor(stop, dtype=torch.bool).to(finished.device)


def greedy_search(
    model: Seq2SeqDecoder,
    memory: torch.Tensor,
    memory_mask: torch.Tensor | None,
    options: DecodingOptions,
    on_step: StepHook | None = None,
) -> GenerationOutput:
    B = memory.shape[0]
    L = options.total_length
    cache = model.new_cache(memory, memory_mask, L)
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
        if on_step is not None:
            stop = _stopped(on_step, nxt, done)
            if stop is not None:
                done |= stop
        cur += 1
        if bool(done.all()):
            break
    return GenerationOutput(tokens[:, :cur], logprobs[:, :cur], logprobs[:, :cur].sum(1) / lengths)


def beam_search(
    model: Seq2SeqDecoder,
    memory: torch.Tensor,
    memory_mask: torch.Tensor | None,
    options: DecodingOptions,
    on_step: StepHook | None = None,
) -> GenerationOutput:
    """Vectorised beam search: all beams of all items go through the decoder as one batch."""
    B, K = memory.shape[0], options.num_beams
    L = options.total_length
    C = 2 * K  # candidates kept per step: enough for K to survive even if K of them end
    dev = memory.device
    # every beam of an item shares the item's memory
    memory = memory.repeat_interleave(K, dim=0)
    memory_mask = None if memory_mask is None else memory_mask.repeat_interleave(K, dim=0)
    cache = model.new_cache(memory, memory_mask, L)

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
        if on_step is not None:
            # an item is finished when it can take no better hypothesis; a stopped item takes none
            finished = ~can_improve[:, 0] | (fin_done.all(1) & options.early_stopping)
            stop = _stopped(on_step, None, finished)
            if stop is not None:
                can_improve = can_improve & ~stop[:, None]
                finished = finished | stop
            # every item done or stopped; also ends a batch whose items are done in different ways
            # (some full, some unable to improve), which changes no result: no finished set can change
            if bool(finished.all()):
                break

    # hypotheses are stored padded past their own end; crop to the longest best one
    length = max(1, int(fin_len[:, 0].max()))  # at least the start token (items stopped before any ended)
    return GenerationOutput(fin_tokens[:, 0, :length], fin_lp[:, 0, :length], fin_scores[:, 0])
