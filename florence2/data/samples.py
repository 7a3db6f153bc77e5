"""Training samples for every Florence-2 task, built from one annotation record.

A record (the schema of :mod:`florence2.data.synthetic`: ``objects`` with ``bbox``, ``polygon``,
``category``, ``brief`` and ``referring``; ``texts`` with ``text``, ``quad`` and ``bbox``; ``captions``;
``phrases`` of the brief caption) holds everything the 15 tasks of :data:`florence2.tasks.TASKS` ask
for. :func:`build_samples` turns it into ``(prompt, target)`` pairs of one task in the answer formats
the released models produce, so that :func:`florence2.parsing.post_process_generation` reads every
target back into the annotation (up to quantization). Targets hold no ``<s>``/``</s>``; the
tokenizer adds them.

Target formats (``<L>`` is the location token of one quantized coordinate, ``image_size = (W, H)``):

============================================  ==========================  ============================================
task                                          input                       target
============================================  ==========================  ============================================
``<CAPTION>`` / ``<DETAILED_CAPTION>`` /      none                        the brief / detailed / more_detailed caption
``<MORE_DETAILED_CAPTION>``
``<OCR>``                                     none                        the texts in reading order joined by
                                                                          :data:`OCR_LINE_SEPARATOR` (``"\\n"``)
``<OCR_WITH_REGION>``                         none                        ``text<L>x8`` per text (its quad)
``<OD>``                                      none                        ``category<L>x4<L>x4...`` per category
``<DENSE_REGION_CAPTION>``                    none                        ``description<L>x4...`` per description
``<REGION_PROPOSAL>``                         none                        ``<L>x4`` per object, reading order
``<CAPTION_TO_PHRASE_GROUNDING>``             the brief caption           ``phrase<L>x4...`` per phrase, caption order
``<REFERRING_EXPRESSION_SEGMENTATION>``       an object's ``referring``   its polygon ``<L><L>...`` (x, y pairs)
``<REGION_TO_SEGMENTATION>``                  an object's box             its polygon ``<L><L>...``
``<OPEN_VOCABULARY_DETECTION>``               a category (``a<and>b``)    ``category<L>x4`` per box (label repeated)
``<REGION_TO_CATEGORY>``                      an object's box             its category
``<REGION_TO_DESCRIPTION>``                   an object's box             its description
``<REGION_TO_OCR>``                           a text's box                the text
============================================  ==========================  ============================================

Conventions:

* Reading order is top to bottom by the quantized top edge of the box, then left to right by its
  quantized left edge, ties in record order. In ``<OD>`` and ``<DENSE_REGION_CAPTION>`` the boxes of
  one label follow each other after that label written once (``wheel<L>x4<L>x4``, as the released
  models answer); labels come in the reading order of their first box.
* ``<OPEN_VOCABULARY_DETECTION>`` repeats the label before every box (``wheels<L>x4wheels<L>x4``), as
  the released models answer that task. Without ``rng`` there is one sample per category present;
  with ``rng`` and at least two categories, one more sample asks for 2-3 of them joined with
  ``<and>`` in a random order (the paper's "Locate A<and>B in the image."), answered in query order.
* A description is the object's ``brief`` without its leading article ("a large red circle" ->
  "large red circle"), the noun-phrase style of the released dense region captions; the same
  string answers ``<REGION_TO_DESCRIPTION>``.
* Labels (categories, descriptions, phrases, texts) have their whitespace collapsed to single spaces;
  a label holding ``"<"`` would be cut by the parsers and raises :class:`AnnotationError`.
* ``<CAPTION_TO_PHRASE_GROUNDING>`` leaves out phrases the parser drops
  (:data:`florence2.parsing.BANNED_GROUNDING_PHRASES`: "it", "the image", ...).
* One polygon per object, without a ``<poly>`` wrapper (as the released models answer); vertices in
  record order (clockwise, see the synthetic world).

Where quantization loses information (``coords.quantize``: bin ``floor(x / (W / 1000))``, read back
as the bin centre):

* every coordinate moves by up to half a bin, ``W / 2000`` in x and ``H / 2000`` in y (bins are not
  square on non-square images); ``x = W`` falls in the last bin, 999;
* a box less than a bin wide or tall collapses to one bin on that axis, and objects whose boxes fall
  in the same bins get the same region prompt, so their region tasks become ambiguous;
* polygon vertices closer than a bin may land on the same location; they are kept, so vertex ``i`` of
  the target is always vertex ``i`` of the annotation;
* reading order is decided on the quantized boxes, so objects whose top edges share a bin are
  ordered left to right, whatever their exact pixel tops.

Parsing loses a little more: box labels (``<OD>``, dense captions, phrases, open-vocabulary labels)
come back without their non-ASCII characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from florence2.coords import loc_tokens, quantize_flat
from florence2.errors import AnnotationError, TaskError
from florence2.parsing import BANNED_GROUNDING_PHRASES
from florence2.tasks import TASKS, TaskSpec, build_prompt, get_task

__all__ = [
    "OCR_LINE_SEPARATOR",
    "TARGET_BUILDERS",
    "Sample",
    "TaskMixture",
    "all_samples",
    "build_samples",
    "describe_object",
]

# Lines of an <OCR> target. The released models concatenate lines with nothing between them
# ("DATSTOP"); a line break keeps word boundaries and survives pure-text parsing (only the ends are
# stripped). Set "" to reproduce the upstream format.
OCR_LINE_SEPARATOR = "\n"

# Task input of a sample: None (no input), a text, or a region (XYXY box, pixels of the image).
Query = str | Sequence[float] | None
# A target builder: (record, task spec, rng) -> [(input, target), ...].
TargetBuilder = Callable[[dict, TaskSpec, "np.random.Generator | None"], list[tuple[Query, str]]]

_LEADING_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    """One training example.

    Attributes:
        task: the task token, e.g. ``"<OD>"``.
        prompt: the expanded prompt text (:func:`florence2.tasks.build_prompt`), e.g. ``"What is the
            region <loc_50><loc_200><loc_950><loc_840>?"``.
        target: the decoder target without ``<s>``/``</s>``, e.g. ``"car"``.
        image: the record's image file name.
    """

    task: str
    prompt: str
    target: str
    image: str


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _image_size(record: dict) -> tuple[int, int]:
    return record["width"], record["height"]


def _label(text: str, where: str) -> str:
    """A label as the parsers read it back: single spaces, no ``<``, not empty."""
    label = " ".join(str(text).split())
    if not label or "<" in label:
        raise AnnotationError(f"{where}: a label must be non-empty text without '<', got {text!r}")
    return label


def describe_object(obj: dict) -> str:
    """The description of an object in ``<DENSE_REGION_CAPTION>`` and ``<REGION_TO_DESCRIPTION>``:
    its ``brief`` without the leading article, e.g. ``"a large red circle"`` -> ``"large red circle"``."""
    return _label(_LEADING_ARTICLE.sub("", str(obj["brief"]).strip(), count=1), f"object {obj.get('id')} brief")


def _category(obj: dict) -> str:
    return _label(obj["category"], f"object {obj.get('id')} category")


def _text(text: dict) -> str:
    return _label(text["text"], "text")


def _locs(values: Sequence[float], image_size: tuple[int, int]) -> str:
    """Location tokens of flat ``[x0, y0, x1, y1, ...]`` pixel coordinates."""
    return loc_tokens(quantize_flat(values, image_size))


def _reading_order(items: Iterable[dict], image_size: tuple[int, int]) -> list[dict]:
    """Items with a ``bbox``, top to bottom then left to right, by quantized top-left corner."""
    items = list(items)
    keys = [tuple(quantize_flat(item["bbox"], image_size)[[1, 0]]) for item in items]
    return [items[i] for i in sorted(range(len(items)), key=lambda i: keys[i])]


def _grouped(items: Iterable[dict], label: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Items grouped by label; groups in the order of their first item, items in order."""
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(label(item), []).append(item)
    return groups


