"""YOLO detection folders: ``images/`` (or ``images/SPLIT``, ``SPLIT/images``), labels at the same
place under ``labels/`` with a ``.txt`` suffix, class names from ``data.yaml`` or ``classes.txt``."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from florence2.data.formats.coco import DETECTION_TASKS
from florence2.data.formats.records import Example, choose_tasks, examples, note, record
from florence2.data.formats.validate import bounds, image_size, text
from florence2.errors import AnnotationError
from florence2.sources import find_images, is_image_file

# files whose presence marks a YOLO folder
YOLO_MARKERS = ("data.yaml", "dataset.yaml", "classes.txt")


def _simple_yaml_names(content: str) -> list[str] | dict[int, str] | None:
    """``names`` of a data.yaml without PyYAML: ``names: [a, b]``, a ``- a`` list or ``0: a`` lines."""
    lines = content.splitlines()
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
        content = yaml_path.read_text(encoding="utf-8")
        try:
            import yaml

            names = (yaml.safe_load(content) or {}).get("names")
        except ImportError:
            names = _simple_yaml_names(content)
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
        if folder.is_dir() and any(is_image_file(p) for p in folder.rglob("*")):
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
            obj["polygon"], obj["bbox"] = polygon, bounds(polygon)
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
    from ``data.yaml`` (``names``) or ``classes.txt``. ``tasks``: as :func:`~florence2.data.formats.read_coco`."""
    root = Path(root)
    tasks = choose_tasks(tasks, DETECTION_TASKS, ("<OD>",), "yolo")
    classes = _yolo_classes(root)
    for i, name in enumerate(classes):
        text(f"{root}: class {i}: name", name)
    folder = _yolo_image_dir(root, split)
    out, unlabelled, empty = [], [], []
    for image in find_images(folder):
        label_path = _yolo_label_path(image, root)
        if not label_path.is_file():
            unlabelled.append(image.name)
            continue
        size = image_size(image)
        objects = _yolo_objects(label_path, classes, size)
        if not objects:
            empty.append(image.name)
            continue
        out.extend(examples(record(image, size, objects=objects), tasks, str(label_path)))
    if unlabelled:
        note(notes, f"{folder}: {len(unlabelled)} images without a label file give no samples", unlabelled)
    if empty:
        note(notes, f"{folder}: {len(empty)} images with an empty label file give no samples", empty)
    if not out:
        raise AnnotationError(f"{root}: no labelled images found under {folder}")
    return out
