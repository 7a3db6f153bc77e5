"""A seeded synthetic world of coloured shapes and short rendered words, annotated in the FLD-5B style.

Every scene is a light background (plain, grainy, striped or a gradient) with a few coloured shapes
(circle, square, triangle, star, hexagon, diamond, cross, heart) and up to two short words or numbers.
Each scene comes with one JSON-serialisable record holding the three FLD-5B annotation types:

* text: ``captions`` at three levels (``brief``, ``detailed``, ``more_detailed``);
* region-text pairs: ``objects`` (category, colour, size, box, polygon, brief text) and ``texts``
  (the word, its OCR quad and box);
* text-phrase-region triplets: ``phrases``, noun phrases of the brief caption with their character
  offsets and the ids of the objects they name ("two stars" names both stars).

Coordinates are continuous pixel coordinates of the image: ``(0, 0)`` is the top-left corner of the
top-left pixel and ``(W, H)`` the bottom-right corner of the image, x to the right, y downwards.
Boxes are XYXY. Polygons are flat ``[x0, y0, x1, y1, ...]`` lists whose vertices run clockwise as seen
on screen, starting at the topmost (then leftmost) vertex. Quads are the 4 corners of a text's
(possibly rotated) box, clockwise from its top-left corner, flat ``[x1, y1, ..., x4, y4]``, as in the
Florence-2 OCR task. Coordinates are rounded to 1/100 pixel and the rounded polygon is what is drawn
(Pillow places its vertices to within half a supersampled pixel): circles and hearts are drawn as the
same N-gon that is annotated, so mask and annotation agree.

Shapes never leave the image and may overlap a little: objects are listed bottom to top (a later
object may cover part of an earlier one), each loses at most ``WorldConfig.max_occlusion`` of its area,
and the annotated polygon is the full (amodal) outline; ``visible`` gives the fraction left visible.
Shapes of the same colour never touch, and text never touches a shape or another text.

Record of one scene (all coordinates in pixels of the image)::

    image, width, height          file name and size
    background                    {texture, colors, description}
    objects[]                     bottom to top: {id, category, color, size (small/medium/large by
                                  polygon area), position (cell of a 3x3 grid), bbox, polygon,
                                  visible, brief ("a large red circle"), referring (a unique
                                  expression, "the large red circle")}
    texts[]                       reading order: {text, quad, bbox, color, position}
    captions                      {brief, detailed, more_detailed}; each names every category present
    phrases[]                     {phrase, object_ids, start, end}: brief caption[start:end] == phrase

A scene is a pure function of ``(seed, index)``: ``SyntheticWorld(config, seed).scene(index)`` draws
from ``np.random.SeedSequence([seed, index])``, so any sample can be regenerated on its own, in any
order, in parallel.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from florence2.convert import rasterize_polygons
from florence2.errors import AnnotationError, require_field
from florence2.progress import progress_bar

__all__ = [
    "ANNOTATIONS_FILE",
    "BACKGROUND_COLORS",
    "CATEGORIES",
    "COLORS",
    "EXTRA_SHAPES",
    "SHAPES",
    "SIZES",
    "TEXT_COLORS",
    "TEXTURES",
    "WORDS",
    "AnnotationError",
    "SyntheticWorld",
    "WorldConfig",
    "generate_scene",
    "read_split",
    "validate_record",
    "write_split",
]

ANNOTATIONS_FILE = "annotations.jsonl"
WORLD_FILE = "world.json"

# Saturated object colours, far from each other and from every (light) background colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 205, 20),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (240, 110, 190),
    "brown": (130, 80, 40),
    "black": (30, 30, 30),
}

BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light gray": (222, 222, 222),
    "cream": (250, 240, 212),
    "light blue": (212, 228, 250),
    "light green": (218, 240, 212),
    "light pink": (250, 222, 230),
    "lavender": (232, 224, 248),
}

# Dark, so that words stay readable on every background.
TEXT_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "dark gray": (70, 70, 70),
    "navy": (20, 30, 100),
    "dark red": (120, 15, 15),
}

# Polygon area as a fraction of the image area. The gaps between classes keep the labels unambiguous.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.008, 0.018),
    "medium": (0.028, 0.05),
    "large": (0.075, 0.13),
}
_SIZE_WORDS = {"small": "small", "medium": "medium-sized", "large": "large"}

TEXTURES = ("plain", "noise", "stripes", "gradient")

# Short words that name no shape and no colour, so a caption's words cannot be mistaken for its objects.
WORDS = (
    "STOP", "OPEN", "EXIT", "SALE", "CAFE", "PARK", "BOOK", "TAXI", "HOTEL", "MUSIC",
    "PIZZA", "BREAD", "NORTH", "SOUTH", "EAST", "WEST", "HELLO", "WORLD", "LIGHT", "WATER",
    "PLAY", "GAME", "BANK", "SHOP", "ZOO", "BUS", "FOOD", "TEA", "MAP", "SUN",
    "MOON", "RAIN", "SNOW", "CITY", "ROAD", "HOME", "LOVE", "TIME", "DOG", "CAT",
)  # fmt: skip

_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
)  # fmt: skip
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")

# 3 x 3 grid of the image, by the centre of a box: (row, column) -> name, and the phrase a caption uses.
_GRID = (("top left", "top", "top right"), ("left", "centre", "right"), ("bottom left", "bottom", "bottom right"))
_POSITION_PHRASES = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def _regular(n: int, start_deg: float = -90.0, radius: float = 1.0) -> np.ndarray:
    """(n, 2) vertices of a regular n-gon, clockwise on screen (y down) from angle ``start_deg``."""
    t = np.deg2rad(start_deg) + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(_: int) -> np.ndarray:
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return radii[:, None] * _regular(10)


def _cross(_: int) -> np.ndarray:
    a = 0.3
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=np.float64,
    )


def _heart(n: int) -> np.ndarray:
    # The classic heart curve; t = 0 is the top cusp and t grows clockwise on screen.
    t = 2 * np.pi * np.arange(n) / n
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


@dataclass(frozen=True)
class _ShapeSpec:
    plural: str
    max_rotation: float  # degrees; small, so that a square never turns into a diamond
    build: Callable[[int], np.ndarray]  # curve_vertices -> (N, 2) outline, clockwise on screen


SHAPES: dict[str, _ShapeSpec] = {
    "circle": _ShapeSpec("circles", 0.0, lambda n: _regular(n)),
    "square": _ShapeSpec("squares", 10.0, lambda n: _regular(4, -135.0)),
    "triangle": _ShapeSpec("triangles", 12.0, lambda n: _regular(3)),
    "star": _ShapeSpec("stars", 15.0, _star),
    "hexagon": _ShapeSpec("hexagons", 10.0, lambda n: _regular(6)),
    "diamond": _ShapeSpec("diamonds", 8.0, lambda n: np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], float)),
    "cross": _ShapeSpec("crosses", 12.0, _cross),
    "heart": _ShapeSpec("hearts", 12.0, _heart),
}
CATEGORIES = tuple(SHAPES)


def _arrow(_: int) -> np.ndarray:
    return np.array([(-1, -0.28), (0.2, -0.28), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.28), (-1, 0.28)], float)


# Shapes outside the default world (not in CATEGORIES): a world draws one only when
# WorldConfig.categories names it, e.g. to fine-tune on a category the embedded model never saw.
EXTRA_SHAPES: dict[str, _ShapeSpec] = {"arrow": _ShapeSpec("arrows", 10.0, _arrow)}
SHAPES.update(EXTRA_SHAPES)


def _signed_area(points: np.ndarray) -> float:
    """Shoelace area of (N, 2) vertices; positive when they run clockwise on screen (y down)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


