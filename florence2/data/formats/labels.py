"""Labeled datasets: the JSON lines a labeling run is exported to, read back into fine-tuning examples.

One line per image::

    {"id": "3f2a...", "source": {...}, "width": 640, "height": 480, "image": "images/3f2a....jpg",
     "results": {"<OD>": {"bboxes": [[x0, y0, x1, y1], ...], "labels": [...], "scores": [...]},
                 "<CAPTION>": "A car.", ...},
     "sequence_scores": {...}}

``results`` holds the result dicts of :meth:`florence2.Florence2.predict` keyed by task token;
``image`` is resolved against ``IMAGES`` (default: the file's folder). Each result becomes an
annotation record of :mod:`florence2.data.samples` holding only that task's answer, and the sample
builders write its targets, so a target parses back into the result (up to quantization):

==================================  ==========================================================
task                                annotation record
==================================  ==========================================================
``<CAPTION>``, ``<DETAILED_...>``,  ``captions``: the text at its level
``<MORE_DETAILED_CAPTION>``
``<OCR>``                           ``texts``: one per line of the text, in order (each with the
                                    whole image as its box: only their order counts)
``<OCR_WITH_REGION>``               ``texts``: each label with its quad
``<OD>``                            ``objects``: each box with its label as ``category``
``<DENSE_REGION_CAPTION>``          ``objects``: each box with its label as ``brief``
``<REGION_PROPOSAL>``               ``objects``: the boxes
``<CAPTION_TO_PHRASE_GROUNDING>``   the result's ``caption`` as the brief caption; ``objects``: the
                                    boxes; ``phrases``: each run of boxes with one label, in order
``<OPEN_VOCABULARY_DETECTION>``     ``objects``: each box with its class as ``category`` (one
                                    example per class); polygon answers are left out
==================================  ==========================================================

Left out, with a note: the tasks whose result does not say what they were asked
(``<REFERRING_EXPRESSION_SEGMENTATION>``'s expression, the region of ``<REGION_TO_SEGMENTATION>``,
``<REGION_TO_CATEGORY>``, ``<REGION_TO_DESCRIPTION>`` and ``<REGION_TO_OCR>``), keys that are no
task, grounding results without their ``caption``, and lines without an ``image``. Model answers
are not always well formed: a region with an empty label, a box with ``x1 < x0`` or lying outside
the image, or (with ``min_score``) scoring below it is dropped, and a result the sample builders
refuse (a label holding ``"<"``) gives no example; each is counted in the notes.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from florence2.data.formats.captions import CAPTION_LEVELS
from florence2.data.formats.records import Example, choose_tasks, examples, note, record
from florence2.data.formats.validate import Images, bounds, inside, is_number, json_lines, numbers, require, xyxy
from florence2.data.samples import OCR_LINE_SEPARATOR
from florence2.errors import AnnotationError
from florence2.tasks import TASKS

# keys of a record's results that hold no task (the export moves them out of ``results``)
_NOT_TASKS = ("sequence_scores", "regions")

# what each left-out task lacks
_UNMAPPED = {
    "<REFERRING_EXPRESSION_SEGMENTATION>": "its result does not say which expression it segments",
    "<REGION_TO_SEGMENTATION>": "its result does not say which region it segments",
    "<REGION_TO_CATEGORY>": "its result does not say which region it names",
    "<REGION_TO_DESCRIPTION>": "its result does not say which region it describes",
    "<REGION_TO_OCR>": "its result does not say which region it reads",
}


class _Unusable(Exception):
    """A result that gives no example, and why."""


class _Regions:
    """The regions of one result that are kept, and counts of those dropped, by reason."""

    def __init__(self, min_score: float | None) -> None:
        self.min_score = min_score
        self.dropped: Counter[str] = Counter()

    def pairs(self, at: str, result: Any, shapes_key: str, labels_key: str, scores_key: str) -> list[tuple[Any, str]]:
        """``(shape, label)`` of every region scoring at least ``min_score``; labels collapsed."""
        if not isinstance(result, dict):
            raise AnnotationError(f"{at}: expected a result object, got {type(result).__name__}")
        shapes = require(at, result, shapes_key, list)
        labels = require(at, result, labels_key, list)
        scores = result.get(scores_key)
        scores = scores if isinstance(scores, list) else [None] * len(shapes)
        if not len(labels) == len(scores) == len(shapes):
            raise AnnotationError(f"{at}: {shapes_key}, {labels_key} and {scores_key} differ in length")
        kept = []
        for shape, label, score in zip(shapes, labels, scores):
            if self.min_score is not None and not (is_number(score) and score >= self.min_score):
                self.dropped["scoring below min_score"] += 1
                continue
            kept.append((shape, " ".join(str(label).split())))
        return kept

    def labelled(self, pairs: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
        """The pairs with a label (the others counted)."""
        kept = [(shape, label) for shape, label in pairs if label]
        self.dropped["with an empty label"] += len(pairs) - len(kept)
        return kept

    def box(self, at: str, value: Any, size: tuple[int, int]) -> list[float] | None:
        """An XYXY box clipped to the image, or None (counted) when it is reversed or lies outside."""
        try:
            return xyxy(at, value, size)
        except AnnotationError:
            self.dropped["with a box that is malformed, reversed or outside the image"] += 1
            return None

    def quad(self, at: str, value: Any, size: tuple[int, int]) -> list[float] | None:
        try:
            return inside(at, numbers(at, value, 8), size)
        except AnnotationError:
            self.dropped["with a quad that is malformed or outside the image"] += 1
            return None


# A converter: (where, result, image size, regions) -> the annotation record's fields for the task.
Converter = Callable[[str, Any, tuple[int, int], _Regions], dict[str, Any]]


def _text_result(at: str, result: Any) -> str:
    if not isinstance(result, str):
        raise AnnotationError(f"{at}: expected the answer text, got {type(result).__name__}")
    return result


def _caption(level: str) -> Converter:
    return lambda at, result, size, regions: {"captions": {level: _text_result(at, result)}}


def _ocr(at: str, result: Any, size: tuple[int, int], regions: _Regions) -> dict[str, Any]:
    whole = [0.0, 0.0, float(size[0]), float(size[1])]
    lines = [line for line in _text_result(at, result).split(OCR_LINE_SEPARATOR or "\n") if line.strip()]
    return {"texts": [{"text": line, "bbox": whole} for line in lines]}


def _ocr_with_region(at: str, result: Any, size: tuple[int, int], regions: _Regions) -> dict[str, Any]:
    texts = []
    for k, (quad, label) in enumerate(regions.labelled(regions.pairs(at, result, "quad_boxes", "labels", "scores"))):
        quad = regions.quad(f"{at}.quad_boxes[{k}]", quad, size)
        if quad is not None:
            texts.append({"text": label, "quad": quad, "bbox": bounds(quad)})
    return {"texts": texts}


def _boxes(
    at: str,
    result: Any,
    size: tuple[int, int],
    regions: _Regions,
    field: str | None = None,
    keys: tuple[str, str] = ("labels", "scores"),
) -> list[dict[str, Any]]:
    """Objects of a box result: ``id``, ``bbox`` and the label under ``field`` (None: no label);
    ``keys``: the result's keys of the labels and scores."""
    pairs = regions.pairs(at, result, "bboxes", *keys)
    if field is not None:
        pairs = regions.labelled(pairs)
    objects = []
    for k, (shape, label) in enumerate(pairs):
        box = regions.box(f"{at}.bboxes[{k}]", shape, size)
        if box is not None:
            objects.append({"id": len(objects), "bbox": box, **({field: label} if field else {})})
    return objects


