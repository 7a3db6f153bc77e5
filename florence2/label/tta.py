"""Test-time augmentation for labeling: the model looks at each image in several views (the image,
its mirror image, the image shrunk inside a border), and the boxes of all views are fused.

A view changes the model input (a :class:`~florence2.image.PreparedImage`) and maps the boxes the
model gives on it back to the original image. :func:`fuse_boxes` merges the views' boxes by
weighted box fusion: boxes of one label that overlap by ``iou`` or more, at most one from each
view, become one box whose coordinates are their score-weighted mean and whose score is the sum of
their scores over the number of views: a box every view found keeps its mean score, a box one view
of two found gets half of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from florence2.image import PreparedImage
from florence2.scoring import box_iou

# box tasks whose answers the views are fused for, with their result keys (boxes, labels, scores)
FUSED_TASKS = {
    "<OD>": ("bboxes", "labels", "scores"),
    "<REGION_PROPOSAL>": ("bboxes", "labels", "scores"),
    "<OPEN_VOCABULARY_DETECTION>": ("bboxes", "bboxes_labels", "bboxes_scores"),
}


@dataclass(frozen=True)
class View:
    """One way of showing an image to the model: mirrored left to right, and/or shrunk by ``scale``
    (0 < scale <= 1) to the centre of a border of the mean colour."""

    flip: bool = False
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.scale <= 1.0:
            raise ValueError(f"a view's scale must be in (0, 1], got {self.scale}")

    @classmethod
    def parse(cls, text: str) -> View:
        """``"flip"``, ``"zoom0.8"`` (shrink to 0.8), ``"flip+zoom0.8"``, ``"identity"``."""
        flip, scale = False, 1.0
        for part in text.strip().lower().split("+"):
            if part == "flip":
                flip = True
            elif part.startswith("zoom"):
                try:
                    scale = float(part[4:])
                except ValueError:
                    raise ValueError(f"a zoom view is zoomS with 0 < S <= 1, e.g. zoom0.8; got {text!r}") from None
            elif part != "identity":
                raise ValueError(f"unknown view {text!r}: use flip, zoomS (e.g. zoom0.8) or flip+zoomS")
        return cls(flip, scale)

    @property
    def name(self) -> str:
        parts = (["flip"] if self.flip else []) + ([f"zoom{self.scale:g}"] if self.scale != 1.0 else [])
        return "+".join(parts) or "identity"

    def apply(self, image: PreparedImage) -> PreparedImage:
        """The model input of this view (the original size is kept: boxes come back in its pixels)."""
        pixels = image.pixel_values
        if self.scale != 1.0:
            _, height, width = pixels.shape
            small = F.interpolate(
                pixels[None], size=(max(1, round(height * self.scale)), max(1, round(width * self.scale))),
                mode="bilinear", align_corners=False, antialias=True,
            )[0]  # fmt: skip
            canvas = torch.zeros_like(pixels)  # 0 is the mean colour of normalised pixels
            top, left = (height - small.shape[1]) // 2, (width - small.shape[2]) // 2
            canvas[:, top : top + small.shape[1], left : left + small.shape[2]] = small
            pixels = canvas
        if self.flip:
            pixels = pixels.flip(-1)
        return PreparedImage(pixels.contiguous(), image.size)

    def unmap(self, box: Sequence[float], size: tuple[int, int]) -> list[float]:
        """A box the model gave on this view, in pixels of the original image (clipped to it)."""
        width, height = size
        x0, y0, x1, y1 = box
        if self.flip:
            x0, x1 = width - x1, width - x0
        if self.scale != 1.0:
            ox, oy = (1 - self.scale) * width / 2, (1 - self.scale) * height / 2
            x0, x1 = (x0 - ox) / self.scale, (x1 - ox) / self.scale
            y0, y1 = (y0 - oy) / self.scale, (y1 - oy) / self.scale
        return [
            min(max(x0, 0.0), width),
            min(max(y0, 0.0), height),
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
        ]


def fuse_boxes(
    views: Sequence[Sequence[tuple[Sequence[float], str, float]]], iou: float = 0.55
) -> list[tuple[list[float], str, float, int]]:
    """Weighted box fusion of the ``(box, label, score)`` lists of several views. Returns ``(box,
    label, score, support)`` per fused box, best score first; ``support``: how many views found it."""
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    count = max(1, len(views))
    found = sorted(
        ((np.asarray(box, dtype=np.float64), label, float(score or 0.0), v) for v, boxes in enumerate(views)
         for box, label, score in boxes),
        key=lambda b: -b[2],
    )  # fmt: skip
    clusters: list[dict] = []
    for box, label, score, view in found:
        match = None
        candidates = [c for c in clusters if c["label"] == label and view not in c["views"]]
        if candidates:
            overlaps = box_iou([c["box"] for c in candidates], box)[:, 0]
            best = int(np.argmax(overlaps))
            match = candidates[best] if overlaps[best] >= iou else None
        if match is None:
            clusters.append({"label": label, "box": box, "weights": [score], "boxes": [box], "views": {view}})
            continue
        match["weights"].append(score)
        match["boxes"].append(box)
        match["views"].add(view)
        weights = np.asarray(match["weights"])
        if weights.sum() > 0:
            match["box"] = (np.stack(match["boxes"]) * weights[:, None]).sum(0) / weights.sum()
        else:
            match["box"] = np.stack(match["boxes"]).mean(0)
    fused = [
        ([round(float(v), 3) for v in c["box"]], c["label"], sum(c["weights"]) / count, len(c["views"]))
        for c in clusters
    ]
    return sorted(fused, key=lambda f: -f[2])


def split_threshold(scores: Sequence[float], bins: int = 64) -> float | None:
    """The score that best splits ``scores`` in two groups (Otsu's method on their logarithms): with
    fused scores, the boxes that every view found from those that only some did. None for fewer
    than two distinct scores."""
    values = np.log(np.clip(np.asarray([s for s in scores if s and s > 0], dtype=np.float64), 1e-12, None))
    if values.size < 2 or values.min() == values.max():
        return None
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    total = counts.sum()
    best, threshold = -1.0, None
    for k in range(1, bins):
        low, high = counts[:k].sum(), counts[k:].sum()
        if low == 0 or high == 0:
            continue
        mean_low = (counts[:k] * centres[:k]).sum() / low
        mean_high = (counts[k:] * centres[k:]).sum() / high
        between = low * high / total**2 * (mean_high - mean_low) ** 2
        if between > best:
            best, threshold = between, edges[k]
    return None if threshold is None else math.exp(threshold)
