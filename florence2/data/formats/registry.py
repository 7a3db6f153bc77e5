"""The dataset formats by name: what ``FORMAT:PATH...`` on the command line reads, and writes.

A format is added here, as one :class:`DataFormat` entry naming its reader (and its writer, where it
has one) from its own module of :mod:`florence2.data.formats`; ``florence2 finetune --data`` and
:func:`~florence2.data.formats.load_data` take it from this table. To have it recognised without the
``FORMAT:`` prefix, add a rule to :mod:`florence2.data.formats.detect`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from florence2.data.formats.captions import CAPTION_TASKS, read_captions
from florence2.data.formats.coco import DETECTION_TASKS, read_coco, write_coco
from florence2.data.formats.jsonl import read_jsonl
from florence2.data.formats.labels import LABEL_TASKS, read_labels
from florence2.data.formats.ocr import OCR_TASKS, read_ocr
from florence2.data.formats.records import Example
from florence2.data.formats.referring import (
    REFERRING_DEFAULT,
    REFERRING_TASKS,
    read_refcoco,
    read_refexp,
    write_refcoco,
)
from florence2.data.formats.synthetic import read_synthetic
from florence2.data.formats.yolo import read_yolo
from florence2.tasks import TASKS

# read(paths, tasks or None, options, notes or None) -> examples
Reader = Callable[[Sequence[Path], Sequence[str] | None, Mapping[str, str], "list[str] | None"], list[Example]]
# write(annotation records, where) -> the file the reader takes first
Writer = Callable[[Sequence[Mapping[str, Any]], Path], Path]


@dataclass(frozen=True)
class DataFormat:
    """One dataset layout: its name, how many paths it takes and what they are, its tasks, how it is
    read and (``write``, None where there is no writer yet) written from annotation records (the
    schema of :mod:`florence2.data.samples`)."""

    name: str
    usage: str  # the paths, e.g. "ANNOTATIONS.json[:IMAGES]"
    min_paths: int
    max_paths: int
    tasks: tuple[str, ...]  # the tasks it can give; empty: any (the data says)
    default_tasks: tuple[str, ...]
    options: tuple[str, ...]  # options other than tasks and weight
    description: str
    read: Reader
    write: Writer | None = None


def _second(paths: Sequence[Path], index: int = 1) -> Path | None:
    return paths[index] if len(paths) > index else None


FORMATS: dict[str, DataFormat] = {
    f.name: f
    for f in (
        DataFormat(
            "coco", "ANNOTATIONS.json[:IMAGES]", 1, 2, DETECTION_TASKS, ("<OD>",), (),
            "COCO detection JSON",
            lambda paths, tasks, options, notes: read_coco(paths[0], _second(paths), tasks, notes),
            write_coco,
        ),
        DataFormat(
            "yolo", "DIR", 1, 1, DETECTION_TASKS, ("<OD>",), ("split",),
            "YOLO folder: images/, labels/*.txt, data.yaml or classes.txt",
            lambda paths, tasks, options, notes: read_yolo(paths[0], options.get("split"), tasks, notes),
        ),
        DataFormat(
            "jsonl", "FILE.jsonl[:IMAGES]", 1, 2, (), (), (),
            "JSON lines of image, prefix, suffix",
            lambda paths, tasks, options, notes: read_jsonl(paths[0], _second(paths)),
        ),
        DataFormat(
            "captions", "DIR | FILE.csv[:IMAGES] | FILE.jsonl[:IMAGES]", 1, 2, CAPTION_TASKS, ("<CAPTION>",), (),
            "images with same-named .txt captions, or a CSV / JSON lines of image, caption",
            lambda paths, tasks, options, notes: read_captions(paths[0], _second(paths), tasks, notes),
        ),
        DataFormat(
            "refcoco", "REFS.p:INSTANCES.json[:IMAGES]", 2, 3, REFERRING_TASKS, REFERRING_DEFAULT, ("split",),
            "RefCOCO-style refs + COCO instances",
            lambda paths, tasks, options, notes: read_refcoco(
                paths[0], paths[1], _second(paths, 2), options.get("split"), tasks, notes
            ),
            write_refcoco,
        ),
        DataFormat(
            "refexp", "FILE.jsonl[:IMAGES]", 1, 2, REFERRING_TASKS, REFERRING_DEFAULT, (),
            "JSON lines of image, expression, bbox, polygon",
            lambda paths, tasks, options, notes: read_refexp(paths[0], _second(paths), tasks, notes),
        ),
        DataFormat(
            "ocr", "FILE.jsonl[:IMAGES]", 1, 2, OCR_TASKS, ("<OCR_WITH_REGION>", "<OCR>"), (),
            "JSON lines of image, texts (text, quad)",
            lambda paths, tasks, options, notes: read_ocr(paths[0], _second(paths), tasks, notes),
        ),
        DataFormat(
            "labels", "FILE.jsonl[:IMAGES]", 1, 2, LABEL_TASKS, LABEL_TASKS, ("min_score",),
            "JSON lines of a labeled dataset's export: id, image, width, height, results",
            lambda paths, tasks, options, notes: read_labels(
                paths[0], _second(paths), tasks, notes, options.get("min_score")
            ),
        ),
        DataFormat(
            "synthetic", "DIR", 1, 1, tuple(TASKS), ("<OD>",), (),
            "a synthetic split written by florence2.data.write_split",
            lambda paths, tasks, options, notes: read_synthetic(paths[0], tasks, notes),
        ),
    )
}  # fmt: skip
