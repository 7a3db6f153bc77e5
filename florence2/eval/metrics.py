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

Detection mAP comes from pycocotools and the caption metrics (BLEU, METEOR, ROUGE-L, CIDEr-D) from
pycocoevalcap (the ``eval`` extra, imported lazily; METEOR and coco-caption's PTB tokenizer need
Java); everything else is computed here. Polygons become masks through
:func:`florence2.convert.rasterize_polygons`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from florence2.convert import rasterize_polygons
from florence2.scoring import box_iou

__all__ = [
    "COCO_STATS",
    "box_iou",
    "caption_category_recall",
    "caption_scores",
    "cider_available",
    "cider_d",
    "coco_detection_dicts",
    "coco_detection_map",
    "coco_evaluate",
    "edit_distance",
    "grounding_recall_at_1",
    "java_available",
    "mask_iou",
    "normalize_text",
    "ocr_region_scores",
    "ocr_scores",
    "polygon_iou",
    "ptb_tokenize",
    "rasterize_polygons",
    "rec_accuracy",
    "referring_miou",
    "segmentation_scores",
    "tokenize_caption",
]

ImageSize = tuple[int, int]
_EVAL_EXTRA = "pip install 'florence2[eval]'"


# --------------------------------------------------------------------------------------------------
# Boxes and masks
# --------------------------------------------------------------------------------------------------


def mask_iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """IoU of two boolean masks of one shape; 0.0 when both are empty."""
    union = np.count_nonzero(mask_a | mask_b)
    return np.count_nonzero(mask_a & mask_b) / union if union else 0.0


def polygon_iou(predicted: Any, ground_truth: Any, image_size: ImageSize) -> float:
    """IoU of the union of ``predicted`` polygons with the union of ``ground_truth`` polygons, both
    rasterised by :func:`rasterize_polygons`. An empty prediction scores 0."""
    return mask_iou(rasterize_polygons(predicted, image_size), rasterize_polygons(ground_truth, image_size))


def segmentation_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | None]:
    """Referring segmentation scores of ``(predicted_mask, ground_truth_mask)`` pairs (bool, one
    shape per pair).

    Returns:
        ``{"mIoU": mean of per-pair IoU, "oIoU": total intersection / total union (pixels),
        "P@0.5": fraction with IoU >= 0.5}``; ``None`` each when there are no pairs. A pair whose
        masks are both empty has IoU 0.
    """
    ious, inter, union = [], 0, 0
    for pred_mask, gt_mask in pairs:
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


def referring_miou(pairs: Iterable[tuple[Any, Any, ImageSize]]) -> dict[str, float | None]:
    """Referring segmentation scores of polygons (:func:`segmentation_scores` on their masks).

    Args:
        pairs: ``(predicted_polygons, ground_truth_polygons, image_size)`` per referring expression;
            polygons in any form :func:`rasterize_polygons` takes (the predicted instances are united).
    """
    return segmentation_scores(
        (rasterize_polygons(predicted, size), rasterize_polygons(truth, size)) for predicted, truth, size in pairs
    )


def rec_accuracy(
    pairs: Iterable[tuple[Sequence[float] | None, Sequence[float]]], iou_threshold: float = 0.5
) -> dict[str, float | int | None]:
    """Referring expression comprehension accuracy: the fraction of expressions whose predicted box
    has IoU >= ``iou_threshold`` with the referred object's box.

    Args:
        pairs: ``(predicted_box or None, ground_truth_box)`` per expression, XYXY pixels; None (the
            model found nothing) is a miss.

    Returns:
        ``{"accuracy": hits / expressions (None without any), "expressions": count}``.
    """
    hits = total = 0
    for predicted, truth in pairs:
        total += 1
        if predicted is not None and len(predicted) == 4 and box_iou(predicted, truth)[0, 0] >= iou_threshold:
            hits += 1
    return {"accuracy": hits / total if total else None, "expressions": total}


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


COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_evaluate(
    gt_dataset: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    image_ids: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """pycocotools' ``COCOeval`` on a ground-truth dataset and detection results, in memory.

    The same numbers as ``COCOeval(COCO(gt_file), COCO(gt_file).loadRes(results_file), iou_type)``
    followed by ``evaluate()``, ``accumulate()``, ``summarize()`` (neither input is modified).

    Args:
        gt_dataset: a COCO dataset (``images``, ``annotations``, ``categories``), e.g. a loaded
            ``instances_val2017.json``.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` XYWH or ``segmentation``,
            ``score``).
        iou_type: ``"bbox"`` or ``"segm"``.
        image_ids: evaluate only these images (``params.imgIds``); default every image of the dataset.

    Returns:
        The 12 summary statistics under :data:`COCO_STATS` names (``AP`` = AP@[.5:.95], ``AP50``,
        ``AP75``, ``APs``/``APm``/``APl`` by area, ``AR1``/``AR10``/``AR100`` recall at that many
        detections, ``ARs``/``ARm``/``ARl``), fractions; None where COCO reports -1 (no ground truth in
        that area range); every figure 0.0 for an empty result list (COCO cannot load one).
    """
    COCO, COCOeval = _import_pycocotools()
    if not results:
        return {name: 0.0 for name in COCO_STATS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dict(gt_dataset))  # COCOeval writes "ignore" into annotations
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))  # loadRes writes into its input
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (None if s < 0 else float(s)) for name, s in zip(COCO_STATS, evaluator.stats)}


