"""Referring expressions: RefCOCO / RefCOCO+ / RefCOCOg (``refs(unc).p`` + the dataset's COCO
``instances.json``) and a simple JSON-lines form (``refexp``).

RefCOCO refs are read once (:func:`read_refs`, :func:`refcoco_refs`) into fine-tuning examples
(:func:`read_refcoco`) or benchmark samples (:func:`read_refcoco_expressions`), and written from
annotation records (:func:`write_refcoco`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from florence2.data.formats.coco import (
    CocoAnnotation,
    CocoFile,
    annotation_id,
    coco_image,
    coco_instances,
    coco_polygons,
    parse_coco,
)
from florence2.data.formats.records import BenchmarkSample, Example, choose_tasks, examples, note, record
from florence2.data.formats.validate import (
    Images,
    MissingFileError,
    bounds,
    field,
    image_file,
    image_folder,
    inside,
    json_lines,
    largest,
    load_json,
    numbers,
    records_of,
    require,
    text,
    write_json,
    xyxy,
)
from florence2.errors import AnnotationError

REFERRING_TASKS = (
    "<CAPTION_TO_PHRASE_GROUNDING>",
    "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<OPEN_VOCABULARY_DETECTION>",
    "<REGION_TO_SEGMENTATION>",
    "<REGION_TO_DESCRIPTION>",
)
REFERRING_DEFAULT = ("<CAPTION_TO_PHRASE_GROUNDING>", "<REFERRING_EXPRESSION_SEGMENTATION>")
PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


# --------------------------------------------------------------------------------------------------
# Reading refs
# --------------------------------------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers and scalars only: a refs file never needs a class, and loading one
    from an untrusted file could run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is accepted")


def _decoded(value: Any) -> Any:
    """``value`` with every byte string made text: UTF-8 where it is valid UTF-8, else Latin-1."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_decoded(v) for v in value)
    if isinstance(value, dict):
        return {_decoded(k): _decoded(v) for k, v in value.items()}
    return value


def _load_refs_pickle(path: Path) -> Any:
    # The distributed refs(*).p are Python 2 pickles: their `str`s are bytes of unknown encoding. They
    # are loaded as bytes (`encoding="bytes"`, nothing is lost) and decoded as UTF-8 where they are
    # valid UTF-8 (the expressions are UTF-8 text), else as Latin-1 (every byte kept as a character).
    try:
        with open(path, "rb") as f:
            return _decoded(_PlainUnpickler(f, encoding="bytes").load())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise AnnotationError(f"{path}: not a refs pickle: {e}") from None