def _labelled_boxes(field: str) -> Converter:
    return lambda at, result, size, regions: {"objects": _boxes(at, result, size, regions, field=field)}


def _region_proposal(at: str, result: Any, size: tuple[int, int], regions: _Regions) -> dict[str, Any]:
    return {"objects": _boxes(at, result, size, regions)}


def _open_vocabulary(at: str, result: Any, size: tuple[int, int], regions: _Regions) -> dict[str, Any]:
    if isinstance(result, dict) and result.get("polygons"):
        regions.dropped["polygon answers (the targets hold boxes)"] += len(result["polygons"])
    return {"objects": _boxes(at, result, size, regions, "category", ("bboxes_labels", "bboxes_scores"))}


def _phrase_grounding(at: str, result: Any, size: tuple[int, int], regions: _Regions) -> dict[str, Any]:
    objects = _boxes(at, result, size, regions, field="phrase")
    caption = result.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise _Unusable("its result does not hold the caption it grounds")
    phrases: list[dict[str, Any]] = []
    for obj in objects:  # boxes in answer order; a run of one label is one phrase
        if phrases and phrases[-1]["phrase"] == obj["phrase"]:
            phrases[-1]["object_ids"].append(obj["id"])
        else:
            phrases.append({"phrase": obj["phrase"], "object_ids": [obj["id"]], "start": len(phrases)})
    return {"captions": {"brief": caption}, "objects": objects, "phrases": phrases}


