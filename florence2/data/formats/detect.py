"""Recognising a dataset's format from its files, for ``--data PATH`` without ``FORMAT:``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from florence2.data.formats.captions import CAPTION_COLUMNS
from florence2.data.formats.referring import PICKLE_SUFFIXES
from florence2.data.formats.registry import FORMATS
from florence2.data.formats.validate import load_json, peek_jsonl
from florence2.data.formats.yolo import YOLO_MARKERS
from florence2.data.synthetic import ANNOTATIONS_FILE, WORLD_FILE
from florence2.errors import AnnotationError

_EXPRESSION_KEYS = {"expression", "expressions"}


def _detect_folder(folder: Path) -> str | None:
    if (folder / ANNOTATIONS_FILE).is_file() and (folder / WORLD_FILE).is_file():
        return "synthetic"
    if any((folder / n).is_file() for n in YOLO_MARKERS) or (
        (folder / "images").is_dir() and (folder / "labels").is_dir()
    ):
        return "yolo"
    if any(p.suffix.lower() == ".txt" for p in folder.iterdir()):
        return "captions"
    return None


def _detect_json(paths: Sequence[str]) -> str | None:
    if len(paths) >= 2 and Path(paths[1]).suffix.lower() == ".json":
        return "refcoco"  # refs.json:instances.json
    data = load_json(Path(paths[0]))
    if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
        return "coco"
    keys = set(data[0]) if isinstance(data, list) and data and isinstance(data[0], dict) else set()
    if keys & _EXPRESSION_KEYS:
        return "refexp"
    if "texts" in keys:
        return "ocr"
    if keys & set(CAPTION_COLUMNS):
        return "captions"
    return None


def _detect_jsonl(path: Path) -> str | None:
    keys = set(peek_jsonl(path) or {})
    if {"id", "results"} <= keys:
        return "labels"
    if {"prefix", "suffix"} <= keys:
        return "jsonl"
    if "texts" in keys:
        return "ocr"
    if keys & _EXPRESSION_KEYS:
        return "refexp"
    if keys & set(CAPTION_COLUMNS):
        return "captions"
    return None


def detect_format(paths: Sequence[str]) -> str:
    """The format of ``paths`` (see :mod:`florence2.data.formats`), recognised from file names and
    first records.

    Raises:
        AnnotationError: nothing fits; the message says how to name the format.
    """
    first = Path(paths[0])
    suffix = first.suffix.lower()
    if first.is_dir():
        found = _detect_folder(first)
    elif suffix in PICKLE_SUFFIXES:
        found = "refcoco"
    elif suffix == ".csv":
        found = "captions"
    elif suffix == ".json":
        found = _detect_json(paths)
    elif suffix in (".jsonl", ".ndjson"):
        found = _detect_jsonl(first)
    else:
        found = None
    if found is None:
        what = f"folder {first}" if first.is_dir() else str(first)
        hint = f"write FORMAT:{':'.join(paths)} with FORMAT one of {', '.join(FORMATS)}"
        raise AnnotationError(f"cannot tell the format of {what}; {hint}")
    return found
