"""The Florence-2 task registry: task tokens, prompt templates, inputs and result parsers.

``TASKS`` is the one table every other layer reads (prompt building, post-processing, CLI choices,
server validation, training samples). The 15 official tasks: 8 take no input, 7 take a text or a
region (an XYXY box written as four location tokens).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from florence2.coords import NUM_BINS, box_to_loc_tokens, parse_loc_tokens
from florence2.errors import RegionError, TaskError

TaskInput = Literal["none", "text", "region"]
ResultType = Literal[
    "pure_text",
    "ocr",
    "description_with_bboxes",
    "bboxes",
    "phrase_grounding",
    "polygons",
    "description_with_bboxes_or_polygons",
]


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    Attributes:
        token: the task token, e.g. ``"<OD>"``.
        prompt: the prompt text the model was trained on; holds ``{input}`` when the task takes input.
        input: ``"none"``, ``"text"`` (free text) or ``"region"`` (a box, as four location tokens).
        result_type: the name of the parser in :mod:`florence2.parsing` that reads the answer.
        description: one line for humans (CLI help, docs).
    """

    token: str
    prompt: str
    input: TaskInput
    result_type: ResultType
    description: str


_SPECS = (
    TaskSpec("<OCR>", "What is the text in the image?", "none", "pure_text", "Read all text in the image."),
    TaskSpec(
        "<OCR_WITH_REGION>",
        "What is the text in the image, with regions?",
        "none",
        "ocr",
        "Read text lines with their quadrilateral boxes.",
    ),
    TaskSpec("<CAPTION>", "What does the image describe?", "none", "pure_text", "A one-sentence caption."),
    TaskSpec(
        "<DETAILED_CAPTION>",
        "Describe in detail what is shown in the image.",
        "none",
        "pure_text",
        "A detailed caption.",
    ),
    TaskSpec(
        "<MORE_DETAILED_CAPTION>",
        "Describe with a paragraph what is shown in the image.",
        "none",
        "pure_text",
        "A paragraph-long caption.",
    ),
    TaskSpec(
        "<OD>",
        "Locate the objects with category name in the image.",
        "none",
        "description_with_bboxes",
        "Object detection: boxes with category names.",
    ),
    TaskSpec(
        "<DENSE_REGION_CAPTION>",
        "Locate the objects in the image, with their descriptions.",
        "none",
        "description_with_bboxes",
        "Boxes with a short description each.",
    ),
    TaskSpec(
        "<REGION_PROPOSAL>",
        "Locate the region proposals in the image.",
        "none",
        "bboxes",
        "Class-agnostic object boxes.",
    ),
    TaskSpec(
        "<CAPTION_TO_PHRASE_GROUNDING>",
        "Locate the phrases in the caption: {input}",
        "text",
        "phrase_grounding",
        "Boxes for the phrases of a caption.",
    ),
    TaskSpec(
        "<REFERRING_EXPRESSION_SEGMENTATION>",
        "Locate {input} in the image with mask",
        "text",
        "polygons",
        "Polygon mask of the object a text refers to.",
    ),
    TaskSpec(
        "<REGION_TO_SEGMENTATION>",
        "What is the polygon mask of region {input}",
        "region",
        "polygons",
        "Polygon mask of the object in a box.",
    ),
    TaskSpec(
        "<OPEN_VOCABULARY_DETECTION>",
        "Locate {input} in the image.",
        "text",
        "description_with_bboxes_or_polygons",
        "Boxes (or polygons) of the objects a text names.",
    ),
    TaskSpec(
        "<REGION_TO_CATEGORY>",
        "What is the region {input}?",
        "region",
        "pure_text",
        "Category name of the object in a box.",
    ),
    TaskSpec(
        "<REGION_TO_DESCRIPTION>",
        "What does the region {input} describe?",
        "region",
        "pure_text",
        "Short description of the object in a box.",
    ),
    TaskSpec(
        "<REGION_TO_OCR>",
        "What text is in the region {input}?",
        "region",
        "pure_text",
        "Read the text inside a box.",
    ),
)

TASKS: dict[str, TaskSpec] = {spec.token: spec for spec in _SPECS}

_REGION_TEXT = re.compile(r"(?:<loc_\d+>){4}")


def get_task(name: str) -> TaskSpec:
    """Look a task up by token, with or without brackets, in any case: ``"<OD>"``, ``"OD"``, ``"od"``.

    Raises:
        TaskError: unknown task; the message lists the valid tokens.
    """
    token = "<" + name.strip().strip("<>").upper() + ">"
    if token not in TASKS:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[token]


def _region_input(
    spec: TaskSpec,
    text: str | None,
    region: Sequence[float] | str | None,
    image_size: tuple[int, int] | None,
) -> str:
    if isinstance(region, str):  # the region already as four location tokens
        if text:
            raise TaskError(f"{spec.token} takes a region or a text of four location tokens, not both")
        text, region = region, None
    if region is not None:
        if text:
            raise TaskError(f"{spec.token} takes a region or a text of four location tokens, not both")
        if image_size is None:
            raise TaskError(f"{spec.token} needs image_size=(width, height) to quantize a pixel region")
        check_region(region, image_size)
        return box_to_loc_tokens(region, image_size)
    if not text or not _REGION_TEXT.fullmatch(text):
        raise TaskError(
            f"{spec.token} needs a region: region=(x0, y0, x1, y1) in pixels, or four location tokens "
            f"such as '<loc_53><loc_334><loc_933><loc_775>', got {text!r}"
        )
    if max(parse_loc_tokens(text)) >= NUM_BINS:
        raise TaskError(f"location tokens go from <loc_0> to <loc_{NUM_BINS - 1}>, got {text!r}")
    return text