@functools.lru_cache(maxsize=64)
def _unit_shape(category: str, curve_vertices: int) -> np.ndarray:
    """(N, 2) outline of ``category`` with unit area, its box centred on the origin, clockwise on screen."""
    points = np.asarray(SHAPES[category].build(curve_vertices), dtype=np.float64)
    points = points - (points.min(0) + points.max(0)) / 2
    area = _signed_area(points)
    assert area > 0, category
    points = points / math.sqrt(area)
    points.setflags(write=False)
    return points


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate (N, 2) points about the origin; positive angles turn clockwise on screen (y down)."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return points @ np.array([[c, s], [-s, c]])


def _round_points(points: np.ndarray) -> np.ndarray:
    return np.round(points, 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def _start_at_top(points: np.ndarray) -> np.ndarray:
    """Roll a closed outline so that it starts at its topmost, then leftmost, vertex."""
    first = min(range(len(points)), key=lambda i: (points[i, 1], points[i, 0]))
    return np.roll(points, -first, axis=0)


def polygon_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W) bool mask of the pixels whose centres lie inside a polygon given as ``(N, 2)`` image pixel
    coordinates: :func:`florence2.convert.rasterize_polygons`, the package's one rasteriser (exact
    even-odd rule; Pillow's rasterizer rounds vertices to whole pixels, which inflates small shapes)."""
    return rasterize_polygons(np.asarray(points, dtype=np.float64).reshape(-1), (width, height))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a bool mask by ``radius`` pixels (a square structuring element)."""
    out = mask.copy()
    for _ in range(radius):
        rows = out.copy()
        rows[1:] |= out[:-1]
        rows[:-1] |= out[1:]
        out = rows.copy()
        out[:, 1:] |= rows[:, :-1]
        out[:, :-1] |= rows[:, 1:]
    return out


def _box(points: np.ndarray, width: int, height: int) -> list[float]:
    """XYXY bounds of (N, 2) points, clipped to the image."""
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    return [
        float(np.clip(x0, 0, width)),
        float(np.clip(y0, 0, height)),
        float(np.clip(x1, 0, width)),
        float(np.clip(y1, 0, height)),
    ]


def _grid_position(box: Sequence[float], width: int, height: int) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = min(int(3 * cx / width), 2)
    row = min(int(3 * cy / height), 2)
    return _GRID[row][col]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """What a synthetic world may contain. Names select entries of ``SHAPES`` (by default the
    ``CATEGORIES``; the ``EXTRA_SHAPES`` only when named), ``COLORS``, ``SIZES``,
    ``TEXTURES`` and ``WORDS``; lower ``max_objects``, fewer categories or ``text_probability=0`` make an
    easier world for the start of a curriculum.

    image_size: side of the square image, pixels.
    min_objects, max_objects: number of shapes per scene, drawn uniformly (inclusive).
    repeat_probability: chance that a shape repeats the category of an earlier one, so that captions
        have counts ("two stars") often enough to learn them.
    max_occlusion: largest fraction of a shape's area that later shapes may cover; 0 forbids overlap.
        Shapes of the same colour never touch, whatever this says.
    text_probability: chance that a scene has text; it then has 1 to ``max_texts`` words or numbers.
    number_probability: chance that a text is a 1-4 digit number rather than a word from ``words``.
    text_size: font size range as a fraction of ``image_size`` (0.075-0.125 is 19-32 px at 256 px).
    max_text_angle: largest rotation of a text, degrees; half of the texts are not rotated.
    curve_vertices: vertices of the polygon that draws and annotates a circle or a heart.
    supersample: render at this multiple of the size and average down, for anti-aliased edges.
    """

    image_size: int = 256
    min_objects: int = 1
    max_objects: int = 4
    categories: tuple[str, ...] = CATEGORIES
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = tuple(SIZES)
    textures: tuple[str, ...] = TEXTURES
    repeat_probability: float = 0.3
    max_occlusion: float = 0.2
    text_probability: float = 0.5
    max_texts: int = 2
    words: tuple[str, ...] = WORDS
    number_probability: float = 0.3
    text_size: tuple[float, float] = (0.075, 0.125)
    max_text_angle: float = 20.0
    curve_vertices: int = 32
    supersample: int = 2

    def __post_init__(self) -> None:
        for name, chosen, known in (
            ("categories", self.categories, SHAPES),
            ("colors", self.colors, COLORS),
            ("sizes", self.sizes, SIZES),
            ("textures", self.textures, TEXTURES),
        ):
            if not chosen:
                raise ValueError(f"WorldConfig.{name} is empty")
            unknown = [c for c in chosen if c not in known]
            if unknown:
                raise ValueError(f"WorldConfig.{name}: unknown {unknown}; known: {list(known)}")
        if self.image_size < 32:
            raise ValueError(f"WorldConfig.image_size must be at least 32, got {self.image_size}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"WorldConfig needs 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        for name in ("repeat_probability", "max_occlusion", "text_probability", "number_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_texts < 1 or not self.words:
            raise ValueError("WorldConfig needs max_texts >= 1 and a non-empty word list")
        if not 0 < self.text_size[0] <= self.text_size[1] < 0.5:
            raise ValueError(f"WorldConfig.text_size must satisfy 0 < low <= high < 0.5, got {self.text_size}")
        if self.curve_vertices < 8 or self.supersample < 1:
            raise ValueError("WorldConfig needs curve_vertices >= 8 and supersample >= 1")


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


@dataclass
class _Shape:
    category: str
    color: str
    size: str
    points: np.ndarray  # (N, 2) polygon, image pixels, clockwise from the topmost vertex
    mask: np.ndarray  # (H, W) bool, the pixels the full polygon covers
    visible_mask: np.ndarray  # (H, W) bool, the part no later shape covers


@dataclass
class _Text:
    text: str
    color: str
    font_size: int
    angle: float  # degrees, clockwise on screen
    centre: tuple[float, float]
    quad: np.ndarray  # (4, 2) corners, clockwise from the text's top-left
    ink_size: tuple[float, float]  # width, height of the ink box at the supersampled scale
    ink_offset: tuple[float, float]  # font.getbbox left, top at the supersampled scale


def _place_shapes(rng: np.random.Generator, config: WorldConfig) -> list[_Shape]:
    size = config.image_size
    margin = 0.02 * size
    for _ in range(20):
        count = int(rng.integers(config.min_objects, config.max_objects + 1))
        shapes: list[_Shape] = []
        for _ in range(count):
            if shapes and rng.random() < config.repeat_probability:
                category = shapes[int(rng.integers(len(shapes)))].category
            else:
                category = str(rng.choice(config.categories))
            color = str(rng.choice(config.colors))
            size_class = str(rng.choice(config.sizes))
            shape = _try_place(rng, config, category, color, size_class, shapes, margin)
            if shape is not None:
                shapes.append(shape)
        if len(shapes) >= config.min_objects:
            return shapes
    raise RuntimeError(
        f"could not place {config.min_objects} shapes in a {size}x{size} image after 20 layouts; "
        "lower min_objects or max_occlusion, or use smaller sizes"
    )


def _try_place(
    rng: np.random.Generator,
    config: WorldConfig,
    category: str,
    color: str,
    size_class: str,
    placed: list[_Shape],
    margin: float,
    attempts: int = 40,
) -> _Shape | None:
    size = config.image_size
    unit = _unit_shape(category, config.curve_vertices)
    max_rotation = SHAPES[category].max_rotation
    low, high = SIZES[size_class]
    for _ in range(attempts):
        scale = math.sqrt(rng.uniform(low, high) * size * size)
        outline = _rotate(unit, rng.uniform(-max_rotation, max_rotation)) * scale
        lo = margin - outline.min(0)
        hi = size - margin - outline.max(0)
        if np.any(lo > hi):
            continue
        centre = rng.uniform(lo, hi)
        points = _start_at_top(_round_points(outline + centre))
        mask = polygon_mask(points, size, size)
        # A new shape goes on top: check how much of each earlier shape would stay visible.
        if any(
            np.count_nonzero(s.visible_mask & ~mask) < (1 - config.max_occlusion) * np.count_nonzero(s.mask)
            for s in placed
        ):
            continue
        # Shapes of one colour must not touch: together they would read as one blob.
        same_color = [s for s in placed if s.color == color]
        if same_color:
            grown = _dilate(mask, max(3, size // 64))
            if any(np.any(grown & s.mask) for s in same_color):
                continue
        for s in placed:
            s.visible_mask &= ~mask
        return _Shape(category, color, size_class, points, mask, mask.copy())
    return None


@functools.lru_cache(maxsize=128)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 ships a scalable default font (Aileron), so no font file is needed.
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        raise RuntimeError("the synthetic world renders text with Pillow >= 10.1; upgrade pillow") from None


def _text_content(rng: np.random.Generator, config: WorldConfig) -> str:
    if rng.random() < config.number_probability:
        digits = int(rng.integers(1, 5))
        return str(int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10**digits)))
    return str(rng.choice(config.words))


def _place_texts(rng: np.random.Generator, config: WorldConfig, shapes: list[_Shape]) -> list[_Text]:
    if rng.random() >= config.text_probability:
        return []
    size, ss = config.image_size, config.supersample
    margin = 0.02 * size
    gap = max(2, size // 64)
    occupied = np.zeros((size, size), dtype=bool)
    for s in shapes:
        occupied |= s.mask
    occupied = _dilate(occupied, gap)
    texts: list[_Text] = []
    for _ in range(int(rng.integers(1, config.max_texts + 1))):
        content = _text_content(rng, config)
        color = str(rng.choice(list(TEXT_COLORS)))
        for _ in range(30):
            font_size = max(8, round(rng.uniform(*config.text_size) * size))
            angle = 0.0 if rng.random() < 0.5 else float(rng.uniform(-config.max_text_angle, config.max_text_angle))
            left, top, right, bottom = _font(font_size * ss).getbbox(content)
            pad = max(1.0, 0.12 * font_size)
            half_w, half_h = (right - left) / (2 * ss) + pad, (bottom - top) / (2 * ss) + pad
            corners = np.array([(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)])
            corners = _rotate(corners, angle)
            lo = margin - corners.min(0)
            hi = size - margin - corners.max(0)
            if np.any(lo > hi):
                continue
            centre = rng.uniform(lo, hi)
            quad = _round_points(corners + centre)
            mask = polygon_mask(quad, size, size)
            if np.any(mask & occupied):
                continue
            occupied |= _dilate(mask, gap)
            texts.append(
                _Text(
                    content,
                    color,
                    font_size,
                    angle,
                    (float(centre[0]), float(centre[1])),
                    quad,
                    (float(right - left), float(bottom - top)),
                    (float(left), float(top)),
                )
            )
            break
    # Reading order: top to bottom, then left to right.
    texts.sort(key=lambda t: (t.centre[1], t.centre[0]))
    return texts


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _render_background(rng: np.random.Generator, config: WorldConfig) -> tuple[Image.Image, dict]:
    """Background at the supersampled size, and its description for the record."""
    size, ss = config.image_size, config.supersample
    full = size * ss
    texture = str(rng.choice(config.textures))
    names = list(BACKGROUND_COLORS)
    first = str(rng.choice(names))
    second = str(rng.choice([n for n in names if n != first]))
    c1, c2 = BACKGROUND_COLORS[first], BACKGROUND_COLORS[second]
    info: dict[str, Any] = {"texture": texture, "colors": [first]}
    if texture == "plain":
        image = Image.new("RGB", (full, full), c1)
        info["description"] = f"a plain {first} background"
    elif texture == "noise":
        # Grain of one image pixel, the same in all channels: lighter and darker, not coloured.
        grain = rng.normal(0.0, 7.0, size=(size, size, 1))
        pixels = np.clip(np.rint(np.array(c1) + grain), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB").resize((full, full), Image.Resampling.NEAREST)
        info["description"] = f"a grainy {first} background"
    elif texture == "stripes":
        orientation = str(rng.choice(["horizontal", "vertical", "diagonal"]))
        period = rng.uniform(0.05, 0.14) * size
        phase = rng.uniform(0, period)
        u = (np.arange(full) + 0.5) / ss  # supersampled pixel centres, in pixels of the image
        if orientation == "horizontal":
            coord = np.broadcast_to(u[:, None], (full, full))
        elif orientation == "vertical":
            coord = np.broadcast_to(u[None, :], (full, full))
        else:
            coord = (u[:, None] + u[None, :]) / math.sqrt(2)
        band = (np.floor((coord + phase) / (period / 2)).astype(np.int32) % 2).astype(np.uint8) * 255
        image = Image.composite(
            Image.new("RGB", (full, full), c2), Image.new("RGB", (full, full), c1), Image.fromarray(band, "L")
        )
        info["colors"] = [first, second]
        info["description"] = f"a background of {first} and {second} {orientation} stripes"
    else:
        vertical = bool(rng.random() < 0.5)
        t = (np.arange(size) + 0.5) / size
        ramp = np.rint(np.array(c1) + t[:, None] * (np.array(c2) - np.array(c1))).astype(np.uint8)  # (size, 3)
        strip = Image.fromarray(ramp[:, None, :] if vertical else ramp[None, :, :], "RGB")
        image = strip.resize((full, full), Image.Resampling.NEAREST)
        where = ("at the top", "at the bottom") if vertical else ("on the left", "on the right")
        info["colors"] = [first, second]
        info["description"] = f"a background that fades from {first} {where[0]} to {second} {where[1]}"
    return image, info


def _render(config: WorldConfig, canvas: Image.Image, shapes: list[_Shape], texts: list[_Text]) -> Image.Image:
    """Draw shapes, then texts, on the supersampled background ``canvas`` (in place) and scale it down."""
    ss = config.supersample
    full = config.image_size * ss
    draw = ImageDraw.Draw(canvas)
    for s in shapes:
        # Same mapping as polygon_mask, at the supersampled scale.
        draw.polygon([(x * ss - 0.5, y * ss - 0.5) for x, y in s.points], fill=COLORS[s.color])
    for t in texts:
        ink_w, ink_h = t.ink_size
        pad = 4
        layer = Image.new("L", (math.ceil(ink_w) + 2 * pad, math.ceil(ink_h) + 2 * pad), 0)
        ImageDraw.Draw(layer).text(
            (pad - t.ink_offset[0], pad - t.ink_offset[1]), t.text, font=_font(t.font_size * ss), fill=255
        )
        # Only the region around the quad is transformed and pasted.
        x0, y0 = (max(0, math.floor(v * ss) - pad) for v in t.quad.min(0))
        x1, y1 = (min(full, math.ceil(v * ss) + pad) for v in t.quad.max(0))
        # Affine map from that region to the layer (continuous coordinates): the ink centre goes to the
        # text centre, turned by the text angle, exactly like the annotated quad.
        ax, ay = pad + ink_w / 2, pad + ink_h / 2
        cx, cy = t.centre[0] * ss - x0, t.centre[1] * ss - y0
        rad = math.radians(t.angle)
        c, s = math.cos(rad), math.sin(rad)
        data = (c, s, ax - c * cx - s * cy, -s, c, ay + s * cx - c * cy)
        alpha = layer.transform((x1 - x0, y1 - y0), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC)
        canvas.paste(TEXT_COLORS[t.color], (x0, y0, x1, y1), alpha)
    return canvas.reduce(ss) if ss > 1 else canvas


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count_word(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Builder:
    """Accumulates a caption and the character spans of the phrases that name objects."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.phrases: list[dict] = []

    def add(self, text: str, object_ids: Iterable[int] | None = None) -> None:
        if object_ids is not None:
            end = self.length + len(text)
            self.phrases.append({"phrase": text, "object_ids": list(object_ids), "start": self.length, "end": end})
        self.parts.append(text)
        self.length += len(text)

    def text(self) -> str:
        return "".join(self.parts)