# --------------------------------------------------------------------------------------------------
# Target builders: (record, spec, rng) -> [(input, target), ...]
# --------------------------------------------------------------------------------------------------


def _caption(key: str, record: dict, spec: TaskSpec, rng: np.random.Generator | None) -> list[tuple[Query, str]]:
    caption = str(record.get("captions", {}).get(key, "")).strip()
    return [(None, caption)] if caption else []


def _ocr_text(record: dict, spec: TaskSpec, rng: np.random.Generator | None) -> list[tuple[Query, str]]:
    texts = _reading_order(record["texts"], _image_size(record))
    return [(None, OCR_LINE_SEPARATOR.join(_text(t) for t in texts))] if texts else []


def _ocr_with_region(record: dict, spec: TaskSpec, rng: np.random.Generator | None) -> list[tuple[Query, str]]:
    size = _image_size(record)
    texts = _reading_order(record["texts"], size)
    return [(None, "".join(_text(t) + _locs(t["quad"], size) for t in texts))] if texts else []


def _grouped_boxes(
    label: Callable[[dict], str], record: dict, spec: TaskSpec, rng: np.random.Generator | None
) -> list[tuple[Query, str]]:
    size = _image_size(record)
    groups = _grouped(_reading_order(record["objects"], size), label)
    target = "".join(name + "".join(_locs(o["bbox"], size) for o in members) for name, members in groups.items())
    return [(None, target)] if target else []


