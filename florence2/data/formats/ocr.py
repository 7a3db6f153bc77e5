"""OCR: JSON lines of images with their texts and quads read into fine-tuning examples
(:func:`read_ocr`); transcriptions (JSON lines ``{"image", "text"}`` or images with a same-named
``.txt``) read into benchmark samples (:func:`read_ocr_references`) and written from annotation
records (:func:`write_ocr_references`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from florence2.data.formats.records import BenchmarkSample, Example, choose_tasks, examples, note, record
from florence2.data.formats.validate import (
    Images,
    bounds,
    image_folder,
    inside,
    json_lines,
    numbers,
    records_of,
    require,
    xyxy,
)
from florence2.data.samples import build_samples
from florence2.errors import AnnotationError
from florence2.sources import is_image_file

OCR_TASKS = ("<OCR_WITH_REGION>", "<OCR>", "<REGION_TO_OCR>")


def _text_region(at: str, entry: Any, size: tuple[int, int]) -> dict:
    """One entry of ``texts``: its text, its quad (or its box as a quad) and its box."""
    content = require(at, entry, "text", str)
    if not content.strip():
        raise AnnotationError(f"{at}: text: empty text")
    if "<" in content:
        raise AnnotationError(f"{at}: text: {content!r} holds '<', which the result parsers cannot read back")
    if entry.get("quad") is not None:
        quad = inside(f"{at}: quad", numbers(f"{at}: quad", entry["quad"], 8), size)
        bbox = bounds(quad)
    elif entry.get("bbox") is not None:
        x0, y0, x1, y1 = bbox = xyxy(f"{at}: bbox", entry["bbox"], size)
        quad = [x0, y0, x1, y0, x1, y1, x0, y1]
    else:
        raise AnnotationError(f"{at}: missing field 'quad' (or 'bbox')")
    return {"text": content, "quad": quad, "bbox": bbox}


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
    tasks = choose_tasks(tasks, OCR_TASKS, ("<OCR_WITH_REGION>", "<OCR>"), "ocr")
    resolver = Images(Path(images) if images is not None else path.parent)
    out: list[Example] = []
    empty = []
    for where, item in records_of(path):
        image = resolver.path(f"{where}: image", require(where, item, "image", str))
        size = resolver.size(where, image)
        entries = require(where, item, "texts", list)
        texts = [_text_region(f"{where}: texts[{k}]", entry, size) for k, entry in enumerate(entries)]
        if not texts:
            empty.append(str(image.name))
            continue
        out.extend(examples(record(image, size, texts=texts), tasks, where))
    if empty:
        note(notes, f"{path}: {len(empty)} images without text give no samples", empty)
    if not out:
        raise AnnotationError(f"{path}: no examples")
    return out


def read_ocr_references(
    annotations: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    *,
    check_images: bool = True,
) -> list[BenchmarkSample]:
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
            raise ValueError("read_ocr_references needs an annotation file or an image folder")
        image_dir = image_folder(images)
        samples = []
        for file in sorted(image_dir.iterdir()):
            transcription = file.with_suffix(".txt")
            if is_image_file(file) and transcription.is_file():
                samples.append(BenchmarkSample(file.name, file, truth=transcription.read_text(encoding="utf-8")))
        if not samples:
            raise AnnotationError(f"{image_dir}: no image with a .txt transcription of the same name")
        return samples
    path = Path(annotations)
    image_dir = image_folder(images) if images is not None else path.parent
    samples, seen = [], {}
    for where, entry in json_lines(path):
        name = require(where, entry, "image", str)
        transcription = require(where, entry, "text", str)
        if name in seen:
            raise AnnotationError(f"{where}: image {name!r} already listed on line {seen[name]}")
        seen[name] = where.rpartition(":")[2]
        file = image_dir / name
        if check_images and not file.is_file():
            raise AnnotationError(f"{where}: image: {name!r} not found in {image_dir}")
        samples.append(BenchmarkSample(name, file, truth=transcription))
    return samples


def write_ocr_references(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """JSON lines ``{"image": name, "text": the <OCR> target}``, one per record with text; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for item in records:
            for sample in build_samples(item, "<OCR>"):
                f.write(json.dumps({"image": item["image"], "text": sample.target}, ensure_ascii=False) + "\n")
    return path
