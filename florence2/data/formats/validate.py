"""Checks, and reading and writing files, shared by the format modules.

Every error is an :class:`~florence2.errors.AnnotationError` that names where the fault is: the file
and its line (``train.jsonl:3``) or JSON element (``instances.json: annotations[3]``), then the field
(``train.jsonl:3: bbox: ...``; in JSON files the field joins the element's path with a dot:
``instances.json: annotations[3].bbox: ...``). Helpers that check a value take ``at``, the place of
that value, and start their message with it.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from florence2.errors import AnnotationError, require_field

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class MissingFileError(AnnotationError, FileNotFoundError):
    """An annotation file or folder that does not exist (an AnnotationError and a FileNotFoundError)."""


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numbers(at: str, value: Any, count: int | None = None) -> list[float]:
    """A list of finite numbers: ``count`` of them, or an even number >= 6 (a polygon) when None."""
    if not isinstance(value, (list, tuple)) or not all(is_number(v) for v in value):
        raise AnnotationError(f"{at}: expected a list of numbers, got {value!r}"[:300])
    if count is not None and len(value) != count:
        raise AnnotationError(f"{at}: expected {count} numbers, got {len(value)}")
    if count is None and (len(value) < 6 or len(value) % 2):
        raise AnnotationError(f"{at}: expected an even number (at least 6) of numbers, got {len(value)}")
    return [float(v) for v in value]


def inside(at: str, values: list[float], size: tuple[int, int]) -> list[float]:
    """Flat ``[x, y, ...]`` clipped to the image; more than 1% + 1 px outside is an error."""
    width, height = size
    out = []
    for i, v in enumerate(values):
        limit = width if i % 2 == 0 else height
        tolerance = 0.01 * limit + 1.0
        if not -tolerance <= v <= limit + tolerance:
            raise AnnotationError(f"{at}: {values} lies outside the {width}x{height} image")
        out.append(min(max(v, 0.0), float(limit)))
    return out


def xyxy(at: str, value: Any, size: tuple[int, int]) -> list[float]:
    """An XYXY box in pixels, clipped to the image."""
    box = inside(at, numbers(at, value, 4), size)
    if box[0] > box[2] or box[1] > box[3]:
        raise AnnotationError(f"{at}: expected XYXY with x0 <= x1 and y0 <= y1, got {value}")
    return box


def xywh(at: str, value: Any) -> list[float]:
    """A COCO ``[x, y, width, height]`` box as XYXY (not clipped)."""
    if not isinstance(value, list) or len(value) != 4 or not all(is_number(v) for v in value):
        raise AnnotationError(f"{at}: expected 4 numbers [x, y, width, height], got {value!r}"[:300])
    x, y, w, h = (float(v) for v in value)
    if w < 0 or h < 0:
        raise AnnotationError(f"{at}: negative width or height in {value!r}")
    return [x, y, x + w, y + h]


def bounds(points: Sequence[float]) -> list[float]:
    xs, ys = points[0::2], points[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def polygon_area(points: Sequence[float]) -> float:
    """Area of a flat ``[x0, y0, x1, y1, ...]`` polygon (shoelace formula)."""
    x, y = points[0::2], points[1::2]
    n = len(x)
    return abs(sum(x[i] * y[(i + 1) % n] - x[(i + 1) % n] * y[i] for i in range(n))) / 2


def largest(polygons: list[list[float]]) -> list[float] | None:
    return max(polygons, key=polygon_area) if polygons else None


def text(at: str, value: Any) -> str:
    """A label or expression: non-empty text, whitespace collapsed, without ``<`` (the parsers cut labels there)."""
    if not isinstance(value, str):
        raise AnnotationError(f"{at}: expected a string, got {value!r}")
    collapsed = " ".join(value.split())
    if not collapsed:
        raise AnnotationError(f"{at}: empty text")
    if "<" in collapsed:
        raise AnnotationError(f"{at}: {value!r} holds '<', which the result parsers cannot read back")
    return collapsed


# ``item[key]`` checked to exist and to be of a type: ``require`` names the field after "file:line: ",
# ``field`` after a JSON element's path ("file: images[2]" -> "file: images[2].width").
require = functools.partial(require_field, sep=": ")
field = functools.partial(require_field, sep=".")


def top_list(path: Path, data: Any, key: str) -> list:
    """The list ``data[key]`` at the top of a JSON file."""
    if not isinstance(data, Mapping):
        raise AnnotationError(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    if key not in data:
        raise AnnotationError(f"{path}: missing top-level field {key!r}")
    return require(str(path), data, key, list)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def load_json(path: Path) -> Any:
    """The JSON document of ``path``; a malformed one names the line and column."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read: {e}") from None
    try:
        return json.loads(content)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}: malformed JSON (column {e.colno}): {e.msg}") from None


def json_lines(path: Path) -> Iterable[tuple[str, Any]]:
    """``("path:line", object)`` for every non-blank line of a JSON-lines file."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below; a generator keeps it open
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    with f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{where}: malformed JSON (column {e.colno}): {e.msg}") from None


def records_of(path: Path) -> Iterable[tuple[str, Any]]:
    """JSON lines (``.jsonl``), or a ``.json`` file holding a list: ``(where, object)`` pairs."""
    if path.suffix.lower() == ".json":
        data = load_json(path)
        if not isinstance(data, list):
            raise AnnotationError(f"{path}: expected a JSON list of objects (or a .jsonl file)")
        return ((f"{path}: [{i}]", item) for i, item in enumerate(data))
    return json_lines(path)


def peek_jsonl(path: Path) -> dict | None:
    """The first record of a JSON-lines file, or None when it cannot be read or is no object."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    item = json.loads(line)
                    return item if isinstance(item, dict) else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return None


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as one line of UTF-8 JSON (folders created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def image_folder(folder: str | os.PathLike) -> Path:
    """``folder`` as a path, which must be an existing folder."""
    path = Path(folder)
    if not path.is_dir():
        raise MissingFileError(f"image folder not found: {path}")
    return path


def image_file(folder: Path, names: Sequence[str], at: str, check: bool = True) -> Path:
    """The first of ``folder / name`` that exists (the first candidate when not checking)."""
    candidates = [folder / name for name in names if name]
    if not check:
        return candidates[0]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise AnnotationError(f"{at}: image {names[0]!r} not found in {folder}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as :func:`florence2.image.load_image` returns it (EXIF
    orientation applied), read from the header only.

    Raises:
        AnnotationError: the file is missing or not a readable image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise AnnotationError(f"image file {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; all mean "not an image"
        raise AnnotationError(f"image file {path} cannot be read: {e}") from None
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


class Images:
    """Resolves image names against a root folder and caches their sizes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sizes: dict[Path, tuple[int, int]] = {}

    def path(self, at: str, name: Any) -> Path:
        if not isinstance(name, str) or not name.strip():
            raise AnnotationError(f"{at}: expected an image file name, got {name!r}")
        path = Path(name)
        return path if path.is_absolute() else self.root / path

    def size(self, where: str, path: Path) -> tuple[int, int]:
        if path not in self.sizes:
            if not path.is_file():
                raise AnnotationError(f"{where}: image file {path} not found")
            try:
                self.sizes[path] = image_size(path)
            except AnnotationError as e:
                raise AnnotationError(f"{where}: {e}") from None
        return self.sizes[path]
