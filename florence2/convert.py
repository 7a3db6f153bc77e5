"""Conversions of ``predict`` results to other formats: regions, masks, COCO RLE, COCO detection
results and ``supervision.Detections``.

>>> from florence2 import Florence2
>>> from florence2.convert import to_coco_detections, to_supervision
>>> result = Florence2.from_pretrained().predict("car.jpg", "<OD>")
>>> coco = to_coco_detections([result], image_ids=[42])        # COCO results JSON, names -> ids built
>>> detections = to_supervision(result, image_size=(640, 480))  # needs the supervision extra

Every region result of the task registry converts: boxes (``<OD>``, ``<DENSE_REGION_CAPTION>``,
``<REGION_PROPOSAL>``, ``<CAPTION_TO_PHRASE_GROUNDING>``), polygons (``<REFERRING_EXPRESSION_SEGMENTATION>``,
``<REGION_TO_SEGMENTATION>``), both (``<OPEN_VOCABULARY_DETECTION>``: boxes first, then polygons) and
OCR quads (``<OCR_WITH_REGION>``). A result may be the inner dict (``{"bboxes": ..., "labels": ...}``)
or ``predict``'s whole dict (``{"<OD>": {...}, "sequence_scores": {...}}``).

Scores: a region's score is read from the list parallel to its shapes (``scores``; for open-vocabulary
detection ``bboxes_scores`` / ``polygons_scores``). A result without one scores every region 1.0, and
``unit_scores=True`` forces 1.0 everywhere (to compare mAP with real scores against the constant
scores other tools report).

Coordinates are float pixels of the original image, ``image_size = (width, height)``; boxes XYXY
unless a COCO field says XYWH; polygons flat ``[x0, y0, x1, y1, ...]`` lists. A pixel ``(i, j)``
covers ``[i, i + 1) x [j, j + 1)`` and belongs to a polygon when its centre lies inside (even-odd
rule); masks are ``(H, W)`` bool arrays.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CocoDetections",
    "Regions",
    "category_key",
    "decode_rle",
    "encode_rle",
    "extract_regions",
    "rasterize_polygons",
    "region_masks",
    "to_coco_detections",
    "to_supervision",
]

ImageSize = tuple[int, int]


# --------------------------------------------------------------------------------------------------
# Polygons to masks
# --------------------------------------------------------------------------------------------------


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

    The one rasteriser of the package: evaluation ground truth and predictions go through it alike.
    A pixel is set when its centre lies inside a polygon (even-odd rule), the convention the
    synthetic world draws and annotates with. Pillow's polygon fill is not used: it also fills the
    boundary pixels, which grows a shape by about a pixel per row and column and inflates the IoU of
    small objects.

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


# --------------------------------------------------------------------------------------------------
# Regions: one view of every region result
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regions:
    """The regions of one result, whatever the task's result format.

    Attributes:
        boxes: ``(N, 4)`` float64 XYXY pixels; for a polygon or quad region, the bounds of its points.
        labels: N labels (``""`` where the task has none).
        scores: ``(N,)`` float64 confidences; 1.0 where the result carries none.
        polygons: per region, its flat polygons (a quad is one 4-vertex polygon), or None for a box.
        has_scores: whether the result carried scores (False when they were filled with 1.0).
    """

    boxes: np.ndarray
    labels: list[str]
    scores: np.ndarray
    polygons: list[list[list[float]] | None]
    has_scores: bool

    def __len__(self) -> int:
        return len(self.labels)


def _inner_result(result: Mapping[str, Any], task: str | None) -> Any:
    """The task's own result out of ``predict``'s whole dict; an inner dict is returned as it is."""
    if task is not None:
        from florence2.tasks import get_task

        token = get_task(task).token
        return result[token] if token in result else result
    tokens = [key for key in result if key.startswith("<") and key.endswith(">")]
    if len(tokens) > 1:
        raise ValueError(f"the result holds several tasks ({', '.join(tokens)}); pass task=")
    return result[tokens[0]] if tokens else result


def _scores(inner: Mapping[str, Any], key: str, count: int, unit_scores: bool) -> tuple[np.ndarray, bool]:
    values = inner.get(key)
    if values is None or unit_scores:
        return np.ones(count, dtype=np.float64), values is not None
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(scores) != count:
        raise ValueError(f"{key!r} holds {len(scores)} scores for {count} regions")
    return scores, True


def _labels(inner: Mapping[str, Any], key: str, count: int) -> list[str]:
    labels = [str(label) for label in inner.get(key, [""] * count)]
    if len(labels) != count:
        raise ValueError(f"{key!r} holds {len(labels)} labels for {count} regions")
    return labels


def _bounds(polygons: list[list[float]]) -> list[float]:
    points = [p for p in _flat_polygons(polygons) if len(p)]
    if not points:
        return [0.0, 0.0, 0.0, 0.0]
    stacked = np.concatenate(points)
    return [*stacked.min(0).tolist(), *stacked.max(0).tolist()]


def _polygon_instances(values: Sequence[Any]) -> list[list[list[float]]]:
    """Per instance, its flat polygons; accepts ``[[flat, ...], ...]`` and a flat list per instance."""
    instances = []
    for instance in values:
        if len(instance) and isinstance(instance[0], (int, float, np.number)):
            instance = [instance]
        instances.append([[float(v) for v in polygon] for polygon in instance])
    return instances


def extract_regions(result: Mapping[str, Any], *, task: str | None = None, unit_scores: bool = False) -> Regions:
    """The regions of a region result, with their labels and scores.

    Args:
        result: an inner result (``{"bboxes": ..., "labels": ..., "scores": ...}``) or ``predict``'s
            whole dict for one image (the task is found by its token).
        task: the task to take out of a whole dict holding several.
        unit_scores: score every region 1.0, whatever the result carries.

    Raises:
        ValueError: a text result, or lists of different lengths.
    """
    inner = _inner_result(result, task)
    if not isinstance(inner, Mapping):
        raise ValueError(f"not a region result: {type(inner).__name__} {str(inner)[:60]!r}")
    boxes: list[list[float]] = []
    labels: list[str] = []
    polygons: list[list[list[float]] | None] = []
    score_parts: list[np.ndarray] = []
    has_scores = False

    def add(shapes_key: str, labels_key: str, scores_key: str) -> None:
        nonlocal has_scores
        values = inner.get(shapes_key) or []
        if shapes_key == "bboxes":
            for box in values:
                boxes.append([float(v) for v in box])
                polygons.append(None)
        elif shapes_key == "quad_boxes":
            for quad in values:
                polygon = [[float(v) for v in quad]]
                boxes.append(_bounds(polygon))
                polygons.append(polygon)
        else:
            for instance in _polygon_instances(values):
                boxes.append(_bounds(instance))
                polygons.append(instance)
        labels.extend(_labels(inner, labels_key, len(values)))
        scores, present = _scores(inner, scores_key, len(values), unit_scores)
        score_parts.append(scores)
        has_scores = has_scores or present

    if "bboxes_labels" in inner or "polygons_labels" in inner:  # open-vocabulary detection
        add("bboxes", "bboxes_labels", "bboxes_scores")
        add("polygons", "polygons_labels", "polygons_scores")
    elif "quad_boxes" in inner:
        add("quad_boxes", "labels", "scores")
    elif "polygons" in inner:
        add("polygons", "labels", "scores")
    elif "bboxes" in inner:
        add("bboxes", "labels", "scores")
    else:
        raise ValueError(f"no regions in a result with keys {sorted(inner)}")
    return Regions(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=labels,
        scores=np.concatenate(score_parts) if score_parts else np.zeros(0),
        polygons=polygons,
        has_scores=has_scores,
    )


def _box_polygon(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def region_masks(regions: Regions, image_size: ImageSize) -> np.ndarray:
    """``(N, H, W)`` bool masks of the regions: the union of a region's polygons, or its box filled."""
    width, height = int(image_size[0]), int(image_size[1])
    masks = np.zeros((len(regions), height, width), dtype=bool)
    for k, (box, polygons) in enumerate(zip(regions.boxes, regions.polygons)):
        masks[k] = rasterize_polygons(polygons if polygons is not None else _box_polygon(box), image_size)
    return masks


