"""Export a synthetic split into the standard benchmark formats, so every benchmark runner runs on it.

>>> from florence2.data import write_split
>>> from florence2.eval.export import export_all
>>> write_split("split", 200, seed=777)
>>> export_all("split", "bench")     # then: florence2 eval coco-det --annotations bench/annotations/... ...

The split's images are copied into ``out_dir/images/``; each benchmark of
:data:`florence2.eval.registry.BENCHMARKS` writes its files beside them with its ``export`` (the
writers of :mod:`florence2.data.formats`):

======================================  =============================================================
``annotations/instances_synthetic.json``  COCO detection: a box and a polygon per object
``annotations/captions_synthetic.json``   COCO captions, the brief caption
``annotations/dataset_synthetic.json``    Karpathy-style, every image in split ``"test"``
``annotations/textcaps_synthetic.json``   TextCaps-style ``data`` entries
``refcoco/refs(unc).p``, ``refcoco/instances.json``  RefCOCO: a ref per object with its referring
                                        expression, split ``"val"``
``flickr30k/Annotations``, ``Sentences``, ``test.txt``  Flickr30k Entities: the brief caption with
                                        its grounded phrases
``ocr/ocr.jsonl``                       ``{"image", "text"}`` per image with text
======================================  =============================================================

Image ``k`` of the split (record order) has id ``k + 1``; object ``j`` of it has annotation id
``1000 * (k + 1) + j + 1``; category ids follow :data:`florence2.data.synthetic.CATEGORIES` from 1.
The ground truth is the one the synthetic evaluation (:mod:`florence2.eval.synthetic`) scores: the
referring expressions, the brief caption's phrases less the ones the grounding parser bans, and the
``<OCR>`` training target.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from florence2.data.synthetic import read_split
from florence2.eval.registry import BENCHMARKS

__all__ = ["IMAGES_DIR", "export_all", "export_commands"]

IMAGES_DIR = "images"


def _copy_images(split: Path, records: list[dict], out: Path) -> Path:
    images = out / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    for record in records:
        source, target = split / record["image"], images / record["image"]
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, target)
    return images


def export_all(split_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Every benchmark's files for the split ``split_dir`` into ``out_dir``; returns the written paths
    by name: ``images`` and those of each benchmark's ``export`` (``instances``, ``captions``,
    ``karpathy``, ``textcaps``, ``refs``, ``refcoco_instances``, ``flickr30k``, ``ocr``)."""
    split, out = Path(split_dir), Path(out_dir)
    records = read_split(split)
    paths = {"images": _copy_images(split, records, out)}
    for benchmark in BENCHMARKS.values():
        paths.update(benchmark.export(records, out))
    return paths


def export_commands(paths: Mapping[str, Path], results: Path) -> dict[str, list[str]]:
    """The ``florence2 eval`` command of each benchmark on the files :func:`export_all` wrote, each
    writing its results into ``results / NAME``."""
    return {
        name: [
            "florence2",
            "eval",
            name,
            *b.inputs(paths),
            "--images",
            str(paths["images"]),
            "--out",
            str(results / name),
        ]
        for name, b in BENCHMARKS.items()
    }