def coco_detection_map(
    gt_records: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float | None]:
    """COCO box mAP of detections, computed by pycocotools' ``COCOeval`` (:func:`coco_evaluate`).

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
    stats = coco_evaluate(gt_dict, results)
    return {"mAP": stats["AP"] or 0.0, "mAP50": stats["AP50"] or 0.0, "mAP75": stats["AP75"] or 0.0}


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


# --------------------------------------------------------------------------------------------------
# Caption metrics of coco-caption: BLEU, METEOR, ROUGE-L, CIDEr-D
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    """Whether a working ``java`` is on the PATH (coco-caption's PTB tokenizer and METEOR need one)."""
    java = shutil.which("java")
    if java is None:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _evalcap_file(*parts: str) -> str:
    try:
        import pycocoevalcap
    except ImportError as e:
        raise ImportError(f"caption metrics need pycocoevalcap: {_EVAL_EXTRA}") from e
    return os.path.join(list(pycocoevalcap.__path__)[0], *parts)


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """coco-caption's tokenisation: the Stanford PTB tokenizer shipped with pycocoevalcap (Java),
    lower case, punctuation tokens dropped: ``"Two dogs, running."`` -> ``"two dogs running"``.

    Runs one Java process for all sentences (line breaks inside a sentence become spaces), reading
    a temporary file instead of writing into the installed package as pycocoevalcap's wrapper does.

    Raises:
        RuntimeError: Java is missing or the tokenizer fails.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    if not sentences:
        return []
    if not java_available():
        raise RuntimeError("the PTB tokenizer needs Java (a 'java' on the PATH)")
    jar = _evalcap_file("tokenizer", STANFORD_CORENLP_3_4_1_JAR)
    lines = [" ".join(str(s).split()) for s in sentences]
    with tempfile.TemporaryDirectory(prefix="florence2-ptb-") as tmp:
        path = os.path.join(tmp, "sentences.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        command = ["java", "-Dfile.encoding=UTF-8", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer"]
        command += ["-preserveLines", "-lowerCase", "-encoding", "UTF-8", path]
        done = subprocess.run(command, capture_output=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the PTB tokenizer failed: {done.stderr.decode('utf-8', 'replace')[-500:]}")
    out = done.stdout.decode("utf-8", "replace").split("\n")
    if len(out) < len(lines):
        raise RuntimeError(f"the PTB tokenizer returned {len(out)} lines for {len(lines)} sentences")
    punctuation = set(PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punctuation) for line in out[: len(lines)]]


def _meteor(references: dict[int, list[str]], candidates: dict[int, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # one Java process, loading its paraphrase table takes seconds
    try:
        score, _ = scorer.compute_score(references, candidates)
    finally:
        process = scorer.meteor_p
        process.stdin.close()
        process.kill()
        process.wait()
    return float(score)


def caption_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], *, java: bool | None = None
) -> dict[str, Any]:
    """coco-caption's corpus scores of one candidate caption per image against its references.

    The scorers are pycocoevalcap's: BLEU-1..4 (``Bleu(4)``, "closest" reference length), METEOR
    1.5 (Java), ROUGE-L and CIDEr-D (``Cider``: the document frequencies come from the references
    given, so the score depends on the whole corpus). Captions are tokenized first by the PTB
    tokenizer (Java) as in coco-caption, or without Java by :func:`tokenize_caption`, which drops
    punctuation likewise but splits some words differently (``"don't"``); METEOR is then None.

    Args:
        candidates: one caption per image.
        references: the reference captions of each image (at least one each).
        java: use Java (PTB tokenizer, METEOR): True, False, or None for "when available".

    Returns:
        ``{"BLEU-1", ..., "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` as fractions (CIDEr-D on its own
        scale, 10x the mean cosine; papers print all of them x100), ``"tokenizer": "ptb"`` or
        ``"simple"``, ``"images"``; ``"meteor_error"`` when METEOR's Java process failed (METEOR is
        then None). Every figure None without images.

    Raises:
        ImportError: pycocoevalcap is missing; RuntimeError: ``java=True`` without a working Java.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every image needs at least one reference caption")
    _evalcap_file()  # a clear ImportError before any work
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    use_java = java_available() if java is None else java
    if use_java and not java_available():
        raise RuntimeError("java=True but no working 'java' is on the PATH")
    names = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    figures: dict[str, Any] = {name: None for name in names}
    figures.update(tokenizer="ptb" if use_java else "simple", images=len(candidates))
    if not candidates:
        return figures
    flat = [str(c) for c in candidates] + [str(r) for refs in references for r in refs]
    tokens = ptb_tokenize(flat) if use_java else [tokenize_caption(t) for t in flat]
    res = {i: [tokens[i]] for i in range(len(candidates))}
    gts, k = {}, len(candidates)
    for i, refs in enumerate(references):
        gts[i], k = tokens[k : k + len(refs)], k + len(refs)
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        bleu, _ = Bleu(4).compute_score(gts, res)
    figures.update(zip(names[:4], (float(b) for b in bleu)))
    figures["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if any(ref for refs in gts.values() for ref in refs):
        cider = float(Cider().compute_score(gts, res)[0])
        figures["CIDEr"] = cider if math.isfinite(cider) else 0.0
    else:
        figures["CIDEr"] = 0.0
    if use_java:
        try:
            figures["METEOR"] = _meteor(gts, res)
        except (OSError, ValueError) as e:  # the JVM could not start (memory) or died mid-way
            figures["meteor_error"] = f"{type(e).__name__}: {e}"[:300]
    return figures
