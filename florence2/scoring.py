"""Confidence scores for generated answers, and filtering by score.

Florence-2 answers are token sequences, so a score comes from the probabilities the model gave the
tokens it generated (:attr:`florence2.generation.GenerationOutput.token_logprobs`, the unfiltered
log-softmax of the logits at each step, on the greedy or the winning beam path):

* **region score** (every box, OCR quad, polygon instance and grounded phrase): the geometric mean
  of the probabilities of the tokens that make up that region in the answer, i.e.
  ``exp(mean(log p))`` over its label tokens plus its own location tokens. A phrase followed by
  several boxes (``car<loc..>x4<loc..>x4``) shares its label tokens between them, each box adding
  its own four location tokens; a polygon instance counts all its ``<loc_*>``, ``<poly>`` and
  ``<sep>`` tokens; an OCR line its text and its eight location tokens.
* **sequence score** (every task, text answers included): the geometric mean over all generated
  tokens after the forced ``<s>``, the closing ``</s>`` included (a forced ``</s>`` at the length
  limit is left out, as is the forced ``<s>``).

Both are in ``[0, 1]``; a region whose tokens are more probable scores higher. Scores are computed
where the answer is parsed (:func:`florence2.parsing.post_process_generation` with ``scores=``), so
they stay aligned with the parsed lists. :func:`filter_result` then drops regions under a score
threshold and applies per-label non-maximum suppression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from florence2.coords import LOC_PATTERN

# result keys holding regions, each with the labels and scores keys parallel to it
REGION_KEYS = (
    ("bboxes", "labels", "scores"),
    ("bboxes", "bboxes_labels", "bboxes_scores"),
    ("quad_boxes", "labels", "scores"),
    ("polygons", "labels", "scores"),
    ("polygons", "polygons_labels", "polygons_scores"),
)


@dataclass(frozen=True)
class TokenScores:
    """The generated tokens of one answer, located in its cleaned text (see ``parsing.clean_text``).

    Attributes:
        spans: ``(T, 2)`` character offsets of each token in the cleaned text; the sequence tokens
            ``<s>``, ``</s>`` and ``<pad>``, absent from that text, have empty spans.
        logprobs: ``(T,)`` log-probability of each token.
        is_location: ``(T,)`` True for ``<loc_*>`` tokens.
    """

    spans: np.ndarray
    logprobs: np.ndarray
    is_location: np.ndarray

    @classmethod
    def from_generation(
        cls, tokenizer: Any, ids: Sequence[int] | torch.Tensor, logprobs: Sequence[float] | torch.Tensor
    ) -> TokenScores:
        """Locate ``ids`` (one row of generated ids) with ``tokenizer.token_offsets``."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        logprobs = torch.as_tensor(logprobs, dtype=torch.float64).cpu().numpy()
        if len(logprobs) != len(ids):
            raise ValueError(f"{len(ids)} tokens but {len(logprobs)} log-probabilities")
        sequence_ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
        spans, shift = [], 0
        for token, (start, end) in zip(ids, tokenizer.token_offsets(ids)):
            if token in sequence_ids:  # removed by clean_text: later text moves left
                spans.append((start - shift, start - shift))
                shift += end - start
            else:
                spans.append((start - shift, end - shift))
        tokens = [tokenizer.id_to_token(i) or "" for i in ids]
        is_location = np.array([LOC_PATTERN.fullmatch(t) is not None for t in tokens], dtype=bool)
        return cls(np.asarray(spans, dtype=np.int64).reshape(-1, 2), logprobs, is_location)

    def _tokens_in(self, span: tuple[int, int]) -> np.ndarray:
        start, end = span
        s, e = self.spans[:, 0], self.spans[:, 1]
        return np.flatnonzero((e > s) & (s < end) & (e > start))

    def region_scores(self, span: tuple[int, int], num_shapes: int, shape_tokens: int | None) -> list[float]:
        """Scores of the shapes of one parsed instance whose text is ``span``.

        Args:
            span: the instance's character span in the cleaned text (``Instance.span``).
            num_shapes: how many shapes the instance holds.
            shape_tokens: location tokens per shape (4 for boxes) to score each shape with its own
                location tokens and the shared label tokens; None scores the instance as one.
        """
        index = self._tokens_in(span)
        label = index[~self.is_location[index]]
        locations = index[self.is_location[index]]
        if shape_tokens is None:
            return [_geometric_mean(self.logprobs[index])] * num_shapes
        scores = []
        for k in range(num_shapes):
            own = locations[k * shape_tokens : (k + 1) * shape_tokens]
            scores.append(_geometric_mean(self.logprobs[np.concatenate([label, own])]))
        return scores


