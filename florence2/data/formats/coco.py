"""COCO detection files (``instances_*.json``): one parse, read into fine-tuning examples
(:func:`read_coco`) or a detection benchmark (:func:`read_coco_detection`), and written from
annotation records (:func:`write_coco`).

:func:`parse_coco` checks what both readers rely on: the top-level ``images``, ``annotations`` and
``categories`` lists; ``categories[i]`` (``id`` unique, ``name``); ``images[i]`` (``id`` unique,
``file_name``, ``width`` and ``height`` positive integers when given); ``annotations[i]``
(``image_id`` and ``category_id`` that exist, ``bbox`` ``[x, y, width, height]``, ``iscrowd`` 0 or 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from florence2.data.formats.records import BenchmarkSample, Example, choose_tasks, examples, note, record
from florence2.data.formats.validate import (
    Images,
    field,
    image_file,
    image_folder,
    inside,
    is_number,
    largest,
    load_json,
    numbers,
    polygon_area,
    text,
    top_list,
    write_json,
    xywh,
)
from florence2.errors import AnnotationError

DETECTION_TASKS = (
    "<OD>",
    "<OPEN_VOCABULARY_DETECTION>",
    "<REGION_PROPOSAL>",
    "<REGION_TO_CATEGORY>",
    "<REGION_TO_SEGMENTATION>",
)


class CocoAnnotation(NamedTuple):
    """One checked annotation: ``where`` (``"file: annotations[i]"``), the entry, its box as XYXY."""

    where: str
    entry: dict
    box: list[float]


@dataclass(frozen=True)
class CocoFile:
    """A checked COCO detection file.

    Attributes:
        path: the file.
        data: the JSON document.
        categories: category id -> name, in file order.
        images: image id -> its entry, in file order.
        image_where: image id -> ``"file: images[i]"``.
        annotations: every annotation, in file order.
    """

    path: Path
    data: dict[str, Any]
    categories: dict[int, str]
    images: dict[int, dict]
    image_where: dict[int, str]
    annotations: list[CocoAnnotation]


def parse_coco(path: str | os.PathLike) -> CocoFile:
    """Read and check a COCO detection file (see the module docstring)."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, Mapping):
        raise AnnotationError(f"{path}: expected a COCO JSON object (images, annotations, categories)")
    categories: dict[int, str] = {}
    for k, category in enumerate(top_list(path, data, "categories")):
        where = f"{path}: categories[{k}]"
        category_id = field(where, category, "id", int)
        if category_id in categories:
            raise AnnotationError(f"{where}.id: duplicate category id {category_id}")
        categories[category_id] = field(where, category, "name", str)
    images: dict[int, dict] = {}
    image_where: dict[int, str] = {}
    for k, entry in enumerate(top_list(path, data, "images")):
        where = f"{path}: images[{k}]"
        image_id = field(where, entry, "id", int)
        if image_id in images:
            raise AnnotationError(f"{where}.id: duplicate image id {image_id}")
        field(where, entry, "file_name", str)
        for key in ("width", "height"):
            if key in entry and field(where, entry, key, int) <= 0:
                raise AnnotationError(f"{where}.{key}: expected a positive integer, got {entry[key]!r}")
        images[image_id] = entry
        image_where[image_id] = where
    annotations = []
    for k, entry in enumerate(top_list(path, data, "annotations")):
        where = f"{path}: annotations[{k}]"
        if field(where, entry, "image_id", int) not in images:
            raise AnnotationError(f"{where}.image_id: no image with id {entry['image_id']}")
        if field(where, entry, "category_id", int) not in categories:
            raise AnnotationError(f"{where}.category_id: no category with id {entry['category_id']}")
        box = xywh(f"{where}.bbox", field(where, entry, "bbox", list))
        if entry.get("iscrowd", 0) not in (0, 1):
            raise AnnotationError(f"{where}.iscrowd: expected 0 or 1, got {entry['iscrowd']!r}")
        annotations.append(CocoAnnotation(where, entry, box))
    return CocoFile(path, dict(data), categories, images, image_where, annotations)


