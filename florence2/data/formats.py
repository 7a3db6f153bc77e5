"""Dataset adapters: annotation files in common layouts -> training examples for the trainer.

Every adapter validates its input and raises :class:`~florence2.errors.AnnotationError` naming the
file, the line (or the JSON element) and the field at fault. Targets are written by the sample
builders of :mod:`florence2.data.samples` (the formats the released models answer in) with the one
quantizer of :mod:`florence2.coords`: an adapter only turns its files into annotation records.

==============  =========================================  ===========================================
format          paths                                      tasks (default first)
==============  =========================================  ===========================================
``coco``        ``ANNOTATIONS.json[:IMAGES]``              ``<OD>``, ``<OPEN_VOCABULARY_DETECTION>``
                                                           (one sample per category of an image),
                                                           ``<REGION_PROPOSAL>``, ``<REGION_TO_CATEGORY>``,
                                                           ``<REGION_TO_SEGMENTATION>``
``yolo``        ``DIR`` (``images/``, ``labels/``,         as ``coco``
                ``data.yaml`` or ``classes.txt``)
``jsonl``       ``FILE.jsonl[:IMAGES]``: ``image``,        the task token the prefix holds, or a free
                ``prefix``, ``suffix``                     prompt
``captions``    ``DIR`` (images + same-named ``.txt``),    ``<CAPTION>``, ``<DETAILED_CAPTION>``,
                ``FILE.csv[:IMAGES]``, ``FILE.jsonl``      ``<MORE_DETAILED_CAPTION>``
``refcoco``     ``REFS(.p|.json):INSTANCES.json[:IMAGES]`` ``<CAPTION_TO_PHRASE_GROUNDING>``,
                                                           ``<REFERRING_EXPRESSION_SEGMENTATION>``,
                                                           ``<OPEN_VOCABULARY_DETECTION>``,
                                                           ``<REGION_TO_SEGMENTATION>``,
                                                           ``<REGION_TO_DESCRIPTION>``
``refexp``      ``FILE.jsonl[:IMAGES]``: ``image``,        as ``refcoco``
                ``expression``, ``bbox``, ``polygon``
``ocr``         ``FILE.jsonl[:IMAGES]``: ``image``,        ``<OCR_WITH_REGION>``, ``<OCR>``,
                ``texts`` (``text``, ``quad``)             ``<REGION_TO_OCR>``
``synthetic``   ``DIR`` (:func:`~florence2.data.write_split`) any task
==============  =========================================  ===========================================

Conventions: boxes in files are pixels of the image as :func:`florence2.image.load_image` returns it
(EXIF orientation applied): COCO ``bbox`` is ``[x, y, width, height]``, every other box is XYXY
``[x0, y0, x1, y1]``; YOLO labels are ``class cx cy w h`` (or ``class x1 y1 x2 y2 ...`` polygons)
normalised to [0, 1]. Coordinates up to 1% (plus one pixel) outside the image are clipped to it;
further out is an error. Relative image paths are resolved against ``IMAGES`` (default: the folder
of the annotation file). COCO crowd annotations (``iscrowd: 1``) are left out; an object with several
polygons keeps its largest one (the targets hold one polygon per object); images without objects give
no detection sample. What an adapter leaves out is written to ``notes`` (when given), never silently.

On the command line a dataset is ``FORMAT:PATH[:PATH...][@OPTION=VALUE,...]`` (:func:`parse_data_spec`),
e.g. ``coco:instances.json:images/@tasks=OD+OPEN_VOCABULARY_DETECTION,weight=2``. Options: ``tasks``
(task names joined by ``+``), ``weight`` (how often each of its examples is drawn, relative to
others: 2 is as if the data were there twice), ``split`` (``refcoco``: the refs' split; ``yolo``:
the sub-folder of ``images/``). Without ``FORMAT:`` the format is recognised from the files.
"""

from __future__ import annotations

import bisect
import csv
import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from florence2.coords import NUM_BINS, parse_loc_tokens
from florence2.errors import AnnotationError, TaskError, require_field
from florence2.tasks import TASKS, construct_prompt, get_task