def _geometric_mean(logprobs: np.ndarray) -> float:
    if logprobs.size == 0:
        return 0.0
    return float(min(1.0, math.exp(float(np.mean(logprobs)))))


def sequence_score(
    ids: Sequence[int] | torch.Tensor,
    logprobs: Sequence[float] | torch.Tensor,
    *,
    eos_token_id: int,
    pad_token_id: int,
    forced_eos_at: int | None = None,
) -> float:
    """Geometric mean probability of one generated row (ids start with the decoder start token).

    Position 0 (decoder start) and 1 (the forced ``<s>``) are left out, as is padding after the end
    and a ``</s>`` at ``forced_eos_at`` (the position where the length limit forces it)."""
    ids = torch.as_tensor(ids).cpu()
    lp = torch.as_tensor(logprobs, dtype=torch.float64).cpu()
    keep = torch.zeros(len(ids), dtype=torch.bool)
    keep[2:] = True
    ends = (ids == eos_token_id).nonzero()
    ends = ends[ends[:, 0] >= 2] if len(ends) else ends
    if len(ends):
        end = int(ends[0, 0])
        keep[end + 1 :] = False
        if forced_eos_at is not None and end == forced_eos_at:
            keep[end] = False
    keep &= ids != pad_token_id
    return _geometric_mean(lp[keep].numpy())


# --- filtering ------------------------------------------------------------------------------------


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Pairwise IoU of two sets of XYXY boxes.

    Args:
        boxes_a: ``(N, 4)`` boxes (or one ``(4,)`` box), XYXY pixels.
        boxes_b: ``(M, 4)`` boxes (or one ``(4,)`` box).

    Returns:
        ``(N, M)`` float64 IoU; boxes of zero area have IoU 0 with everything.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def bounding_box(shape: Any) -> list[float]:
    """XYXY hull of a box, a flat point list, or a list of flat polygons."""
    flat = np.asarray(
        [v for part in shape for v in (part if isinstance(part, (list, tuple)) else [part])], dtype=np.float64
    )
    if flat.size < 4:
        return [0.0, 0.0, 0.0, 0.0]
    x, y = flat[0::2], flat[1::2]
    return [float(x.min()), float(y.min()), float(x.max()), float(y.max())]


def nms(boxes: Any, scores: Sequence[float], labels: Sequence[str] | None, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first; boxes of different labels
    never suppress each other. ``iou``: a box overlapping a kept one by more than this is dropped."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    overlap = box_iou(boxes, boxes)
    kept: list[int] = []
    for i in order:
        if all(overlap[i, j] <= iou or (labels is not None and labels[i] != labels[j]) for j in kept):
            kept.append(int(i))
    return kept


def region_groups(result: Any) -> list[tuple[str, str, str]]:
    """The (shapes, labels, scores) key triples of :data:`REGION_KEYS` present in one task's result."""
    if not isinstance(result, dict):
        return []
    return [keys for keys in REGION_KEYS if all(key in result for key in keys)]


def keep_regions(result: dict, keys: tuple[str, str, str], keep: Sequence[int]) -> dict:
    """A copy of ``result`` whose regions under ``keys`` are those at the indices ``keep`` (in order)."""
    result = dict(result)
    for key in keys:
        result[key] = [result[key][i] for i in keep]
    return result


def filter_result(result: Any, score_threshold: float | None = None, nms_iou: float | None = None) -> Any:
    """Drop regions scoring under ``score_threshold`` and apply per-label NMS at ``nms_iou`` to one
    task's result dict (regions need their ``scores``; text results pass through unchanged).
    Kept regions stay in their original order; quads and polygons use their bounding box for NMS."""
    if score_threshold is None and nms_iou is None:
        return result
    for keys in region_groups(result):
        shapes, labels, scores = (result[key] for key in keys)
        keep = [i for i, s in enumerate(scores) if score_threshold is None or s >= score_threshold]
        if nms_iou is not None and keep:
            boxes = [bounding_box(shapes[i]) for i in keep]
            kept = nms(boxes, [scores[i] for i in keep], [labels[i] for i in keep], nms_iou)
            keep = sorted(keep[k] for k in kept)
        result = keep_regions(result, keys, keep)
    return result