# --------------------------------------------------------------------------------------------------
# COCO run-length encoding
# --------------------------------------------------------------------------------------------------


def _pycocotools_mask() -> Any | None:
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        return None
    return mask_utils


def encode_rle(mask: np.ndarray, *, compressed: bool | None = None) -> dict[str, Any]:
    """COCO RLE of a ``(H, W)`` bool mask: ``{"size": [H, W], "counts": ...}``.

    Runs go down the columns (Fortran order) and start with a run of zeros, as COCO's do.

    Args:
        compressed: True: COCO's compressed string counts (``pycocotools.mask.encode``, decoded to
            ``str`` so that it is JSON); False: uncompressed integer counts (our own encoder, no
            dependency); None: compressed when pycocotools is installed.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    height, width = mask.shape
    mask_utils = _pycocotools_mask() if compressed is not False else None
    if compressed and mask_utils is None:
        raise ImportError("compressed RLE needs pycocotools: pip install 'florence2[eval]'")
    if mask_utils is not None:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    flat = mask.reshape(-1, order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]  # runs start with zeros
    return {"size": [height, width], "counts": [int(c) for c in counts]}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """The ``(H, W)`` bool mask of a COCO RLE, compressed (needs pycocotools) or uncompressed."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        mask_utils = _pycocotools_mask()
        if mask_utils is None:
            raise ImportError("compressed RLE needs pycocotools: pip install 'florence2[eval]'")
        encoded = counts.encode("ascii") if isinstance(counts, str) else counts
        return mask_utils.decode({"size": [height, width], "counts": encoded}).astype(bool)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {height} x {width} = {height * width}")
    values = np.arange(len(counts)) % 2 == 1  # zeros first
    return np.repeat(values, counts).reshape((height, width), order="F")


