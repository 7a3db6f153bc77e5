"""Tiles for labeling: small objects in large images, found on overlapping crops at full resolution.

The model sees every image resized to its input (768 x 768 for the public checkpoints, 128 x 128 for
the embedded one), so an object a few dozen pixels across in a 4000-pixel photograph is a few pixels
at the model's input and is missed. With a :class:`Tiling` the box tasks run on the image and also
on a grid of overlapping crops of the full-resolution image, each resized to the model's input on
its own; the boxes the crops give are moved back into the image and merged with the image's own
(:func:`merge_tiles`).

``"auto"`` chooses the grid of each image by its size: about one crop per model input of the image
(``round(width / side)`` columns, ``round(height / side)`` rows, ``side`` the model input's shorter
side, at most :data:`MAX_TILES` crops), so an image no larger than about one and a half model inputs
gets no crops at all and a dataset of mixed sizes tiles only its large images.

A crop cuts the objects on its edges; a box that touches an edge the crop shares with its
neighbour (an edge inside the image) is left out, as the neighbour, which overlaps the crop by
``overlap`` of a crop, or the whole image sees that object whole. What is left is merged: the
boxes of one label that overlap by ``iou`` or more are the same object, and the best scoring of
them is kept (each box keeps its own score).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from florence2.scoring import nms

Box = Sequence[float]
Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the image

_GRID = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$", re.IGNORECASE)
MAX_TILES = 64
DEFAULT_OVERLAP = 0.2  # of a crop, shared with each neighbour


@dataclass(frozen=True)
class Tiling:
    """A grid of ``cols`` x ``rows`` crops, each overlapping its neighbours by ``overlap`` of its
    width (or height); ``cols = rows = 0``: the grid of each image chosen by its size (``"auto"``,
    see the module docstring) for a model whose input's shorter side is ``side``."""

    cols: int
    rows: int
    overlap: float = DEFAULT_OVERLAP
    side: int | None = None  # auto: the model input's shorter side (set by the labeler)

    def __post_init__(self) -> None:
        for name in ("cols", "rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and not self.auto):
                raise ValueError(f"a tiling's {name} must be a whole number >= 1, got {value!r}")
        if not self.auto and not 2 <= self.cols * self.rows <= MAX_TILES:
            raise ValueError(f"a tiling has 2 to {MAX_TILES} tiles, got {self.cols} x {self.rows}")
        overlap = self.overlap
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 0.5:
            raise ValueError(f"a tiling's overlap must be in [0, 0.5), got {overlap!r}")

    @classmethod
    def parse(cls, text: str, overlap: float = DEFAULT_OVERLAP) -> Tiling:
        """``"2x2"``, ``"3x2"`` (columns x rows), or ``"auto"``."""
        if str(text).strip().lower() == "auto":
            return cls(0, 0, overlap)
        match = _GRID.match(str(text))
        if not match:
            raise ValueError(f"tiles are COLSxROWS, e.g. 2x2 or 3x2, or auto; got {text!r}")
        return cls(int(match[1]), int(match[2]), overlap)

    @property
    def auto(self) -> bool:
        return self.cols == self.rows == 0

    @property
    def name(self) -> str:
        return "auto" if self.auto else f"{self.cols}x{self.rows}"

    def for_side(self, side: int) -> Tiling:
        """This tiling for a model whose input's shorter side is ``side`` (what ``auto`` needs)."""
        return Tiling(self.cols, self.rows, self.overlap, int(side))

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(cols, rows)`` for an image of ``size`` (width, height)."""
        if not self.auto:
            return self.cols, self.rows
        if not self.side:
            raise ValueError("an auto tiling needs the model's input size: Tiling.for_side(side)")
        cols, rows = (max(1, round(length / self.side)) for length in size)
        if cols * rows > MAX_TILES:  # fewer, larger crops of the same shape
            shrink = math.sqrt(MAX_TILES / (cols * rows))
            cols, rows = max(1, int(cols * shrink)), max(1, int(rows * shrink))
            cols = min(cols, MAX_TILES // rows)
            rows = min(rows, MAX_TILES // cols)
        return cols, rows

    def rects(self, size: tuple[int, int]) -> list[Rect]:
        """The crops of an image of ``size`` (width, height), row by row: equal crops covering the
        image, neighbours sharing ``overlap`` of a crop; none where the grid is one crop."""
        width, height = size
        cols, rows = self.grid(size)
        if cols * rows < 2:
            return []
        return [(x0, y0, x1, y1) for y0, y1 in _spans(height, rows, self.overlap)
                for x0, x1 in _spans(width, cols, self.overlap)]  # fmt: skip


def _spans(length: int, count: int, overlap: float) -> list[tuple[int, int]]:
    """``count`` equal spans covering ``[0, length)``, each sharing ``overlap`` of its length with
    the next."""
    if count == 1:
        return [(0, length)]
    span = length / (count - (count - 1) * overlap)
    step = span * (1 - overlap)
    out = []
    for k in range(count):
        start = min(round(k * step), length - 1)  # a crop of at least one pixel of the image, however small
        end = length if k == count - 1 else min(length, round(k * step + span))
        out.append((start, max(end, start + 1)))
    return out


def cut(box: Box, rect: Rect, size: tuple[int, int], margin: float = 1.0) -> bool:
    """Whether ``box`` (in pixels of the image) touches, within ``margin`` pixels, an edge of the
    crop ``rect`` that lies inside the image (so the crop may show only part of its object)."""
    x0, y0, x1, y1 = box
    left, top, right, bottom = rect
    width, height = size
    return (
        (left > 0 and x0 <= left + margin)
        or (top > 0 and y0 <= top + margin)
        or (right < width and x1 >= right - margin)
        or (bottom < height and y1 >= bottom - margin)
    )


def from_tile(box: Box, rect: Rect) -> list[float]:
    """A box the model gave on the crop ``rect`` (in the crop's pixels), in pixels of the image."""
    x0, y0, x1, y1 = box
    left, top, right, bottom = rect
    return [
        min(max(x0 + left, left), right),
        min(max(y0 + top, top), bottom),
        min(max(x1 + left, left), right),
        min(max(y1 + top, top), bottom),
    ]


def merge_tiles(
    found: Sequence[Sequence[tuple[Box, str, float | None]]], iou: float = 0.5
) -> list[tuple[list[float], str, float | None]]:
    """The ``(box, label, score)`` lists of the image and its crops (crop boxes already in the
    image's pixels, cut ones already left out) as one list: boxes of one label overlapping by ``iou``
    or more are one object, its best scoring box kept; best score first."""
    boxes = [(list(box), label, score) for group in found for box, label, score in group]
    if not boxes:
        return []
    kept = nms(
        [box for box, _, _ in boxes],
        [score if score is not None else 0.0 for _, _, score in boxes],
        [label for _, label, _ in boxes],
        iou,
    )
    return [boxes[k] for k in kept]