def _region_proposals(record: dict, spec: TaskSpec, rng: np.random.Generator | None) -> list[tuple[Query, str]]:
    size = _image_size(record)
    objects = _reading_order(record["objects"], size)
    return [(None, "".join(_locs(o["bbox"], size) for o in objects))] if objects else []


def _phrase_grounding(record: dict, spec: TaskSpec, rng: np.random.Generator | None) -> list[tuple[Query, str]]:
    size = _image_size(record)
    by_id = {o["id"]: o for o in record["objects"]}
    target = []
    for phrase in sorted(record.get("phrases", []), key=lambda p: p["start"]):
        text = _label(phrase["phrase"], "phrase")
        if text in BANNED_GROUNDING_PHRASES or not phrase["object_ids"]:
            continue
        objects = _reading_order((by_id[i] for i in phrase["object_ids"]), size)
        target.append(text + "".join(_locs(o["bbox"], size) for o in objects))
    caption = str(record.get("captions", {}).get("brief", "")).strip()
    return [(caption, "".join(target))] if target and caption else []


# The polygon tasks differ only in how they point at the object.
_POLYGON_QUERIES: dict[str, Callable[[dict], Query]] = {
    "text": lambda obj: " ".join(str(obj.get("referring") or "").split()) or None,
    "region": lambda obj: obj["bbox"],
}


def _polygons(record: dict, spec: TaskSpec, rng: np.random.Generator | None) -> list[tuple[Query, str]]:
    size = _image_size(record)
    query = _POLYGON_QUERIES[spec.input]
    pairs = [(query(o), _locs(o["polygon"], size)) for o in record["objects"] if o.get("polygon")]
    return [(q, target) for q, target in pairs if q is not None]


def _open_vocabulary(record: dict, spec: TaskSpec, rng: np.random.Generator | None) -> list[tuple[Query, str]]:
    size = _image_size(record)
    groups = _grouped(_reading_order(record["objects"], size), _category)
    answers = {name: "".join(name + _locs(o["bbox"], size) for o in members) for name, members in groups.items()}
    pairs: list[tuple[Query, str]] = list(answers.items())
    if rng is not None and len(answers) >= 2:
        count = int(rng.integers(2, min(3, len(answers)) + 1))
        names = [str(n) for n in rng.choice(list(answers), size=count, replace=False)]
        pairs.append(("<and>".join(names), "".join(answers[n] for n in names)))
    return pairs


def _region_text(
    key: str, answer: Callable[[dict], str], record: dict, spec: TaskSpec, rng: np.random.Generator | None
) -> list[tuple[Query, str]]:
    return [(item["bbox"], answer(item)) for item in record[key]]


# Keyed by task token where tasks share a result type but not a target, else by result type.
TARGET_BUILDERS: dict[str, TargetBuilder] = {
    "<CAPTION>": partial(_caption, "brief"),
    "<DETAILED_CAPTION>": partial(_caption, "detailed"),
    "<MORE_DETAILED_CAPTION>": partial(_caption, "more_detailed"),
    "<OCR>": _ocr_text,
    "<REGION_TO_CATEGORY>": partial(_region_text, "objects", _category),
    "<REGION_TO_DESCRIPTION>": partial(_region_text, "objects", describe_object),
    "<REGION_TO_OCR>": partial(_region_text, "texts", _text),
    "<OD>": partial(_grouped_boxes, _category),
    "<DENSE_REGION_CAPTION>": partial(_grouped_boxes, describe_object),
    "ocr": _ocr_with_region,
    "bboxes": _region_proposals,
    "phrase_grounding": _phrase_grounding,
    "polygons": _polygons,
    "description_with_bboxes_or_polygons": _open_vocabulary,
}