CONVERTERS: dict[str, Converter] = {
    **{task: _caption(level) for task, level in CAPTION_LEVELS.items()},
    "<OCR>": _ocr,
    "<OCR_WITH_REGION>": _ocr_with_region,
    "<OD>": _labelled_boxes("category"),
    "<DENSE_REGION_CAPTION>": _labelled_boxes("brief"),
    "<REGION_PROPOSAL>": _region_proposal,
    "<CAPTION_TO_PHRASE_GROUNDING>": _phrase_grounding,
    "<OPEN_VOCABULARY_DETECTION>": _open_vocabulary,
}

# the tasks whose results become examples, in registry order
LABEL_TASKS = tuple(task for task in TASKS if task in CONVERTERS)


def _left_out(task: str) -> str | None:
    """Why results of ``task`` give no example, or None when they do."""
    if task not in TASKS:
        return "it is no task"
    if task not in CONVERTERS:
        return _UNMAPPED.get(task, "no annotation record holds it")
    return None


def score_option(value: str | float | None) -> float | None:
    """The ``min_score`` option: None, or a number in [0, 1]."""
    if value is None or value == "":
        return None
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= 1.0:
        raise AnnotationError(f"min_score: expected a number in [0, 1], got {value!r}")
    return score


def _line_size(where: str, item: dict) -> tuple[int, int]:
    size = (require(where, item, "width", int), require(where, item, "height", int))
    if min(size) <= 0:
        raise AnnotationError(f"{where}: width/height: expected positive sizes, got {size[0]}x{size[1]}")
    return size


def read_labels(
    path: str | os.PathLike,
    images: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    notes: list[str] | None = None,
    min_score: float | str | None = None,
) -> list[Example]:
    """Examples from a labeled dataset's JSON lines (see the module docstring): every result of
    ``tasks`` (of :data:`LABEL_TASKS`; default: all of them) that the file holds. ``min_score``:
    drop regions scoring below it first."""
    path = Path(path)
    chosen = choose_tasks(tasks, LABEL_TASKS, LABEL_TASKS, "labels")
    min_score = score_option(min_score)
    resolver = Images(Path(images) if images is not None else path.parent)
    out: list[Example] = []
    skipped: dict[str, Counter[str]] = {}
    no_image: list[str] = []
    for where, item in json_lines(path):
        require(where, item, "id", str)
        size = _line_size(where, item)
        results = require(where, item, "results", dict)
        name = item.get("image")
        if name is None:
            no_image.append(item["id"])
            continue
        image = resolver.path(f"{where}: image", name)
        if not image.is_file():
            raise AnnotationError(f"{where}: image: file {image} not found")
        for task, result in results.items():
            if task in _NOT_TASKS or (tasks and task not in chosen):
                continue
            regions = _Regions(min_score)
            reason = _left_out(task)
            fields = None
            if reason is None:
                try:
                    fields = CONVERTERS[task](f"{where}: results.{task}", result, size, regions)
                except _Unusable as e:
                    reason = str(e)
            if fields is not None:
                try:
                    out.extend(examples(record(image, size, **fields), [task], where))
                except AnnotationError:
                    reason = "the sample builders refuse it (a label is empty or holds '<')"
            counts = skipped.setdefault(task, Counter())
            if reason is not None:
                counts[f"results left out: {reason}"] += 1
            counts.update({f"regions dropped {why}": n for why, n in regions.dropped.items() if n})
    for task, counts in skipped.items():
        for why, n in sorted(counts.items()):
            note(notes, f"{path}: {task}: {n} {why}")
    if no_image:
        note(notes, f"{path}: {len(no_image)} lines without an image file give no samples", no_image)
    if not out:
        raise AnnotationError(f"{path}: no examples for tasks {', '.join(chosen)}")
    return out
