"""Evaluation metrics: pure functions on official result dicts and annotation records.

Conventions shared by every function here:

* Coordinates are float pixels of the original image, ``image_size = (width, height)``; boxes are
  XYXY, polygons flat ``[x0, y0, x1, y1, ...]`` lists, OCR quads flat 8-value lists. Pixel ``(i, j)``
  covers ``[i, i + 1) x [j, j + 1)``; its centre is ``(i + 0.5, j + 0.5)``.
* Box areas are continuous (``(x1 - x0) * (y1 - y0)``, no ``+ 1``); mask areas count pixels.
* Figures are fractions in ``[0, 1]`` (CER and WER can exceed 1); a figure with nothing to average
  is ``None``.
* Text comparisons first collapse whitespace runs (line breaks included) to single spaces and strip
  the ends (:func:`normalize_text`); case and punctuation count.

Detection mAP comes from pycocotools and CIDEr-D from pycocoevalcap (the ``eval`` extra, imported
lazily); everything else is computed here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "box_iou",
    "caption_category_recall",
    "cider_available",
    "cider_d",
    "coco_detection_dicts",
    "coco_detection_map",
    "edit_distance",
    "grounding_recall_at_1",
    "mask_iou",
    "normalize_text",
    "ocr_region_scores",
    "ocr_scores",
    "polygon_iou",
    "rasterize_polygons",
    "referring_miou",
    "tokenize_caption",
]

ImageSize = tuple[int, int]
_EVAL_EXTRA = "pip install 'florence2[eval]'"


# --------------------------------------------------------------------------------------------------
# Boxes and masks
# --------------------------------------------------------------------------------------------------


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Pairwise IoU of two sets of XYXY boxes.

    Args:
        boxes_a: ``(N, 4)`` boxes (or one ``(4,)`` box), XYXY pixels.
        boxes_b: ``(M, 4)`` boxes (or one ``(4,)`` box).

    Returns:
        ``(N, M)`` float64 IoU; boxes of zero area have IoU 0 with everything.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _flat_polygons(polygons: Any) -> list[np.ndarray]:
    """Every flat polygon in ``polygons``, at any nesting depth, as ``(K, 2)`` vertex arrays."""
    if len(polygons) == 0:
        return []
    if isinstance(polygons[0], (int, float, np.number)):
        values = np.asarray(polygons, dtype=np.float64)
        return [values[: len(values) // 2 * 2].reshape(-1, 2)]
    return [p for item in polygons for p in _flat_polygons(item)]


def _fill_polygon(mask: np.ndarray, points: np.ndarray) -> None:
    """Set (in place) the pixels of ``mask`` whose centres lie inside the polygon ``points`` (K, 2),
    even-odd rule: per row of pixel centres, the sorted x of the edge crossings pair up into spans."""
    height, width = mask.shape
    row0 = max(0, math.ceil(points[:, 1].min() - 0.5))
    row1 = min(height, math.ceil(points[:, 1].max() - 0.5))
    if row0 >= row1:
        return
    ys = np.arange(row0, row1) + 0.5  # (R,) centres
    a, b = points, np.roll(points, -1, axis=0)
    ya, yb = a[:, 1:2], b[:, 1:2]  # (E, 1)
    crosses = (ya > ys) != (yb > ys)  # (E, R); half-open, so a vertex on a row counts once
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(crosses, a[:, 0:1] + (ys - ya) * (b[:, 0:1] - a[:, 0:1]) / (yb - ya), np.inf)
    xs = np.sort(xs, axis=0)  # (E, R), the inf of edges that miss a row last
    x_in, x_out = xs[0 : len(xs) - 1 : 2], xs[1::2]  # (E // 2, R)
    valid = np.isfinite(x_out)
    # Centre i + 0.5 lies in [x_in, x_out) for i in [ceil(x_in - 0.5), ceil(x_out - 0.5)).
    start = np.clip(np.ceil(x_in[valid] - 0.5), 0, width).astype(np.int64)
    stop = np.clip(np.ceil(x_out[valid] - 0.5), 0, width).astype(np.int64)
    rows = np.broadcast_to(np.arange(row1 - row0), valid.shape)[valid]
    edges = np.zeros((row1 - row0, width + 1), dtype=np.int64)
    np.add.at(edges, (rows, start), 1)
    np.add.at(edges, (rows, stop), -1)
    mask[row0:row1] |= np.cumsum(edges[:, :width], axis=1) > 0


def rasterize_polygons(polygons: Any, image_size: ImageSize) -> np.ndarray:
    """The union of polygons as a boolean mask at the image size.

    The one rasteriser of the evaluation: ground truth and predictions go through it alike. A pixel
    is set when its centre lies inside a polygon (even-odd rule), the convention the synthetic world
    draws and annotates with. Pillow's polygon fill is not used: it also fills the boundary pixels,
    which grows a shape by about a pixel per row and column and inflates the IoU of small objects.

    Args:
        polygons: one flat polygon ``[x0, y0, x1, y1, ...]``, a list of them, or the official
            segmentation result ``[[flat, ...] per instance]`` (any nesting: every list of numbers is
            one polygon); float pixels of the image. Polygons with fewer than 3 vertices or with a
            non-finite coordinate have no area and are skipped.
        image_size: ``(width, height)`` of the image.

    Returns:
        ``(height, width)`` bool mask.
    """
    mask = np.zeros((int(image_size[1]), int(image_size[0])), dtype=bool)
    for points in _flat_polygons(polygons):
        if len(points) >= 3 and np.all(np.isfinite(points)):
            _fill_polygon(mask, points)
    return mask


def mask_iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """IoU of two boolean masks of one shape; 0.0 when both are empty."""
    union = np.count_nonzero(mask_a | mask_b)
    return np.count_nonzero(mask_a & mask_b) / union if union else 0.0


def polygon_iou(predicted: Any, ground_truth: Any, image_size: ImageSize) -> float:
    """IoU of the union of ``predicted`` polygons with the union of ``ground_truth`` polygons, both
    rasterised by :func:`rasterize_polygons`. An empty prediction scores 0."""
    return mask_iou(rasterize_polygons(predicted, image_size), rasterize_polygons(ground_truth, image_size))


def referring_miou(pairs: Iterable[tuple[Any, Any, ImageSize]]) -> dict[str, float | None]:
    """Referring segmentation scores.

    Args:
        pairs: ``(predicted_polygons, ground_truth_polygons, image_size)`` per referring expression;
            polygons in any form :func:`rasterize_polygons` takes (the predicted instances are united).

    Returns:
        ``{"mIoU": mean of per-expression IoU, "oIoU": total intersection / total union (pixels),
        "P@0.5": fraction with IoU >= 0.5}``; ``None`` each when there are no pairs.
    """
    ious, inter, union = [], 0, 0
    for predicted, ground_truth, size in pairs:
        pred_mask, gt_mask = rasterize_polygons(predicted, size), rasterize_polygons(ground_truth, size)
        i, u = np.count_nonzero(pred_mask & gt_mask), np.count_nonzero(pred_mask | gt_mask)
        ious.append(i / u if u else 0.0)
        inter, union = inter + i, union + u
    if not ious:
        return {"mIoU": None, "oIoU": None, "P@0.5": None}
    return {
        "mIoU": float(np.mean(ious)),
        "oIoU": inter / union if union else 0.0,
        "P@0.5": float(np.mean(np.asarray(ious) >= 0.5)),
    }


# --------------------------------------------------------------------------------------------------
# Detection: COCO mAP through pycocotools
# --------------------------------------------------------------------------------------------------


def _import_pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError(f"detection mAP needs pycocotools: {_EVAL_EXTRA}") from e
    return COCO, COCOeval


def _xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_detection_dicts(
    gt_records: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO ground-truth dataset and detection results of :func:`coco_detection_map`, as the
    JSON objects pycocotools reads (``COCO(gt)``, ``coco.loadRes(results)``).

    Image ``k`` of ``gt_records`` gets id ``k + 1``; categories are every ground-truth category and
    predicted label, sorted by name, with ids from 1; ``area`` is the box area; boxes become XYWH.
    """
    if len(gt_records) != len(predictions):
        raise ValueError(f"{len(gt_records)} ground-truth records but {len(predictions)} predictions")
    names = {str(o["category"]) for r in gt_records for o in r["objects"]}
    names |= {str(label) for p in predictions for label in p.get("labels", [])}
    category_ids = {name: k + 1 for k, name in enumerate(sorted(names))}
    images, annotations, results = [], [], []
    for image_id, (record, prediction) in enumerate(zip(gt_records, predictions), start=1):
        images.append({"id": image_id, "width": record["width"], "height": record["height"]})
        for obj in record["objects"]:
            box = _xywh(obj["bbox"])
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval reads id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": category_ids[str(obj["category"])],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        boxes, labels = prediction.get("bboxes", []), prediction.get("labels", [])
        scores = prediction.get("scores")
        scores = [1.0] * len(boxes) if scores is None else scores
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(labels)} labels, {len(scores)} scores")
        for box, label, score in zip(boxes, labels, scores):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_ids[str(label)],
                    "bbox": _xywh(box),
                    "score": float(score),
                }
            )
    categories = [{"id": i, "name": name} for name, i in category_ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def coco_detection_map(
    gt_records: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float | None]:
    """COCO box mAP of detections, computed by pycocotools' ``COCOeval``.

    Args:
        gt_records: annotation records (``width``, ``height``, ``objects`` with ``bbox`` XYXY pixels and
            ``category``); every object is ground truth, none is crowd.
        predictions: one ``<OD>``-style result per record, ``{"bboxes": [[x0, y0, x1, y1], ...],
            "labels": [...], "scores": [...]}``; a missing ``scores`` list means 1.0 for every box
            (ties keep the output order). A label no ground-truth object has cannot match anything
            (COCO skips categories without ground truth).

    Returns:
        ``{"mAP": AP@[.5:.95], "mAP50": AP@.5, "mAP75": AP@.75}`` (area "all", up to 100 detections
        per image, 101-point interpolation, mean over categories with ground truth); ``None`` each
        when there is no ground-truth object at all.
    """
    gt_dict, results = coco_detection_dicts(gt_records, predictions)
    if not gt_dict["annotations"]:
        return {"mAP": None, "mAP50": None, "mAP75": None}
    if not results:
        return {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0}  # loadRes cannot read an empty list
    COCO, COCOeval = _import_pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes writes into its input
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats[:3]]
    return dict(zip(("mAP", "mAP50", "mAP75"), (max(s, 0.0) for s in stats)))


