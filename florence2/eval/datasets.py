"""Readers of the standard benchmark annotation files, as distributed, into evaluation samples.

One reader per benchmark family; each reads files from disk (never downloads), checks the fields
it uses and raises :class:`~florence2.errors.AnnotationError` naming the file and the field
(``instances_val2017.json: annotations[12].bbox: expected 4 numbers, got [1, 2]``).

=======================  ==================================================================  =================
reader                   files                                                               one sample per
=======================  ==================================================================  =================
:func:`read_coco_detection`  ``instances_*.json`` (COCO detection) + an image folder             image
:func:`read_captions`    COCO ``captions_*.json`` (also NoCaps), Karpathy ``dataset_*.json``,   image
                         TextCaps ``TextCaps_0.1_*.json`` + an image folder
:func:`read_refcoco`     ``refs(unc).p`` / ``refs(umd).p`` / ``refs(google).p`` (or the same    referring
                         list as JSON) + the dataset's ``instances.json`` + COCO train2014      expression
:func:`read_flickr30k`   Flickr30k Entities ``Annotations/*.xml``, ``Sentences/*.txt``,         sentence
                         ``{split}.txt`` + ``flickr30k-images``
:func:`read_ocr`         JSON lines ``{"image": ..., "text": ...}``, or a folder of images      image
                         with a same-name ``.txt`` transcription each
=======================  ==================================================================  =================

Coordinates come out as float pixels of the image, boxes XYXY (COCO's XYWH converted).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from florence2.errors import AnnotationError, require_field

__all__ = [
    "CaptionData",
    "CocoDetectionData",
    "Sample",
    "read_captions",
    "read_coco_detection",
    "read_flickr30k",
    "read_ocr",
    "read_refcoco",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    """One evaluation query.

    Attributes:
        id: unique within the benchmark (an image id, ``"ref_id:sent_id"``, ``"image_id:k"``).
        image: the image file.
        text: the task's text input (an expression, a caption), or None.
        truth: the ground truth, in the runner's form (see each reader).
        image_id: the dataset's id of the image.
        size: ``(width, height)`` as the annotations give it, or None.
    """

    id: str
    image: Path
    text: str | None = None
    truth: Any = None
    image_id: Any = None
    size: tuple[int, int] | None = None


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def _error(path: Path, where: str, message: str) -> AnnotationError:
    return AnnotationError(f"{path}: {where}: {message}" if where else f"{path}: {message}")


def _load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: malformed JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text: {e}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(path: Path, where: str, item: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """``item[key]``, checked to exist and to be of ``kind`` (bools are no ints)."""
    return require_field(f"{path}: {where}" if where else str(path), item, key, kind, sep="." if where else ": ")


def _list(path: Path, data: Any, key: str) -> list:
    """The top-level list ``data[key]`` of a JSON file."""
    if not isinstance(data, Mapping):
        raise _error(path, "", f"expected a JSON object at the top, got {type(data).__name__}")
    if key not in data:
        raise _error(path, "", f"missing top-level field {key!r}")
    return _field(path, "", data, key, list)


def _size(path: Path, where: str, item: Mapping) -> tuple[int, int]:
    width, height = _field(path, where, item, "width", int), _field(path, where, item, "height", int)
    if width <= 0 or height <= 0:
        raise _error(path, f"{where}.width/height", f"expected positive sizes, got {width}x{height}")
    return width, height


def _xywh_box(path: Path, where: str, value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != 4 or not all(_is_number(v) for v in value):
        raise _error(path, where, f"expected 4 numbers [x, y, width, height], got {value!r}"[:300])
    x, y, w, h = (float(v) for v in value)
    if w < 0 or h < 0:
        raise _error(path, where, f"negative width or height in {value!r}")
    return [x, y, x + w, y + h]


def _image_file(images: Path, names: Sequence[str], path: Path, where: str, check: bool) -> Path:
    """The first of ``images / name`` that exists (or the first candidate when not checking)."""
    candidates = [images / name for name in names if name]
    if not check:
        return candidates[0]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise _error(path, where, f"image {names[0]!r} not found in {images}")


def _check_dir(images: str | os.PathLike) -> Path:
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    return images


# --------------------------------------------------------------------------------------------------
# COCO detection
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoDetectionData:
    """A COCO detection annotation file, checked.

    Attributes:
        dataset: the ground truth as pycocotools reads it (``area`` and ``iscrowd`` filled in where
            the file leaves them out).
        samples: one per image, in file order; ``truth`` is None (the dataset is the truth).
        categories: category name -> id.
        path: the annotation file.
    """

    dataset: dict[str, Any]
    samples: list[Sample]
    categories: dict[str, int]
    path: Path


def read_coco_detection(
    annotations: str | os.PathLike, images: str | os.PathLike, *, check_images: bool = True
) -> CocoDetectionData:
    """Read a COCO detection file (``instances_val2017.json``) and its image folder (``val2017/``).

    Checks ``images[i]`` (``id``, ``file_name``, ``width``, ``height``), ``annotations[i]`` (``id``
    > 0 and unique, ``image_id`` and ``category_id`` that exist, ``bbox`` XYWH) and
    ``categories[i]`` (``id``, ``name``), and that each image file exists (``check_images``).
    """
    path = Path(annotations)
    data = _load_json(path)
    image_dir = _check_dir(images)
    categories: dict[str, int] = {}
    category_ids: set[int] = set()
    for k, category in enumerate(_list(path, data, "categories")):
        where = f"categories[{k}]"
        category_id = _field(path, where, category, "id", int)
        name = _field(path, where, category, "name", str)
        if category_id in category_ids:
            raise _error(path, f"{where}.id", f"duplicate category id {category_id}")
        category_ids.add(category_id)
        categories[name] = category_id
    samples, image_ids = [], set()
    entries = []
    for k, image in enumerate(_list(path, data, "images")):
        where = f"images[{k}]"
        image_id = _field(path, where, image, "id", int)
        if image_id in image_ids:
            raise _error(path, f"{where}.id", f"duplicate image id {image_id}")
        image_ids.add(image_id)
        name = _field(path, where, image, "file_name", str)
        size = _size(path, where, image)
        file = _image_file(image_dir, [name, Path(name).name], path, f"{where}.file_name", check_images)
        samples.append(Sample(str(image_id), file, image_id=image_id, size=size))
        entries.append({**image, "width": size[0], "height": size[1]})
    gt_annotations, annotation_ids = [], set()
    for k, annotation in enumerate(_list(path, data, "annotations")):
        where = f"annotations[{k}]"
        annotation_id = _field(path, where, annotation, "id", int)
        if annotation_id <= 0 or annotation_id in annotation_ids:
            why = "ids must be > 0 (COCOeval reads 0 as unmatched)" if annotation_id <= 0 else "duplicate id"
            raise _error(path, f"{where}.id", f"{why}: {annotation_id}")
        annotation_ids.add(annotation_id)
        if _field(path, where, annotation, "image_id", int) not in image_ids:
            raise _error(path, f"{where}.image_id", f"no image with id {annotation['image_id']}")
        if _field(path, where, annotation, "category_id", int) not in category_ids:
            raise _error(path, f"{where}.category_id", f"no category with id {annotation['category_id']}")
        x0, y0, x1, y1 = _xywh_box(path, f"{where}.bbox", _field(path, where, annotation, "bbox", list))
        iscrowd = annotation.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise _error(path, f"{where}.iscrowd", f"expected 0 or 1, got {iscrowd!r}")
        area = annotation.get("area", (x1 - x0) * (y1 - y0))
        if not _is_number(area):
            raise _error(path, f"{where}.area", f"expected a number, got {area!r}")
        gt_annotations.append({**annotation, "iscrowd": int(iscrowd), "area": float(area)})
    dataset = {
        "images": entries,
        "annotations": gt_annotations,
        "categories": [dict(c) for c in data["categories"]],
    }
    return CocoDetectionData(dataset, samples, categories, path)


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionData:
    """Caption references: ``samples`` (``truth`` = the reference captions), ``format``
    (``"coco"``, ``"karpathy"`` or ``"textcaps"``) and ``path``."""

    samples: list[Sample]
    format: str
    path: Path


def _caption_format(path: Path, data: Any) -> str:
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):
        return "textcaps"
    if isinstance(data, Mapping) and isinstance(data.get("images"), list):
        first = data["images"][0] if data["images"] else {}
        if isinstance(first, Mapping) and "sentences" in first:
            return "karpathy"
        if "annotations" in data:
            return "coco"
    raise _error(
        path,
        "",
        "not a caption file: expected COCO captions ({images, annotations}), Karpathy ({images: [{sentences}]}) "
        "or TextCaps ({data: [...]})",
    )


def _coco_captions(path: Path, data: Mapping, image_dir: Path, check: bool) -> list[Sample]:
    references: dict[int, list[str]] = {}
    entries: dict[int, tuple[str, tuple[int, int] | None]] = {}
    for k, image in enumerate(_list(path, data, "images")):
        where = f"images[{k}]"
        image_id = _field(path, where, image, "id", (int, str))
        name = _field(path, where, image, "file_name", str)
        size = _size(path, where, image) if "width" in image and "height" in image else None
        entries[image_id] = (name, size)
        references[image_id] = []
    for k, annotation in enumerate(_list(path, data, "annotations")):
        where = f"annotations[{k}]"
        image_id = _field(path, where, annotation, "image_id", (int, str))
        if image_id not in references:
            raise _error(path, f"{where}.image_id", f"no image with id {image_id!r}")
        references[image_id].append(_field(path, where, annotation, "caption", str))
    samples = []
    for k, (image_id, (name, size)) in enumerate(entries.items()):
        if not references[image_id]:
            continue  # an image without references (test splits without public captions) is not scored
        file = _image_file(image_dir, [name, Path(name).name], path, f"images[{k}].file_name", check)
        samples.append(Sample(str(image_id), file, truth=references[image_id], image_id=image_id, size=size))
    return samples


def _karpathy_captions(path: Path, data: Mapping, image_dir: Path, split: str | None, check: bool) -> list[Sample]:
    samples, splits = [], set()
    for k, image in enumerate(_list(path, data, "images")):
        where = f"images[{k}]"
        name = _field(path, where, image, "filename", str)
        image_split = image.get("split")
        splits.add(image_split)
        if split is not None and image_split != split:
            continue
        sentences = _field(path, where, image, "sentences", list)
        refs = []
        for j, sentence in enumerate(sentences):
            if isinstance(sentence, Mapping) and "raw" not in sentence and "tokens" in sentence:
                refs.append(" ".join(_field(path, f"{where}.sentences[{j}]", sentence, "tokens", list)))
            else:
                refs.append(_field(path, f"{where}.sentences[{j}]", sentence, "raw", str))
        folder = image.get("filepath") or ""
        image_id = image.get("cocoid", image.get("imgid", name))
        file = _image_file(image_dir, [os.path.join(folder, name), name], path, f"{where}.filename", check)
        if refs:
            samples.append(Sample(str(image_id), file, truth=refs, image_id=image_id))
    if split is not None and not samples:
        known = ", ".join(sorted(str(s) for s in splits))
        raise _error(path, "images[*].split", f"no image of split {split!r}; splits in the file: {known}")
    return samples


def _textcaps_captions(path: Path, data: Mapping, image_dir: Path, check: bool) -> list[Sample]:
    by_image: dict[str, tuple[str, list[str]]] = {}
    for k, entry in enumerate(_field(path, "", data, "data", list)):
        where = f"data[{k}]"
        image_id = str(_field(path, where, entry, "image_id", (str, int)))
        if "reference_strs" in entry:
            refs = [str(r) for r in _field(path, where, entry, "reference_strs", list)]
        else:
            refs = [_field(path, where, entry, "caption_str", str)]
        name = str(entry.get("image_path") or f"{image_id}.jpg")
        known_name, known_refs = by_image.setdefault(image_id, (name, []))
        known_refs.extend(r for r in refs if r not in known_refs)
    samples = []
    for image_id, (name, refs) in by_image.items():
        names = [name, Path(name).name, f"{image_id}.jpg"]
        file = _image_file(image_dir, names, path, f"data[image_id={image_id}].image_path", check)
        samples.append(Sample(image_id, file, truth=refs, image_id=image_id))
    return samples


def read_captions(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    *,
    split: str | None = None,
    check_images: bool = True,
) -> CaptionData:
    """Read caption references; the format is recognised from the file's structure.

    * COCO captions (``captions_val2014.json``; NoCaps ``nocaps_val_4500_captions.json`` has the same
      form): ``images`` (``id``, ``file_name``) and ``annotations`` (``image_id``, ``caption``);
      images without a caption are skipped. Image: ``images / file_name``.
    * Karpathy (``dataset_coco.json``): ``images`` with ``filepath``, ``filename``, ``split``,
      ``cocoid`` and ``sentences[].raw``; ``split`` picks the images (the Karpathy test split is
      ``"test"``). Image: ``images / filepath / filename``, else ``images / filename``.
    * TextCaps (``TextCaps_0.1_val.json``): ``data`` entries with ``image_id``, ``image_path`` and
      ``reference_strs`` (or ``caption_str``), several entries per image. Image: ``images /
      image_path``, else its file name, else ``{image_id}.jpg``.
    """
    path = Path(annotations)
    data = _load_json(path)
    image_dir = _check_dir(images)
    kind = _caption_format(path, data)
    if kind == "karpathy":
        samples = _karpathy_captions(path, data, image_dir, split, check_images)
    elif split is not None:
        raise AnnotationError(f"{path}: --split selects Karpathy splits; this is a {kind} file")
    elif kind == "coco":
        samples = _coco_captions(path, data, image_dir, check_images)
    else:
        samples = _textcaps_captions(path, data, image_dir, check_images)
    return CaptionData(samples, kind, path)


# --------------------------------------------------------------------------------------------------
# RefCOCO / RefCOCO+ / RefCOCOg
# --------------------------------------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers and scalars only: a refs file never needs a class, and loading
    one from an untrusted file could run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: refs files hold plain lists and dicts")


def _load_refs(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"refs file not found: {path}")
    if path.suffix.lower() == ".json":
        refs = _load_json(path)
    else:
        try:
            with open(path, "rb") as f:
                # The distributed files are Python 2 pickles; their byte strings are UTF-8 text.
                refs = _PlainUnpickler(f, encoding="utf-8", errors="replace").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise AnnotationError(f"{path}: not a refs pickle: {e}") from None
    if not isinstance(refs, list):
        raise _error(path, "", f"expected a list of refs, got {type(refs).__name__}")
    return refs


def read_refcoco(
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    images: str | os.PathLike,
    *,
    split: str = "val",
    sentence_key: str = "sent",
    check_images: bool = True,
) -> list[Sample]:
    """Read a referring-expression split: one sample per expression (sentence) of each ref.

    Args:
        refs: ``refs(unc).p`` (RefCOCO, RefCOCO+), ``refs(umd).p`` / ``refs(google).p`` (RefCOCOg),
            as distributed (a pickled list; only plain data is unpickled), or the same list as JSON.
            Each ref: ``ref_id``, ``ann_id``, ``image_id``, ``split`` and ``sentences`` (``sent``,
            ``raw``, ``sent_id``).
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
    refs_path, instances_path = Path(refs), Path(instances)
    ref_list = _load_refs(refs_path)
    data = _load_json(instances_path)
    image_dir = _check_dir(images)
    image_entries = {}
    for k, image in enumerate(_list(instances_path, data, "images")):
        where = f"images[{k}]"
        image_entries[_field(instances_path, where, image, "id", int)] = (
            _field(instances_path, where, image, "file_name", str),
            _size(instances_path, where, image),
            where,
        )
    annotation_entries = {}
    for k, annotation in enumerate(_list(instances_path, data, "annotations")):
        annotation_entries[_field(instances_path, f"annotations[{k}]", annotation, "id", int)] = (k, annotation)
    samples, splits = [], set()
    for k, ref in enumerate(ref_list):
        where = f"refs[{k}]"
        ref_split = _field(refs_path, where, ref, "split", str)
        splits.add(ref_split)
        if ref_split != split:
            continue
        ref_id = _field(refs_path, where, ref, "ref_id", int)
        ann_id = _field(refs_path, where, ref, "ann_id", int)
        image_id = _field(refs_path, where, ref, "image_id", int)
        if ann_id not in annotation_entries:
            raise _error(refs_path, f"{where}.ann_id", f"no annotation {ann_id} in {instances_path}")
        if image_id not in image_entries:
            raise _error(refs_path, f"{where}.image_id", f"no image {image_id} in {instances_path}")
        k_ann, annotation = annotation_entries[ann_id]
        ann_where = f"annotations[{k_ann}]"
        box = _xywh_box(
            instances_path, f"{ann_where}.bbox", _field(instances_path, ann_where, annotation, "bbox", list)
        )
        segmentation = annotation.get("segmentation")
        if segmentation is not None and not isinstance(segmentation, (list, Mapping)):
            raise _error(instances_path, f"{ann_where}.segmentation", f"expected polygons or RLE, got {segmentation!r}")
        name, size, image_where = image_entries[image_id]
        file = _image_file(image_dir, [name], instances_path, f"{image_where}.file_name", check_images)
        truth = {"bbox": box, "segmentation": segmentation, "ann_id": ann_id}
        for j, sentence in enumerate(_field(refs_path, where, ref, "sentences", list)):
            sentence_where = f"{where}.sentences[{j}]"
            other = "raw" if sentence_key == "sent" else "sent"
            key = sentence_key if not isinstance(sentence, Mapping) or sentence_key in sentence else other
            text = " ".join(_field(refs_path, sentence_where, sentence, key, str).split())
            sent_id = sentence.get("sent_id", j)
            samples.append(Sample(f"{ref_id}:{sent_id}", file, text, truth, image_id, size))
    if not samples:
        known = ", ".join(sorted(splits))
        raise _error(refs_path, "refs[*].split", f"no ref of split {split!r}; splits in the file: {known}")
    return samples


