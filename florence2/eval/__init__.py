"""Evaluation: metrics (pure functions), the synthetic-world evaluation, and the standard-benchmark
runners with exporters of a synthetic split into those benchmarks' formats.

pycocotools (mAP) and pycocoevalcap (BLEU, METEOR, ROUGE-L, CIDEr-D) come with the ``eval`` extra
and are imported only when a figure needs them. Modules: :mod:`~florence2.eval.metrics`,
:mod:`~florence2.eval.synthetic`, :mod:`~florence2.eval.benchmarks` (runners; the benchmarks' files
are read by :mod:`florence2.data.formats`), :mod:`~florence2.eval.registry` (the benchmarks by name:
where a benchmark is added), :mod:`~florence2.eval.export`, :mod:`~florence2.eval.runner` (batching),
:mod:`~florence2.eval.cli`.

Every benchmark's runner is exported here under its function name (``evaluate_coco_detection``,
``evaluate_captions``, ``evaluate_refcoco``, ...), taken from :data:`~florence2.eval.registry.BENCHMARKS`.
"""

from florence2.eval.export import export_all
from florence2.eval.metrics import (
    box_iou,
    caption_category_recall,
    caption_scores,
    cider_available,
    cider_d,
    coco_detection_map,
    coco_evaluate,
    edit_distance,
    grounding_recall_at_1,
    mask_iou,
    ocr_region_scores,
    ocr_scores,
    polygon_iou,
    rasterize_polygons,
    rec_accuracy,
    referring_miou,
    segmentation_scores,
)
from florence2.eval.registry import BENCHMARKS, Benchmark
from florence2.eval.synthetic import DEFAULT_TASKS, TARGETS, TASK_EVALS, check_targets, evaluate_synthetic

_RUNNERS = {benchmark.run.__name__: benchmark.run for benchmark in BENCHMARKS.values()}
globals().update(_RUNNERS)

__all__ = [
    "BENCHMARKS",
    "DEFAULT_TASKS",
    "TARGETS",
    "TASK_EVALS",
    "Benchmark",
    "box_iou",
    "caption_category_recall",
    "caption_scores",
    "check_targets",
    "cider_available",
    "cider_d",
    "coco_detection_map",
    "coco_evaluate",
    "edit_distance",
    "evaluate_synthetic",
    "export_all",
    "grounding_recall_at_1",
    "mask_iou",
    "ocr_region_scores",
    "ocr_scores",
    "polygon_iou",
    "rasterize_polygons",
    "rec_accuracy",
    "referring_miou",
    "segmentation_scores",
    *sorted(_RUNNERS),
]