# --------------------------------------------------------------------------------------------------
# Phrase grounding
# --------------------------------------------------------------------------------------------------


def _phrase_key(text: str) -> str:
    # The grounding parser strips phrases and drops their non-ASCII characters; compare likewise.
    return " ".join(text.encode("ascii", "ignore").decode("ascii").lower().split())


def grounding_recall_at_1(
    pairs: Iterable[tuple[Mapping[str, Any], Sequence[tuple[str, Sequence[Sequence[float]]]]]],
    iou_threshold: float = 0.5,
) -> dict[str, float | int | None]:
    """Recall@1 of caption-to-phrase grounding.

    A ground-truth phrase is a hit when the first predicted box (in output order) whose label is
    that phrase has IoU >= ``iou_threshold`` with any of the phrase's ground-truth boxes. Labels and
    phrases are compared lower-cased, with whitespace collapsed and non-ASCII characters dropped
    (the parser drops them from labels). A phrase with no predicted box is a miss; predicted labels
    that are no ground-truth phrase are ignored (this is recall). Ground-truth phrases of one image
    with the same text are one phrase, with their boxes pooled.

    Args:
        pairs: per image, ``(prediction, phrases)``: the ``<CAPTION_TO_PHRASE_GROUNDING>`` result
            ``{"bboxes": [...], "labels": [...]}`` and the ground truth as
            ``[(phrase, [box, ...]), ...]``, boxes XYXY pixels.
        iou_threshold: the IoU a hit needs.

    Returns:
        ``{"recall@1": hits / phrases (None without phrases), "phrases": count}``.
    """
    hits = total = 0
    for prediction, phrases in pairs:
        truth: dict[str, list] = {}
        for phrase, boxes in phrases:
            truth.setdefault(_phrase_key(phrase), []).extend(boxes)
        first: dict[str, Sequence[float]] = {}
        for box, label in zip(prediction.get("bboxes", []), prediction.get("labels", [])):
            first.setdefault(_phrase_key(label), box)
        for key, boxes in truth.items():
            total += 1
            if key in first and boxes and box_iou(first[key], boxes).max() >= iou_threshold:
                hits += 1
    return {"recall@1": hits / total if total else None, "phrases": total}


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Whitespace runs (line breaks included) to single spaces, ends stripped: ``"A\\n B "`` -> ``"A B"``.
    OCR lines may be joined by a line break (our targets) or a space; both read the same."""
    return " ".join(str(text).split())


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions and substitutions cost 1) between two sequences:
    strings compare characters, lists of words compare words."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def ocr_scores(pairs: Iterable[tuple[str, str]]) -> dict[str, float | int | None]:
    """Plain-text OCR scores over ``(prediction, reference)`` pairs, both normalised by
    :func:`normalize_text`.

    Returns:
        ``{"exact_match": fraction of identical pairs, "cer": character edits / reference characters,
        "wer": word edits / reference words, "count": pairs}``. CER and WER are corpus-level (the sums
        over all pairs, divided once); the denominator is at least 1. ``None`` without pairs.
    """
    exact = char_edits = chars = word_edits = words = count = 0
    for prediction, reference in pairs:
        prediction, reference = normalize_text(prediction), normalize_text(reference)
        count += 1
        exact += prediction == reference
        char_edits += edit_distance(prediction, reference)
        chars += len(reference)
        word_edits += edit_distance(prediction.split(), reference.split())
        words += len(reference.split())
    if not count:
        return {"exact_match": None, "cer": None, "wer": None, "count": 0}
    return {
        "exact_match": exact / count,
        "cer": char_edits / max(1, chars),
        "wer": word_edits / max(1, words),
        "count": count,
    }


def _quad_boxes(quads: Sequence[Sequence[float]]) -> np.ndarray:
    points = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
    return np.concatenate([points.min(1), points.max(1)], axis=1)  # (N, 4) XYXY


def ocr_region_scores(
    pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]], iou_threshold: float = 0.5
) -> dict[str, float | int | None]:
    """End-to-end scores of ``<OCR_WITH_REGION>``: a predicted line is correct when it is matched to
    a ground-truth line whose text equals its own (:func:`normalize_text`) and whose box overlaps
    its box with IoU >= ``iou_threshold``; boxes are the axis-aligned bounds of the quads. Matching
    is one-to-one, greedy by decreasing IoU.

    Args:
        pairs: ``(prediction, ground_truth)`` per image, both ``{"quad_boxes": [[x0, y0, ..., x3, y3],
            ...], "labels": [text, ...]}``.

    Returns:
        ``{"precision", "recall", "f1", "lines": ground-truth lines}``; precision is None without
        predicted lines, recall and F1 None without ground-truth lines.
    """
    matched = predicted = truth = 0
    for prediction, ground_truth in pairs:
        pred_texts = [normalize_text(t) for t in prediction.get("labels", [])]
        gt_texts = [normalize_text(t) for t in ground_truth.get("labels", [])]
        predicted, truth = predicted + len(pred_texts), truth + len(gt_texts)
        if not pred_texts or not gt_texts:
            continue
        iou = box_iou(_quad_boxes(prediction["quad_boxes"]), _quad_boxes(ground_truth["quad_boxes"]))
        iou[np.array(pred_texts)[:, None] != np.array(gt_texts)[None, :]] = 0.0
        used_pred, used_gt = set(), set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            p, g = divmod(int(flat), iou.shape[1])
            if iou[p, g] < iou_threshold:
                break
            if p not in used_pred and g not in used_gt:
                used_pred.add(p)
                used_gt.add(g)
        matched += len(used_pred)
    precision = matched / predicted if predicted else None
    recall = matched / truth if truth else None
    f1 = None
    if recall is not None:
        f1 = 2 * matched / (predicted + truth)
    return {"precision": precision, "recall": recall, "f1": f1, "lines": truth}


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


def _category_pattern(name: str) -> re.Pattern[str]:
    # The name as whole words, any whitespace between its words, with an optional plural "s"/"es":
    # "circle" matches "circles", "cross" matches "crosses"; "star" does not match "start".
    words = r"\s+".join(re.escape(w) for w in name.split())
    return re.compile(rf"\b{words}(?:s|es)?\b", re.IGNORECASE)


def caption_category_recall(
    records: Sequence[Mapping[str, Any]], captions: Sequence[str], categories: Iterable[str] | None = None
) -> dict[str, float | int | None]:
    """How well captions name the object categories of their images.

    A caption names a category when it holds the category name as whole words, singular or with a
    plural ``s``/``es`` ending, in any case ("Two red circles" names "circle"). Images without
    objects are not scored.

    Args:
        records: annotation records (``objects`` with ``category``).
        captions: one caption per record.
        categories: the vocabulary a caption could name, for precision; default: every category of
            ``records``.

    Returns:
        ``{"all_named": fraction of images whose caption names every category present,
        "category_recall": mean over images of the fraction of present categories named,
        "category_precision": named categories that are present / named categories (summed over
        images; None when nothing is named), "images": images scored}``.
    """
    if len(records) != len(captions):
        raise ValueError(f"{len(records)} records but {len(captions)} captions")
    vocabulary = set(categories) if categories is not None else set()
    vocabulary |= {str(o["category"]) for r in records for o in r["objects"]}
    patterns = {name: _category_pattern(name) for name in sorted(vocabulary)}
    fractions, named_total, named_present = [], 0, 0
    for record, caption in zip(records, captions):
        present = {str(o["category"]) for o in record["objects"]}
        if not present:
            continue
        named = {name for name, pattern in patterns.items() if pattern.search(caption)}
        fractions.append(len(named & present) / len(present))
        named_total += len(named)
        named_present += len(named & present)
    if not fractions:
        return {"all_named": None, "category_recall": None, "category_precision": None, "images": 0}
    return {
        "all_named": float(np.mean(np.asarray(fractions) == 1.0)),
        "category_recall": float(np.mean(fractions)),
        "category_precision": named_present / named_total if named_total else None,
        "images": len(fractions),
    }


def tokenize_caption(text: str) -> str:
    """Lower-cased words (runs of letters and digits) joined by spaces; punctuation is dropped, as
    coco-caption's PTB tokenizer drops it: ``"Two red circles, and a star."`` -> ``"two red circles
    and a star"``. Used instead of that tokenizer, which needs Java."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def cider_available() -> bool:
    """Whether pycocoevalcap (the ``eval`` extra) is importable, so that :func:`cider_d` works."""
    try:
        from pycocoevalcap.cider.cider import Cider  # noqa: F401
    except ImportError:
        return False
    return True


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float | None:
    """Corpus CIDEr-D (pycocoevalcap's ``Cider``: n = 1..4, sigma = 6, clipped counts, x10 scale)
    of one candidate caption per image against that image's reference captions.

    Captions are tokenized by :func:`tokenize_caption`, not by the Java PTB tokenizer. The document
    frequencies come from the references given, so the score depends on the whole corpus (a single
    image scores 0). ``None`` without images.

    Raises:
        ImportError: pycocoevalcap is missing; the message names the extra.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError(f"CIDEr-D needs pycocoevalcap: {_EVAL_EXTRA}") from e
    refs = {i: [tokenize_caption(r) for r in image_refs] for i, image_refs in enumerate(references)}
    if not refs:
        return None
    if any(not image_refs for image_refs in refs.values()):
        raise ValueError("CIDEr-D needs at least one reference caption per image")
    if not any(ref for image_refs in refs.values() for ref in image_refs):
        return 0.0  # no reference n-grams at all: nothing to agree with
    score, _ = Cider().compute_score(refs, {i: [tokenize_caption(c)] for i, c in enumerate(candidates)})
    score = float(score)
    return score if math.isfinite(score) else 0.0
