"""Parse generated Florence-2 text into the official result dicts.

Pure functions on strings. ``post_process_generation`` picks the parser named by the task's
``result_type`` in :data:`florence2.tasks.TASKS`; every parser also works on its own.

Coordinates are float pixels of the original image at bin centres (:func:`florence2.coords.dequantize`,
``image_size = (width, height)``), as the original processor returns them; the native transformers
port truncates them to ints. Boxes are XYXY, OCR quads ``[x0, y0, ..., x3, y3]`` (clockwise from
top-left), polygons flat ``[x0, y0, x1, y1, ...]`` lists.

The matching rules are those of the reference processors (reference §3.5), including their quirks:
a phrase is the text before the first location token, stripped; a phrase with a line break inside
is dropped; leftover location tokens that do not fill a box are ignored; box labels
lose non-ASCII characters while OCR and polygon labels keep them. Deviations, all on purpose:

* ``<s>``, ``</s>`` and ``<pad>`` are removed everywhere first, for every task. The original OCR
  parser removed only ``<s>`` (its first label came out as ``'</s>CUDA'``) and neither reference
  removes ``<pad>`` from plain-text answers (padded batch rows).
* The OCR area filter (off by default) uses the full shoelace formula over all four edges; both
  references drop the closing edge term.
* Unknown task names raise :class:`~florence2.errors.TaskError` instead of falling back to plain
  text; pass ``task=None`` for free prompts.
* The unused ``with_box_at_start`` polygon option of the references is not implemented.

Scores: the finders below return :class:`Instance` objects carrying the character span of their
match in the cleaned text (``clean_text``); given the generated tokens' probabilities
(:class:`florence2.scoring.TokenScores`), every parser adds ``scores`` parallel to its shapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from florence2.coords import dequantize_flat, parse_loc_tokens
from florence2.errors import TaskError
from florence2.tasks import get_task

if TYPE_CHECKING:
    from florence2.scoring import TokenScores

ImageSize = tuple[float, float]

# Phrases the original processor drops from phrase grounding (pronouns, determiners, "the image").
BANNED_GROUNDING_PHRASES = frozenset(
    {
        "it", "I", "me", "mine", "you", "your", "yours", "he", "him", "his", "she", "her", "hers",
        "they", "them", "their", "theirs", "one", "oneself", "we", "us", "our", "ours", "its",
        "myself", "yourself", "himself", "herself", "itself", "ourselves", "yourselves", "themselves",
        "this", "that", "these", "those", "who", "whom", "whose", "which", "what",
        "all", "another", "any", "anybody", "anyone", "anything", "each", "everybody", "everyone",
        "everything", "few", "many", "nobody", "none", "several", "some", "somebody", "someone",
        "something", "each other", "one another",
        "the image", "image", "images", "the", "a", "an", "a group", "other objects", "lots", "a set",
    }
)  # fmt: skip

_SEQUENCE_TOKENS = re.compile(r"<s>|</s>|<pad>")
_LOC_RUN = r"(?:<loc_\d+>)"
_POLY_RUN = r"(?:<loc_\d+>|<sep>|<poly>|</poly>)"
# A region: a phrase (no "<") and a run of >= 4 tokens; group 1 is the whole match (phrase + run)
# to mirror the references, which read the phrase and the coordinates out of that one string.
_PHRASE_BOXES = re.compile(rf"([^<]+{_LOC_RUN}{{4,}})")
_BOXES = re.compile(rf"({_LOC_RUN}{{4,}})")
_PHRASE_POLYGONS = re.compile(rf"([^<]+{_POLY_RUN}{{4,}})")
_POLYGONS = re.compile(rf"({_POLY_RUN}{{4,}})")
# The phrase: text up to the first location (or polygon) token; "." stops at a line break, so a
# phrase broken over lines does not match, as in the references.
_BOX_PHRASE = re.compile(r"\s*(.*?)(?=<loc_)")
_POLYGON_PHRASE = re.compile(r"\s*(.*?)(?=<loc_|<poly>)")
_LEADING_LOC = re.compile(r"^<loc_\d+>")
_POLY_INSTANCE = re.compile(r"<poly>(.*?)</poly>")
_POLYGON = re.compile(rf"({_LOC_RUN}+)(?:<sep>|$)")
_OCR_LINE = re.compile(rf"(.+?)({_LOC_RUN}{{8}})")


@dataclass(frozen=True)
class Instance:
    """One parsed object: a label and one or more shapes in location bins.

    Attributes:
        label: the phrase (``""`` where the task has none).
        shapes: flat bin lists, one per box (4 values), quad (8) or polygon (2n).
        span: ``(start, end)`` character offsets of the match in ``clean_text(text)``.
    """

    label: str
    shapes: list[list[int]]
    span: tuple[int, int]


def clean_text(text: str) -> str:
    """Remove the sequence tokens ``<s>``, ``</s>`` and ``<pad>`` from generated text."""
    return _SEQUENCE_TOKENS.sub("", text)


def _ascii(label: str) -> str:
    return label.encode("ascii", "ignore").decode("ascii")


def find_box_instances(text: str, allow_empty_phrase: bool = False, banned: Iterable[str] = ()) -> list[Instance]:
    """Phrases followed by boxes: every 4 consecutive location tokens after a phrase are one box.

    Args:
        text: cleaned generated text (see :func:`clean_text`).
        allow_empty_phrase: match bare location runs (region proposals); labels are then ``""``.
        banned: phrases to drop (compared before non-ASCII characters are removed).
    """
    banned = set(banned)
    instances = []
    for match in (_BOXES if allow_empty_phrase else _PHRASE_BOXES).finditer(text):
        run = match.group(1)
        phrase = _BOX_PHRASE.match(run)
        if phrase is None:
            continue
        label = phrase.group(0).strip()
        if label in banned:
            continue
        bins = parse_loc_tokens(run)
        boxes = [bins[i : i + 4] for i in range(0, len(bins) - 3, 4)]
        instances.append(Instance(_ascii(label), boxes, match.span(1)))
    return instances


def find_polygon_instances(text: str, allow_empty_phrase: bool = False) -> list[Instance]:
    """Phrases followed by polygons.

    Each ``<poly>...</poly>`` group is one instance (the whole run when there is none); inside it,
    each run of location tokens ending at ``<sep>`` or at the end is one polygon; an odd number of
    values loses its last one.

    Args:
        text: cleaned generated text (see :func:`clean_text`).
        allow_empty_phrase: match bare token runs (segmentation tasks); labels are then ``""``.
    """
    instances = []
    for match in (_POLYGONS if allow_empty_phrase else _PHRASE_POLYGONS).finditer(text):
        run = match.group(1)
        phrase = _POLYGON_PHRASE.match(_LEADING_LOC.sub("", run, count=1))
        if phrase is None:
            continue
        label = phrase.group(0).strip()
        if "<poly>" in run and "</poly>" in run:
            parts = [(m.group(1), m.start(1)) for m in _POLY_INSTANCE.finditer(run)]
        else:
            parts = [(run, 0)]
        for part, offset in parts:
            polygons = [parse_loc_tokens(m.group(1)) for m in _POLYGON.finditer(part)]
            if not polygons:
                continue
            polygons = [p[: len(p) // 2 * 2] for p in polygons]
            start = match.start(1) + offset
            instances.append(Instance(label, polygons, (start, start + len(part))))
    return instances


def find_ocr_instances(text: str) -> list[Instance]:
    """Text lines, each followed by one quad of 8 location tokens.

    Args:
        text: cleaned generated text (see :func:`clean_text`).
    """
    return [Instance(m.group(1).strip(), [parse_loc_tokens(m.group(2))], m.span()) for m in _OCR_LINE.finditer(text)]


def _dequantize_shapes(shapes: list[list[int]], image_size: ImageSize) -> list[list[float]]:
    return [dequantize_flat(shape, image_size).tolist() for shape in shapes]


def _boxes_result(instances: list[Instance], image_size: ImageSize, scores: TokenScores | None) -> dict[str, list]:
    bboxes, labels, box_scores = [], [], []
    for inst in instances:
        boxes = dequantize_flat(np.asarray(inst.shapes, dtype=np.float64).reshape(-1, 4), image_size)
        bboxes += boxes.tolist()
        labels += [inst.label] * len(boxes)
        if scores is not None:
            box_scores += scores.region_scores(inst.span, len(boxes), shape_tokens=4)
    result = {"bboxes": bboxes, "labels": labels}
    if scores is not None:
        result["scores"] = box_scores
    return result


def _polygons_result(instances: list[Instance], image_size: ImageSize, scores: TokenScores | None) -> dict[str, list]:
    result = {
        "polygons": [_dequantize_shapes(inst.shapes, image_size) for inst in instances],
        "labels": [inst.label for inst in instances],
    }
    if scores is not None:
        result["scores"] = [scores.region_scores(inst.span, 1, shape_tokens=None)[0] for inst in instances]
    return result


def parse_pure_text(text: str, image_size: ImageSize | None = None, scores: TokenScores | None = None) -> str:
    """The answer as text without sequence tokens, stripped. Location tokens are kept verbatim
    (``<REGION_TO_CATEGORY>`` answers ``'car<loc_52><loc_332><loc_932><loc_774>'``)."""
    return clean_text(text).strip()


def parse_description_with_bboxes(
    text: str, image_size: ImageSize, scores: TokenScores | None = None
) -> dict[str, list]:
    """``<OD>``, ``<DENSE_REGION_CAPTION>``: ``{"bboxes": [[x0, y0, x1, y1], ...], "labels": [...]}``,
    one label per box (a phrase followed by several boxes repeats its label)."""
    return _boxes_result(find_box_instances(clean_text(text)), image_size, scores)


def parse_bboxes(text: str, image_size: ImageSize, scores: TokenScores | None = None) -> dict[str, list]:
    """``<REGION_PROPOSAL>``: ``{"bboxes": [[x0, y0, x1, y1], ...], "labels": ["", ...]}``."""
    return _boxes_result(find_box_instances(clean_text(text), allow_empty_phrase=True), image_size, scores)


def parse_phrase_grounding(
    text: str,
    image_size: ImageSize,
    scores: TokenScores | None = None,
    banned: Iterable[str] = BANNED_GROUNDING_PHRASES,
) -> dict[str, list]:
    """``<CAPTION_TO_PHRASE_GROUNDING>``: ``{"bboxes": [...], "labels": [...]}``, one label per box;
    phrases in ``banned`` (pronouns, "the image", ...) are dropped."""
    return _boxes_result(find_box_instances(clean_text(text), banned=banned), image_size, scores)


def parse_ocr(
    text: str, image_size: ImageSize, scores: TokenScores | None = None, area_threshold: float = 0.0
) -> dict[str, list]:
    """``<OCR_WITH_REGION>``: ``{"quad_boxes": [[x0, y0, ..., x3, y3], ...], "labels": [...]}``.

    Args:
        area_threshold: drop quads smaller than this fraction of the image area; 0 keeps all.
    """
    quad_boxes, labels, quad_scores = [], [], []
    for inst in find_ocr_instances(clean_text(text)):
        quad = dequantize_flat(inst.shapes[0], image_size)
        if area_threshold > 0:
            x, y = quad[0::2], quad[1::2]
            area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
            if area < image_size[0] * image_size[1] * area_threshold:
                continue
        quad_boxes.append(quad.tolist())
        labels.append(inst.label)
        if scores is not None:
            quad_scores += scores.region_scores(inst.span, 1, shape_tokens=None)
    result = {"quad_boxes": quad_boxes, "labels": labels}
    if scores is not None:
        result["scores"] = quad_scores
    return result


def parse_polygons(text: str, image_size: ImageSize, scores: TokenScores | None = None) -> dict[str, list]:
    """``<REFERRING_EXPRESSION_SEGMENTATION>``, ``<REGION_TO_SEGMENTATION>``:
    ``{"polygons": [[[x0, y0, x1, y1, ...], ...], ...], "labels": [...]}`` (instances -> polygons ->
    flat xy list)."""
    return _polygons_result(find_polygon_instances(clean_text(text), allow_empty_phrase=True), image_size, scores)


def parse_description_with_bboxes_or_polygons(
    text: str, image_size: ImageSize, scores: TokenScores | None = None
) -> dict[str, list]:
    """``<OPEN_VOCABULARY_DETECTION>``: polygons when the text holds ``<poly>``, else boxes, as
    ``{"bboxes", "bboxes_labels", "polygons", "polygons_labels"}`` (the unused pair empty; with
    ``scores``, also ``bboxes_scores`` and ``polygons_scores``)."""
    text = clean_text(text)
    result: dict[str, list] = {"bboxes": [], "bboxes_labels": [], "polygons": [], "polygons_labels": []}
    if scores is not None:
        result.update(bboxes_scores=[], polygons_scores=[])
    if "<poly>" in text:
        found = _polygons_result(find_polygon_instances(text), image_size, scores)
        kind = "polygons"
    else:
        found = _boxes_result(find_box_instances(text), image_size, scores)
        kind = "bboxes"
    result[kind], result[f"{kind}_labels"] = found[kind], found["labels"]
    if scores is not None:
        result[f"{kind}_scores"] = found["scores"]
    return result


PARSERS: dict[str, Callable[..., Any]] = {
    "pure_text": parse_pure_text,
    "ocr": parse_ocr,
    "description_with_bboxes": parse_description_with_bboxes,
    "bboxes": parse_bboxes,
    "phrase_grounding": parse_phrase_grounding,
    "polygons": parse_polygons,
    "description_with_bboxes_or_polygons": parse_description_with_bboxes_or_polygons,
}


def post_process_generation(
    text: str, task: str | None, image_size: ImageSize | None = None, scores: TokenScores | None = None, **options: Any
) -> dict[str, Any]:
    """Parse the decoded answer of a task.

    Args:
        text: decoded generation with special tokens kept, e.g. ``"</s><s>car<loc_53>...</s>"``.
        task: a task name (see :func:`florence2.tasks.get_task`), or None for a free prompt.
        image_size: ``(width, height)`` of the original image; needed by every task with locations.
        scores: the generated tokens' probabilities (:class:`florence2.scoring.TokenScores`); every
            region result then carries ``scores`` parallel to its shapes.
        **options: passed to the parser, e.g. ``area_threshold`` for ``<OCR_WITH_REGION>``.

    Returns:
        ``{task_token: result}`` with the canonical token (``"od"`` -> ``"<OD>"``), or
        ``{"text": answer}`` for a free prompt, e.g. ``{"<OD>": {"bboxes": [[34.24, 160.08, 597.44,
        371.76]], "labels": ["car"]}}``.
    """
    if task is None:
        return {"text": parse_pure_text(text, image_size, scores, **options)}
    spec = get_task(task)
    if image_size is None and spec.result_type != "pure_text":
        raise TaskError(f"{spec.token} answers hold locations: pass image_size=(width, height)")
    return {spec.token: PARSERS[spec.result_type](text, image_size, scores, **options)}