# --------------------------------------------------------------------------------------------------
# COCO detection results
# --------------------------------------------------------------------------------------------------


class CocoDetections(NamedTuple):
    """What :func:`to_coco_detections` returns.

    Attributes:
        detections: COCO results, ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``
            (plus ``"segmentation"``, an RLE, when asked for).
        category_ids: the name -> id mapping used (the given one, or the one built).
        unmatched: labels that are no category of a given mapping, with their counts (dropped).
    """

    detections: list[dict[str, Any]]
    category_ids: dict[str, int]
    unmatched: Counter


def category_key(name: str) -> str:
    """How labels meet category names: lower case, whitespace runs collapsed."""
    return " ".join(str(name).lower().split())


def _category_ids(categories: Any) -> dict[str, int]:
    if isinstance(categories, Mapping):
        return {str(name): int(i) for name, i in categories.items()}
    items = list(categories)
    if items and isinstance(items[0], Mapping):  # COCO's "categories" list
        return {str(c["name"]): int(c["id"]) for c in items}
    return {str(name): k + 1 for k, name in enumerate(items)}


def to_coco_detections(
    results: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    categories: Mapping[str, int] | Sequence[Any] | None = None,
    *,
    task: str | None = None,
    unit_scores: bool = False,
    segmentation: bool = False,
    image_sizes: Sequence[ImageSize] | None = None,
) -> CocoDetections:
    """COCO detection results (the JSON ``COCO.loadRes`` reads) of one result per image.

    Args:
        results: one region result per image (see :func:`extract_regions`).
        image_ids: the COCO image id of each result.
        categories: name -> id, a list of names (ids from 1 in that order) or COCO's ``categories``
            list. Labels meet names case-insensitively with whitespace collapsed; labels that are no
            category are dropped and counted in ``unmatched``. None: every label becomes a category,
            ids from 1 in sorted name order.
        task: the task to take out of whole ``predict`` dicts holding several.
        unit_scores: score every detection 1.0.
        segmentation: add each detection's mask as compressed RLE (when pycocotools is installed,
            else uncompressed): polygons rasterised, boxes filled. Needs ``image_sizes``.
        image_sizes: ``(width, height)`` per image, for ``segmentation``.
    """
    if len(results) != len(image_ids):
        raise ValueError(f"{len(results)} results but {len(image_ids)} image ids")
    if segmentation and (image_sizes is None or len(image_sizes) != len(results)):
        raise ValueError("segmentation needs one image size (width, height) per result")
    regions = [extract_regions(r, task=task, unit_scores=unit_scores) for r in results]
    if categories is None:
        names = sorted({category_key(label) for r in regions for label in r.labels})
        category_ids = {name: k + 1 for k, name in enumerate(names)}
    else:
        category_ids = _category_ids(categories)
    lookup = {category_key(name): i for name, i in category_ids.items()}
    detections: list[dict[str, Any]] = []
    unmatched: Counter = Counter()
    for k, (image_id, r) in enumerate(zip(image_ids, regions)):
        for j, (box, label, score) in enumerate(zip(r.boxes, r.labels, r.scores)):
            category_id = lookup.get(category_key(label))
            if category_id is None:
                unmatched[label] += 1
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            detection = {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
            }
            if segmentation:
                polygons = r.polygons[j] if r.polygons[j] is not None else _box_polygon(box)
                detection["segmentation"] = encode_rle(rasterize_polygons(polygons, image_sizes[k]))
            detections.append(detection)
    return CocoDetections(detections, category_ids, unmatched)


