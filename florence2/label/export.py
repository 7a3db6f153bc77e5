"""Exports of a labeled dataset: its records written as COCO, YOLO, JSON lines, captions, Parquet,
Label Studio tasks or video tracks (MOTChallenge).

:func:`export_records` takes the records a :class:`~florence2.label.store.DatasetStore` yields
(``id``, ``source``, ``width``, ``height``, ``results``) and writes them into a new folder in one of
:data:`EXPORT_FORMATS` (a format is one writer function and one :class:`ExportFormat` entry there).

Images are ordered by id. With ``val_fraction`` they are split into ``train`` and ``val`` by a hash
of ``seed`` and the image id (:func:`florence2.data.formats.held_out_names`): the same records and
seed give the same split in any order, and adding images does not move the others. Without it every
image is in ``train``, and the files below that carry a split in their names have none.

Layouts (``NAME`` is ``ID[:16]`` and the image's suffix, unique in the export, an id that is no plain
file name standing for ``id-`` and its SHA-256; ``SPLIT`` is ``train`` or ``val``):

============  ====================================================================================
format        files
============  ====================================================================================
``coco``      ``annotations/instances.json`` (``instances_SPLIT.json`` when split), ``images/NAME``
``yolo``      ``data.yaml``, ``images/SPLIT/NAME``, ``labels/SPLIT/ID[:16].txt``
``jsonl``     ``labels.jsonl`` (``SPLIT.jsonl``), ``images/NAME``
``captions``  ``NAME``, ``ID[:16].txt`` and ``captions.jsonl`` at the top (in ``SPLIT/`` when split)
``parquet``   ``labels.parquet`` (``SPLIT.parquet``), ``images/NAME``
``mot``       ``SEQ.txt`` and ``SEQ/img1/FRAME.png`` per video, ``tracks.json``
``labelstudio`` ``tasks.json`` (``tasks_SPLIT.json``), ``label_config.xml``, ``images/NAME``
============  ====================================================================================

* ``coco``: one COCO detection file per split: ``images`` (ids from 1, ``file_name`` relative to
  ``images/``, ``width``, ``height``), ``annotations`` (``bbox`` as XYWH, ``area``, ``iscrowd`` 0,
  ``category_id``, ``score``, and ``segmentation`` where the task answers with polygons or quads),
  ``categories`` (every label of the export, sorted, ids from 1, the same in every split). With its
  ``score`` every annotation is also a detection result (``COCO.loadRes``). Read back for
  fine-tuning as ``coco:annotations/instances.json:images``.
* ``yolo``: ``class cx cy w h`` per box, normalised to [0, 1] and clipped; an image whose task found
  nothing has an empty label file (a background image). ``data.yaml`` names the classes (the
  sorted labels) and the folders; without a split ``val`` is the ``train`` folder.
* ``jsonl``: one line per image: ``id``, ``source``, ``width``, ``height``, ``image`` (the exported
  file, relative to the line's file; the original path with ``images="none"``), ``run`` where the
  record has one, ``results`` (the task results) and, at the top level, the record's keys of its
  results that are no task (``sequence_scores``, ``regions``). Fine-tuning reads it as
  ``labels:labels.jsonl`` (recognised without the prefix too).
* ``captions``: each image beside a same-named ``.txt`` holding its caption, and ``captions.jsonl``
  lines ``{"image": NAME, "caption": text}``: the layout of image-generation trainers, and of the
  ``captions`` format of :mod:`florence2.data.formats`.
* ``parquet`` (needs pyarrow): one row per image: ``id``, ``source`` (JSON), ``width``, ``height``,
  ``image``, ``results`` (JSON of the task results), ``extras`` (JSON of the other keys, or null),
  ``caption``, ``detailed_caption``, ``more_detailed_caption`` (the text, or null) and
  ``num_regions`` (boxes, quads and polygons over all tasks).
* ``labelstudio``: the regions as Label Studio pre-annotations, to review and correct there: one
  task per image, ``data.image`` ``/data/local-files/?d=images/NAME`` (Label Studio's local files,
  served with the export folder as ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) and
  ``data.florence2_id`` the image id; one prediction (``model_version`` ``florence2`` and the task)
  whose ``score`` is its lowest region score (so that sorting by it brings the least sure images
  first; absent without regions) and whose ``result`` holds a ``rectanglelabels`` region per box
  (``x``, ``y``, ``width``, ``height`` in percent of the image) or a ``polygonlabels`` one per
  polygon (``points`` in percent), each with its ``score``. ``label_config.xml``: the project's
  labeling interface naming every label (``RectangleLabels`` ``label`` and, where there are
  polygons, ``PolygonLabels`` ``polygon``).
* ``mot``: the boxes of each video's labeled frames linked into tracks
  (:func:`florence2.label.tracks.link_tracks`, ``track_iou``, ``track_gap``, ``track_by_label``), a
  file a video in the MOTChallenge text layout that tracking tools (TrackEval, motmetrics) read:
  ``frame,id,left,top,width,height,score,-1,-1,-1`` a box, ``frame`` the video's frame index + 1 and
  ``score`` -1 where the record has none. ``SEQ`` is the video's file name without its suffix (and 8
  characters of a digest of its path where two videos share one). With images, the labeled frames as
  ``SEQ/img1/FRAME.png`` (``FRAME`` six digits). ``tracks.json``: the task, the tracking settings,
  the labels, and per video its path, sequence, file, frames and tracks (``id``, ``label``: its
  boxes' most common, ``first_frame``, ``last_frame``, ``frames``, ``mean_score``). Frames are
  placed by every name an image was found under (a frame identical to another is labeled once);
  records of no video frame are left out; the export takes no val split.

Which task: ``coco``, ``yolo``, ``labelstudio`` and ``mot`` take the regions of ``task``, by default
the first of :data:`BOX_TASKS` that any record holds; any task answering with regions may be named
(a region without a label, as region proposals give, is called :data:`UNLABELLED`). ``captions``
takes ``task``, by default the first of :data:`CAPTION_TASKS` that any record holds. A record
without that task's result is left out of the export, and said so in the summary.

Images (``images``): ``"link"`` symlinks image files (copies them where links cannot be made),
``"copy"`` copies them; both write tar members (their bytes) and video frames (PNG) as files, read
through :func:`florence2.label.sources.open_source`. ``"none"`` writes no image: files name the
original paths, and records whose image is no file of its own (a tar member, a video frame) are
left out; ``yolo`` and ``captions`` need image files and refuse it.

The summary: ``format``, ``out``, ``task``, ``images``, ``splits`` (``{split: {"images", "regions"}}``),
``files`` (the label files written, relative to ``out``), ``image_files`` (how many images were
written), ``categories`` (coco, yolo, labelstudio, mot) and ``skipped`` (``[{"id", "reason"}]``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from PIL import Image

from florence2.data.formats.coco import coco_instances
from florence2.data.formats.mixture import held_out_names
from florence2.data.formats.validate import is_number, polygon_area, write_json
from florence2.errors import Florence2Error, ImageLoadError, TaskError
from florence2.label.tracks import DEFAULT_GAP, DEFAULT_IOU, check_tracking, link_tracks
from florence2.scoring import REGION_KEYS, bounding_box
from florence2.sources import IMAGE_SUFFIXES
from florence2.tasks import TASKS, ResultType, get_task

IMAGE_MODES = ("link", "copy", "none")
# the default box task of coco and yolo: the first of these present
BOX_TASKS = ("<OPEN_VOCABULARY_DETECTION>", "<OD>", "<DENSE_REGION_CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>")
# the default caption task: the longest present
CAPTION_TASKS = ("<MORE_DETAILED_CAPTION>", "<DETAILED_CAPTION>", "<CAPTION>")
# the category of a region without a label
UNLABELLED = "object"

# result types (florence2.tasks) that answer with regions: every one but plain text
_REGION_RESULTS = tuple(kind for kind in get_args(ResultType) if kind != "pure_text")
# keys of a jsonl line; a record's other result keys of these names stay out of it
_LINE_KEYS = ("id", "source", "width", "height", "image", "run", "results")
_NAME_LENGTH = 16
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class ExportError(Florence2Error, ValueError):
    """An export that cannot be made as asked: unknown format or image mode, a task the records lack,
    a folder that is not empty, malformed records, a missing extra."""


class _Skip(Exception):
    """An image left out of the export, and why."""


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One image of the export: its record, its file name in the export, its split."""

    record: dict[str, Any]
    name: str
    split: str

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def size(self) -> tuple[int, int]:
        return self.record["width"], self.record["height"]

    @property
    def stem(self) -> str:
        return Path(self.name).stem