__all__ = [
    "FORMATS",
    "DataFormat",
    "DataSpec",
    "Example",
    "Mixture",
    "detect_format",
    "image_size",
    "load_data",
    "parse_data_spec",
    "read_captions",
    "read_coco",
    "read_jsonl",
    "read_ocr",
    "read_refcoco",
    "read_refexp",
    "read_synthetic",
    "read_yolo",
    "split_held_out",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Example:
    """One training example, what :func:`florence2.train.trainer.collate` reads.

    Attributes:
        image: path of the image file.
        prompt: the prompt text the model reads (task prompts expanded, e.g. ``"Locate the objects
            with category name in the image."``).
        target: the decoder target in Florence-2's format, without ``<s>``/``</s>``.
        task: the task token, or None for a free prompt.
        source: where it came from, ``"file:line"`` or ``"file: element"``, for messages.
    """

    image: str
    prompt: str
    target: str
    task: str | None
    source: str


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(where: str, name: str, value: Any, count: int | None = None) -> list[float]:
    """A list of finite numbers: ``count`` of them, or an even number >= 6 (a polygon) when None."""
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        raise AnnotationError(f"{where}: {name}: expected a list of numbers, got {value!r}")
    if count is not None and len(value) != count:
        raise AnnotationError(f"{where}: {name}: expected {count} numbers, got {len(value)}")
    if count is None and (len(value) < 6 or len(value) % 2):
        raise AnnotationError(f"{where}: {name}: expected an even number (at least 6) of numbers, got {len(value)}")
    return [float(v) for v in value]


def _inside(where: str, name: str, values: list[float], size: tuple[int, int]) -> list[float]:
    """Flat ``[x, y, ...]`` clipped to the image; more than 1% + 1 px outside is an error."""
    width, height = size
    out = []
    for i, v in enumerate(values):
        limit = width if i % 2 == 0 else height
        tolerance = 0.01 * limit + 1.0
        if not -tolerance <= v <= limit + tolerance:
            raise AnnotationError(f"{where}: {name}: {values} lies outside the {width}x{height} image")
        out.append(min(max(v, 0.0), float(limit)))
    return out


def _xyxy(where: str, name: str, value: Any, size: tuple[int, int]) -> list[float]:
    box = _inside(where, name, _numbers(where, name, value, 4), size)
    if box[0] > box[2] or box[1] > box[3]:
        raise AnnotationError(f"{where}: {name}: expected XYXY with x0 <= x1 and y0 <= y1, got {value}")
    return box


def _bounds(points: list[float]) -> list[float]:
    xs, ys = points[0::2], points[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _polygon_area(points: list[float]) -> float:
    x, y = np.asarray(points[0::2]), np.asarray(points[1::2])
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def _largest(polygons: list[list[float]]) -> list[float] | None:
    return max(polygons, key=_polygon_area) if polygons else None


def _text(where: str, name: str, value: Any) -> str:
    """A label or expression: non-empty text, whitespace collapsed, without ``<`` (the parsers cut labels there)."""
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: {name}: expected a string, got {value!r}")
    text = " ".join(value.split())
    if not text:
        raise AnnotationError(f"{where}: {name}: empty text")
    if "<" in text:
        raise AnnotationError(f"{where}: {name}: {value!r} holds '<', which the result parsers cannot read back")
    return text


_require = functools.partial(require_field, sep=": ")  # where is "file:line" or "file: element"


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}: malformed JSON (column {e.colno}): {e.msg}") from None


def _json_lines(path: Path) -> Iterable[tuple[str, Any]]:
    """``("path:line", object)`` for every non-blank line of a JSON-lines file."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below; a generator keeps it open
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    with f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{where}: malformed JSON (column {e.colno}): {e.msg}") from None


def _records_of(path: Path) -> Iterable[tuple[str, Any]]:
    """JSON lines (``.jsonl``), or a ``.json`` file holding a list: ``(where, object)`` pairs."""
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        if not isinstance(data, list):
            raise AnnotationError(f"{path}: expected a JSON list of objects (or a .jsonl file)")
        return ((f"{path}: [{i}]", item) for i, item in enumerate(data))
    return _json_lines(path)


class _Images:
    """Resolves image names against a root folder and caches their sizes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sizes: dict[Path, tuple[int, int]] = {}

    def path(self, where: str, name: Any, field_name: str = "image") -> Path:
        if not isinstance(name, str) or not name.strip():
            raise AnnotationError(f"{where}: {field_name}: expected an image file name, got {name!r}")
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


def _record(image: Path, size: tuple[int, int], **fields: Any) -> dict[str, Any]:
    """An annotation record in the schema of :mod:`florence2.data.samples`."""
    return {
        "image": str(image),
        "width": size[0],
        "height": size[1],
        "objects": fields.get("objects", []),
        "texts": fields.get("texts", []),
        "captions": fields.get("captions", {}),
        "phrases": fields.get("phrases", []),
    }


def _examples(record: dict, tasks: Sequence[str], where: str) -> list[Example]:
    """The samples of ``tasks`` for one record, as examples; builder errors get the location."""
    from florence2.data.samples import build_samples

    out = []
    for task in tasks:
        try:
            samples = build_samples(record, task)
        except (AnnotationError, TaskError) as e:
            raise AnnotationError(f"{where}: {e}") from None
        out.extend(Example(record["image"], s.prompt, s.target, s.task, where) for s in samples)
    return out


def _note(notes: list[str] | None, message: str, names: Sequence[str] = ()) -> None:
    if notes is not None:
        shown = ", ".join(str(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        notes.append(message + (f": {shown}" if names else ""))


def _tasks(tasks: Sequence[str] | None, allowed: Sequence[str], default: Sequence[str], fmt: str) -> list[str]:
    if not tasks:
        return list(default)
    tokens = []
    for name in tasks:
        token = get_task(name).token
        if token not in allowed:
            raise TaskError(f"the {fmt} format gives no {token} samples; it gives: {', '.join(allowed)}")
        tokens.append(token)
    return list(dict.fromkeys(tokens))


# --------------------------------------------------------------------------------------------------
# COCO detection
# --------------------------------------------------------------------------------------------------

DETECTION_TASKS = (
    "<OD>",
    "<OPEN_VOCABULARY_DETECTION>",
    "<REGION_PROPOSAL>",
    "<REGION_TO_CATEGORY>",
    "<REGION_TO_SEGMENTATION>",
)


def _coco_polygons(where: str, segmentation: Any, size: tuple[int, int]) -> list[list[float]]:
    """COCO polygons (a list of flat lists); RLE masks (a dict) give none."""
    if segmentation is None or isinstance(segmentation, dict):
        return []
    if not isinstance(segmentation, list):
        raise AnnotationError(f"{where}: segmentation: expected a list of polygons or an RLE dict")
    return [_inside(where, "segmentation", _numbers(where, "segmentation", p), size) for p in segmentation if p]


def _coco_index(path: Path, data: Any) -> tuple[dict[int, str], dict[int, dict], list[tuple[str, dict]]]:
    """Validated categories (id -> name), images (id -> entry) and annotations of a COCO file."""
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a COCO JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        _require(f"{path}", data, key, list)
    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        cat_id = _require(where, cat, "id", int)
        categories[cat_id] = _text(where, "name", _require(where, cat, "name", str))
    images: dict[int, dict] = {}
    for i, entry in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        image_id = _require(where, entry, "id", int)
        if image_id in images:
            raise AnnotationError(f"{where}: id: duplicate image id {image_id}")
        _require(where, entry, "file_name", str)
        for key in ("width", "height"):
            if key in entry and (not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] <= 0):
                raise AnnotationError(f"{where}: {key}: expected a positive integer, got {entry[key]!r}")
        images[image_id] = entry
    annotations = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        if _require(where, ann, "image_id", int) not in images:
            raise AnnotationError(f"{where}: image_id: no image has id {ann['image_id']}")
        if _require(where, ann, "category_id", int) not in categories:
            raise AnnotationError(f"{where}: category_id: no category has id {ann['category_id']}")
        annotations.append((where, ann))
    return categories, images, annotations


def _coco_image(where: str, entry: dict, images: _Images, check_size: bool) -> tuple[Path, tuple[int, int]]:
    """Path and size of a COCO image entry; the declared size must be the file's."""
    path = images.path(where, entry["file_name"], "file_name")
    declared = (entry["width"], entry["height"]) if "width" in entry and "height" in entry else None
    if declared is not None and not check_size:
        return path, declared
    size = images.size(where, path)
    if declared is not None and declared != size:
        raise AnnotationError(
            f"{where}: width/height: the file says {declared[0]}x{declared[1]} but {path} is {size[0]}x{size[1]}"
            + (" (after EXIF rotation)" if declared == size[::-1] else "")
        )
    return path, size


def read_coco(
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    notes: list[str] | None = None,
    check_images: bool = True,
) -> list[Example]:
    """Examples from a COCO detection file (``images``, ``annotations`` with ``bbox`` [x, y, w, h]
    and optional polygon ``segmentation``, ``categories``); image files under ``images`` (default: the
    JSON file's folder). ``tasks``: of :data:`DETECTION_TASKS`, default ``<OD>``.
    ``check_images``: open every image header (existence, size); off, declared sizes are trusted."""
    path = Path(annotations)
    tasks = _tasks(tasks, DETECTION_TASKS, ("<OD>",), "coco")
    categories, entries, anns = _coco_index(path, _load_json(path))
    resolver = _Images(Path(images) if images is not None else path.parent)
    sizes: dict[int, tuple[Path, tuple[int, int]]] = {}
    objects: dict[int, list[dict]] = {image_id: [] for image_id in entries}
    crowd = 0
    for where, ann in anns:
        image_id = ann["image_id"]
        if image_id not in sizes:
            sizes[image_id] = _coco_image(f"{path}: image id {image_id}", entries[image_id], resolver, check_images)
        size = sizes[image_id][1]
        if ann.get("iscrowd"):
            crowd += 1
            continue
        x, y, w, h = _numbers(where, "bbox", _require(where, ann, "bbox", list), 4)
        if w < 0 or h < 0:
            raise AnnotationError(f"{where}: bbox: width and height must be >= 0, got {ann['bbox']}")
        obj = {
            "id": len(objects[image_id]),
            "category": categories[ann["category_id"]],
            "bbox": _inside(where, "bbox", [x, y, x + w, y + h], size),
        }
        polygon = _largest(_coco_polygons(where, ann.get("segmentation"), size))
        if polygon is not None:
            obj["polygon"] = polygon
        objects[image_id].append(obj)
    if crowd:
        _note(notes, f"{path}: {crowd} crowd annotations (iscrowd=1) left out")
    examples, empty = [], []
    for image_id, entry in entries.items():
        if not objects[image_id]:
            empty.append(entry["file_name"])
            continue
        image_path, size = sizes[image_id]
        record = _record(image_path, size, objects=objects[image_id])
        examples.extend(_examples(record, tasks, f"{path}: image id {image_id} ({entry['file_name']})"))
    if empty:
        _note(notes, f"{path}: {len(empty)} images without annotations give no samples", empty)
    return examples


# --------------------------------------------------------------------------------------------------
# YOLO detection folders
# --------------------------------------------------------------------------------------------------


def _simple_yaml_names(text: str) -> list[str] | dict[int, str] | None:
    """``names`` of a data.yaml without PyYAML: ``names: [a, b]``, a ``- a`` list or ``0: a`` lines."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^names\s*:\s*(.*?)\s*(?:#.*)?$", line)
        if not match:
            continue
        inline = match.group(1)
        if inline.startswith("["):
            return [s.strip().strip("'\"") for s in inline.strip("[]").split(",") if s.strip()]
        items: list[str] = []
        mapping: dict[int, str] = {}
        for follow in lines[i + 1 :]:
            if not follow.strip() or follow.lstrip().startswith("#"):
                continue
            if not follow.startswith((" ", "\t", "-")):
                break
            entry = follow.strip()
            if entry.startswith("-"):
                items.append(entry[1:].strip().strip("'\""))
            elif ":" in entry:
                key, _, value = entry.partition(":")
                mapping[int(key.strip())] = value.strip().strip("'\"")
        return mapping or items
    return None


def _yolo_classes(root: Path) -> list[str]:
    for yaml_path in (root / "data.yaml", root / "dataset.yaml"):
        if not yaml_path.is_file():
            continue
        text = yaml_path.read_text(encoding="utf-8")
        try:
            import yaml

            names = (yaml.safe_load(text) or {}).get("names")
        except ImportError:
            names = _simple_yaml_names(text)
        except Exception as e:  # noqa: BLE001 - any YAML error is a malformed file
            raise AnnotationError(f"{yaml_path}: malformed YAML: {e}") from None
        if isinstance(names, dict):
            try:
                return [str(names[i]) for i in range(len(names))]
            except KeyError:
                raise AnnotationError(f"{yaml_path}: names: expected ids 0..{len(names) - 1}") from None
        if isinstance(names, list) and names:
            return [str(n) for n in names]
        raise AnnotationError(f"{yaml_path}: names: expected a list of class names")
    for classes_path in (root / "classes.txt", root / "labels" / "classes.txt"):
        if classes_path.is_file():
            return [line.strip() for line in classes_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise AnnotationError(f"{root}: no class names: expected data.yaml (names: [...]) or classes.txt")


def _yolo_image_dir(root: Path, split: str | None) -> Path:
    candidates = [root / "images" / split, root / split / "images", root / split] if split else [root / "images", root]
    for folder in candidates:
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
            return folder
    raise AnnotationError(f"{root}: no image folder; looked in {', '.join(str(c) for c in candidates)}")


def _yolo_label_path(image: Path, root: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.relative_to(root).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return (root / Path(*parts)).with_suffix(".txt")


def _yolo_objects(label_path: Path, classes: list[str], size: tuple[int, int]) -> list[dict]:
    width, height = size
    objects = []
    for number, line in enumerate(label_path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{number}"
        try:
            class_id = int(fields[0])
        except ValueError:
            raise AnnotationError(f"{where}: class: expected an integer class id, got {fields[0]!r}") from None
        if not 0 <= class_id < len(classes):
            raise AnnotationError(f"{where}: class: id {class_id} is not in 0..{len(classes) - 1}")
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise AnnotationError(f"{where}: coordinates: expected numbers, got {' '.join(fields[1:])!r}") from None
        if len(values) == 4:
            names = ("cx", "cy", "w", "h")
        elif len(values) >= 6 and len(values) % 2 == 0:
            names = tuple(f"{'xy'[i % 2]}{i // 2 + 1}" for i in range(len(values)))
        else:
            raise AnnotationError(
                f"{where}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', got {len(fields)} fields"
            )
        for name, value in zip(names, values):
            if not (math.isfinite(value) and -0.01 <= value <= 1.01):
                raise AnnotationError(f"{where}: {name}: {value} is not a coordinate normalised to [0, 1]")
        values = [min(max(v, 0.0), 1.0) for v in values]
        obj: dict[str, Any] = {"id": len(objects), "category": classes[class_id]}
        if len(values) == 4:
            cx, cy, w, h = values
            obj["bbox"] = [
                max(cx - w / 2, 0.0) * width,
                max(cy - h / 2, 0.0) * height,
                min(cx + w / 2, 1.0) * width,
                min(cy + h / 2, 1.0) * height,
            ]
        else:
            polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]
            obj["polygon"], obj["bbox"] = polygon, _bounds(polygon)
        objects.append(obj)
    return objects


def read_yolo(
    root: str | os.PathLike,
    split: str | None = None,
    tasks: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[Example]:
    """Examples from a YOLO detection folder: images under ``images/`` (``images/SPLIT``,
    ``SPLIT/images`` with ``split``), labels at the same place under ``labels/`` with a ``.txt``
    suffix (lines ``class cx cy w h`` normalised, or ``class x1 y1 x2 y2 ...`` polygons), class names
    from ``data.yaml`` (``names``) or ``classes.txt``. ``tasks``: as :func:`read_coco`."""
    root = Path(root)
    tasks = _tasks(tasks, DETECTION_TASKS, ("<OD>",), "yolo")
    classes = _yolo_classes(root)
    for i, name in enumerate(classes):
        _text(f"{root}: class {i}", "name", name)
    folder = _yolo_image_dir(root, split)
    examples, unlabelled, empty = [], [], []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        label_path = _yolo_label_path(image, root)
        if not label_path.is_file():
            unlabelled.append(image.name)
            continue
        size = image_size(image)
        objects = _yolo_objects(label_path, classes, size)
        if not objects:
            empty.append(image.name)
            continue
        examples.extend(_examples(_record(image, size, objects=objects), tasks, str(label_path)))
    if unlabelled:
        _note(notes, f"{folder}: {len(unlabelled)} images without a label file give no samples", unlabelled)
    if empty:
        _note(notes, f"{folder}: {len(empty)} images with an empty label file give no samples", empty)
    if not examples:
        raise AnnotationError(f"{root}: no labelled images found under {folder}")
    return examples


# --------------------------------------------------------------------------------------------------
# JSON lines: image, prefix, suffix
# --------------------------------------------------------------------------------------------------

_TASK_TOKEN = re.compile("|".join(re.escape(token) for token in TASKS))


def read_jsonl(path: str | os.PathLike, images: str | os.PathLike | None = None) -> list[Example]:
    """Examples from JSON lines ``{"image": ..., "prefix": ..., "suffix": ...}`` (the layout other
    Florence-2 fine-tuning tools use). The prefix is a task token (``"<OD>"``), a task token followed
    by its input (``"<CAPTION_TO_PHRASE_GROUNDING>a red car"``), or a free prompt; task tokens are
    expanded as the reference processor does. The suffix is the target as the model should answer,
    e.g. ``"car<loc_52><loc_333><loc_932><loc_774>"``; location tokens must lie in 0..999."""
    path = Path(path)
    resolver = _Images(Path(images) if images is not None else path.parent)
    examples = []
    for where, item in _json_lines(path):
        image = resolver.path(where, _require(where, item, "image", str))
        if not image.is_file():
            raise AnnotationError(f"{where}: image: file {image} not found")
        prefix = _require(where, item, "prefix", str)
        suffix = _require(where, item, "suffix", str)
        try:
            prompt = construct_prompt(prefix.strip())
        except TaskError as e:
            raise AnnotationError(f"{where}: prefix: {e}") from None
        if not prompt.strip():
            raise AnnotationError(f"{where}: prefix: empty prompt")
        for name, text in (("prefix", prefix), ("suffix", suffix)):
            bad = [b for b in parse_loc_tokens(text) if b >= NUM_BINS]
            if bad:
                limits = f"<loc_0> to <loc_{NUM_BINS - 1}>"
                raise AnnotationError(f"{where}: {name}: location tokens go from {limits}, got <loc_{bad[0]}>")
        token = _TASK_TOKEN.search(prefix)
        examples.append(Example(str(image), prompt, suffix.strip(), token.group(0) if token else None, where))
    if not examples:
        raise AnnotationError(f"{path}: no examples")
    return examples


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
_CAPTION_KEYS = {"<CAPTION>": "brief", "<DETAILED_CAPTION>": "detailed", "<MORE_DETAILED_CAPTION>": "more_detailed"}
_IMAGE_COLUMNS = ("image", "file_name", "filename", "file", "path")
_CAPTION_COLUMNS = ("caption", "text")


def _caption_examples(image: Path, size: tuple[int, int], caption: str, tasks: Sequence[str], where: str):
    record = _record(image, size, captions={_CAPTION_KEYS[t]: caption for t in tasks})
    return _examples(record, tasks, where)


def _column(where: str, header: Sequence[str], names: Sequence[str], what: str) -> str:
    for name in names:
        if name in header:
            return name
    raise AnnotationError(f"{where}: no {what} column; expected one of {', '.join(names)}, found {list(header)}")


def read_captions(
    path: str | os.PathLike,
    images: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[Example]:
    """Caption examples from a folder of images with same-named ``.txt`` files (``a.jpg`` +
    ``a.txt``), a CSV file with a header (an ``image``/``file_name`` column and a ``caption``/``text``
    column), or JSON lines ``{"image": ..., "caption": ...}``. Each caption answers every task of
    ``tasks`` (:data:`CAPTION_TASKS`, default ``<CAPTION>``)."""
    path = Path(path)
    tasks = _tasks(tasks, CAPTION_TASKS, ("<CAPTION>",), "captions")
    examples: list[Example] = []
    if path.is_dir():
        missing = []
        for image in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            text_path = image.with_suffix(".txt")
            if not text_path.is_file():
                missing.append(image.name)
                continue
            caption = " ".join(text_path.read_text(encoding="utf-8").split())
            if not caption:
                raise AnnotationError(f"{text_path}:1: caption: empty caption")
            examples.extend(_caption_examples(image, image_size(image), caption, tasks, str(text_path)))
        if missing:
            _note(notes, f"{path}: {len(missing)} images without a .txt caption give no samples", missing)
        if not examples:
            raise AnnotationError(f"{path}: no image with a same-named .txt caption file")
        return examples
    resolver = _Images(Path(images) if images is not None else path.parent)
    if path.suffix.lower() == ".csv":
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise AnnotationError(f"{path}: file not found") from None
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        image_key = _column(f"{path}:1", header, _IMAGE_COLUMNS, "image")
        caption_key = _column(f"{path}:1", header, _CAPTION_COLUMNS, "caption")
        rows = ((f"{path}:{reader.line_num}", row) for row in reader)
    else:
        rows = ((where, item) for where, item in _records_of(path))
        image_key, caption_key = "image", None
    for where, row in rows:
        if not isinstance(row, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {row!r}")
        key = caption_key or next((k for k in _CAPTION_COLUMNS if k in row), "caption")
        image = resolver.path(where, row.get(image_key), image_key)
        caption = row.get(key)
        if not isinstance(caption, str) or not caption.strip():
            raise AnnotationError(f"{where}: {key}: expected a non-empty caption, got {caption!r}")
        size = resolver.size(where, image)
        examples.extend(_caption_examples(image, size, " ".join(caption.split()), tasks, where))
    if not examples:
        raise AnnotationError(f"{path}: no captions")
    return examples


# --------------------------------------------------------------------------------------------------
# Referring expressions
# --------------------------------------------------------------------------------------------------

REFERRING_TASKS = (
    "<CAPTION_TO_PHRASE_GROUNDING>",
    "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<OPEN_VOCABULARY_DETECTION>",
    "<REGION_TO_SEGMENTATION>",
    "<REGION_TO_DESCRIPTION>",
)
_REFERRING_DEFAULT = ("<CAPTION_TO_PHRASE_GROUNDING>", "<REFERRING_EXPRESSION_SEGMENTATION>")


def _expression_record(image: Path, size: tuple[int, int], expression: str, bbox, polygon) -> dict:
    """One expression as a record: the object is named by it (category, description, referring
    expression) and the caption is the expression, one phrase grounding it whole."""
    obj = {"id": 0, "category": expression, "brief": expression, "referring": expression, "bbox": bbox}
    if polygon is not None:
        obj["polygon"] = polygon
    phrase = {"phrase": expression, "start": 0, "end": len(expression), "object_ids": [0]}
    return _record(image, size, objects=[obj], captions={"brief": expression}, phrases=[phrase])


def _expression_examples(
    image: Path, size: tuple[int, int], expression: str, bbox, polygon, tasks, where, counts: dict
) -> list[Example]:
    record = _expression_record(image, size, expression, bbox, polygon)
    examples = _examples(record, tasks, where)
    if polygon is None and any(t in tasks for t in ("<REFERRING_EXPRESSION_SEGMENTATION>", "<REGION_TO_SEGMENTATION>")):
        counts["no_polygon"] = counts.get("no_polygon", 0) + 1
    if "<CAPTION_TO_PHRASE_GROUNDING>" in tasks and not any(
        e.task == "<CAPTION_TO_PHRASE_GROUNDING>" for e in examples
    ):
        counts["banned"] = counts.get("banned", 0) + 1  # "it", "this", ...: the grounding parser drops them
    return examples


def _referring_notes(notes, path, counts) -> None:
    if counts.get("no_polygon"):
        _note(notes, f"{path}: {counts['no_polygon']} expressions without a polygon give no segmentation samples")
    if counts.get("banned"):
        _note(notes, f"{path}: {counts['banned']} expressions the grounding parser ignores ('it', 'this', ...) skipped")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings and numbers only (RefCOCO's refs(*).p); never code."""

    def find_class(self, module: str, name: str) -> Any:
        raise AnnotationError(f"refs pickle refers to {module}.{name}; only plain data is accepted")


def _read_refs(path: Path) -> list[tuple[str, Any]]:
    if path.suffix.lower() in (".p", ".pkl", ".pickle"):
        try:
            with open(path, "rb") as f:
                refs = _PlainUnpickler(f, encoding="latin1").load()
        except FileNotFoundError:
            raise AnnotationError(f"{path}: file not found") from None
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise AnnotationError(f"{path}: cannot read the refs pickle: {e}") from None
        if not isinstance(refs, list):
            raise AnnotationError(f"{path}: expected a list of refs")
        return [(f"{path}: refs[{i}]", ref) for i, ref in enumerate(refs)]
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        refs = data.get("refs") if isinstance(data, dict) else data
        if not isinstance(refs, list):
            raise AnnotationError(f"{path}: expected a JSON list of refs (or an object with 'refs')")
        return [(f"{path}: refs[{i}]", ref) for i, ref in enumerate(refs)]
    return list(_json_lines(path))


def read_refcoco(
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    images: str | os.PathLike | None = None,
    split: str | None = None,
    tasks: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[Example]:
    """Referring-expression examples from RefCOCO/RefCOCO+/RefCOCOg: ``refs`` (``refs(unc).p`` as
    released, read as plain data only, or the same records as JSON/JSON lines: ``ann_id``,
    ``image_id``, ``split``, ``sentences`` with ``sent``) and the COCO ``instances.json`` they point
    into (boxes, polygons, file names). One sample per sentence and task: ``tasks`` of
    :data:`REFERRING_TASKS`, default grounding and segmentation. ``split``: keep refs of that split."""
    refs_path, instances_path = Path(refs), Path(instances)
    tasks = _tasks(tasks, REFERRING_TASKS, _REFERRING_DEFAULT, "refcoco")
    _, entries, anns = _coco_index(instances_path, _load_json(instances_path))
    by_id = {}
    for where, ann in anns:
        if isinstance(ann.get("id"), int):
            by_id[ann["id"]] = (where, ann)
    resolver = _Images(Path(images) if images is not None else instances_path.parent)
    examples: list[Example] = []
    counts: dict[str, int] = {}
    kept = 0
    for where, ref in _read_refs(refs_path):
        if split is not None and _require(where, ref, "split", str) != split:
            continue
        kept += 1
        ann_id = _require(where, ref, "ann_id", int)
        if ann_id not in by_id:
            raise AnnotationError(f"{where}: ann_id: {instances_path} has no annotation {ann_id}")
        ann_where, ann = by_id[ann_id]
        image_id = ann["image_id"]
        if ref.get("image_id", image_id) != image_id:
            raise AnnotationError(f"{where}: image_id: {ref['image_id']} but annotation {ann_id} is on {image_id}")
        image, size = _coco_image(f"{instances_path}: image id {image_id}", entries[image_id], resolver, True)
        x, y, w, h = _numbers(ann_where, "bbox", _require(ann_where, ann, "bbox", list), 4)
        bbox = _inside(ann_where, "bbox", [x, y, x + w, y + h], size)
        polygon = _largest(_coco_polygons(ann_where, ann.get("segmentation"), size))
        sentences = _require(where, ref, "sentences", list)
        for j, sentence in enumerate(sentences):
            key = "sent" if isinstance(sentence, dict) and "sent" in sentence else "raw"
            expression = _text(
                f"{where}: sentences[{j}]", key, _require(f"{where}: sentences[{j}]", sentence, key, str)
            )
            examples.extend(_expression_examples(image, size, expression, bbox, polygon, tasks, where, counts))
    if split is not None and not kept:
        raise AnnotationError(f"{refs_path}: no refs of split {split!r}")
    _referring_notes(notes, refs_path, counts)
    return examples


def read_refexp(
    path: str | os.PathLike,
    images: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[Example]:
    """Referring-expression examples from a simple form: JSON lines (or a JSON list) of
    ``{"image": ..., "expression": "the red car" (or "expressions": [...]), "bbox": [x0, y0, x1, y1],
    "polygon": [x0, y0, x1, y1, ...] (or a list of polygons; optional)}``, pixels. Without ``bbox``
    the polygon's bounds are the box. ``tasks``: as :func:`read_refcoco`."""
    path = Path(path)
    tasks = _tasks(tasks, REFERRING_TASKS, _REFERRING_DEFAULT, "refexp")
    resolver = _Images(Path(images) if images is not None else path.parent)
    examples: list[Example] = []
    counts: dict[str, int] = {}
    for where, item in _records_of(path):
        image = resolver.path(where, _require(where, item, "image", str))
        size = resolver.size(where, image)
        if "expressions" in item:
            expressions = _require(where, item, "expressions", list)
            if not expressions:
                raise AnnotationError(f"{where}: expressions: empty list")
            texts = [_text(where, f"expressions[{k}]", e) for k, e in enumerate(expressions)]
        else:
            texts = [_text(where, "expression", _require(where, item, "expression", str))]
        polygon = None
        if item.get("polygon") is not None:
            raw = item["polygon"]
            nested = isinstance(raw, list) and raw and isinstance(raw[0], list)
            polygons = [
                _inside(where, "polygon", _numbers(where, "polygon", p), size) for p in (raw if nested else [raw])
            ]
            polygon = _largest(polygons)
        if item.get("bbox") is not None:
            bbox = _xyxy(where, "bbox", item["bbox"], size)
        elif polygon is not None:
            bbox = _bounds(polygon)
        else:
            raise AnnotationError(f"{where}: missing field 'bbox' (or 'polygon')")
        for text in texts:
            examples.extend(_expression_examples(image, size, text, bbox, polygon, tasks, where, counts))
    _referring_notes(notes, path, counts)
    if not examples:
        raise AnnotationError(f"{path}: no examples")
    return examples


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------

OCR_TASKS = ("<OCR_WITH_REGION>", "<OCR>", "<REGION_TO_OCR>")


def read_ocr(
    path: str | os.PathLike,
    images: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[Example]:
    """OCR examples from JSON lines (or a JSON list) of ``{"image": ..., "texts": [{"text": "EXIT",
    "quad": [x1, y1, x2, y2, x3, y3, x4, y4]}, ...]}``: quads clockwise from the top-left corner, in
    pixels; a text may give ``"bbox": [x0, y0, x1, y1]`` instead of a quad. Texts are read in
    reading order (top to bottom, then left to right). ``tasks``: of :data:`OCR_TASKS`, default
    ``<OCR_WITH_REGION>`` and ``<OCR>``."""
    path = Path(path)
    tasks = _tasks(tasks, OCR_TASKS, ("<OCR_WITH_REGION>", "<OCR>"), "ocr")
    resolver = _Images(Path(images) if images is not None else path.parent)
    examples: list[Example] = []
    empty = []
    for where, item in _records_of(path):
        image = resolver.path(where, _require(where, item, "image", str))
        size = resolver.size(where, image)
        texts = []
        for k, entry in enumerate(_require(where, item, "texts", list)):
            at = f"{where}: texts[{k}]"
            text = _require(at, entry, "text", str)
            if not text.strip():
                raise AnnotationError(f"{at}: text: empty text")
            if "<" in text:
                raise AnnotationError(f"{at}: text: {text!r} holds '<', which the result parsers cannot read back")
            if entry.get("quad") is not None:
                quad = _inside(at, "quad", _numbers(at, "quad", entry["quad"], 8), size)
                bbox = _bounds(quad)
            elif entry.get("bbox") is not None:
                x0, y0, x1, y1 = bbox = _xyxy(at, "bbox", entry["bbox"], size)
                quad = [x0, y0, x1, y0, x1, y1, x0, y1]
            else:
                raise AnnotationError(f"{at}: missing field 'quad' (or 'bbox')")
            texts.append({"text": text, "quad": quad, "bbox": bbox})
        if not texts:
            empty.append(str(image.name))
            continue
        examples.extend(_examples(_record(image, size, texts=texts), tasks, where))
    if empty:
        _note(notes, f"{path}: {len(empty)} images without text give no samples", empty)
    if not examples:
        raise AnnotationError(f"{path}: no examples")
    return examples


# --------------------------------------------------------------------------------------------------
# Synthetic splits
# --------------------------------------------------------------------------------------------------


def read_synthetic(
    folder: str | os.PathLike, tasks: Sequence[str] | None = None, notes: list[str] | None = None
) -> list[Example]:
    """Examples from a synthetic split (:func:`florence2.data.write_split`): every sample of
    ``tasks`` (any task; default ``<OD>``) for every record."""
    from florence2.data.synthetic import read_split

    folder = Path(folder)
    tasks = _tasks(tasks, tuple(TASKS), ("<OD>",), "synthetic")
    examples = []
    for number, record in enumerate(read_split(folder), start=1):
        record = {**record, "image": str(folder / record["image"])}
        examples.extend(_examples(record, tasks, f"{folder / 'annotations.jsonl'}:{number}"))
    return examples


# --------------------------------------------------------------------------------------------------
# Registry, specs, detection
# --------------------------------------------------------------------------------------------------

Reader = Callable[[Sequence[Path], Sequence[str] | None, Mapping[str, str], "list[str] | None"], list[Example]]


@dataclass(frozen=True)
class DataFormat:
    """One dataset layout: its name, how many paths it takes and what they are, its tasks."""

    name: str
    usage: str  # the paths, e.g. "ANNOTATIONS.json[:IMAGES]"
    min_paths: int
    max_paths: int
    tasks: tuple[str, ...]  # the tasks it can give; empty: any (the data says)
    default_tasks: tuple[str, ...]
    options: tuple[str, ...]  # options other than tasks and weight
    description: str
    read: Reader


def _one_or_two(fn: Callable[..., list[Example]]) -> Reader:
    return lambda paths, tasks, options, notes: fn(paths[0], paths[1] if len(paths) > 1 else None, tasks, notes)


FORMATS: dict[str, DataFormat] = {
    f.name: f
    for f in (
        DataFormat(
            "coco", "ANNOTATIONS.json[:IMAGES]", 1, 2, DETECTION_TASKS, ("<OD>",), (),
            "COCO detection JSON", _one_or_two(read_coco),
        ),
        DataFormat(
            "yolo", "DIR", 1, 1, DETECTION_TASKS, ("<OD>",), ("split",),
            "YOLO folder: images/, labels/*.txt, data.yaml or classes.txt",
            lambda paths, tasks, options, notes: read_yolo(paths[0], options.get("split"), tasks, notes),
        ),
        DataFormat(
            "jsonl", "FILE.jsonl[:IMAGES]", 1, 2, (), (), (),
            "JSON lines of image, prefix, suffix",
            lambda paths, tasks, options, notes: read_jsonl(paths[0], paths[1] if len(paths) > 1 else None),
        ),
        DataFormat(
            "captions", "DIR | FILE.csv[:IMAGES] | FILE.jsonl[:IMAGES]", 1, 2, CAPTION_TASKS, ("<CAPTION>",), (),
            "images with same-named .txt captions, or a CSV / JSON lines of image, caption",
            _one_or_two(read_captions),
        ),
        DataFormat(
            "refcoco", "REFS.p:INSTANCES.json[:IMAGES]", 2, 3, REFERRING_TASKS, _REFERRING_DEFAULT, ("split",),
            "RefCOCO-style refs + COCO instances",
            lambda paths, tasks, options, notes: read_refcoco(
                paths[0], paths[1], paths[2] if len(paths) > 2 else None, options.get("split"), tasks, notes
            ),
        ),
        DataFormat(
            "refexp", "FILE.jsonl[:IMAGES]", 1, 2, REFERRING_TASKS, _REFERRING_DEFAULT, (),
            "JSON lines of image, expression, bbox, polygon",
            _one_or_two(read_refexp),
        ),
        DataFormat(
            "ocr", "FILE.jsonl[:IMAGES]", 1, 2, OCR_TASKS, ("<OCR_WITH_REGION>", "<OCR>"), (),
            "JSON lines of image, texts (text, quad)",
            _one_or_two(read_ocr),
        ),
        DataFormat(
            "synthetic", "DIR", 1, 1, tuple(TASKS), ("<OD>",), (),
            "a synthetic split written by florence2.data.write_split",
            lambda paths, tasks, options, notes: read_synthetic(paths[0], tasks, notes),
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class DataSpec:
    """A dataset on the command line: ``FORMAT:PATH[:PATH...][@OPTION=VALUE,...]``."""

    format: str
    paths: tuple[str, ...]
    tasks: tuple[str, ...] | None = None
    weight: float = 1.0
    options: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.format}:{':'.join(self.paths)}"


_OPTIONS = re.compile(r"[A-Za-z_]+=[^,@]*(?:,[A-Za-z_]+=[^,@]*)*")


def parse_data_spec(text: str, default_format: str | None = None) -> DataSpec:
    """Parse ``FORMAT:PATH[:PATH...][@OPTION=VALUE,...]``.

    Without a known ``FORMAT:`` prefix the paths take ``default_format`` or, without one, the format
    :func:`detect_format` recognises. Options: ``tasks=OD+OPEN_VOCABULARY_DETECTION`` (task names
    joined by ``+``), ``weight=2``, and the format's own (``split=train``).

    Raises:
        AnnotationError: unknown format or option, wrong number of paths, bad weight or task.
    """
    body, options = text, {}
    head, sep, tail = text.rpartition("@")
    if sep and _OPTIONS.fullmatch(tail):
        body = head
        for part in tail.split(","):
            key, _, value = part.partition("=")
            options[key.strip().lower()] = value.strip()
    name, colon, rest = body.partition(":")
    if colon and name.lower() in FORMATS:
        fmt, paths = name.lower(), tuple(rest.split(":"))
    else:
        paths = tuple(body.split(":"))
        fmt = (default_format or detect_format(paths)).lower()
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown data format {fmt!r}; formats: {', '.join(FORMATS)}")
    spec_format = FORMATS[fmt]
    paths = tuple(p for p in paths if p)
    if not spec_format.min_paths <= len(paths) <= spec_format.max_paths:
        raise AnnotationError(f"{text}: the {fmt} format takes {spec_format.usage}")
    known = {"tasks", "weight", *spec_format.options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AnnotationError(f"{text}: unknown option {unknown[0]!r} for {fmt}; options: {', '.join(sorted(known))}")
    tasks = None
    if options.get("tasks"):
        try:
            tasks = tuple(get_task(t).token for t in options.pop("tasks").split("+") if t.strip())
        except TaskError as e:
            raise AnnotationError(f"{text}: tasks: {e}") from None
    weight = 1.0
    if "weight" in options:
        try:
            weight = float(options.pop("weight"))
        except ValueError:
            weight = -1.0
        if not (math.isfinite(weight) and weight > 0):
            raise AnnotationError(f"{text}: weight: expected a positive number")
    return DataSpec(fmt, paths, tasks, weight, options)


def _peek_jsonl(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    item = json.loads(line)
                    return item if isinstance(item, dict) else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return None


def detect_format(paths: Sequence[str]) -> str:
    """The format of ``paths`` (see the module table), recognised from file names and first records.

    Raises:
        AnnotationError: nothing fits; the message says how to name the format.
    """
    first = Path(paths[0])
    hint = f"write FORMAT:{':'.join(paths)} with FORMAT one of {', '.join(FORMATS)}"
    if first.is_dir():
        if (first / "annotations.jsonl").is_file() and (first / "world.json").is_file():
            return "synthetic"
        if any((first / n).is_file() for n in ("data.yaml", "dataset.yaml", "classes.txt")) or (
            (first / "images").is_dir() and (first / "labels").is_dir()
        ):
            return "yolo"
        if any(p.suffix.lower() == ".txt" for p in first.iterdir()):
            return "captions"
        raise AnnotationError(f"cannot tell the format of folder {first}; {hint}")
    suffix = first.suffix.lower()
    if suffix in (".p", ".pkl", ".pickle"):
        return "refcoco"
    if suffix == ".csv":
        return "captions"
    if suffix == ".json":
        if len(paths) >= 2 and Path(paths[1]).suffix.lower() == ".json":
            return "refcoco"  # refs.json:instances.json
        data = _load_json(first)
        if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
            return "coco"
        keys = set(data[0]) if isinstance(data, list) and data and isinstance(data[0], dict) else set()
        if keys & {"expression", "expressions"}:
            return "refexp"
        if "texts" in keys:
            return "ocr"
        if keys & set(_CAPTION_COLUMNS):
            return "captions"
    if suffix in (".jsonl", ".ndjson"):
        keys = set(_peek_jsonl(first) or {})
        if {"prefix", "suffix"} <= keys:
            return "jsonl"
        if "texts" in keys:
            return "ocr"
        if keys & {"expression", "expressions"}:
            return "refexp"
        if keys & set(_CAPTION_COLUMNS):
            return "captions"
    raise AnnotationError(f"cannot tell the format of {first}; {hint}")


def load_data(
    spec: DataSpec | str, tasks: Sequence[str] | None = None, notes: list[str] | None = None
) -> list[Example]:
    """The examples of one dataset spec. ``tasks``: used when the spec names none (the format's
    default otherwise); tasks the format cannot give are an error."""
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    fmt = FORMATS[spec.format]
    chosen = spec.tasks or (tuple(tasks) if tasks else None)
    if chosen and not fmt.tasks:
        raise TaskError(f"{spec}: the {fmt.name} format takes its tasks from the data; drop the tasks option")
    examples = fmt.read([Path(p) for p in spec.paths], chosen, spec.options, notes)
    if not examples:
        raise AnnotationError(f"{spec}: no examples for tasks {', '.join(chosen or fmt.default_tasks)}")
    return examples


# --------------------------------------------------------------------------------------------------
# Mixing and held-out splits
# --------------------------------------------------------------------------------------------------


def split_held_out(examples: Sequence[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: about ``fraction`` of the *images* are held out, all their examples
    with them (no image is on both sides). The choice hashes the image's file name with ``seed``, so
    it is the same in every run and process, wherever the data lies, and does not move when other
    images are added. With a positive fraction and two images or more, at least one image is held
    out and at least one kept."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    keys = {}
    for example in examples:
        if example.image not in keys:
            digest = hashlib.sha256(f"{seed}:{Path(example.image).name}".encode()).digest()
            keys[example.image] = int.from_bytes(digest[:8], "big") / 2**64
    held_images = {image for image, key in keys.items() if key < fraction}
    if fraction > 0 and len(keys) >= 2:
        if not held_images:
            held_images = {min(keys, key=keys.get)}
        elif len(held_images) == len(keys):
            held_images.remove(max(keys, key=keys.get))
    train = [e for e in examples if e.image not in held_images]
    return train, [e for e in examples if e.image in held_images]


class Mixture:
    """An endless, shuffled stream of examples drawn with weights, epoch after epoch.

    ``weights[i]`` is how many times example ``i`` is drawn per epoch on average (1: once; 2: twice;
    0.5: every other epoch); the fractional part is drawn at random per epoch. ``mixture[k]`` is a
    pure function of ``(seed, k)``, which is what the trainer's exact resume and DDP need.
    """

    def __init__(self, examples: Sequence[Any], weights: Sequence[float] | None = None, seed: int = 0) -> None:
        if not examples:
            raise ValueError("a mixture needs at least one example")
        self.examples = list(examples)
        w = np.ones(len(self.examples)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.examples),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("mixture weights must be finite, >= 0, one per example, and not all 0")
        self.weights = w
        self.seed = seed
        self._starts = [0]  # global index of the first item of each epoch computed so far
        self._epochs: list[np.ndarray] = []

    def epoch(self, e: int) -> np.ndarray:
        """Indices of epoch ``e`` in order."""
        while len(self._epochs) <= e:
            n = len(self._epochs)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, n]))
            whole = np.floor(self.weights).astype(np.int64)
            counts = whole + (rng.random(len(self.weights)) < self.weights - whole)
            order = rng.permutation(np.repeat(np.arange(len(self.weights)), counts))
            self._epochs.append(order)
            self._starts.append(self._starts[-1] + len(order))
        return self._epochs[e]

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            raise IndexError("a mixture is endless: indices are >= 0")
        while self._starts[-1] <= index:
            self.epoch(len(self._epochs))
        e = bisect.bisect_right(self._starts, index) - 1
        return self.examples[int(self._epochs[e][index - self._starts[e]])]

    @property
    def epoch_length(self) -> float:
        """Expected items per epoch."""
        return float(self.weights.sum())
