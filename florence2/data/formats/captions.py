"""Captions: fine-tuning layouts (a folder of images with same-named ``.txt`` files, a CSV, JSON lines)
read into examples (:func:`read_captions`), and the benchmarks' reference files (COCO captions,
NoCaps, Karpathy, TextCaps) read into evaluation samples (:func:`read_caption_references`) and
written from annotation records (:func:`write_caption_references`)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from florence2.data.formats.records import BenchmarkSample, Example, choose_tasks, examples, note, record
from florence2.data.formats.validate import (
    Images,
    field,
    image_file,
    image_folder,
    image_size,
    load_json,
    records_of,
    require,
    top_list,
    write_json,
)
from florence2.errors import AnnotationError
from florence2.sources import find_images

CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
CAPTION_LEVELS = {"<CAPTION>": "brief", "<DETAILED_CAPTION>": "detailed", "<MORE_DETAILED_CAPTION>": "more_detailed"}
IMAGE_COLUMNS = ("image", "file_name", "filename", "file", "path")
CAPTION_COLUMNS = ("caption", "text")


# --------------------------------------------------------------------------------------------------
# Fine-tuning examples
# --------------------------------------------------------------------------------------------------


def _caption_examples(image: Path, size: tuple[int, int], caption: str, tasks: Sequence[str], where: str):
    annotation = record(image, size, captions={CAPTION_LEVELS[t]: caption for t in tasks})
    return examples(annotation, tasks, where)


def _column(where: str, header: Sequence[str], names: Sequence[str], what: str) -> str:
    for name in names:
        if name in header:
            return name
    raise AnnotationError(f"{where}: no {what} column; expected one of {', '.join(names)}, found {list(header)}")


def _folder_examples(folder: Path, tasks: Sequence[str], notes: list[str] | None) -> list[Example]:
    out: list[Example] = []
    missing = []
    for image in find_images(folder):
        text_path = image.with_suffix(".txt")
        if not text_path.is_file():
            missing.append(image.name)
            continue
        caption = " ".join(text_path.read_text(encoding="utf-8").split())
        if not caption:
            raise AnnotationError(f"{text_path}:1: caption: empty caption")
        out.extend(_caption_examples(image, image_size(image), caption, tasks, str(text_path)))
    if missing:
        note(notes, f"{folder}: {len(missing)} images without a .txt caption give no samples", missing)
    if not out:
        raise AnnotationError(f"{folder}: no image with a same-named .txt caption file")
    return out


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
    tasks = choose_tasks(tasks, CAPTION_TASKS, ("<CAPTION>",), "captions")
    if path.is_dir():
        return _folder_examples(path, tasks, notes)
    resolver = Images(Path(images) if images is not None else path.parent)
    if path.suffix.lower() == ".csv":
        try:
            content = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise AnnotationError(f"{path}: file not found") from None
        reader = csv.DictReader(io.StringIO(content))
        header = reader.fieldnames or []
        image_key = _column(f"{path}:1", header, IMAGE_COLUMNS, "image")
        caption_key = _column(f"{path}:1", header, CAPTION_COLUMNS, "caption")
        rows = ((f"{path}:{reader.line_num}", row) for row in reader)
    else:
        rows = ((where, item) for where, item in records_of(path))
        image_key, caption_key = "image", None
    out: list[Example] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {row!r}")
        key = caption_key or next((k for k in CAPTION_COLUMNS if k in row), "caption")
        image = resolver.path(f"{where}: {image_key}", row.get(image_key))
        caption = row.get(key)
        if not isinstance(caption, str) or not caption.strip():
            raise AnnotationError(f"{where}: {key}: expected a non-empty caption, got {caption!r}")
        size = resolver.size(where, image)
        out.extend(_caption_examples(image, size, " ".join(caption.split()), tasks, where))
    if not out:
        raise AnnotationError(f"{path}: no captions")
    return out


# --------------------------------------------------------------------------------------------------
# Benchmark references
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionData:
    """Caption references: ``samples`` (``truth`` = the reference captions), ``format``
    (``"coco"``, ``"karpathy"`` or ``"textcaps"``) and ``path``."""

    samples: list[BenchmarkSample]
    format: str
    path: Path


def _reference_format(path: Path, data: Any) -> str:
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):
        return "textcaps"
    if isinstance(data, Mapping) and isinstance(data.get("images"), list):
        first = data["images"][0] if data["images"] else {}
        if isinstance(first, Mapping) and "sentences" in first:
            return "karpathy"
        if "annotations" in data:
            return "coco"
    raise AnnotationError(
        f"{path}: not a caption file: expected COCO captions ({{images, annotations}}), Karpathy "
        "({images: [{sentences}]}) or TextCaps ({data: [...]})"
    )


def _coco_references(path: Path, data: Mapping, image_dir: Path, check: bool) -> list[BenchmarkSample]:
    references: dict[int, list[str]] = {}
    entries: dict[int, tuple[str, tuple[int, int] | None]] = {}
    for k, image in enumerate(top_list(path, data, "images")):
        where = f"{path}: images[{k}]"
        image_id = field(where, image, "id", (int, str))
        name = field(where, image, "file_name", str)
        size = None
        if "width" in image and "height" in image:
            size = (field(where, image, "width", int), field(where, image, "height", int))
            if min(size) <= 0:
                raise AnnotationError(f"{where}.width/height: expected positive sizes, got {size[0]}x{size[1]}")
        entries[image_id] = (name, size)
        references[image_id] = []
    for k, annotation in enumerate(top_list(path, data, "annotations")):
        where = f"{path}: annotations[{k}]"
        image_id = field(where, annotation, "image_id", (int, str))
        if image_id not in references:
            raise AnnotationError(f"{where}.image_id: no image with id {image_id!r}")
        references[image_id].append(field(where, annotation, "caption", str))
    samples = []
    for k, (image_id, (name, size)) in enumerate(entries.items()):
        if not references[image_id]:
            continue  # an image without references (test splits without public captions) is not scored
        file = image_file(image_dir, [name, Path(name).name], f"{path}: images[{k}].file_name", check)
        samples.append(BenchmarkSample(str(image_id), file, truth=references[image_id], image_id=image_id, size=size))
    return samples


def _karpathy_references(
    path: Path, data: Mapping, image_dir: Path, split: str | None, check: bool
) -> list[BenchmarkSample]:
    samples, splits = [], set()
    for k, image in enumerate(top_list(path, data, "images")):
        where = f"{path}: images[{k}]"
        name = field(where, image, "filename", str)
        image_split = image.get("split")
        splits.add(image_split)
        if split is not None and image_split != split:
            continue
        refs = []
        for j, sentence in enumerate(field(where, image, "sentences", list)):
            at = f"{where}.sentences[{j}]"
            if isinstance(sentence, Mapping) and "raw" not in sentence and "tokens" in sentence:
                refs.append(" ".join(field(at, sentence, "tokens", list)))
            else:
                refs.append(field(at, sentence, "raw", str))
        folder = image.get("filepath") or ""
        image_id = image.get("cocoid", image.get("imgid", name))
        file = image_file(image_dir, [os.path.join(folder, name), name], f"{where}.filename", check)
        if refs:
            samples.append(BenchmarkSample(str(image_id), file, truth=refs, image_id=image_id))
    if split is not None and not samples:
        known = ", ".join(sorted(str(s) for s in splits))
        raise AnnotationError(f"{path}: images[*].split: no image of split {split!r}; splits in the file: {known}")
    return samples


def _textcaps_references(path: Path, data: Mapping, image_dir: Path, check: bool) -> list[BenchmarkSample]:
    by_image: dict[str, tuple[str, list[str]]] = {}
    for k, entry in enumerate(require(str(path), data, "data", list)):
        where = f"{path}: data[{k}]"
        image_id = str(field(where, entry, "image_id", (str, int)))
        if "reference_strs" in entry:
            refs = [str(r) for r in field(where, entry, "reference_strs", list)]
        else:
            refs = [field(where, entry, "caption_str", str)]
        name = str(entry.get("image_path") or f"{image_id}.jpg")
        _, known_refs = by_image.setdefault(image_id, (name, []))
        known_refs.extend(r for r in refs if r not in known_refs)
    samples = []
    for image_id, (name, refs) in by_image.items():
        names = [name, Path(name).name, f"{image_id}.jpg"]
        file = image_file(image_dir, names, f"{path}: data[image_id={image_id}].image_path", check)
        samples.append(BenchmarkSample(image_id, file, truth=refs, image_id=image_id))
    return samples


def read_caption_references(
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
    data = load_json(path)
    image_dir = image_folder(images)
    kind = _reference_format(path, data)
    if kind == "karpathy":
        samples = _karpathy_references(path, data, image_dir, split, check_images)
    elif split is not None:
        raise AnnotationError(f"{path}: --split selects Karpathy splits; this is a {kind} file")
    elif kind == "coco":
        samples = _coco_references(path, data, image_dir, check_images)
    else:
        samples = _textcaps_references(path, data, image_dir, check_images)
    return CaptionData(samples, kind, path)


def write_caption_references(
    records: Sequence[Mapping[str, Any]], folder: Path, name: str, level: str = "brief"
) -> dict[str, Path]:
    """Write one reference per record (its ``level`` caption: ``brief`` answers ``<CAPTION>``,
    ``detailed`` ``<DETAILED_CAPTION>``) in three layouts into ``folder``: COCO ``captions_NAME.json``,
    Karpathy ``dataset_NAME.json`` (split ``"test"``) and TextCaps ``textcaps_NAME.json``. Returns
    ``{"coco": path, "karpathy": path, "textcaps": path}``."""
    captions = [" ".join(r["captions"][level].split()) for r in records]
    coco = {
        "images": [
            {"id": k + 1, "file_name": r["image"], "width": r["width"], "height": r["height"]}
            for k, r in enumerate(records)
        ],
        "annotations": [{"id": k + 1, "image_id": k + 1, "caption": c} for k, c in enumerate(captions)],
    }
    karpathy = {
        "dataset": name,
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
        "dataset_name": name,
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
    return {
        "coco": write_json(folder / f"captions_{name}.json", coco),
        "karpathy": write_json(folder / f"dataset_{name}.json", karpathy),
        "textcaps": write_json(folder / f"textcaps_{name}.json", textcaps),
    }