@dataclass(frozen=True)
class Region:
    """A box, quad or polygon of a result: its label, its XYXY box (clipped to the image), its score
    (None where the record has none) and its polygons (flat ``[x, y, ...]`` lists; none for a box)."""

    label: str
    box: list[float]
    score: float | None
    polygons: list[list[float]]


def _check_record(index: int, record: Any) -> None:
    where = f"record {index}"
    if not isinstance(record, dict):
        raise ExportError(f"{where}: expected a dict, got {type(record).__name__}")
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise ExportError(f"{where}: id: expected a non-empty string, got {record.get('id')!r}")
    where = f"record {record['id']}"
    for key in ("width", "height"):
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ExportError(f"{where}: {key}: expected a positive integer, got {value!r}")
    for key in ("source", "results"):
        if not isinstance(record.get(key), dict):
            raise ExportError(f"{where}: {key}: expected a dict, got {record.get(key)!r}")


def _suffix(source: dict[str, Any]) -> str:
    """The image suffix an export keeps: the file's or member's, or ``.png`` (decoded frames, and
    names without an image suffix, which are written as PNG)."""
    name = source.get("path") or source.get("member") or ""
    suffix = Path(str(name)).suffix.lower()
    return suffix if suffix in IMAGE_SUFFIXES else ".png"


