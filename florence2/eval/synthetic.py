"""Evaluate a predictor on a synthetic split: detection, referring segmentation, OCR, grounding, captions.

>>> from florence2 import Florence2
>>> from florence2.data import read_split
>>> report = evaluate_synthetic(Florence2.from_pretrained("runs/tiny/checkpoint-last"), read_split("val"), "val")
>>> report["od_mAP50"], report["referring_mIoU"], report["ocr_exact_match"], report["caption_all_named"]

Each task of :data:`TASK_EVALS` turns a record into queries (a text input or none, and the ground
truth), the predictor answers them, and the task's scorer reduces the answers to figures, reported
under the task's prefix (``od_mAP50``):

* ``<OD>`` (``od_``): one query per image, truth every object -> COCO ``mAP``, ``mAP50``, ``mAP75``.
* ``<REFERRING_EXPRESSION_SEGMENTATION>`` (``referring_``): one query per object, its ``referring``
  expression -> ``mIoU``, ``oIoU``, ``P@0.5`` of the union of the predicted polygons against the
  object's polygon (nothing predicted: IoU 0).
* ``<OCR>`` (``ocr_``): one query per image with text, truth the ``<OCR>`` training target (reading
  order, :data:`~florence2.data.samples.OCR_LINE_SEPARATOR`) -> ``exact_match``, ``cer``, ``wer``.
* ``<OCR_WITH_REGION>`` (``ocr_region_``, optional): one query per image with text -> end-to-end
  ``precision``, ``recall``, ``f1``.
* ``<CAPTION_TO_PHRASE_GROUNDING>`` (``grounding_``): one query per image, the brief caption; truth
  its grounded phrases (as in the training target) with their objects' boxes -> ``recall@1``.
* ``<CAPTION>``, ``<DETAILED_CAPTION>``, ``<MORE_DETAILED_CAPTION>`` (optional) (``caption_``,
  ``detailed_caption_``, ``more_detailed_caption_``): one query per image, truth that caption ->
  ``all_named``, ``category_recall``, ``category_precision``, and ``cider`` (CIDEr-D) when
  pycocoevalcap is installed (left out otherwise).

Metric definitions: :mod:`florence2.eval.metrics`. Text inputs and text references come from the
training-sample builders (:data:`florence2.data.samples.TARGET_BUILDERS`), so evaluation asks what
training taught; boxes and polygons come from the records themselves, unquantized.

Batching: tasks without input run together, one vision encoding per image for all of them; a text
task runs once per distinct text over all the images of a chunk that ask it (``predict`` takes one
text per call), so referring expressions and captions unique to an image run one image at a time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from florence2.data.samples import TARGET_BUILDERS
from florence2.data.synthetic import CATEGORIES
from florence2.errors import TaskError
from florence2.eval.metrics import (
    caption_category_recall,
    cider_available,
    cider_d,
    coco_detection_map,
    edit_distance,
    grounding_recall_at_1,
    normalize_text,
    ocr_region_scores,
    ocr_scores,
    polygon_iou,
    referring_miou,
)
from florence2.eval.runner import Predictor, Request, answer_requests, chunks
from florence2.image import load_image
from florence2.parsing import BANNED_GROUNDING_PHRASES
from florence2.progress import progress_bar
from florence2.tasks import TASKS, get_task

__all__ = [
    "DEFAULT_TASKS",
    "TARGETS",
    "TASK_EVALS",
    "Predictor",
    "TaskEval",
    "check_targets",
    "evaluate_synthetic",
    "evaluated_tasks",
]

# Images loaded and queried together; text tasks group their calls by text within a chunk.
_CHUNK_IMAGES = 256


class Outcome(NamedTuple):
    """One answered query: the record, the text input (or None), the ground truth, the prediction."""

    record: dict
    text: str | None
    truth: Any
    prediction: Any


Query = tuple[str | None, Any]  # (text input or None, ground truth)


@dataclass(frozen=True)
class TaskEval:
    """How one task is evaluated.

    Attributes:
        task: the task token.
        prefix: the prefix of its figures in the report (``"od"`` -> ``"od_mAP50"``).
        queries: record -> ``[(text input or None, ground truth), ...]``; none when the record has
            nothing to ask (``<OCR>`` on an image without text).
        score: every outcome of the task -> figures (names without the prefix).
        sample: one outcome -> per-sample figures for the predictions file.
    """

    task: str
    prefix: str
    queries: Callable[[dict], list[Query]]
    score: Callable[[list[Outcome]], dict[str, Any]]
    sample: Callable[[Outcome], dict[str, Any]] = field(default=lambda outcome: {})


# --------------------------------------------------------------------------------------------------
# Queries: what each task asks of a record, and the ground truth it is scored against
# --------------------------------------------------------------------------------------------------


def _training_pairs(record: dict, task: str) -> list[tuple[Any, str]]:
    """``(input, target)`` pairs of the training-sample builder of ``task`` (as ``build_samples``
    picks it: by task token, else by result type)."""
    spec = get_task(task)
    builder = TARGET_BUILDERS.get(spec.token) or TARGET_BUILDERS[spec.result_type]
    return builder(record, spec, None)


def _detection_queries(record: dict) -> list[Query]:
    objects = record["objects"]
    return [(None, {"bboxes": [o["bbox"] for o in objects], "labels": [o["category"] for o in objects]})]


def _referring_queries(record: dict) -> list[Query]:
    queries = []
    for obj in record["objects"]:
        # The builder of one object alone gives that object's expression, or nothing.
        for text, _ in _training_pairs({**record, "objects": [obj]}, "<REFERRING_EXPRESSION_SEGMENTATION>"):
            queries.append((text, obj["polygon"]))
    return queries


def _ocr_queries(record: dict) -> list[Query]:
    return [(None, target) for _, target in _training_pairs(record, "<OCR>")]


def _ocr_region_queries(record: dict) -> list[Query]:
    texts = record["texts"]
    return [(None, {"quad_boxes": [t["quad"] for t in texts], "labels": [t["text"] for t in texts]})] if texts else []


def _grounding_truth(record: dict) -> list[tuple[str, list]]:
    """The phrases a grounding target holds (not the banned ones), with the boxes of their objects."""
    boxes = {o["id"]: o["bbox"] for o in record["objects"]}
    truth = []
    for phrase in record.get("phrases", []):
        text = " ".join(phrase["phrase"].split())
        if text not in BANNED_GROUNDING_PHRASES and phrase["object_ids"]:
            truth.append((text, [boxes[i] for i in phrase["object_ids"]]))
    return truth


def _grounding_queries(record: dict) -> list[Query]:
    return [
        (caption, _grounding_truth(record)) for caption, _ in _training_pairs(record, "<CAPTION_TO_PHRASE_GROUNDING>")
    ]


def _caption_queries(task: str) -> Callable[[dict], list[Query]]:
    return lambda record: [(None, target) for _, target in _training_pairs(record, task)]


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def _size(record: dict) -> tuple[int, int]:
    return record["width"], record["height"]


def _score_detection(outcomes: list[Outcome]) -> dict[str, Any]:
    figures = coco_detection_map([o.record for o in outcomes], [o.prediction for o in outcomes])
    return {**figures, "images": len(outcomes), "objects": sum(len(o.truth["bboxes"]) for o in outcomes)}


def _score_referring(outcomes: list[Outcome]) -> dict[str, Any]:
    figures = referring_miou((o.prediction.get("polygons", []), o.truth, _size(o.record)) for o in outcomes)
    return {**figures, "expressions": len(outcomes)}


def _score_ocr(outcomes: list[Outcome]) -> dict[str, Any]:
    figures = ocr_scores((o.prediction, o.truth) for o in outcomes)
    figures["images"] = figures.pop("count")
    return figures


def _ocr_sample(outcome: Outcome) -> dict[str, Any]:
    prediction, truth = normalize_text(outcome.prediction), normalize_text(outcome.truth)
    return {"exact": prediction == truth, "cer": edit_distance(prediction, truth) / max(1, len(truth))}


def _score_ocr_region(outcomes: list[Outcome]) -> dict[str, Any]:
    figures = ocr_region_scores((o.prediction, o.truth) for o in outcomes)
    return {**figures, "images": len(outcomes)}


def _score_grounding(outcomes: list[Outcome]) -> dict[str, Any]:
    return grounding_recall_at_1((o.prediction, o.truth) for o in outcomes)


def _score_captions(outcomes: list[Outcome]) -> dict[str, Any]:
    figures = caption_category_recall([o.record for o in outcomes], [o.prediction for o in outcomes], CATEGORIES)
    if cider_available():
        figures["cider"] = cider_d([o.prediction for o in outcomes], [[o.truth] for o in outcomes])
    return figures


def _caption_sample(outcome: Outcome) -> dict[str, Any]:
    figures = caption_category_recall([outcome.record], [outcome.prediction], CATEGORIES)
    return {"category_recall": figures["category_recall"]}


TASK_EVALS: dict[str, TaskEval] = {
    e.task: e
    for e in (
        TaskEval(
            "<OD>",
            "od",
            _detection_queries,
            _score_detection,
            lambda o: {"objects": len(o.truth["bboxes"]), "detections": len(o.prediction.get("bboxes", []))},
        ),
        TaskEval(
            "<REFERRING_EXPRESSION_SEGMENTATION>",
            "referring",
            _referring_queries,
            _score_referring,
            lambda o: {"iou": polygon_iou(o.prediction.get("polygons", []), o.truth, _size(o.record))},
        ),
        TaskEval("<OCR>", "ocr", _ocr_queries, _score_ocr, _ocr_sample),
        TaskEval("<OCR_WITH_REGION>", "ocr_region", _ocr_region_queries, _score_ocr_region),
        TaskEval(
            "<CAPTION_TO_PHRASE_GROUNDING>",
            "grounding",
            _grounding_queries,
            _score_grounding,
            lambda o: grounding_recall_at_1([(o.prediction, o.truth)]),
        ),
        TaskEval("<CAPTION>", "caption", _caption_queries("<CAPTION>"), _score_captions, _caption_sample),
        TaskEval(
            "<DETAILED_CAPTION>",
            "detailed_caption",
            _caption_queries("<DETAILED_CAPTION>"),
            _score_captions,
            _caption_sample,
        ),
        TaskEval(
            "<MORE_DETAILED_CAPTION>",
            "more_detailed_caption",
            _caption_queries("<MORE_DETAILED_CAPTION>"),
            _score_captions,
            _caption_sample,
        ),
    )
}

DEFAULT_TASKS = (
    "<OD>",
    "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<OCR>",
    "<CAPTION_TO_PHRASE_GROUNDING>",
    "<CAPTION>",
    "<DETAILED_CAPTION>",
)

# The figures the embedded tiny model must reach on the synthetic world (each: report value >= target).
TARGETS: dict[str, float] = {
    "od_mAP50": 0.7,
    "referring_mIoU": 0.6,
    "ocr_exact_match": 0.7,
    "caption_all_named": 0.8,
}


def check_targets(report: Mapping[str, Any], targets: Mapping[str, float] = TARGETS) -> dict[str, bool | None]:
    """Figure name -> whether the report reaches its target (``>=``); None when it was not measured."""
    return {key: None if report.get(key) is None else bool(report[key] >= target) for key, target in targets.items()}


# --------------------------------------------------------------------------------------------------
# Running the predictor
# --------------------------------------------------------------------------------------------------


def evaluate_synthetic(
    predictor: Predictor,
    records: Sequence[dict],
    image_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] = DEFAULT_TASKS,
    batch_size: int = 8,
    max_images: int | None = None,
    progress: bool = True,
    decoding: Mapping[str, Any] | None = None,
    predictions_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run the evaluation tasks on a synthetic split and return the figures.

    Args:
        predictor: anything with :meth:`florence2.Florence2.predict`'s signature (a loaded model).
        records: annotation records of the split (:func:`florence2.data.read_split`).
        image_dir: the folder holding the records' images.
        tasks: task tokens (or names) of :data:`TASK_EVALS` to run; default :data:`DEFAULT_TASKS`.
        batch_size: images per forward pass, passed to ``predict``.
        max_images: evaluate only the first this many records.
        progress: a progress bar over the queries (needs tqdm).
        decoding: decoding options for ``predict`` (``num_beams``, ``max_new_tokens``, ...).
        predictions_path: write one JSON line per query: ``image``, ``task``, ``text``,
            ``prediction``, ``truth`` and the query's own figures (IoU, exact match, ...).

    Returns:
        A flat dict: ``images``, ``seconds`` (time spent predicting), then per task its figures
        under its prefix (``od_mAP50``, ``referring_mIoU``, ``ocr_cer``, ``grounding_recall@1``,
        ``caption_all_named``, ... and counts such as ``od_objects``). Fractions in [0, 1]; a figure
        without data (no text in the split) is None.
    """
    tokens = list(dict.fromkeys(get_task(name).token for name in tasks))
    unknown = [token for token in tokens if token not in TASK_EVALS]
    if unknown:
        raise TaskError(f"no evaluation for {', '.join(unknown)}; evaluated tasks: {', '.join(TASK_EVALS)}")
    evals = [TASK_EVALS[token] for token in tokens]
    records = list(records)[:max_images] if max_images is not None else list(records)
    image_dir = Path(image_dir)
    decoding = dict(decoding or {})

    queries = [[(e, text, truth) for e in evals for text, truth in e.queries(r)] for r in records]
    bar = progress_bar(sum(map(len, queries)), enabled=progress, unit="query", desc="evaluating")
    outcomes: dict[str, list[Outcome]] = {e.task: [] for e in evals}
    lines: list[dict[str, Any]] = []
    seconds = 0.0
    try:
        for chunk in chunks(range(len(records)), _CHUNK_IMAGES):
            images = [load_image(image_dir / records[i]["image"]) for i in chunk]
            requests = [Request(k, e.task, text) for k, i in enumerate(chunk) for e, text, _ in queries[i]]
            start = time.perf_counter()
            answers = answer_requests(predictor, images, requests, batch_size, decoding, bar.update)
            seconds += time.perf_counter() - start
            for k, i in enumerate(chunk):
                for e, text, truth in queries[i]:
                    outcome = Outcome(records[i], text, truth, answers[Request(k, e.task, text)].result)
                    outcomes[e.task].append(outcome)
                    if predictions_path is not None:
                        lines.append(
                            {
                                "image": records[i]["image"],
                                "task": e.task,
                                "text": text,
                                "prediction": outcome.prediction,
                                "truth": truth,
                                **e.sample(outcome),
                            }
                        )
    finally:
        bar.close()

    report: dict[str, Any] = {"images": len(records), "seconds": round(seconds, 3)}
    for e in evals:
        for key, value in e.score(outcomes[e.task]).items():
            report[f"{e.prefix}_{key}"] = value
    if predictions_path is not None:
        path = Path(predictions_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return report


def evaluated_tasks() -> list[str]:
    """Every task :func:`evaluate_synthetic` can run, in registry order."""
    return [token for token in TASKS if token in TASK_EVALS]
