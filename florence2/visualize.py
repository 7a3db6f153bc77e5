"""Draw Florence-2 results (boxes, OCR quads, polygons) on an image.

``draw_result`` understands every official result layout, all in pixels of the original image:

* ``{"bboxes": [[x0, y0, x1, y1], ...], "labels": [...]}`` (optional ``"scores"``): ``<OD>``,
  ``<DENSE_REGION_CAPTION>``, ``<REGION_PROPOSAL>``, ``<CAPTION_TO_PHRASE_GROUNDING>``;
* ``{"quad_boxes": [[x1, y1, ..., x4, y4], ...], "labels": [...]}``: ``<OCR_WITH_REGION>``;
* ``{"polygons": [[flat_xy, ...] per instance], "labels": [...]}``: the segmentation tasks;
* ``{"bboxes", "bboxes_labels", "polygons", "polygons_labels"}``: ``<OPEN_VOCABULARY_DETECTION>``.

Plain-text results (captions, OCR text) have nothing to draw and give an unchanged copy.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from florence2.image import ImageSource, load_image

FILL_ALPHA = 80  # polygon fill opacity, 0..255


@dataclass(frozen=True)
class _Shape:
    kind: str  # "box" or "polygon"
    points: list[tuple[float, float]]  # box: 2 corners; polygon: its vertices
    label: str
    score: float | None
    fill: bool


def _palette(count: int) -> list[tuple[int, int, int]]:
    # Golden-ratio hue steps keep consecutive colours far apart for any count.
    colours = []
    for index in range(count):
        hue = (index * 0.618033988749895) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
        colours.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colours


def _points(flat: Sequence[float]) -> list[tuple[float, float]]:
    values = [float(v) for v in flat]
    return list(zip(values[0::2], values[1::2]))  # an odd trailing value is ignored


def _item(values: Sequence[Any] | None, index: int, default: Any) -> Any:
    return values[index] if values is not None and index < len(values) else default


def _unwrap(result: Any, task: str | None) -> Any:
    """Return the inner result of ``{"<TASK>": inner}``, or ``result`` itself."""
    if not isinstance(result, dict):
        return result
    if task is not None and task in result:
        return result[task]
    task_keys = [key for key in result if isinstance(key, str) and key.startswith("<") and key.endswith(">")]
    others = [key for key in result if key not in task_keys and key != "sequence_scores"]
    if task_keys and not others:
        if len(task_keys) > 1:
            raise ValueError(f"result holds several tasks {task_keys}; pass task= to choose one")
        return result[task_keys[0]]
    return result


def _shapes(result: dict[str, Any]) -> list[_Shape]:
    shapes = []
    # Open-vocabulary detection names its box labels "bboxes_labels"; every other task "labels".
    box_labels = result.get("bboxes_labels", result.get("labels"))
    scores = result.get("bboxes_scores", result.get("scores"))
    for index, box in enumerate(result.get("bboxes", [])):
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        corners = [(min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))]
        label = str(_item(box_labels, index, ""))
        shapes.append(_Shape("box", corners, label, _item(scores, index, None), fill=False))
    for index, quad in enumerate(result.get("quad_boxes", [])):
        label = str(_item(result.get("labels"), index, ""))
        shapes.append(_Shape("polygon", _points(quad), label, _item(result.get("scores"), index, None), fill=False))
    labels_key = "polygons_labels" if "polygons_labels" in result else "labels"
    scores_key = "polygons_scores" if "polygons_labels" in result else "scores"
    for index, instance in enumerate(result.get("polygons", [])):
        label = str(_item(result.get(labels_key), index, ""))
        score = _item(result.get(scores_key), index, None)
        # An instance is a list of flat polygons; accept a single flat polygon too.
        polygons = [instance] if instance and not isinstance(instance[0], (list, tuple)) else instance
        for polygon in polygons:
            shapes.append(_Shape("polygon", _points(polygon), label, score, fill=True))
    return shapes


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)


def draw_result(image: ImageSource, result: dict[str, Any] | str, *, task: str | None = None) -> Image.Image:
    """Draw a Florence-2 result on a copy of ``image`` and return the copy (RGB).

    Args:
        image: the image the result was computed on; anything ``load_image`` accepts. It is loaded
            the same way the model saw it (EXIF-rotated, RGB) and never modified.
        result: an inner result dict (see the module docstring), the outer ``{"<TASK>": inner}``
            dict returned by post-processing, or a plain-text result.
        task: the task key to pick from an outer dict holding several tasks; optional otherwise.

    Returns:
        A new RGB image: boxes and quads as outlines, polygons as outlines with a semi-transparent
        fill, each with its label (and score, 2 decimals, when ``"scores"`` is present) in a filled
        tag. Each distinct label gets its own colour (unlabelled shapes each get one); line width and
        text size scale with the image. Text results leave the copy unchanged.

    Raises:
        ImageLoadError: the image cannot be loaded.
        ValueError: ``result`` is a dict with no drawable keys, or an outer dict with several tasks
            and no ``task``.
    """
    canvas = load_image(image)
    inner = _unwrap(result, task)
    if isinstance(inner, str):
        return canvas
    if not isinstance(inner, dict):
        raise ValueError(f"result must be a dict or a string, got {type(inner).__name__}")
    if not any(key in inner for key in ("bboxes", "quad_boxes", "polygons")):
        raise ValueError(f"result has nothing to draw (keys {sorted(inner)})")
    shapes = _shapes(inner)
    if not shapes:
        return canvas

    keys = [shape.label if shape.label else f"#{index}" for index, shape in enumerate(shapes)]
    distinct = list(dict.fromkeys(keys))
    colour_of = dict(zip(distinct, _palette(len(distinct))))

    short_side = min(canvas.size)
    line_width = max(1, round(short_side / 250))
    font = _font(max(10, min(64, round(short_side / 40))))

    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    fill_draw = ImageDraw.Draw(overlay)
    for shape, key in zip(shapes, keys):
        if shape.fill and len(shape.points) >= 3:
            fill_draw.polygon(shape.points, fill=colour_of[key] + (FILL_ALPHA,))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), overlay).convert("RGB")

    draw = ImageDraw.Draw(canvas)
    for shape, key in zip(shapes, keys):
        colour = colour_of[key]
        if shape.kind == "box":
            draw.rectangle(shape.points, outline=colour, width=line_width)
        elif len(shape.points) >= 2:
            draw.line(shape.points + shape.points[:1], fill=colour, width=line_width, joint="curve")
        elif shape.points:
            x, y = shape.points[0]
            draw.ellipse((x - line_width, y - line_width, x + line_width, y + line_width), fill=colour)
    for shape, key in zip(shapes, keys):
        text = shape.label if shape.score is None else f"{shape.label} {float(shape.score):.2f}".strip()
        if not text or not shape.points:
            continue
        colour = colour_of[key]
        x = min(x for x, _ in shape.points)
        y = min(y for _, y in shape.points)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, line_width)
        tag_width, tag_height = right - left + 2 * pad, bottom - top + 2 * pad
        # Above the shape when there is room, else just inside its top edge; kept on the image.
        tag_y = y - tag_height if y - tag_height >= 0 else y
        tag_x = min(max(0.0, x), max(0.0, canvas.width - tag_width))
        tag_y = min(max(0.0, tag_y), max(0.0, canvas.height - tag_height))
        draw.rectangle((tag_x, tag_y, tag_x + tag_width, tag_y + tag_height), fill=colour)
        draw.text((tag_x + pad - left, tag_y + pad - top), text, fill=_text_colour(colour), font=font)
    return canvas