def _file_stem(image_id: str) -> str:
    """The id as a file name: itself where it is a plain name (the store's ids are hex digests), else
    ``id-`` and a digest of it, so that no id names a path outside the export."""
    return image_id if _PLAIN_NAME.match(image_id) else "id-" + hashlib.sha256(image_id.encode()).hexdigest()


def _file_names(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Image id -> file name: ``ID[:16]`` + suffix, the whole id where two ids share that start (an
    id that is no plain name stands for its digest: :func:`_file_stem`)."""
    stems = {record["id"]: _file_stem(record["id"]) for record in records}
    starts: dict[str, int] = {}
    for stem in stems.values():
        starts[stem[:_NAME_LENGTH]] = starts.get(stem[:_NAME_LENGTH], 0) + 1
    names = {}
    for record in records:
        stem = stems[record["id"]]
        start = stem[:_NAME_LENGTH]
        names[record["id"]] = (start if starts[start] == 1 else stem) + _suffix(record["source"])
    return names


def _items(records: Iterable[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list[Item], list[dict]]:
    """The export's images, ordered by id, with names and splits; and the records left out."""
    unique: dict[str, dict[str, Any]] = {}
    skipped = []
    for index, record in enumerate(records):
        _check_record(index, record)
        if record["id"] in unique:
            skipped.append({"id": record["id"], "reason": "another record of the same image came first"})
        else:
            unique[record["id"]] = record
    held = held_out_names(unique, val_fraction, seed) if val_fraction else set()
    names = _file_names(unique.values())
    items = [Item(unique[i], names[i], "val" if i in held else "train") for i in sorted(unique)]
    return items, skipped


def task_results(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tasks, others)``: a record's results split into those of tasks and its other keys
    (``sequence_scores``, ``regions``)."""
    tasks = {k: v for k, v in results.items() if k in TASKS}
    return tasks, {k: v for k, v in results.items() if k not in TASKS}


def _region_triples(result: Any) -> Iterator[tuple[str, Any, Any, Any]]:
    """``(shapes key, shape, label, score)`` of every region of one task's result."""
    if not isinstance(result, dict):
        return
    for shapes_key, labels_key, scores_key in REGION_KEYS:
        if isinstance(result.get(shapes_key), list) and isinstance(result.get(labels_key), list):
            shapes = result[shapes_key]
            scores = result.get(scores_key)
            scores = scores if isinstance(scores, list) and len(scores) == len(shapes) else [None] * len(shapes)
            for shape, label, score in zip(shapes, result[labels_key], scores):
                yield shapes_key, shape, label, score


def result_regions(result: Any, size: tuple[int, int]) -> tuple[list[Region], int]:
    """The regions of one task's result, boxes clipped to the image; and how many were left out
    (a box with ``x1 < x0`` or ``y1 < y0``, or no shape at all)."""
    width, height = size
    kept, dropped = [], 0
    for shapes_key, shape, label, score in _region_triples(result):
        if shapes_key == "bboxes":
            polygons = []
        else:
            parts = [shape] if shapes_key == "quad_boxes" else shape
            polygons = [[float(v) for v in p] for p in parts if isinstance(p, list) and len(p) >= 6]
        if polygons:
            box = bounding_box(polygons)
        elif shapes_key == "bboxes" and isinstance(shape, list) and len(shape) == 4:
            box = [float(v) for v in shape]
        else:
            box = None
        if box is None or box[0] > box[2] or box[1] > box[3]:
            dropped += 1
            continue
        x0, y0, x1, y1 = box
        box = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
        name = " ".join(str(label).split()) or UNLABELLED
        kept.append(Region(name, box, float(score) if is_number(score) else None, polygons))
    return kept, dropped


def count_regions(results: dict[str, Any]) -> int:
    """Boxes, quads and polygons over every task of a record's results."""
    return sum(1 for result in task_results(results)[0].values() for _ in _region_triples(result))


# --------------------------------------------------------------------------------------------------
# One export
# --------------------------------------------------------------------------------------------------


@dataclass
class Export:
    """What a writer works on: the folder, the images and their splits, the image mode, the task
    asked for; and the summary it fills in."""

    out: Path
    items: list[Item]
    splits: tuple[str, ...]
    images: str
    task: str | None
    summary: dict[str, Any] = field(default_factory=dict)
    track_iou: float = DEFAULT_IOU
    track_gap: int = DEFAULT_GAP
    track_by_label: bool = True

    def in_split(self, split: str) -> list[Item]:
        return [item for item in self.items if item.split == split]

    def file_name(self, split: str, whole: str, per_split: str) -> str:
        """``whole`` without a split, ``per_split`` (with ``{}`` for the split's name) with one."""
        return whole if len(self.splits) == 1 else per_split.format(split)

    def skip(self, item: Item, reason: str) -> None:
        self.summary["skipped"].append({"id": item.id, "reason": reason})

    def wrote(self, path: Path) -> Path:
        self.summary["files"].append(path.relative_to(self.out).as_posix())
        return path

    def count(self, split: str, regions: int = 0) -> None:
        counts = self.summary["splits"][split]
        counts["images"] += 1
        counts["regions"] += regions

    def with_result(self, task: str) -> list[Item]:
        """The items holding a result of ``task``; the others are skipped."""
        kept = []
        for item in self.items:
            if task in item.record["results"]:
                kept.append(item)
            else:
                self.skip(item, f"no {task} result")
        return kept

    def placed(self, items: Iterable[Item], folder: Path) -> Iterator[tuple[Item, str]]:
        """``(item, image)`` for each item whose image is in place: written into ``folder`` (``image``
        its path) or, with ``images="none"``, the original file (``image`` its absolute path). The
        others are skipped, with the reason."""
        for item in items:
            try:
                yield item, self._place(item, folder)
            except _Skip as e:
                self.skip(item, str(e))

    def _place(self, item: Item, folder: Path) -> str:
        source = item.record["source"]
        path = source.get("path") if isinstance(source.get("path"), str) else None
        if self.images == "none":
            if path is None:
                raise _Skip(
                    f"its image is no file of its own ({_describe(source)}); export with images='link' or 'copy'"
                )
            return str(Path(path).absolute())
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / item.name
        if path is not None and Path(path).suffix.lower() == Path(item.name).suffix:
            if not Path(path).is_file():
                raise _Skip(f"image file {path} not found")
            _link_or_copy(Path(path).absolute(), dest, self.images == "link")
        else:
            _write_image(source, dest)
        self.summary["image_files"] += 1
        return str(dest)

    def box_task(self) -> str:
        """The task whose regions coco and yolo export (see the module docstring)."""
        present = {task for item in self.items for task in item.record["results"]}
        if self.task is not None:
            if TASKS[self.task].result_type not in _REGION_RESULTS:
                raise ExportError(f"{self.task} gives no regions; choose a task answering with boxes or polygons")
            task = self.task
        else:
            task = next((t for t in BOX_TASKS if t in present), None)
            if task is None:
                raise ExportError(
                    f"no record holds a box task ({', '.join(BOX_TASKS)}); the records hold: "
                    f"{', '.join(sorted(t for t in present if t in TASKS)) or 'nothing'}"
                )
        if task not in present:
            raise ExportError(f"no record holds a {task} result")
        self.summary["task"] = task
        return task

    def box_regions(self) -> tuple[list[Item], dict[str, list[Region]], list[str]]:
        """The items holding a result of :meth:`box_task` (the others skipped), image id -> their
        regions (regions left out are said in the summary), and the sorted labels of all of them."""
        task = self.box_task()
        items = self.with_result(task)
        found = {}
        for item in items:
            found[item.id], dropped = result_regions(item.record["results"][task], item.size)
            if dropped:
                self.summary["skipped"].append({"id": item.id, "reason": f"{dropped} {task} regions without a box"})
        self.summary["categories"] = sorted({region.label for shapes in found.values() for region in shapes})
        return items, found, self.summary["categories"]


def _describe(source: dict[str, Any]) -> str:
    if isinstance(source.get("path"), str):
        return source["path"]
    if "member" in source:
        return f"member {source['member']} of {source.get('archive')}"
    if "video" in source:
        return f"frame {source.get('frame')} of {source['video']}"
    return json.dumps(source)


def _link_or_copy(source: Path, dest: Path, link: bool) -> None:
    if link:
        try:
            os.symlink(source, dest)
            return
        except OSError:
            pass  # no symlinks here (a file system or platform without them): copy
    shutil.copyfile(source, dest)


def _write_image(source: dict[str, Any], dest: Path) -> None:
    """Write a source's image to ``dest``: its bytes as they are where the suffix is theirs, else
    decoded and saved in the format of ``dest``'s suffix."""
    from florence2.label.sources import open_source

    try:
        data = open_source(source)
        name = source.get("path") or source.get("member") or ""
        if isinstance(data, bytes) and Path(str(name)).suffix.lower() == dest.suffix:
            dest.write_bytes(data)
            return
        image = Image.open(io.BytesIO(data)) if isinstance(data, bytes) else data
        image.save(dest)
    except (ImageLoadError, OSError, ValueError) as e:
        raise _Skip(f"its image cannot be read ({_describe(source)}): {e}") from None


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------


def write_coco_export(ex: Export) -> None:
    """COCO detection files, one per split, and ``images/``."""
    items, found, categories = ex.box_regions()
    for split in ex.splits:
        records, kept = [], []
        for item, image in ex.placed((i for i in items if i.split == split), ex.out / "images"):
            name = image if ex.images == "none" else item.name
            objects = [{"category": r.label, "bbox": r.box, "polygon": _one(r.polygons)} for r in found[item.id]]
            records.append({"image": name, "width": item.size[0], "height": item.size[1], "objects": objects})
            kept.extend(found[item.id])
            ex.count(split, len(found[item.id]))
        document = coco_instances(records, categories)
        for annotation, region in zip(document["annotations"], kept):
            annotation["score"] = region.score if region.score is not None else 0.0
            if len(region.polygons) > 1:
                annotation["segmentation"] = region.polygons
                annotation["area"] = round(sum(polygon_area(p) for p in region.polygons), 4)
        path = ex.out / "annotations" / ex.file_name(split, "instances.json", "instances_{}.json")
        ex.wrote(write_json(path, document))


def _one(polygons: list[list[float]]) -> list[float] | None:
    return polygons[0] if len(polygons) == 1 else None


def write_yolo_export(ex: Export) -> None:
    """``data.yaml``, ``images/SPLIT/`` and ``labels/SPLIT/``: one ``class cx cy w h`` line a box."""
    items, found, names = ex.box_regions()
    class_ids = {name: k for k, name in enumerate(names)}
    for split in ex.splits:
        labels = ex.out / "labels" / split
        labels.mkdir(parents=True, exist_ok=True)
        for item, _ in ex.placed((i for i in items if i.split == split), ex.out / "images" / split):
            lines = [_yolo_line(class_ids[r.label], r.box, item.size) for r in found[item.id]]
            (labels / f"{item.stem}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            ex.count(split, len(lines))
    val = "val" if "val" in ex.splits else "train"
    yaml = [f"path: {json.dumps(str(ex.out.absolute()))}", "train: images/train", f"val: images/{val}"]
    yaml += [f"nc: {len(names)}", "names:" + ("" if names else " {}")]
    yaml += [f"  {k}: {json.dumps(name, ensure_ascii=False)}" for k, name in enumerate(names)]
    (ex.out / "data.yaml").write_text("\n".join(yaml) + "\n", encoding="utf-8")
    ex.wrote(ex.out / "data.yaml")


def _yolo_line(class_id: int, box: list[float], size: tuple[int, int]) -> str:
    width, height = size
    x0, y0, x1, y1 = box
    values = [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
    return f"{class_id} " + " ".join(f"{min(max(v, 0.0), 1.0):.6f}" for v in values)


def _relative(image: str, folder: Path, mode: str) -> str:
    """An image path as a line names it: relative to the line's file, or absolute with ``"none"``."""
    return image if mode == "none" else Path(os.path.relpath(image, folder)).as_posix()


def write_jsonl_export(ex: Export) -> None:
    """JSON lines, one file per split, and ``images/``."""
    for split in ex.splits:
        path = ex.out / ex.file_name(split, "labels.jsonl", "{}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for item, image in ex.placed(ex.in_split(split), ex.out / "images"):
                tasks, others = task_results(item.record["results"])
                line = {
                    "id": item.id,
                    "source": item.record["source"],
                    "width": item.size[0],
                    "height": item.size[1],
                    "image": _relative(image, path.parent, ex.images),
                    **({"run": item.record["run"]} if "run" in item.record else {}),
                    "results": tasks,
                    **{k: v for k, v in others.items() if k not in _LINE_KEYS},
                }
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                ex.count(split, count_regions(tasks))
        ex.wrote(path)


def caption_task(present: Iterable[str], asked: str | None, what: str = "the captions export") -> str:
    """The caption task ``what`` writes: ``asked`` (one of :data:`CAPTION_TASKS`), else the most
    detailed one present. Raises :class:`ExportError` where the records hold no such caption."""
    present = set(present)
    if asked is not None:
        if asked not in CAPTION_TASKS:
            raise ExportError(f"{what} takes one of {', '.join(CAPTION_TASKS)}, got {asked}")
        if asked not in present:
            raise ExportError(f"no record holds a {asked} result")
        return asked
    task = next((t for t in CAPTION_TASKS if t in present), None)
    if task is None:
        raise ExportError(f"no record holds a caption ({', '.join(CAPTION_TASKS)})")
    return task


def _caption_task(ex: Export) -> str:
    task = caption_task((task for item in ex.items for task in item.record["results"]), ex.task)
    ex.summary["task"] = task
    return task


def write_captions_export(ex: Export) -> None:
    """Images with same-named ``.txt`` captions and ``captions.jsonl``, one folder per split."""
    task = _caption_task(ex)
    items = []
    for item in ex.with_result(task):
        caption = item.record["results"][task]
        if isinstance(caption, str) and caption.strip():
            items.append(item)
        else:
            ex.skip(item, f"its {task} result is empty")
    for split in ex.splits:
        folder = ex.out if len(ex.splits) == 1 else ex.out / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for item, _ in ex.placed((i for i in items if i.split == split), folder):
            caption = " ".join(item.record["results"][task].split())
            (folder / f"{item.stem}.txt").write_text(caption + "\n", encoding="utf-8")
            lines.append(json.dumps({"image": item.name, "caption": caption}, ensure_ascii=False) + "\n")
            ex.count(split)
        (folder / "captions.jsonl").write_text("".join(lines), encoding="utf-8")
        ex.wrote(folder / "captions.jsonl")


def write_sidecar_captions(
    dataset: str | os.PathLike,
    *,
    task: str | None = None,
    run: int | None = None,
    prefix: str = "",
    overwrite: bool = False,
    extension: str = ".txt",
) -> dict[str, Any]:
    """Write each labeled image's caption beside the image file itself, as image-generation trainers
    (kohya_ss, OneTrainer, taggui) read them: ``photos/dog.jpg`` gets ``photos/dog.txt``, one line,
    ``prefix`` first (a trigger word). Every file name an image was found under gets one; images with
    no file of their own (tar members, video frames), no caption, or whose file is gone are counted
    and listed, not written. An existing caption file is kept unless ``overwrite``. Each file is
    written whole or not at all (a temporary file renamed).

    Returns a summary: ``task``, ``written``, ``kept`` (existing files left alone), ``skipped``
    (``[{"source", "reason"}]``, the first 20) and ``skipped_count``.

    Raises:
        ExportError: a task that is no caption task, no record with that caption, a bad extension.
    """
    from florence2.label.store import DatasetStore

    if not re.fullmatch(r"\.[A-Za-z0-9]{1,10}", extension) or extension.lower() in IMAGE_SUFFIXES:
        raise ExportError(f"a caption file extension is a dot and 1-10 letters or digits, no image's: {extension!r}")
    try:
        asked = get_task(task).token if task is not None else None
    except TaskError as e:
        raise ExportError(str(e)) from None
    summary: dict[str, Any] = {"task": None, "written": 0, "kept": 0, "skipped": [], "skipped_count": 0}

    def skip(source: dict[str, Any], reason: str) -> None:
        summary["skipped_count"] += 1
        if len(summary["skipped"]) < 20:
            summary["skipped"].append({"source": _describe(source), "reason": reason})

    with DatasetStore(dataset) as store:
        present = {task for record in store.records(run) for task in record["results"]}
        summary["task"] = chosen = caption_task(present, asked, "dataset captions")
        for record in store.records(run):
            caption = record["results"].get(chosen)
            names = store.sources_of(record["id"])
            if not isinstance(caption, str) or not caption.strip():
                skip(record["source"], f"no {chosen} caption")
                continue
            line = " ".join((prefix + caption).split()) + "\n"
            for source in names:
                path = source.get("path") if isinstance(source, dict) else None
                if not isinstance(path, str):
                    skip(source, "no image file of its own (a tar member or a video frame)")
                    continue
                image = Path(path)
                if not image.is_file():
                    skip(source, "image file not found")
                    continue
                target = image.with_suffix(extension)
                if target.exists() and not overwrite:
                    summary["kept"] += 1
                    continue
                tmp = target.with_name(f".{target.name}.florence2-tmp")
                tmp.write_text(line, encoding="utf-8")
                os.replace(tmp, target)
                summary["written"] += 1
    return summary


def _caption_column(task: str) -> str:
    return task.strip("<>").lower()


def write_parquet_export(ex: Export) -> None:
    """A Parquet file per split (one row per image), and ``images/``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError("the parquet export needs pyarrow: pip install 'florence2[parquet]'") from None
    caption_columns = {task: _caption_column(task) for task in reversed(CAPTION_TASKS)}
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("image", pa.string()),
            ("results", pa.string()),
            ("extras", pa.string()),
            *((column, pa.string()) for column in caption_columns.values()),
            ("num_regions", pa.int32()),
        ]
    )
    for split in ex.splits:
        path = ex.out / ex.file_name(split, "labels.parquet", "{}.parquet")
        rows = []
        for item, image in ex.placed(ex.in_split(split), ex.out / "images"):
            tasks, others = task_results(item.record["results"])
            captions = {c: tasks[t] if isinstance(tasks.get(t), str) else None for t, c in caption_columns.items()}
            rows.append(
                {
                    "id": item.id,
                    "source": json.dumps(item.record["source"], ensure_ascii=False),
                    "width": item.size[0],
                    "height": item.size[1],
                    "image": _relative(image, path.parent, ex.images),
                    "results": json.dumps(tasks, ensure_ascii=False),
                    "extras": json.dumps(others, ensure_ascii=False) if others else None,
                    **captions,
                    "num_regions": count_regions(tasks),
                }
            )
            ex.count(split, rows[-1]["num_regions"])
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        ex.wrote(path)


# --------------------------------------------------------------------------------------------------
# The registry
def write_labelstudio_export(ex: Export) -> None:
    """Label Studio tasks with the regions as predictions, one file per split, ``label_config.xml``
    and ``images/``."""
    items, found, labels = ex.box_regions()
    task = ex.summary["task"]
    for split in ex.splits:
        tasks = []
        for item, _ in ex.placed((i for i in items if i.split == split), ex.out / "images"):
            regions = found[item.id]
            result = [_studio_region(k, region, item.size) for k, region in enumerate(regions)]
            prediction: dict[str, Any] = {"model_version": f"florence2 {task}", "result": result}
            scores = [region.score for region in regions if region.score is not None]
            if scores:
                prediction["score"] = min(scores)
            image = f"/data/local-files/?d=images/{quote(item.name)}"
            tasks.append({"data": {"image": image, "florence2_id": item.id}, "predictions": [prediction]})
            ex.count(split, len(result))
        ex.wrote(write_json(ex.out / ex.file_name(split, "tasks.json", "tasks_{}.json"), tasks))
    polygons = any(len(region.polygons) == 1 for regions in found.values() for region in regions)
    controls = [("RectangleLabels", "label")] + ([("PolygonLabels", "polygon")] if polygons else [])
    lines = ["<View>", '  <Image name="image" value="$image"/>']
    for tag, name in controls:
        lines += [f'  <{tag} name="{name}" toName="image">']
        lines += [f"    <Label value={quoteattr(label)}/>" for label in labels]
        lines += [f"  </{tag}>"]
    (ex.out / "label_config.xml").write_text("\n".join([*lines, "</View>"]) + "\n", encoding="utf-8")
    ex.wrote(ex.out / "label_config.xml")


def _studio_region(k: int, region: Region, size: tuple[int, int]) -> dict[str, Any]:
    """One Label Studio result: a polygon where the region is one, else its box; in percent."""
    width, height = size
    out: dict[str, Any] = {"id": f"r{k}", "to_name": "image", "original_width": width, "original_height": height}
    out["image_rotation"] = 0
    if len(region.polygons) == 1:
        flat = region.polygons[0]
        points = [[round(100 * x / width, 4), round(100 * y / height, 4)] for x, y in zip(flat[::2], flat[1::2])]
        out.update(from_name="polygon", type="polygonlabels")
        out["value"] = {"points": points, "closed": True, "polygonlabels": [region.label]}
    else:
        x0, y0, x1, y1 = region.box
        out.update(from_name="label", type="rectanglelabels")
        out["value"] = {
            "x": round(100 * x0 / width, 4),
            "y": round(100 * y0 / height, 4),
            "width": round(100 * (x1 - x0) / width, 4),
            "height": round(100 * (y1 - y0) / height, 4),
            "rotation": 0,
            "rectanglelabels": [region.label],
        }
    if region.score is not None:
        out["score"] = region.score
    return out


def write_mot_export(ex: Export) -> None:
    """Per video, its boxes linked into tracks: ``SEQ.txt`` (MOTChallenge), ``SEQ/img1/``, and
    ``tracks.json`` over all videos."""
    if len(ex.splits) > 1:
        raise ExportError("the mot export keeps every video whole: it takes no val split")
    items, found, labels = ex.box_regions()
    videos: dict[str, dict[int, tuple[Item, dict[str, Any]]]] = {}
    for item in items:
        frames = [s for s in (item.record["source"], *item.record.get("names", ())) if _is_frame(s)]
        if not frames:
            ex.skip(item, "no video frame")
        for source in frames:
            videos.setdefault(source["video"], {}).setdefault(source["frame"], (item, source))
    sequences = _sequence_names(videos)
    ex.out.mkdir(parents=True, exist_ok=True)
    documents = []
    for video in sorted(videos):
        frames, sequence = sorted(videos[video].items()), sequences[video]
        boxes = [[(region.box, region.label) for region in found[item.id]] for _, (item, _) in frames]
        lines, tracks = [], {}
        linked = link_tracks(boxes, ex.track_iou, ex.track_gap, ex.track_by_label)
        for (index, (item, source)), ids in zip(frames, linked):
            for region, track in zip(found[item.id], ids):
                x0, y0, x1, y1 = region.box
                score = -1 if region.score is None else round(region.score, 4)
                lines.append(f"{index + 1},{track},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},{score},-1,-1,-1")
                first = {"id": track, "label": Counter(), "first_frame": index, "last_frame": index, "scores": []}
                seen = tracks.setdefault(track, first)
                seen["last_frame"] = index
                seen["label"][region.label] += 1
                seen["scores"].append(region.score)
            ex.count("train", len(ids))
            if ex.images != "none":
                try:
                    dest = ex.out / sequence / "img1" / f"{index + 1:06d}.png"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _write_image(source, dest)
                    ex.summary["image_files"] += 1
                except _Skip as e:
                    ex.skip(item, str(e))
        path = ex.out / f"{sequence}.txt"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        ex.wrote(path)
        documents.append(
            {
                "video": video,
                "sequence": sequence,
                "file": path.name,
                "frames": len(frames),
                "tracks": [_track_summary(track) for track in tracks.values()],
            }
        )
    document = {"task": ex.summary["task"], "iou": ex.track_iou, "max_gap": ex.track_gap}
    document.update(by_label=ex.track_by_label, labels=labels)
    ex.wrote(write_json(ex.out / "tracks.json", {**document, "videos": documents}))


def _is_frame(source: Any) -> bool:
    return (
        isinstance(source, dict)
        and isinstance(source.get("video"), str)
        and isinstance(source.get("frame"), int)
        and not isinstance(source.get("frame"), bool)
        and source["frame"] >= 0
    )


def _sequence_names(videos: Iterable[str]) -> dict[str, str]:
    """Video path -> its sequence name: the file name without its suffix, with 8 characters of a
    digest of the path where two videos share that name."""
    import hashlib

    stems: dict[str, list[str]] = {}
    for video in videos:
        stem = Path(video).stem
        stems.setdefault(stem if stem.strip(".") else "video", []).append(video)
    names = {}
    for stem, paths in stems.items():
        for video in paths:
            digest = hashlib.sha256(video.encode()).hexdigest()[:8]
            names[video] = stem if len(paths) == 1 else f"{stem}-{digest}"
    return names


def _track_summary(track: dict[str, Any]) -> dict[str, Any]:
    """A track as ``tracks.json`` lists it: its label is its boxes' most common one (the first
    met among equals)."""
    scores = track.pop("scores")
    known = [score for score in scores if score is not None]
    return {
        **track,
        "label": track["label"].most_common(1)[0][0],
        "frames": len(scores),
        "mean_score": round(sum(known) / len(known), 4) if known else None,
    }


# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFormat:
    """One export format: its writer, whether it needs image files of its own (and so refuses
    ``images="none"``), and a line for help texts."""

    name: str
    write: Callable[[Export], None]
    needs_image_files: bool
    description: str
    every_name: bool = False  # the writer reads each record's "names": every source its image was found under


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("coco", write_coco_export, False, "COCO detection JSON per split (boxes, scores, polygons)"),
        ExportFormat("yolo", write_yolo_export, True, "YOLO folders: data.yaml, images/, labels/"),
        ExportFormat("jsonl", write_jsonl_export, False, "JSON lines of every result (fine-tuning: labels:FILE)"),
        ExportFormat("captions", write_captions_export, True, "images with same-named .txt captions"),
        ExportFormat("parquet", write_parquet_export, False, "one Parquet row per image (needs pyarrow)"),
        ExportFormat("labelstudio", write_labelstudio_export, True, "Label Studio tasks: pre-annotations to review"),
        ExportFormat(
            "mot", write_mot_export, False, "video tracks: MOTChallenge text per video, tracks.json", every_name=True
        ),
    )
}


def export_records(
    records: Iterable[dict[str, Any]],
    out: str | os.PathLike,
    fmt: str,
    *,
    task: str | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    images: str = "link",
    track_iou: float = DEFAULT_IOU,
    track_gap: int = DEFAULT_GAP,
    track_by_label: bool = True,
) -> dict[str, Any]:
    """Write ``records`` into the new (or empty) folder ``out`` in the format ``fmt`` (see the module
    docstring for layouts, tasks, splits and image modes) and return the summary. ``track_iou``,
    ``track_gap`` and ``track_by_label``: how ``mot`` links boxes into tracks
    (:func:`florence2.label.tracks.link_tracks`).

    Raises:
        ExportError: unknown format or image mode, ``images="none"`` for a format that needs image
            files, a fraction outside [0, 1), ``out`` not empty, a malformed record, no record with
            the task, pyarrow missing for parquet, a val split or bad tracking settings for mot.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
    spec = EXPORT_FORMATS[fmt]
    if images not in IMAGE_MODES:
        raise ExportError(f"images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
    if images == "none" and spec.needs_image_files:
        raise ExportError(f"the {fmt} export needs image files beside its labels: use images='link' or 'copy'")
    if not 0.0 <= val_fraction < 1.0:
        raise ExportError(f"val_fraction must be in [0, 1), got {val_fraction}")
    try:
        check_tracking(track_iou, track_gap)
    except Florence2Error as e:
        raise ExportError(str(e)) from None
    try:
        task = get_task(task).token if task is not None else None
    except TaskError as e:
        raise ExportError(str(e)) from None
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder; export into a new one")
    items, skipped = _items(records, val_fraction, seed)
    splits = ("train", "val") if val_fraction > 0 else ("train",)
    ex = Export(
        out, items, splits, images, task, track_iou=track_iou, track_gap=track_gap, track_by_label=bool(track_by_label)
    )
    ex.summary.update(
        format=fmt,
        out=str(out),
        task=None,
        images=images,
        splits={split: {"images": 0, "regions": 0} for split in splits},
        files=[],
        image_files=0,
        skipped=skipped,
    )
    spec.write(ex)
    return ex.summary


def export_dataset(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str,
    *,
    run: int | None = None,
    filters: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Export a labeled dataset folder (its latest run, or ``run``) with :func:`export_records`.

    ``filters``: a :class:`~florence2.label.filters.Filters` applied again on demand before writing
    (the regions it drops are counted by task and reason in the summary's ``dropped``); ``options``:
    those of :func:`export_records` (``task``, ``val_fraction``, ``seed``, ``images``, ``track_iou``,
    ``track_gap``, ``track_by_label``)."""
    from florence2.label.store import DatasetStore

    drops: Counter = Counter()
    every_name = fmt in EXPORT_FORMATS and EXPORT_FORMATS[fmt].every_name

    def filtered(records: Iterable[dict[str, Any]], store: DatasetStore) -> Iterator[dict[str, Any]]:
        for record in records:
            if every_name:
                record["names"] = store.sources_of(record["id"])
            if filters is not None:
                results, dropped = filters.apply(record["results"], (record["width"], record["height"]))
                drops.update(dropped)
                record = {**record, "results": results}
            yield record

    with DatasetStore(dataset) as store:
        summary = export_records(filtered(store.records(run), store), out, fmt, **options)
    summary["dropped"] = {}
    for (task, reason), count in sorted(drops.items()):
        summary["dropped"].setdefault(task, {})[reason] = count
    return summary
