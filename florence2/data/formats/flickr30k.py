"""Flickr30k Entities in its distributed layout (``Annotations/<id>.xml``, ``Sentences/<id>.txt``,
``<split>.txt``): read into phrase-grounding benchmark samples (:func:`read_flickr30k`) and written
from annotation records (:func:`write_flickr30k`)."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from florence2.data.formats.records import BenchmarkSample
from florence2.data.formats.validate import image_file, image_folder
from florence2.errors import AnnotationError
from florence2.parsing import BANNED_GROUNDING_PHRASES

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
        raise AnnotationError(f"{path}: size: expected <size><width>W</width><height>H</height></size>") from None
    boxes: dict[str, list[list[float]]] = {}
    for k, obj in enumerate(root.iter("object")):
        box = obj.find("bndbox")
        if box is None:
            continue  # <nobndbox> or <scene>: nothing to ground
        try:
            values = [float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise AnnotationError(f"{path}: object[{k}].bndbox: expected numeric xmin, ymin, xmax, ymax") from None
        for name in obj.findall("name"):
            boxes.setdefault((name.text or "").strip(), []).append(values)
    return root.findtext("filename"), (width, height), boxes


def read_flickr30k(
    root: str | os.PathLike,
    images: str | os.PathLike,
    *,
    split: str = "test",
    check_images: bool = True,
) -> list[BenchmarkSample]:
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
    image_dir = image_folder(images)
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
        file = image_file(image_dir, names, f"{xml_path}: filename", check_images)
        for k, sentence in enumerate(sentences_path.read_text(encoding="utf-8").splitlines()):
            if not sentence.strip():
                continue
            plain, phrases = _parse_sentence(sentence)
            truth = [
                (phrase, boxes[eid]) for eid, types, phrase in phrases if eid in boxes and "notvisual" not in types
            ]
            if truth:
                samples.append(BenchmarkSample(f"{image_id}:{k}", file, plain, truth, image_id, size))
    return samples


def _marked_caption(item: Mapping[str, Any]) -> tuple[str, dict[int, dict]]:
    """The brief caption with ``[/EN#id/type phrase]`` markup, and entity id -> phrase."""
    caption = item["captions"]["brief"]
    pieces, position, entities = [], 0, {}
    for phrase in sorted(item.get("phrases", []), key=lambda p: p["start"]):
        start, end = phrase["start"], phrase["end"]
        if start < position:
            continue  # overlapping phrases cannot both be marked
        words = " ".join(phrase["phrase"].split())
        visual = phrase["object_ids"] and words not in BANNED_GROUNDING_PHRASES
        entity = len(entities) + 1 if visual else 0
        if visual:
            entities[entity] = phrase
        pieces.append(caption[position:start])
        pieces.append(f"[/EN#{entity}/{'other' if visual else 'notvisual'} {caption[start:end]}]")
        position = end
    pieces.append(caption[position:])
    return "".join(pieces), entities


def write_flickr30k(records: Sequence[Mapping[str, Any]], folder: Path, split: str = "test") -> Path:
    """Flickr30k Entities as distributed, from annotation records: ``folder/Annotations/<id>.xml`` (a
    ``<object>`` per object with a ``<name>`` per entity naming it), ``folder/Sentences/<id>.txt`` (the
    brief caption with its phrases marked; phrases the grounding parser bans, or naming nothing, are
    ``notvisual``) and ``folder/<split>.txt``. Image ids are the image file stems. Returns ``folder``."""
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "Sentences").mkdir(parents=True, exist_ok=True)
    ids = []
    for item in records:
        image_id = Path(item["image"]).stem
        ids.append(image_id)
        sentence, entities = _marked_caption(item)
        (folder / "Sentences" / f"{image_id}.txt").write_text(sentence + "\n", encoding="utf-8")
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = item["image"]
        size = ET.SubElement(root, "size")
        for tag, value in (("width", item["width"]), ("height", item["height"]), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        by_object: dict[int, list[int]] = {}
        for entity, phrase in entities.items():
            for object_id in phrase["object_ids"]:
                by_object.setdefault(object_id, []).append(entity)
        for obj in item["objects"]:
            if obj["id"] not in by_object:
                continue
            element = ET.SubElement(root, "object")
            for entity in by_object[obj["id"]]:
                ET.SubElement(element, "name").text = str(entity)
            box = ET.SubElement(element, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj["bbox"]):
                ET.SubElement(box, tag).text = f"{value:g}"
        ET.ElementTree(root).write(folder / "Annotations" / f"{image_id}.xml", encoding="utf-8")
    (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return folder