def _referring_expressions(objects: list[dict]) -> list[str]:
    """The shortest of a few attribute lists that tells each object apart from all the others."""
    keys = [
        lambda o: (o["color"], o["category"]),
        lambda o: (o["size"], o["color"], o["category"]),
        lambda o: (o["size"], o["color"], o["category"], o["position"]),
    ]
    out = []
    for obj in objects:
        size_word, noun = _SIZE_WORDS[obj["size"]], f"{obj['color']} {obj['category']}"
        for level, key in enumerate(keys):
            if sum(key(o) == key(obj) for o in objects) == 1:
                out.append(
                    [
                        f"the {noun}",
                        f"the {size_word} {noun}",
                        f"the {size_word} {noun} {_POSITION_PHRASES[obj['position']]}",
                    ][level]
                )
                break
        else:
            twins = sorted((o for o in objects if keys[2](o) == keys[2](obj)), key=lambda o: o["bbox"][0])
            rank = next(i for i, o in enumerate(twins) if o is obj)
            ordinal = _ORDINALS[rank] if rank < len(_ORDINALS) else f"number {rank + 1}"
            out.append(f"the {ordinal} {size_word} {noun} from the left")
    return out


def _centre(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _describe(
    rng: np.random.Generator,
    objects: list[dict],
    texts: list[dict],
    text_angles: list[float],
    background: dict,
    overlaps: list[tuple[int, int]],
) -> tuple[dict[str, str], list[dict]]:
    """Captions at three levels and the phrases of the brief one. ``overlaps`` holds (top, bottom) ids."""
    by_x = sorted(objects, key=lambda o: (_centre(o["bbox"])[0], _centre(o["bbox"])[1], o["id"]))
    ref = {o["id"]: o["referring"] for o in objects}

    # Brief: the objects grouped by category, left to right; one phrase per group.
    groups: dict[str, list[dict]] = {}
    for o in by_x:
        groups.setdefault(o["category"], []).append(o)
    brief = _Builder()
    if not objects:
        brief.add(_capitalize(background["description"]))
    for i, members in enumerate(groups.values()):
        if i:
            brief.add(" and " if i == len(groups) - 1 else ", ")
        category, colors = members[0]["category"], {o["color"] for o in members}
        if len(members) == 1:
            color = members[0]["color"]
            phrase = f"{_article(color)} {color} {category}"
        else:
            noun = SHAPES[category].plural
            phrase = f"{_count_word(len(members))} {members[0]['color'] + ' ' if len(colors) == 1 else ''}{noun}"
        brief.add(_capitalize(phrase) if i == 0 else phrase, sorted(o["id"] for o in members))
    brief.add(".")

    # Detailed: every object with size, colour and position, then the texts.
    opener = str(rng.choice(["The image shows", "This image contains", "The picture shows"]))
    items = [f"{o['brief']} {_POSITION_PHRASES[o['position']]}" for o in by_x]
    sentences = [f"{opener} {_join(items)}." if items else f"{opener} {background['description']}."]
    for t in texts:
        kind = "number" if t["text"].isdigit() else "word"
        sentences.append(f'The {kind} "{t["text"]}" is written {_POSITION_PHRASES[t["position"]]}.')
    detailed = " ".join(sentences)

    # More detailed: background, counts, each object, relations, overlaps, texts with colour and tilt.
    n = len(objects)
    if n == 0:
        sentences = [f"The image shows {background['description']} with no shapes."]
    else:
        shapes_word = "a single shape" if n == 1 else f"{_count_word(n)} shapes"
        sentences = [f"The image shows {shapes_word} on {background['description']}."]
    if n > 1:
        ordered = sorted(groups.values(), key=lambda m: -len(m))  # stable: ties stay left to right
        counts = [
            f"{_count_word(len(m))} {SHAPES[m[0]['category']].plural if len(m) > 1 else m[0]['category']}"
            for m in ordered
        ]
        sentences.append(f"There {'is' if len(ordered[0]) == 1 else 'are'} {_join(counts)}.")
    for o in by_x:
        verb = str(rng.choice(["is", "sits", "can be seen"]))
        sentences.append(f"{_capitalize(o['brief'])} {verb} {_POSITION_PHRASES[o['position']]}.")
    for a, b in list(zip(by_x, by_x[1:]))[:3]:
        (ax, ay), (bx, by) = _centre(a["bbox"]), _centre(b["bbox"])
        if bx - ax >= abs(by - ay):
            if rng.random() < 0.5:
                sentences.append(f"{_capitalize(ref[a['id']])} is to the left of {ref[b['id']]}.")
            else:
                sentences.append(f"{_capitalize(ref[b['id']])} is to the right of {ref[a['id']]}.")
        else:
            upper, lower = (a, b) if ay < by else (b, a)
            if rng.random() < 0.5:
                sentences.append(f"{_capitalize(ref[upper['id']])} is above {ref[lower['id']]}.")
            else:
                sentences.append(f"{_capitalize(ref[lower['id']])} is below {ref[upper['id']]}.")
    for top, bottom in overlaps:
        sentences.append(f"{_capitalize(ref[top])} partly covers {ref[bottom]}.")
    for t, angle in zip(texts, text_angles):
        kind, glyphs = ("number", "digits") if t["text"].isdigit() else ("word", "letters")
        tilt = ", slightly tilted" if abs(angle) >= 3 else ""
        where = _POSITION_PHRASES[t["position"]]
        sentences.append(f'The {kind} "{t["text"]}" is written in {t["color"]} {glyphs} {where}{tilt}.')
    more_detailed = " ".join(sentences)

    return {"brief": brief.text(), "detailed": detailed, "more_detailed": more_detailed}, brief.phrases


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------


def _flat(points: np.ndarray) -> list[float]:
    return [float(v) for v in points.reshape(-1)]


def generate_scene(
    rng: np.random.Generator, config: WorldConfig | None = None, image_name: str = "scene.png"
) -> tuple[Image.Image, dict]:
    """Draw one scene from ``rng``.

    Returns the RGB image (``config.image_size`` square) and its JSON-serialisable record (see the
    module docstring and ``validate_record``); coordinates are pixels of the image, boxes XYXY.
    The layout, the text and the caption wording draw from separate child generators, so changing
    the caption templates leaves the pictures of a seed unchanged.
    """
    config = config or WorldConfig()
    layout_rng, text_rng, caption_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=3))
    size = config.image_size
    background, background_info = _render_background(layout_rng, config)
    shapes = _place_shapes(layout_rng, config)
    texts = _place_texts(text_rng, config, shapes)
    image = _render(config, background, shapes, texts)

    objects = []
    for i, s in enumerate(shapes):
        box = _box(s.points, size, size)
        size_word = _SIZE_WORDS[s.size]
        objects.append(
            {
                "id": i,
                "category": s.category,
                "color": s.color,
                "size": s.size,
                "position": _grid_position(box, size, size),
                "bbox": box,
                "polygon": _flat(s.points),
                "visible": round(float(np.count_nonzero(s.visible_mask) / max(1, np.count_nonzero(s.mask))), 3),
                "brief": f"{_article(size_word)} {size_word} {s.color} {s.category}",
            }
        )
    for obj, expression in zip(objects, _referring_expressions(objects)):
        obj["referring"] = expression
    text_records = []
    for t in texts:
        box = _box(t.quad, size, size)
        text_records.append(
            {
                "text": t.text,
                "quad": _flat(t.quad),
                "bbox": box,
                "color": t.color,
                "position": _grid_position(box, size, size),
            }
        )
    # Pairs (top, bottom) where the top shape hides a noticeable part of the bottom one.
    overlaps = [
        (j, i)
        for i, lower in enumerate(shapes)
        for j in range(i + 1, len(shapes))
        if np.count_nonzero(lower.mask & shapes[j].mask) > 0.02 * np.count_nonzero(lower.mask)
    ]
    captions, phrases = _describe(
        caption_rng, objects, text_records, [t.angle for t in texts], background_info, overlaps
    )
    record = {
        "image": image_name,
        "width": size,
        "height": size,
        "background": background_info,
        "objects": objects,
        "texts": text_records,
        "captions": captions,
        "phrases": phrases,
    }
    return image, record