def check_region(region: Sequence[float], image_size: tuple[int, int]) -> None:
    """A pixel region must be four finite numbers ``x0 <= x1``, ``y0 <= y1`` inside the image.

    Raises:
        RegionError: anything else (the same rule for the Python API, the CLI and the server)."""
    try:
        x0, y0, x1, y1 = (float(v) for v in region)
    except (TypeError, ValueError):
        raise RegionError(f"a region is four numbers (x0, y0, x1, y1) in pixels, got {region!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise RegionError(f"a region must be 4 finite numbers (x0, y0, x1, y1), got {region!r}")
    if not (x0 <= x1 and y0 <= y1):
        raise RegionError(f"a region box (x0, y0, x1, y1) needs x0 <= x1 and y0 <= y1, got {list(region)}")
    width, height = image_size
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise RegionError(f"region {list(region)} lies outside the {width}x{height} image (pixels, XYXY)")


def check_unicode(text: str) -> None:
    """A text input must be valid Unicode (no lone surrogates, which no tokenizer can encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TaskError(
            f"text is not valid Unicode: {error.reason} at character {error.start} ({text[error.start]!r})"
        ) from None


def task_inputs(
    task: str | None, text: str | None, region: Sequence[float] | str | None, several: bool
) -> tuple[str | None, Sequence[float] | str | None]:
    """The (text, region) input one task of a request gets.

    A request for one task passes its inputs through. With several tasks on one image, ``text`` goes
    to the tasks that take text, ``region`` to those that take a region (a region task without a
    region gets ``text``, which may hold four location tokens), and tasks without input get neither.
    """
    if not several or task is None:
        return text, region
    kind = get_task(task).input
    if kind == "none":
        return None, None
    if kind == "text":
        return text, None
    return (text if region is None else None), region


def build_prompt(
    task: str | None,
    text: str | None = None,
    region: Sequence[float] | str | None = None,
    image_size: tuple[int, int] | None = None,
) -> str:
    """Build the prompt the model reads for a task.

    Args:
        task: a task name (see :func:`get_task`), or None for a free prompt: ``text`` is returned
            unchanged (fine-tunes with their own prompts, VQA).
        text: the task input for ``"text"`` tasks; for ``"region"`` tasks, four location tokens.
            Whitespace around it is stripped, as the native processor does.
        region: for ``"region"`` tasks, an XYXY box in pixels of the original image.
        image_size: ``(width, height)`` of the original image, needed with ``region``.

    Returns:
        e.g. ``build_prompt("od")`` -> ``"Locate the objects with category name in the image."``,
        ``build_prompt("<REGION_TO_CATEGORY>", region=(34, 160, 597, 371), image_size=(640, 480))`` ->
        ``"What is the region <loc_53><loc_333><loc_932><loc_772>?"``.

    Raises:
        TaskError: unknown task, input given to a task that takes none, or a missing/malformed input.
    """
    if text is not None:
        check_unicode(text)
        text = text.strip()
    if task is None:
        if region is not None:
            raise TaskError("a region needs a region task, e.g. <REGION_TO_CATEGORY>")
        if text is None:
            raise TaskError("build_prompt needs a task or a text prompt")
        return text
    spec = get_task(task)
    if spec.input == "none":
        if text or region is not None:
            raise TaskError(f"{spec.token} takes no input, got text={text!r} region={region!r}")
        return spec.prompt
    if spec.input == "text":
        if region is not None:
            raise TaskError(f"{spec.token} takes a text, not a region")
        if not text:
            raise TaskError(f"{spec.token} needs a text input, e.g. {spec.token}a red car")
        return spec.prompt.replace("{input}", text)
    return spec.prompt.replace("{input}", _region_input(spec, text, region, image_size))


def construct_prompt(text: str) -> str:
    """Expand a prompt that starts with, or holds, a task token, like the reference processor.

    ``"<OCR>"`` -> ``"What is the text in the image?"``; ``"<CAPTION_TO_PHRASE_GROUNDING> a red car"``
    -> ``"Locate the phrases in the caption: a red car"``; text without a task token passes through
    unchanged. Like the reference, input is not validated beyond a no-input token having to be
    the whole prompt.

    Raises:
        TaskError: a no-input task token with anything else in the prompt (``"<OCR> extra"``).
    """
    for spec in sorted(TASKS.values(), key=lambda s: s.input != "none"):
        if spec.token not in text:
            continue
        if spec.input == "none":
            if text != spec.token:
                raise TaskError(f"task token {spec.token} must be the whole prompt, got {text!r}")
            return spec.prompt
        return spec.prompt.replace("{input}", text.replace(spec.token, "").strip())
    return text
