"""Export a synthetic split into the standard benchmark formats, so every benchmark runner runs on it.

>>> from florence2.data import write_split
>>> from florence2.eval.export import export_all
>>> write_split("split", 200, seed=777)
>>> export_all("split", "bench")     # then: florence2 eval coco-det --annotations bench/annotations/... ...

Layout written under ``out_dir`` (every exporter copies the split's images into ``images/``):

======================================  =============================================================
``images/``                             the split's PNGs
``annotations/instances_synthetic.json``  COCO detection: a box and a polygon per object (:func:`export_coco`)
``annotations/captions_synthetic.json``   COCO captions, the brief caption (:func:`export_captions`)
``annotations/dataset_synthetic.json``    Karpathy-style, every image in split ``"test"``
``annotations/textcaps_synthetic.json``   TextCaps-style ``data`` entries
``refcoco/refs(unc).p``, ``refcoco/instances.json``  RefCOCO: a ref per object with its referring
                                        expression, split ``"val"`` (:func:`export_refcoco`)
``flickr30k/Annotations``, ``Sentences``, ``test.txt``  Flickr30k Entities: the brief caption with
                                        its grounded phrases (:func:`export_flickr30k`)
``ocr/ocr.jsonl``                       ``{"image", "text"}`` per image with text (:func:`export_ocr`)
======================================  =============================================================

Image ``k`` of the split (record order) has id ``k + 1``; object ``j`` of it has annotation id
``1000 * (k + 1) + j + 1``; category ids follow :data:`florence2.data.synthetic.CATEGORIES` from 1.
The ground truth is the one the synthetic evaluation (:mod:`florence2.eval.synthetic`) scores: the
referring expressions, the brief caption's phrases less the ones the grounding parser bans, and the
``<OCR>`` training target.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from florence2.data.samples import build_samples
from florence2.data.synthetic import CATEGORIES, read_split
from florence2.parsing import BANNED_GROUNDING_PHRASES

__all__ = [
    "DATASET_NAME",
    "export_all",
    "export_captions",
    "export_coco",
    "export_flickr30k",
    "export_ocr",
    "export_refcoco",
]

DATASET_NAME = "synthetic"
IMAGES_DIR = "images"


def _read(split_dir: str | os.PathLike) -> tuple[Path, list[dict]]:
    split = Path(split_dir)
    return split, read_split(split)


def _copy_images(split: Path, records: list[dict], out: Path) -> Path:
    images = out / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    for record in records:
        source, target = split / record["image"], images / record["image"]
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, target)
    return images


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _xywh(box: list[float]) -> list[float]:
    x0, y0, x1, y1 = box
    return [x0, y0, round(x1 - x0, 4), round(y1 - y0, 4)]


def _polygon_area(polygon: list[float]) -> float:
    x, y = polygon[0::2], polygon[1::2]
    n = len(x)
    return abs(sum(x[i] * y[(i + 1) % n] - x[(i + 1) % n] * y[i] for i in range(n))) / 2


def _coco_instances(records: list[dict]) -> dict[str, Any]:
    category_ids = {name: k + 1 for k, name in enumerate(CATEGORIES)}
    images, annotations = [], []
    for k, record in enumerate(records):
        image_id = k + 1
        size = {"width": record["width"], "height": record["height"]}
        images.append({"id": image_id, "file_name": record["image"], **size})
        for j, obj in enumerate(record["objects"]):
            annotations.append(
                {
                    "id": 1000 * image_id + j + 1,
                    "image_id": image_id,
                    "category_id": category_ids[obj["category"]],
                    "bbox": _xywh(obj["bbox"]),
                    "segmentation": [obj["polygon"]],
                    "area": round(_polygon_area(obj["polygon"]), 4),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name, "supercategory": "shape"} for name, i in category_ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def export_coco(split_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """COCO detection: ``annotations/instances_synthetic.json`` (boxes XYWH, the object's polygon as
    its segmentation, polygon area) and the images. Returns the annotation file."""
    split, records = _read(split_dir)
    out = Path(out_dir)
    _copy_images(split, records, out)
    return _write_json(out / "annotations" / f"instances_{DATASET_NAME}.json", _coco_instances(records))


def export_captions(split_dir: str | os.PathLike, out_dir: str | os.PathLike, level: str = "brief") -> dict[str, Path]:
    """Captions in three layouts, one reference per image (the ``level`` caption: ``brief`` answers
    ``<CAPTION>``, ``detailed`` ``<DETAILED_CAPTION>``): COCO ``captions_synthetic.json``, Karpathy
    ``dataset_synthetic.json`` (split ``"test"``) and TextCaps ``textcaps_synthetic.json``.
    Returns ``{"coco": path, "karpathy": path, "textcaps": path}``."""
    split, records = _read(split_dir)
    out = Path(out_dir)
    _copy_images(split, records, out)
    captions = [" ".join(record["captions"][level].split()) for record in records]
    coco = {
        "images": [
            {"id": k + 1, "file_name": r["image"], "width": r["width"], "height": r["height"]}
            for k, r in enumerate(records)
        ],
        "annotations": [{"id": k + 1, "image_id": k + 1, "caption": c} for k, c in enumerate(captions)],
    }
    karpathy = {
        "dataset": DATASET_NAME,
        "images": [
            {
                "filepath": "",
                "filename": r["image"],
                "imgid": k,
                "cocoid": k + 1,
                "split": "test",
                "sentids": [k],
                "sentences": [{"raw": c, "tokens": c.lower().strip(".").split(), "imgid": k, "sentid": k}],
            }
            for k, (r, c) in enumerate(zip(records, captions))
        ],
    }
    textcaps = {
        "dataset_type": "test",
        "dataset_name": DATASET_NAME,
        "data": [
            {
                "image_id": Path(r["image"]).stem,
                "image_path": r["image"],
                "caption_id": k,
                "caption_str": c,
                "reference_strs": [c],
            }
            for k, (r, c) in enumerate(zip(records, captions))
        ],
    }
    folder = out / "annotations"
    return {
        "coco": _write_json(folder / f"captions_{DATASET_NAME}.json", coco),
        "karpathy": _write_json(folder / f"dataset_{DATASET_NAME}.json", karpathy),
        "textcaps": _write_json(folder / f"textcaps_{DATASET_NAME}.json", textcaps),
    }


def export_refcoco(split_dir: str | os.PathLike, out_dir: str | os.PathLike, split: str = "val") -> Path:
    """RefCOCO as distributed: ``refcoco/refs(unc).p`` (a pickled list of refs, one per object with a
    referring expression, all in ``split``) and ``refcoco/instances.json`` (COCO format, as
    :func:`export_coco`). Returns the refs file."""
    source, records = _read(split_dir)
    out = Path(out_dir)
    _copy_images(source, records, out)
    instances = _coco_instances(records)
    folder = out / "refcoco"
    _write_json(folder / "instances.json", instances)
    refs, sent_id = [], 0
    for k, record in enumerate(records):
        image_id = k + 1
        for j, obj in enumerate(record["objects"]):
            expression = " ".join(str(obj.get("referring") or "").split())
            if not expression:
                continue
            ann_id = 1000 * image_id + j + 1
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "category_id": CATEGORIES.index(obj["category"]) + 1,
                    "file_name": f"{Path(record['image']).stem}_{ann_id}{Path(record['image']).suffix}",
                    "split": split,
                    "sent_ids": [sent_id],
                    "sentences": [
                        {"raw": expression, "sent": expression, "tokens": expression.split(), "sent_id": sent_id}
                    ],
                }
            )
            sent_id += 1
    path = folder / "refs(unc).p"
    with open(path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return path


def _flickr_sentence(record: dict) -> tuple[str, dict[int, str]]:
    """The brief caption with ``[/EN#id/type phrase]`` markup, and entity id -> phrase."""
    caption = record["captions"]["brief"]
    pieces, position, entities = [], 0, {}
    for phrase in sorted(record.get("phrases", []), key=lambda p: p["start"]):
        start, end = phrase["start"], phrase["end"]
        if start < position:
            continue  # overlapping phrases cannot both be marked
        text = " ".join(phrase["phrase"].split())
        visual = phrase["object_ids"] and text not in BANNED_GROUNDING_PHRASES
        entity = len(entities) + 1 if visual else 0
        if visual:
            entities[entity] = phrase
        pieces.append(caption[position:start])
        pieces.append(f"[/EN#{entity}/{'other' if visual else 'notvisual'} {caption[start:end]}]")
        position = end
    pieces.append(caption[position:])
    return "".join(pieces), entities


def export_flickr30k(split_dir: str | os.PathLike, out_dir: str | os.PathLike, split: str = "test") -> Path:
    """Flickr30k Entities as distributed: ``flickr30k/Annotations/<id>.xml`` (a ``<object>`` per shape
    with a ``<name>`` per entity naming it), ``flickr30k/Sentences/<id>.txt`` (the brief caption with
    its phrases marked; phrases the grounding parser bans, or naming nothing, are ``notvisual``) and
    ``flickr30k/<split>.txt``. Image ids are the image file stems. Returns the Flickr30k folder."""
    source, records = _read(split_dir)
    out = Path(out_dir)
    _copy_images(source, records, out)
    folder = out / "flickr30k"
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "Sentences").mkdir(parents=True, exist_ok=True)
    ids = []
    for record in records:
        image_id = Path(record["image"]).stem
        ids.append(image_id)
        sentence, entities = _flickr_sentence(record)
        (folder / "Sentences" / f"{image_id}.txt").write_text(sentence + "\n", encoding="utf-8")
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = record["image"]
        size = ET.SubElement(root, "size")
        for tag, value in (("width", record["width"]), ("height", record["height"]), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        by_object: dict[int, list[int]] = {}
        for entity, phrase in entities.items():
            for object_id in phrase["object_ids"]:
                by_object.setdefault(object_id, []).append(entity)
        for obj in record["objects"]:
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


def export_ocr(split_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """OCR: ``ocr/ocr.jsonl``, ``{"image": name, "text": the <OCR> training target}`` per image with
    text (image names relative to ``images/``). Returns the JSON-lines file."""
    source, records = _read(split_dir)
    out = Path(out_dir)
    _copy_images(source, records, out)
    path = out / "ocr" / "ocr.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            for sample in build_samples(record, "<OCR>"):
                f.write(json.dumps({"image": record["image"], "text": sample.target}, ensure_ascii=False) + "\n")
    return path


def export_all(split_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Every export above into ``out_dir``; returns the written paths by name (``images``,
    ``instances``, ``captions``, ``karpathy``, ``textcaps``, ``refs``, ``refcoco_instances``,
    ``flickr30k``, ``ocr``)."""
    out = Path(out_dir)
    captions = export_captions(split_dir, out)
    refs = export_refcoco(split_dir, out)
    return {
        "images": out / IMAGES_DIR,
        "instances": export_coco(split_dir, out),
        "captions": captions["coco"],
        "karpathy": captions["karpathy"],
        "textcaps": captions["textcaps"],
        "refs": refs,
        "refcoco_instances": refs.parent / "instances.json",
        "flickr30k": export_flickr30k(split_dir, out),
        "ocr": export_ocr(split_dir, out),
    }