def coco_polygons(at: str, segmentation: Any, size: tuple[int, int]) -> list[list[float]]:
    """COCO polygons (a list of flat lists) clipped to the image; RLE masks (a dict) give none."""
    if segmentation is None or isinstance(segmentation, dict):
        return []
    if not isinstance(segmentation, list):
        raise AnnotationError(f"{at}: expected a list of polygons or an RLE dict")
    return [inside(at, numbers(at, p), size) for p in segmentation if p]


def coco_image(where: str, entry: dict, images: Images, check_size: bool) -> tuple[Path, tuple[int, int]]:
    """Path and size of a COCO image entry; the declared size must be the file's."""
    path = images.path(f"{where}: file_name", entry["file_name"])
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


# --------------------------------------------------------------------------------------------------
# Fine-tuning examples
# --------------------------------------------------------------------------------------------------


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
    ``check_images``: open every image header (existence, size); off, declared sizes are trusted.

    Crowd annotations (``iscrowd: 1``) are left out; an object with several polygons keeps its
    largest one; images without objects give no sample.
    """
    path = Path(annotations)
    tasks = choose_tasks(tasks, DETECTION_TASKS, ("<OD>",), "coco")
    coco = parse_coco(path)
    names = {
        category_id: text(f"{path}: categories[{k}].name", name)
        for k, (category_id, name) in enumerate(coco.categories.items())
    }
    resolver = Images(Path(images) if images is not None else path.parent)
    sizes: dict[int, tuple[Path, tuple[int, int]]] = {}
    objects: dict[int, list[dict]] = {image_id: [] for image_id in coco.images}
    crowd = 0
    for where, ann, box in coco.annotations:
        image_id = ann["image_id"]
        if image_id not in sizes:
            sizes[image_id] = coco_image(f"{path}: image id {image_id}", coco.images[image_id], resolver, check_images)
        size = sizes[image_id][1]
        if ann.get("iscrowd"):
            crowd += 1
            continue
        obj = {
            "id": len(objects[image_id]),
            "category": names[ann["category_id"]],
            "bbox": inside(f"{where}.bbox", box, size),
        }
        polygon = largest(coco_polygons(f"{where}.segmentation", ann.get("segmentation"), size))
        if polygon is not None:
            obj["polygon"] = polygon
        objects[image_id].append(obj)
    if crowd:
        note(notes, f"{path}: {crowd} crowd annotations (iscrowd=1) left out")
    out, empty = [], []
    for image_id, entry in coco.images.items():
        if not objects[image_id]:
            empty.append(entry["file_name"])
            continue
        image_path, size = sizes[image_id]
        annotation = record(image_path, size, objects=objects[image_id])
        out.extend(examples(annotation, tasks, f"{path}: image id {image_id} ({entry['file_name']})"))
    if empty:
        note(notes, f"{path}: {len(empty)} images without annotations give no samples", empty)
    return out


# --------------------------------------------------------------------------------------------------
# Detection benchmark
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoDetectionData:
    """A COCO detection annotation file, checked, as a benchmark.

    Attributes:
        dataset: the ground truth as pycocotools reads it (``area`` and ``iscrowd`` filled in where
            the file leaves them out).
        samples: one per image, in file order; ``truth`` is None (the dataset is the truth).
        categories: category name -> id.
        path: the annotation file.
    """

    dataset: dict[str, Any]
    samples: list[BenchmarkSample]
    categories: dict[str, int]
    path: Path


def read_coco_detection(
    annotations: str | os.PathLike, images: str | os.PathLike, *, check_images: bool = True
) -> CocoDetectionData:
    """Read a COCO detection file (``instances_val2017.json``) and its image folder (``val2017/``).

    Besides :func:`parse_coco`'s checks, every image needs its ``width`` and ``height`` and (with
    ``check_images``) its file, and annotation ids must be unique and > 0 (COCOeval reads 0 as
    unmatched).
    """
    coco = parse_coco(annotations)
    image_dir = image_folder(images)
    samples, entries = [], []
    for image_id, entry in coco.images.items():
        where = coco.image_where[image_id]
        size = (field(where, entry, "width", int), field(where, entry, "height", int))
        name = entry["file_name"]
        file = image_file(image_dir, [name, Path(name).name], f"{where}.file_name", check_images)
        samples.append(BenchmarkSample(str(image_id), file, image_id=image_id, size=size))
        entries.append({**entry, "width": size[0], "height": size[1]})
    truth, annotation_ids = [], set()
    for where, ann, (x0, y0, x1, y1) in coco.annotations:
        annotation_id = field(where, ann, "id", int)
        if annotation_id <= 0 or annotation_id in annotation_ids:
            why = "ids must be > 0 (COCOeval reads 0 as unmatched)" if annotation_id <= 0 else "duplicate id"
            raise AnnotationError(f"{where}.id: {why}: {annotation_id}")
        annotation_ids.add(annotation_id)
        area = ann.get("area", (x1 - x0) * (y1 - y0))
        if not is_number(area):
            raise AnnotationError(f"{where}.area: expected a number, got {area!r}")
        truth.append({**ann, "iscrowd": int(ann.get("iscrowd", 0)), "area": float(area)})
    dataset = {
        "images": entries,
        "annotations": truth,
        "categories": [dict(c) for c in coco.data["categories"]],
    }
    categories = {name: category_id for category_id, name in coco.categories.items()}
    return CocoDetectionData(dataset, samples, categories, coco.path)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def annotation_id(image_index: int, object_index: int) -> int:
    """The annotation id :func:`coco_instances` gives object ``j`` of record ``k`` (both from 0)."""
    return 1000 * (image_index + 1) + object_index + 1


def coco_instances(
    records: Sequence[Mapping[str, Any]], categories: Sequence[str] | None = None, supercategory: str | None = None
) -> dict[str, Any]:
    """Annotation records (the schema of :mod:`florence2.data.samples`) as a COCO detection document.

    Record ``k`` is image id ``k + 1`` (``file_name`` its ``image``); object ``j`` of it is annotation
    :func:`annotation_id` with its box as XYWH and its polygon (when it has one) as the segmentation
    and the area. Category ids count from 1 in the order of ``categories``, then of any other
    category in order of appearance; each category has ``supercategory`` when it is given.
    """
    names = list(dict.fromkeys([*(categories or ()), *(o["category"] for r in records for o in r["objects"])]))
    category_ids = {name: k + 1 for k, name in enumerate(names)}
    images, annotations = [], []
    for k, item in enumerate(records):
        images.append({"id": k + 1, "file_name": item["image"], "width": item["width"], "height": item["height"]})
        for j, obj in enumerate(item["objects"]):
            x0, y0, x1, y1 = obj["bbox"]
            entry = {
                "id": annotation_id(k, j),
                "image_id": k + 1,
                "category_id": category_ids[obj["category"]],
                "bbox": [x0, y0, round(x1 - x0, 4), round(y1 - y0, 4)],
            }
            if obj.get("polygon"):
                entry["segmentation"] = [obj["polygon"]]
                entry["area"] = round(polygon_area(obj["polygon"]), 4)
            else:
                entry["area"] = round((x1 - x0) * (y1 - y0), 4)
            annotations.append({**entry, "iscrowd": 0})
    return {
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": name, **({"supercategory": supercategory} if supercategory else {})}
            for name, i in category_ids.items()
        ],
    }


def write_coco(
    records: Sequence[Mapping[str, Any]],
    path: Path,
    categories: Sequence[str] | None = None,
    supercategory: str | None = None,
) -> Path:
    """Write :func:`coco_instances` of ``records`` to the JSON file ``path``; returns it."""
    return write_json(Path(path), coco_instances(records, categories, supercategory))