def generate_mosaic(
    rng: np.random.Generator, grid: int, config: WorldConfig | None = None
) -> tuple[Image.Image, list[dict]]:
    """A ``grid`` x ``grid`` mosaic of scenes drawn from ``rng``: a large image whose objects are as
    small, against the whole, as a scene's would be ``grid`` times smaller (small objects in large
    images, for tiled labeling). Returns the image and its objects (``category`` and ``bbox`` in
    pixels of the mosaic), scene by scene, row by row."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a whole number >= 1, got {grid!r}")
    config = config or WorldConfig()
    size = config.image_size
    canvas = Image.new("RGB", (size * grid, size * grid))
    objects = []
    for row in range(grid):
        for col in range(grid):
            image, record = generate_scene(rng, config)
            canvas.paste(image, (col * size, row * size))
            for obj in record["objects"]:
                x0, y0, x1, y1 = obj["bbox"]
                box = [x0 + col * size, y0 + row * size, x1 + col * size, y1 + row * size]
                objects.append({"category": obj["category"], "bbox": box})
    return canvas, objects


class SyntheticWorld:
    """An endless, indexable stream of scenes: ``scene(index)`` depends only on ``(seed, index)``.

    Iterating yields ``scene(0), scene(1), ...`` without end (there is no ``__len__``); take what you
    need with ``itertools.islice`` or call ``scene`` from as many workers as you like.
    """

    def __init__(self, config: WorldConfig | None = None, seed: int = 0) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.config = config or WorldConfig()
        self.seed = int(seed)

    def rng(self, index: int) -> np.random.Generator:
        """The generator that ``scene(index)`` draws from."""
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))

    def scene(self, index: int) -> tuple[Image.Image, dict]:
        """Image and record of scene ``index``; the record's image name is ``f"{index:06d}.png"``."""
        return generate_scene(self.rng(index), self.config, image_name=f"{index:06d}.png")

    def __iter__(self) -> Iterator[tuple[Image.Image, dict]]:
        index = 0
        while True:
            yield self.scene(index)
            index += 1

    def __repr__(self) -> str:
        return f"SyntheticWorld({self.config!r}, seed={self.seed})"


