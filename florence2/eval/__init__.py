"""Evaluation: metrics (pure functions) and the synthetic-world benchmark runner.

pycocotools (detection mAP) and pycocoevalcap (CIDEr-D) come with the ``eval`` extra and are
imported only when a figure needs them.
"""

from florence2.eval.metrics import (
    box_iou,
    caption_category_recall,
    cider_available,
    cider_d,
    coco_detection_map,
    edit_distance,
    grounding_recall_at_1,
    mask_iou,
    ocr_region_scores,
    ocr_scores,
    polygon_iou,
    rasterize_polygons,
    referring_miou,
)
from florence2.eval.synthetic import DEFAULT_TASKS, TARGETS, TASK_EVALS, check_targets, evaluate_synthetic

__all__ = [
    "DEFAULT_TASKS",
    "TARGETS",
    "TASK_EVALS",
    "box_iou",
    "caption_category_recall",
    "check_targets",
    "cider_available",
    "cider_d",
    "coco_detection_map",
    "edit_distance",
    "evaluate_synthetic",
    "grounding_recall_at_1",
    "mask_iou",
    "ocr_region_scores",
    "ocr_scores",
    "polygon_iou",
    "rasterize_polygons",
    "referring_miou",
]
