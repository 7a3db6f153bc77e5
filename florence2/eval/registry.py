"""The standard benchmarks by name. Adding a benchmark is one :class:`Benchmark` entry in
:data:`BENCHMARKS`, naming its runner (:mod:`florence2.eval.benchmarks`, reading the benchmark's files
with a reader of :mod:`florence2.data.formats`), its command-line inputs and options, and how a
synthetic split is written in its format (a writer of :mod:`florence2.data.formats`).

The ``florence2 eval NAME`` subcommands (:mod:`florence2.eval.cli`), ``florence2 eval export``
(:func:`florence2.eval.export.export_all` and the commands it prints) and the runners that
:mod:`florence2.eval` exports are all built from this table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from florence2.data.formats import (
    CAPTION_TASKS,
    write_caption_references,
    write_coco,
    write_flickr30k,
    write_ocr_references,
    write_refcoco,
)
from florence2.data.synthetic import CATEGORIES
from florence2.errors import Florence2Error
from florence2.eval.benchmarks import (
    REC_TASKS,
    evaluate_captions,
    evaluate_coco_detection,
    evaluate_flickr30k,
    evaluate_ocr,
    evaluate_refcoco,
)
from florence2.tasks import get_task

__all__ = ["BENCHMARKS", "DATASET_NAME", "Benchmark", "option", "task_type"]

# the name in the file names of an exported synthetic split ("instances_synthetic.json")
DATASET_NAME = "synthetic"
SUPERCATEGORY = "shape"  # of every category of the synthetic world

Option = tuple[tuple[str, ...], dict[str, Any]]
Records = Sequence[Mapping[str, Any]]


def option(*flags: str, **kwargs: Any) -> Option:
    """A command-line option, as ``argparse.ArgumentParser.add_argument(*flags, **kwargs)`` takes it."""
    return flags, kwargs


def task_type(choices: Sequence[str], what: str = "tasks") -> Callable[[str], str]:
    """An argparse ``type``: a task name (``od``, ``<OD>``) -> its token, which must be one of ``choices``
    (``what`` names them in the message)."""

    def parse(name: str) -> str:
        try:
            token = get_task(name).token
        except Florence2Error as e:
            raise argparse.ArgumentTypeError(str(e)) from e
        if token not in choices:
            raise argparse.ArgumentTypeError(f"{token} is none of the {what}: {', '.join(choices)}")
        return token

    return parse


@dataclass(frozen=True)
class Benchmark:
    """One standard benchmark.

    Attributes:
        name: the ``florence2 eval NAME`` subcommand, and the summary's ``benchmark``.
        help, description: the subcommand's help line and description.
        run: the runner, called as ``run(predictor, out_dir=..., <limit>=..., batch_size=...,
            decoding=..., progress=..., model=..., command=..., **options)``.
        options: the subcommand's inputs and options; each one's ``dest`` is a keyword of ``run``.
        limit: the keyword of ``run`` that ``--max-samples`` sets.
        export: writes the records of a synthetic split in the benchmark's files under a folder (the
            images lie in its ``images/``); returns the written paths by name.
        inputs: the command-line inputs that read the files ``export`` wrote (from its paths).
        one_of: options of which at least one must be given.
    """

    name: str
    help: str
    description: str
    run: Callable[..., dict[str, Any]]
    options: tuple[Option, ...]
    limit: str
    export: Callable[[Records, Path], dict[str, Path]]
    inputs: Callable[[Mapping[str, Path]], list[str]]
    one_of: tuple[str, ...] = ()

    @property
    def dests(self) -> list[str]:
        """The keyword of ``run`` each option sets."""
        return [kwargs.get("dest", flags[0].lstrip("-").replace("-", "_")) for flags, kwargs in self.options]


def _export_captions(records: Records, out: Path) -> dict[str, Path]:
    written = write_caption_references(records, out / "annotations", DATASET_NAME)
    return {"captions": written["coco"], "karpathy": written["karpathy"], "textcaps": written["textcaps"]}


def _export_refcoco(records: Records, out: Path) -> dict[str, Path]:
    refs = write_refcoco(records, out / "refcoco", categories=CATEGORIES, supercategory=SUPERCATEGORY)
    return {"refs": refs, "refcoco_instances": refs.parent / "instances.json"}


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            name="coco-det",
            help="COCO detection mAP of <OD> (instances_*.json + image folder)",
            description="COCO box AP/AP50/AP75 of <OD> with pycocotools on a COCO detection file.",
            run=evaluate_coco_detection,
            options=(
                option("--annotations", required=True, help="COCO instances file, e.g. instances_val2017.json"),
                option("--images", required=True, help="the image folder, e.g. val2017/"),
                option("--unit-scores", action="store_true", help="rank every box 1.0 (ignore the model's scores)"),
            ),
            limit="max_images",
            export=lambda records, out: {
                "instances": write_coco(
                    records, out / "annotations" / f"instances_{DATASET_NAME}.json", CATEGORIES, SUPERCATEGORY
                )
            },
            inputs=lambda paths: ["--annotations", str(paths["instances"])],
        ),
        Benchmark(
            name="captions",
            help="CIDEr, BLEU-4, METEOR, ROUGE-L of a caption task (COCO / NoCaps / TextCaps / Karpathy files)",
            description="coco-caption scores (pycocoevalcap) of a caption task. METEOR and the PTB tokenizer "
            "need Java.",
            run=evaluate_captions,
            options=(
                option(
                    "--annotations", required=True, help="captions_*.json, Karpathy dataset_*.json or TextCaps json"
                ),
                option("--images", required=True, help="the image folder"),
                option("--split", help="Karpathy split to evaluate, e.g. test"),
                option(
                    "--task",
                    type=task_type(CAPTION_TASKS, "caption tasks"),
                    default="<CAPTION>",
                    help="caption task (default CAPTION)",
                ),
                option(
                    "--java",
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help="PTB tokenizer and METEOR through Java (default: when java works)",
                ),
            ),
            limit="max_images",
            export=_export_captions,
            inputs=lambda paths: ["--annotations", str(paths["captions"])],
        ),
        Benchmark(
            name="refcoco",
            help="RefCOCO/+/g: REC accuracy@0.5 and RES mIoU/oIoU",
            description="Referring expression comprehension and segmentation on RefCOCO, RefCOCO+ or RefCOCOg.",
            run=evaluate_refcoco,
            options=(
                option("--refs", required=True, help="refs(unc).p / refs(umd).p / refs(google).p, or the refs as JSON"),
                option("--instances", required=True, help="the dataset's instances.json"),
                option("--images", required=True, help="COCO train2014/"),
                option("--split", default="val", help="val, testA, testB, test (default val)"),
                option("--tasks", nargs="+", choices=["rec", "res"], default=["rec", "res"]),
                option(
                    "--rec-task",
                    type=task_type(REC_TASKS, "tasks answering an expression with boxes"),
                    default=REC_TASKS[0],
                    help="task answering REC (default CAPTION_TO_PHRASE_GROUNDING; or OPEN_VOCABULARY_DETECTION)",
                ),
                option(
                    "--sentence",
                    dest="sentence_key",
                    choices=["sent", "raw"],
                    default="sent",
                    help="expression text: the distributed lower-cased 'sent' (default) or the 'raw' one",
                ),
                option("--dataset", help="name for the summary (default: the refs file's folder)"),
            ),
            limit="max_samples",
            export=_export_refcoco,
            inputs=lambda paths: ["--refs", str(paths["refs"]), "--instances", str(paths["refcoco_instances"])],
        ),
        Benchmark(
            name="flickr30k",
            help="Flickr30k Entities phrase grounding recall@1",
            description="Phrase grounding recall@1 on Flickr30k Entities (Annotations/, Sentences/, <split>.txt).",
            run=evaluate_flickr30k,
            options=(
                option("--root", required=True, help="folder with Annotations/, Sentences/ and <split>.txt"),
                option("--images", required=True, help="flickr30k-images/"),
                option("--split", default="test", help="train, val or test (default test)"),
                option("--protocol", choices=["any", "merged"], default="any", help="any-box (default) or merged-box"),
            ),
            limit="max_samples",
            export=lambda records, out: {"flickr30k": write_flickr30k(records, out / "flickr30k")},
            inputs=lambda paths: ["--root", str(paths["flickr30k"])],
        ),
        Benchmark(
            name="ocr",
            help="OCR exact match, CER, WER of <OCR>",
            description="<OCR> exact match, CER and WER on JSON lines {image, text} or images with .txt files.",
            run=evaluate_ocr,
            options=(
                option("--annotations", help='JSON lines {"image": path, "text": transcription}'),
                option("--images", help="image folder (paths are relative to it; alone: images with same-name .txt)"),
            ),
            limit="max_images",
            export=lambda records, out: {"ocr": write_ocr_references(records, out / "ocr" / "ocr.jsonl")},
            inputs=lambda paths: ["--annotations", str(paths["ocr"])],
            one_of=("annotations", "images"),
        ),
    )
}