# --------------------------------------------------------------------------------------------------
# Splits on disk
# --------------------------------------------------------------------------------------------------


def _write_one(job: tuple[WorldConfig, int, int, str, str]) -> dict:
    config, seed, index, name, out_dir = job
    image, record = SyntheticWorld(config, seed).scene(index)
    record["image"] = name
    image.save(os.path.join(out_dir, name), format="PNG")
    return record


def write_split(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    config: WorldConfig | None = None,
    *,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Write scenes ``0 .. num_images - 1`` of ``SyntheticWorld(config, seed)`` to ``out_dir``.

    Writes one PNG per scene (zero-padded index, at least 6 digits, so names sort like indices),
    ``annotations.jsonl`` (one record per line, sorted by image name) and ``world.json`` (seed, count
    and config, enough to regenerate the split). ``progress`` shows a bar when ``tqdm`` is installed;
    ``workers > 1`` renders in that many processes with identical output. Returns ``out_dir``.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    config = config or WorldConfig()
    SyntheticWorld(config, seed)  # validates the seed before any file is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(max(0, num_images - 1))))
    jobs = [(config, seed, i, f"{i:0{digits}d}.png", str(out)) for i in range(num_images)]

    bar = progress_bar(num_images, enabled=progress, unit="img", desc=f"writing {out}")
    tmp = out / (ANNOTATIONS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        if workers > 1:
            pool = ProcessPoolExecutor(max_workers=workers)
            records: Iterable[dict] = pool.map(_write_one, jobs, chunksize=max(1, min(64, num_images // (4 * workers))))
        else:
            pool = None
            records = map(_write_one, jobs)
        try:
            for record in records:  # in index order, which is name order
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            bar.close()
    tmp.replace(out / ANNOTATIONS_FILE)
    world = {"seed": seed, "num_images": num_images, "config": asdict(config)}
    (out / WORLD_FILE).write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_coords(where: str, values: Any, count: int | None, width: int, height: int) -> None:
    """Flat [x, y, ...] list: numbers, ``count`` of them (or an even number >= 6), inside the image."""
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        raise AnnotationError(f"{where}: expected a list of numbers, got {values!r}")
    if count is not None and len(values) != count:
        raise AnnotationError(f"{where}: expected {count} numbers, got {len(values)}")
    if count is None and (len(values) < 6 or len(values) % 2):
        raise AnnotationError(f"{where}: expected an even number (at least 6) of numbers, got {len(values)}")
    tol = 1e-6
    if any(not -tol <= x <= width + tol for x in values[0::2]) or any(
        not -tol <= y <= height + tol for y in values[1::2]
    ):
        raise AnnotationError(f"{where}: {values} lies outside the {width}x{height} image")


def _check_box(where: str, box: Any, width: int, height: int) -> None:
    _check_coords(where, box, 4, width, height)
    if box[0] > box[2] or box[1] > box[3]:
        raise AnnotationError(f"{where}: expected XYXY with x0 <= x1 and y0 <= y1, got {box}")


def validate_record(record: Any) -> None:
    """Raise ``AnnotationError`` naming the first bad field of an annotation record.

    Checks field presence and types, that boxes, polygons and quads lie inside the image, that
    object ids are unique, and that every phrase is the slice ``start:end`` of the brief caption and
    names existing objects.
    """
    if not isinstance(record, dict):
        raise AnnotationError(f"expected a JSON object, got {type(record).__name__}")
    image = require_field("", record, "image", str)
    if not image:
        raise AnnotationError("image: empty file name")
    width = require_field("", record, "width", int)
    height = require_field("", record, "height", int)
    if width <= 0 or height <= 0:
        raise AnnotationError(f"width, height: expected positive sizes, got {width}x{height}")
    ids: set[int] = set()
    for i, obj in enumerate(require_field("", record, "objects", list)):
        where = f"objects[{i}]"
        if not isinstance(obj, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {obj!r}")
        object_id = require_field(where, obj, "id", int)
        if object_id in ids:
            raise AnnotationError(f"{where}.id: duplicate id {object_id}")
        ids.add(object_id)
        for key in ("category", "color", "size", "brief"):
            require_field(where, obj, key, str)
        _check_box(f"{where}.bbox", require_field(where, obj, "bbox", list), width, height)
        _check_coords(f"{where}.polygon", require_field(where, obj, "polygon", list), None, width, height)
    for i, text in enumerate(require_field("", record, "texts", list)):
        where = f"texts[{i}]"
        if not isinstance(text, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {text!r}")
        if not require_field(where, text, "text", str):
            raise AnnotationError(f"{where}.text: empty text")
        _check_coords(f"{where}.quad", require_field(where, text, "quad", list), 8, width, height)
        _check_box(f"{where}.bbox", require_field(where, text, "bbox", list), width, height)
    captions = require_field("", record, "captions", dict)
    for key in ("brief", "detailed", "more_detailed"):
        require_field("captions", captions, key, str)
    brief = captions["brief"]
    for i, phrase in enumerate(require_field("", record, "phrases", list)):
        where = f"phrases[{i}]"
        if not isinstance(phrase, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {phrase!r}")
        text = require_field(where, phrase, "phrase", str)
        start, end = require_field(where, phrase, "start", int), require_field(where, phrase, "end", int)
        if not 0 <= start <= end <= len(brief) or brief[start:end] != text:
            raise AnnotationError(
                f"{where}: {text!r} is not brief caption[{start}:{end}] = {brief[max(0, start) : max(0, end)]!r}"
            )
        object_ids = require_field(where, phrase, "object_ids", list)
        if not object_ids or not all(_is_int(j) and j in ids for j in object_ids):
            raise AnnotationError(f"{where}.object_ids: {object_ids} must name objects of this record")


def read_split(directory: str | os.PathLike, *, check_images: bool = True) -> list[dict]:
    """Read and validate ``directory/annotations.jsonl``; blank lines are skipped.

    Raises ``AnnotationError`` (a ``ValueError``) whose message starts with ``path:line:`` for malformed
    JSON, a bad record (see ``validate_record``), a repeated image name, or (with ``check_images``)
    an image file that does not exist; ``FileNotFoundError`` when there is no annotations file.
    """
    path = Path(directory) / ANNOTATIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {ANNOTATIONS_FILE} in {directory}")
    records: list[dict] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}:{line_number}: malformed JSON: {e}") from None
            try:
                validate_record(record)
            except AnnotationError as e:
                raise AnnotationError(f"{path}:{line_number}: {e}") from None
            name = record["image"]
            if name in seen:
                raise AnnotationError(f"{path}:{line_number}: image {name!r} already listed on line {seen[name]}")
            seen[name] = line_number
            if check_images and not (path.parent / name).is_file():
                raise AnnotationError(f"{path}:{line_number}: image file {name!r} not found in {path.parent}")
            records.append(record)
    return records