# --------------------------------------------------------------------------------------------------
# Flickr30k Entities
# --------------------------------------------------------------------------------------------------

# "[/EN#18/people A child]": entity id, entity types (slash-separated), the phrase.
_ENTITY = re.compile(r"\[/EN#(\d+)/(\S+) ([^\]]*)\]")


def _parse_sentence(line: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The plain sentence and its ``(entity_id, types, phrase)`` list."""
    phrases = [(m.group(1), m.group(2), " ".join(m.group(3).split())) for m in _ENTITY.finditer(line)]
    plain = _ENTITY.sub(lambda m: m.group(3), line)
    return " ".join(plain.split()), phrases


def _flickr_boxes(path: Path) -> tuple[str | None, tuple[int, int], dict[str, list[list[float]]]]:
    """File name, ``(width, height)`` and entity id -> boxes of one ``Annotations/*.xml``."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"{path}: malformed XML: {e}") from None
    try:
        width = int(root.findtext("size/width"))
        height = int(root.findtext("size/height"))
    except (TypeError, ValueError):
        raise _error(path, "size", "expected <size><width>W</width><height>H</height></size>") from None
    boxes: dict[str, list[list[float]]] = {}
    for k, obj in enumerate(root.iter("object")):
        box = obj.find("bndbox")
        if box is None:
            continue  # <nobndbox> or <scene>: nothing to ground
        try:
            values = [float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise _error(path, f"object[{k}].bndbox", "expected numeric xmin, ymin, xmax, ymax") from None
        for name in obj.findall("name"):
            boxes.setdefault((name.text or "").strip(), []).append(values)
    return root.findtext("filename"), (width, height), boxes


def read_flickr30k(
    root: str | os.PathLike,
    images: str | os.PathLike,
    *,
    split: str = "test",
    check_images: bool = True,
) -> list[Sample]:
    """Read Flickr30k Entities in its distributed layout: one sample per sentence.

    Args:
        root: the folder holding ``Annotations/<id>.xml`` (boxes: ``<object>`` with one ``<name>``
            per entity id and a ``<bndbox>``; objects with ``<nobndbox>`` have none),
            ``Sentences/<id>.txt`` (five sentences with ``[/EN#<id>/<type> phrase]`` markup) and
            ``<split>.txt`` (image ids, one a line).
        images: ``flickr30k-images/`` (``<id>.jpg``; the XML's ``<filename>`` when it names another).
        split: ``train``, ``val`` or ``test``.

    Returns:
        Samples with ``id = "image_id:k"`` (k-th sentence), ``text`` the sentence without markup and
        ``truth = [(phrase, [XYXY box, ...]), ...]``: every phrase whose entity has a box (phrases of
        ``notvisual`` entities and of entities without boxes are not scored, as in the dataset's
        evaluation).
    """
    root = Path(root)
    split_file = root / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"split file not found: {split_file}")
    image_dir = _check_dir(images)
    samples = []
    for line_number, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        xml_path, sentences_path = root / "Annotations" / f"{image_id}.xml", root / "Sentences" / f"{image_id}.txt"
        for needed in (xml_path, sentences_path):
            if not needed.is_file():
                raise AnnotationError(f"{split_file}:{line_number}: image {image_id}: {needed} not found")
        file_name, size, boxes = _flickr_boxes(xml_path)
        names = [n for n in (file_name, f"{image_id}.jpg", f"{image_id}.png") if n]
        file = _image_file(image_dir, names, xml_path, "filename", check_images)
        for k, sentence in enumerate(sentences_path.read_text(encoding="utf-8").splitlines()):
            if not sentence.strip():
                continue
            plain, phrases = _parse_sentence(sentence)
            truth = [
                (phrase, boxes[eid]) for eid, types, phrase in phrases if eid in boxes and "notvisual" not in types
            ]
            if truth:
                samples.append(Sample(f"{image_id}:{k}", file, plain, truth, image_id, size))
    return samples


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------


def read_ocr(
    annotations: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    *,
    check_images: bool = True,
) -> list[Sample]:
    """Read OCR ground truth: one sample per image, ``truth`` its text.

    Two layouts:

    * ``annotations``: JSON lines, ``{"image": "relative/path.png", "text": "the transcription"}``
      per line (blank lines skipped); paths are relative to ``images``, by default the folder of
      the annotation file. Lines of a multi-line text are joined by ``"\\n"`` or spaces alike (the
      metrics collapse whitespace).
    * ``images`` alone: every image file of the folder (sorted, not recursive) with a ``.txt`` of the
      same stem beside it (``page1.png`` + ``page1.txt``); images without one are skipped.
    """
    if annotations is None:
        if images is None:
            raise ValueError("read_ocr needs an annotation file or an image folder")
        image_dir = _check_dir(images)
        samples = []
        for file in sorted(image_dir.iterdir()):
            transcription = file.with_suffix(".txt")
            if file.suffix.lower() in IMAGE_SUFFIXES and transcription.is_file():
                samples.append(Sample(file.name, file, truth=transcription.read_text(encoding="utf-8")))
        if not samples:
            raise AnnotationError(f"{image_dir}: no image with a .txt transcription of the same name")
        return samples
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    image_dir = _check_dir(images) if images is not None else path.parent
    samples, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{where}: malformed JSON: {e}") from None
            name = _field(Path(where), "", entry, "image", str)
            text = _field(Path(where), "", entry, "text", str)
            if name in seen:
                raise AnnotationError(f"{where}: image {name!r} already listed on line {seen[name]}")
            seen[name] = line_number
            file = image_dir / name
            if check_images and not file.is_file():
                raise AnnotationError(f"{where}: image: {name!r} not found in {image_dir}")
            samples.append(Sample(name, file, truth=text))
    return samples