# build_prompt arguments for a task input of each kind.
_PROMPT_ARGS: dict[str, Callable[[Query, tuple[int, int]], dict]] = {
    "none": lambda query, size: {},
    "text": lambda query, size: {"text": query},
    "region": lambda query, size: {"region": query, "image_size": size},
}


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def build_samples(record: dict, task: str, rng: np.random.Generator | None = None) -> list[Sample]:
    """All samples of one task for one record.

    Args:
        record: an annotation record (schema of :mod:`florence2.data.synthetic`); coordinates in pixels
            of the image, ``image_size = (record["width"], record["height"])``.
        task: a task name (see :func:`florence2.tasks.get_task`).
        rng: only ``<OPEN_VOCABULARY_DETECTION>`` draws from it (one extra ``<and>`` query); None gives
            the deterministic set.

    Returns:
        Zero or more samples: one per object for object region tasks and referring segmentation, one
        per text for ``<REGION_TO_OCR>``, one per category for open-vocabulary detection, else one;
        none when the record lacks what the task needs (``<OCR>`` on an image without text).

    Raises:
        TaskError: unknown task, or a task no builder serves.
        AnnotationError: a label the parsers could not read back (empty, or holding ``"<"``).
    """
    spec = get_task(task)
    builder = TARGET_BUILDERS.get(spec.token) or TARGET_BUILDERS.get(spec.result_type)
    if builder is None:
        raise TaskError(f"no sample builder for {spec.token} (result type {spec.result_type!r})")
    size = _image_size(record)
    return [
        Sample(spec.token, build_prompt(spec.token, **_PROMPT_ARGS[spec.input](query, size)), target, record["image"])
        for query, target in builder(record, spec, rng)
    ]


def all_samples(
    record: dict, tasks: Iterable[str] | None = None, rng: np.random.Generator | None = None
) -> list[Sample]:
    """:func:`build_samples` for each of ``tasks`` (default: every task of the registry), in order."""
    return [sample for task in (TASKS if tasks is None else tasks) for sample in build_samples(record, task, rng)]


class TaskMixture:
    """Draws one sample per step from a weighted mixture of tasks, reproducibly.

    Each :meth:`draw` picks a task with probability proportional to its weight; when the record has
    no sample of that task (``<OCR>`` on an image without text) the task is set aside and another is
    drawn from the rest, renormalized; then one of the task's samples is picked uniformly.

    Args:
        weights: task name -> non-negative weight; zero-weight tasks are never drawn.
        seed: seed of the generator all draws come from.
    """

    def __init__(self, weights: Mapping[str, float], seed: int | None = 0) -> None:
        merged: dict[str, float] = {}
        for name, weight in weights.items():
            token = get_task(name).token
            if not np.isfinite(weight) or weight < 0:
                raise ValueError(f"task weights must be finite and >= 0, got {name}: {weight}")
            merged[token] = merged.get(token, 0.0) + float(weight)
        merged = {token: w for token, w in merged.items() if w > 0}
        if not merged:
            raise ValueError(f"a task mixture needs a positive weight, got {dict(weights)}")
        self.tasks: tuple[str, ...] = tuple(merged)
        self.weights = np.array([merged[t] for t in self.tasks])
        self.rng = np.random.default_rng(seed)

    @property
    def probabilities(self) -> dict[str, float]:
        """Task token -> probability of being drawn on a record that has samples of every task."""
        return dict(zip(self.tasks, (self.weights / self.weights.sum()).tolist()))

    def draw(self, record: dict) -> Sample | None:
        """One sample for ``record``, or None when none of the tasks has a sample for it."""
        candidates = list(range(len(self.tasks)))
        while candidates:
            weights = self.weights[candidates]
            pick = int(self.rng.choice(len(candidates), p=weights / weights.sum()))
            samples = build_samples(record, self.tasks[candidates[pick]], self.rng)
            if samples:
                return samples[int(self.rng.integers(len(samples)))]
            del candidates[pick]
        return None

    def __repr__(self) -> str:
        return f"TaskMixture({self.probabilities})"