# --------------------------------------------------------------------------------------------------
# supervision
# --------------------------------------------------------------------------------------------------


def _import_supervision() -> Any:
    try:
        import supervision
    except ImportError as e:
        raise ImportError("to_supervision needs supervision: pip install 'florence2[supervision]'") from e
    return supervision


def to_supervision(
    result: Mapping[str, Any],
    image_size: ImageSize | None = None,
    *,
    task: str | None = None,
    classes: Sequence[str] | None = None,
    unit_scores: bool = False,
) -> Any:
    """A ``supervision.Detections`` of one result.

    ``xyxy`` the boxes (bounds of polygons and quads), ``confidence`` the scores, ``class_id`` the
    index of the label in ``classes`` and ``data["class_name"]`` the labels. With ``image_size``
    ``mask`` holds ``(N, H, W)`` masks when the result has polygons or quads (boxes filled for the
    box regions of an open-vocabulary result); without it, or for box results, ``mask`` is None.

    Args:
        classes: the class names; regions whose label is not one of them are dropped (compared
            case-insensitively). None: the sorted distinct labels of the result.

    Raises:
        ImportError: supervision is not installed (the message names the extra).
    """
    sv = _import_supervision()
    regions = extract_regions(result, task=task, unit_scores=unit_scores)
    names = sorted(set(regions.labels)) if classes is None else [str(c) for c in classes]
    lookup = {category_key(name): k for k, name in enumerate(names)}
    keep = [k for k, label in enumerate(regions.labels) if category_key(label) in lookup]
    mask = None
    if image_size is not None and any(p is not None for p in regions.polygons):
        mask = region_masks(regions, image_size)[keep]
    return sv.Detections(
        xyxy=regions.boxes[keep].astype(np.float32).reshape(-1, 4),
        mask=mask,
        confidence=regions.scores[keep].astype(np.float32),
        class_id=np.asarray([lookup[category_key(regions.labels[k])] for k in keep], dtype=int),
        data={"class_name": np.asarray([regions.labels[k] for k in keep], dtype=str)},
    )
