"""Filtering and enhancement of labels (the second phase of the FLD-5B data engine).

Applied to every labeled image, at labeling time and again on demand (``florence2 dataset export``
takes the same options): each rule drops the regions it catches and counts them by task and reason,
so a run can say what it dropped and why.

Rules, in order (a region is counted under the first rule that drops it):

* ``min_score``: regions scoring below it (``score``).
* ``min_area`` / ``max_area``: boxes covering less / more than this share of the image
  (``too small``, ``too large``); quads and polygons by their bounding box.
* grounding phrases on the blocklist (pronouns, abstract words: :data:`DEFAULT_BLOCKLIST`, after
  dropping a leading article), and phrases whose words do not all occur in the caption they were
  grounded in (``blocklisted phrase``, ``phrase not in caption``).
* ``nms_iou``: non-maximum suppression within each task, per label (``nms="class"``) or across
  labels (``nms="agnostic"``) (``nms``).

Enhancement: :func:`region_text_pairs` merges the boxes that several tasks give for one object
(``<OD>`` categories, ``<DENSE_REGION_CAPTION>`` descriptions, grounded phrases, open-vocabulary
classes) into one region with all its texts when they overlap by ``merge_iou`` or more: the
region-text pairs of an FLD-5B record.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from florence2.parsing import BANNED_GROUNDING_PHRASES
from florence2.scoring import bounding_box, box_iou, keep_regions, nms, region_groups

GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>"

# pronouns (the parser's own list) and words that name no object
DEFAULT_BLOCKLIST = frozenset(
    {p.lower() for p in BANNED_GROUNDING_PHRASES}
    | {
        "image", "picture", "photo", "photograph", "scene", "view", "background", "foreground",
        "thing", "things", "object", "objects", "item", "items", "part", "side", "area", "place",
        "left", "right", "top", "bottom", "front", "back", "middle", "center", "centre", "corner",
        "color", "colour", "shape", "way", "time", "lot",
    }
)  # fmt: skip

# tasks whose boxes are region-text pairs, and what their label is called in a merged region
PAIR_TASKS = {
    "<OD>": "category",
    "<DENSE_REGION_CAPTION>": "description",
    GROUNDING: "phrase",
    "<OPEN_VOCABULARY_DETECTION>": "class",
}

_ARTICLE = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)
_ARTICLES = frozenset({"a", "an", "the"})
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Filters:
    """What to drop. Every rule is off by default but the grounding ones, which only drop what the
    FLD-5B rules drop (pronouns, abstract words, phrases absent from their caption)."""

    min_score: float | None = None
    min_area: float | None = None  # share of the image, 0..1
    max_area: float | None = None
    nms_iou: float | None = None
    nms: str = "class"  # "class": per label; "agnostic": across labels
    blocklist: frozenset[str] = field(default=DEFAULT_BLOCKLIST)
    phrases_in_caption: bool = True

    def __post_init__(self) -> None:
        for name in ("min_score", "min_area", "max_area", "nms_iou"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.nms not in ("class", "agnostic"):
            raise ValueError(f"nms must be 'class' or 'agnostic', got {self.nms!r}")
        if self.min_area is not None and self.max_area is not None and self.min_area > self.max_area:
            raise ValueError(f"min_area {self.min_area} is above max_area {self.max_area}")

    def settings(self) -> dict[str, Any]:
        """The rules as plain values (what a run records)."""
        return {
            "min_score": self.min_score,
            "min_area": self.min_area,
            "max_area": self.max_area,
            "nms_iou": self.nms_iou,
            "nms": self.nms,
            "blocklist": sorted(self.blocklist),
            "phrases_in_caption": self.phrases_in_caption,
        }

    def apply(self, results: Mapping[str, Any], size: tuple[int, int]) -> tuple[dict[str, Any], Counter]:
        """Filter every task's result of one image; returns the kept results and the drops, counted
        by ``(task, reason)``."""
        drops: Counter = Counter()
        out = {}
        for task, result in results.items():
            out[task] = self._apply_task(task, result, size, drops)
        return out, drops

    def _apply_task(self, task: str, result: Any, size: tuple[int, int], drops: Counter) -> Any:
        for keys in region_groups(result):
            shapes, labels, scores = (result[key] for key in keys)
            keep = []
            for i in range(len(shapes)):
                reason = self._reason(task, result, shapes[i], labels[i], scores[i], size)
                if reason is None:
                    keep.append(i)
                else:
                    drops[(task, reason)] += 1
            if self.nms_iou is not None and len(keep) > 1:
                boxes = [bounding_box(shapes[i]) for i in keep]
                per_label = None if self.nms == "agnostic" else [labels[i] for i in keep]
                kept = sorted(keep[k] for k in nms(boxes, [scores[i] for i in keep], per_label, self.nms_iou))
                drops[(task, "nms")] += len(keep) - len(kept)
                keep = kept
            result = keep_regions(result, keys, keep)
        return result

    def _reason(self, task: str, result: dict, shape: Any, label: str, score: float, size: tuple[int, int]):
        if self.min_score is not None and score is not None and score < self.min_score:
            return "score"
        if self.min_area is not None or self.max_area is not None:
            x0, y0, x1, y1 = bounding_box(shape)
            share = max(0.0, x1 - x0) * max(0.0, y1 - y0) / max(1, size[0] * size[1])
            if self.min_area is not None and share < self.min_area:
                return "too small"
            if self.max_area is not None and share > self.max_area:
                return "too large"
        if task == GROUNDING:
            phrase = _ARTICLE.sub("", label.strip().lower())
            if phrase in self.blocklist:
                return "blocklisted phrase"
            caption = result.get("caption")
            if self.phrases_in_caption and caption is not None and not phrase_in_caption(label, caption):
                return "phrase not in caption"
        return None


def phrase_in_caption(phrase: str, caption: str) -> bool:
    """Whether every word of ``phrase`` (articles aside) is a word of ``caption``: "a purple circle"
    is in "a medium-sized purple circle", "a red square" is not."""
    words = set(_WORD.findall(caption.lower()))
    return all(word in words for word in _WORD.findall(phrase.lower()) if word not in _ARTICLES)


def region_text_pairs(results: Mapping[str, Any], merge_iou: float = 0.7) -> list[dict[str, Any]]:
    """The boxes of :data:`PAIR_TASKS` merged across tasks: boxes of different tasks that overlap by
    ``merge_iou`` or more become one region ``{"bbox", "score", "tasks", "category", "description",
    "phrase", "class"}`` (the texts that its tasks gave; the box and score of its best-scoring box).
    Boxes of one task are never merged with each other."""
    boxes: list[tuple[str, list[float], str, float]] = []
    for task in PAIR_TASKS:
        result = results.get(task)
        for keys in region_groups(result):
            if keys[0] == "bboxes":
                for box, label, score in zip(*(result[key] for key in keys)):
                    boxes.append((task, box, label, score if score is not None else 0.0))
    regions: list[dict[str, Any]] = []
    members: list[set[str]] = []
    for task, box, label, score in sorted(boxes, key=lambda b: -b[3]):
        name = PAIR_TASKS[task]
        match = _best_overlap(regions, members, task, box, merge_iou)
        if match is None:
            regions.append({"bbox": list(box), "score": score, "tasks": [task], name: label})
            members.append({task})
        else:
            region = regions[match]
            region.setdefault(name, label)
            region["tasks"].append(task)
            members[match].add(task)
    return regions


def _best_overlap(regions: list[dict], members: list[set[str]], task: str, box: Any, threshold: float) -> int | None:
    candidates = [i for i, tasks in enumerate(members) if task not in tasks]
    if not candidates:
        return None
    overlaps = box_iou([regions[i]["bbox"] for i in candidates], box)[:, 0]
    best = int(np.argmax(overlaps))
    return candidates[best] if overlaps[best] >= threshold else None