def read_refs(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """``(where, ref)`` for every ref of a refs file: a pickled list (``refs(unc).p`` as distributed;
    plain data only), a JSON list (or ``{"refs": [...]}``) or JSON lines."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        refs = _load_refs_pickle(path)
    elif path.suffix.lower() == ".json":
        data = load_json(path)
        refs = data.get("refs") if isinstance(data, dict) else data
    else:
        return list(json_lines(path))
    if not isinstance(refs, list):
        raise AnnotationError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return [(f"{path}: refs[{i}]", ref) for i, ref in enumerate(refs)]


class RefcocoRef(NamedTuple):
    """A checked ref: ``where`` (``"refs file: refs[i]"``), the ref, the annotation it refers to."""

    where: str
    ref: dict
    annotation: CocoAnnotation


def refcoco_refs(refs: str | os.PathLike, coco: CocoFile, split: str | None) -> list[RefcocoRef]:
    """The refs of ``split`` (all when None) with their annotations in ``coco``: each ref's
    ``ann_id`` must be an annotation of ``coco``, and its ``image_id`` (when given) that annotation's."""
    refs_path = Path(refs)
    by_id = {ann.entry["id"]: ann for ann in coco.annotations if isinstance(ann.entry.get("id"), int)}
    out, splits = [], set()
    for where, ref in read_refs(refs_path):
        if split is not None:
            ref_split = field(where, ref, "split", str)
            splits.add(ref_split)
            if ref_split != split:
                continue
        ann_id = field(where, ref, "ann_id", int)
        if ann_id not in by_id:
            raise AnnotationError(f"{where}.ann_id: no annotation {ann_id} in {coco.path}")
        image_id = by_id[ann_id].entry["image_id"]
        if "image_id" in ref and field(where, ref, "image_id", int) != image_id:
            raise AnnotationError(f"{where}.image_id: {ref['image_id']} but annotation {ann_id} is on image {image_id}")
        out.append(RefcocoRef(where, ref, by_id[ann_id]))
    if split is not None and not out:
        known = ", ".join(sorted(splits))
        raise AnnotationError(f"{refs_path}: refs[*].split: no ref of split {split!r}; splits in the file: {known}")
    return out


def expression(where: str, sentence: Any, key: str = "sent") -> tuple[str, str]:
    """``(key, text)`` of a ref's sentence: its ``key`` text (``"sent"``, the distributed lower-cased
    form, or ``"raw"``), the other one when the sentence lacks it."""
    other = "raw" if key == "sent" else "sent"
    chosen = key if not isinstance(sentence, Mapping) or key in sentence else other
    return chosen, field(where, sentence, chosen, str)


# --------------------------------------------------------------------------------------------------
# Fine-tuning examples
# --------------------------------------------------------------------------------------------------


def _expression_record(image: Path, size: tuple[int, int], phrase: str, bbox, polygon) -> dict:
    """One expression as a record: the object is named by it (category, description, referring
    expression) and the caption is the expression, one phrase grounding it whole."""
    obj = {"id": 0, "category": phrase, "brief": phrase, "referring": phrase, "bbox": bbox}
    if polygon is not None:
        obj["polygon"] = polygon
    grounding = {"phrase": phrase, "start": 0, "end": len(phrase), "object_ids": [0]}
    return record(image, size, objects=[obj], captions={"brief": phrase}, phrases=[grounding])


def _expression_examples(
    image: Path, size: tuple[int, int], phrase: str, bbox, polygon, tasks, where, counts: dict
) -> list[Example]:
    out = examples(_expression_record(image, size, phrase, bbox, polygon), tasks, where)
    if polygon is None and any(t in tasks for t in ("<REFERRING_EXPRESSION_SEGMENTATION>", "<REGION_TO_SEGMENTATION>")):
        counts["no_polygon"] = counts.get("no_polygon", 0) + 1
    if "<CAPTION_TO_PHRASE_GROUNDING>" in tasks and not any(e.task == "<CAPTION_TO_PHRASE_GROUNDING>" for e in out):
        counts["banned"] = counts.get("banned", 0) + 1  # "it", "this", ...: the grounding parser drops them
    return out


def _referring_notes(notes, path, counts) -> None:
    if counts.get("no_polygon"):
        note(notes, f"{path}: {counts['no_polygon']} expressions without a polygon give no segmentation samples")
    if counts.get("banned"):
        note(notes, f"{path}: {counts['banned']} expressions the grounding parser ignores ('it', 'this', ...) skipped")


def read_refcoco(
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    images: str | os.PathLike | None = None,
    split: str | None = None,
    tasks: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[Example]:
    """Referring-expression examples from RefCOCO/RefCOCO+/RefCOCOg: ``refs`` (:func:`read_refs`:
    ``ann_id``, ``image_id``, ``split``, ``sentences`` with ``sent``) and the COCO ``instances.json``
    they point into (boxes, polygons, file names). One sample per sentence and task: ``tasks`` of
    :data:`REFERRING_TASKS`, default grounding and segmentation. ``split``: keep refs of that split."""
    refs_path, instances_path = Path(refs), Path(instances)
    tasks = choose_tasks(tasks, REFERRING_TASKS, REFERRING_DEFAULT, "refcoco")
    coco = parse_coco(instances_path)
    resolver = Images(Path(images) if images is not None else instances_path.parent)
    out: list[Example] = []
    counts: dict[str, int] = {}
    for where, ref, (ann_where, ann, box) in refcoco_refs(refs_path, coco, split):
        image_id = ann["image_id"]
        image, size = coco_image(f"{instances_path}: image id {image_id}", coco.images[image_id], resolver, True)
        bbox = inside(f"{ann_where}.bbox", box, size)
        polygon = largest(coco_polygons(f"{ann_where}.segmentation", ann.get("segmentation"), size))
        for j, sentence in enumerate(require(where, ref, "sentences", list)):
            at = f"{where}.sentences[{j}]"
            key, value = expression(at, sentence)
            phrase = text(f"{at}.{key}", value)
            out.extend(_expression_examples(image, size, phrase, bbox, polygon, tasks, where, counts))
    _referring_notes(notes, refs_path, counts)
    return out


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
    tasks = choose_tasks(tasks, REFERRING_TASKS, REFERRING_DEFAULT, "refexp")
    resolver = Images(Path(images) if images is not None else path.parent)
    out: list[Example] = []
    counts: dict[str, int] = {}
    for where, item in records_of(path):
        image = resolver.path(f"{where}: image", require(where, item, "image", str))
        size = resolver.size(where, image)
        if "expressions" in item:
            expressions = require(where, item, "expressions", list)
            if not expressions:
                raise AnnotationError(f"{where}: expressions: empty list")
            phrases = [text(f"{where}: expressions[{k}]", e) for k, e in enumerate(expressions)]
        else:
            phrases = [text(f"{where}: expression", require(where, item, "expression", str))]
        polygon = None
        if item.get("polygon") is not None:
            raw = item["polygon"]
            nested = isinstance(raw, list) and raw and isinstance(raw[0], list)
            at = f"{where}: polygon"
            polygon = largest([inside(at, numbers(at, p), size) for p in (raw if nested else [raw])])
        if item.get("bbox") is not None:
            bbox = xyxy(f"{where}: bbox", item["bbox"], size)
        elif polygon is not None:
            bbox = bounds(polygon)
        else:
            raise AnnotationError(f"{where}: missing field 'bbox' (or 'polygon')")
        for phrase in phrases:
            out.extend(_expression_examples(image, size, phrase, bbox, polygon, tasks, where, counts))
    _referring_notes(notes, path, counts)
    if not out:
        raise AnnotationError(f"{path}: no examples")
    return out


# --------------------------------------------------------------------------------------------------
# Benchmark samples
# --------------------------------------------------------------------------------------------------


def read_refcoco_expressions(
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    images: str | os.PathLike,
    *,
    split: str = "val",
    sentence_key: str = "sent",
    check_images: bool = True,
) -> list[BenchmarkSample]:
    """Read a referring-expression split: one sample per expression (sentence) of each ref.

    Args:
        refs: ``refs(unc).p`` (RefCOCO, RefCOCO+), ``refs(umd).p`` / ``refs(google).p`` (RefCOCOg),
            as distributed, or the same list as JSON (:func:`read_refs`). Each ref: ``ref_id``,
            ``ann_id``, ``image_id``, ``split`` and ``sentences`` (``sent``, ``raw``, ``sent_id``).
        instances: the dataset's ``instances.json`` (COCO format): the referred annotation's
            ``bbox`` and ``segmentation``, the image's ``file_name`` and size.
        images: COCO ``train2014/`` (every RefCOCO image is a train2014 image).
        split: ``val``, ``testA``, ``testB`` (RefCOCO, RefCOCO+), ``test`` (RefCOCOg umd), ...
        sentence_key: the expression text: ``"sent"`` (the distributed lower-cased form) or ``"raw"``;
            the other one when a sentence lacks it.

    Returns:
        Samples with ``id = "ref_id:sent_id"``, ``text`` the expression and ``truth =
        {"bbox": XYXY, "segmentation": COCO polygons or RLE, "ann_id": ...}``.
    """
    coco = parse_coco(instances)
    image_dir = image_folder(images)
    samples = []
    for where, ref, (ann_where, ann, box) in refcoco_refs(refs, coco, split):
        ref_id = field(where, ref, "ref_id", int)
        segmentation = ann.get("segmentation")
        if segmentation is not None and not isinstance(segmentation, (list, Mapping)):
            raise AnnotationError(f"{ann_where}.segmentation: expected polygons or RLE, got {segmentation!r}")
        image_id = ann["image_id"]
        entry, image_where = coco.images[image_id], coco.image_where[image_id]
        size = (field(image_where, entry, "width", int), field(image_where, entry, "height", int))
        file = image_file(image_dir, [entry["file_name"]], f"{image_where}.file_name", check_images)
        truth = {"bbox": box, "segmentation": segmentation, "ann_id": ann["id"]}
        for j, sentence in enumerate(field(where, ref, "sentences", list)):
            _, value = expression(f"{where}.sentences[{j}]", sentence, sentence_key)
            sent_id = sentence.get("sent_id", j)
            samples.append(BenchmarkSample(f"{ref_id}:{sent_id}", file, " ".join(value.split()), truth, image_id, size))
    return samples


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_refcoco(
    records: Sequence[Mapping[str, Any]],
    folder: Path,
    split: str = "val",
    categories: Sequence[str] | None = None,
    supercategory: str | None = None,
) -> Path:
    """RefCOCO as distributed, from annotation records: ``folder/instances.json`` (COCO format,
    :func:`~florence2.data.formats.coco.coco_instances` of ``categories`` and ``supercategory``) and
    ``folder/refs(unc).p`` (a pickled list of refs, one per object with a ``referring`` expression, all
    in ``split``). Returns the refs file."""
    folder = Path(folder)
    instances = coco_instances(records, categories, supercategory)
    write_json(folder / "instances.json", instances)
    category_ids = {c["name"]: c["id"] for c in instances["categories"]}
    refs, sent_id = [], 0
    for k, item in enumerate(records):
        stem, suffix = Path(item["image"]).stem, Path(item["image"]).suffix
        for j, obj in enumerate(item["objects"]):
            phrase = " ".join(str(obj.get("referring") or "").split())
            if not phrase:
                continue
            ann_id = annotation_id(k, j)
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": ann_id,
                    "image_id": k + 1,
                    "category_id": category_ids[obj["category"]],
                    "file_name": f"{stem}_{ann_id}{suffix}",
                    "split": split,
                    "sent_ids": [sent_id],
                    "sentences": [{"raw": phrase, "sent": phrase, "tokens": phrase.split(), "sent_id": sent_id}],
                }
            )
            sent_id += 1
    path = folder / "refs(unc).p"
    with open(path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return path
