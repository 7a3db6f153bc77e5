"""What the format modules produce: fine-tuning :class:`Example`\\ s (through an annotation record and
the sample builders of :mod:`florence2.data.samples`) and evaluation :class:`BenchmarkSample`\\ s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from florence2.data.samples import build_samples
from florence2.errors import AnnotationError, TaskError
from florence2.tasks import get_task


@dataclass(frozen=True)
class Example:
    """One training example, what :func:`florence2.train.trainer.collate` reads.

    Attributes:
        image: path of the image file.
        prompt: the prompt text the model reads (task prompts expanded, e.g. ``"Locate the objects
            with category name in the image."``).
        target: the decoder target in Florence-2's format, without ``<s>``/``</s>``.
        task: the task token, or None for a free prompt.
        source: where it came from, ``"file:line"`` or ``"file: element"``, for messages.
    """

    image: str
    prompt: str
    target: str
    task: str | None
    source: str


@dataclass(frozen=True)
class BenchmarkSample:
    """One evaluation query of a benchmark (:mod:`florence2.eval.benchmarks`).

    Attributes:
        id: unique within the benchmark (an image id, ``"ref_id:sent_id"``, ``"image_id:k"``).
        image: the image file.
        text: the task's text input (an expression, a caption), or None.
        truth: the ground truth, in the runner's form (see each reader).
        image_id: the dataset's id of the image.
        size: ``(width, height)`` as the annotations give it, or None.
    """

    id: str
    image: Path
    text: str | None = None
    truth: Any = None
    image_id: Any = None
    size: tuple[int, int] | None = None


def record(image: Path, size: tuple[int, int], **fields: Any) -> dict[str, Any]:
    """An annotation record in the schema of :mod:`florence2.data.samples`."""
    return {
        "image": str(image),
        "width": size[0],
        "height": size[1],
        "objects": fields.get("objects", []),
        "texts": fields.get("texts", []),
        "captions": fields.get("captions", {}),
        "phrases": fields.get("phrases", []),
    }


def examples(annotation: dict, tasks: Sequence[str], where: str) -> list[Example]:
    """The samples of ``tasks`` for one record, as examples; builder errors get the location."""
    out = []
    for task in tasks:
        try:
            samples = build_samples(annotation, task)
        except (AnnotationError, TaskError) as e:
            raise AnnotationError(f"{where}: {e}") from None
        out.extend(Example(annotation["image"], s.prompt, s.target, s.task, where) for s in samples)
    return out


def note(notes: list[str] | None, message: str, names: Sequence[str] = ()) -> None:
    """Add ``message`` (and the first few ``names``) to ``notes`` when it is given."""
    if notes is not None:
        shown = ", ".join(str(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        notes.append(message + (f": {shown}" if names else ""))


def choose_tasks(tasks: Sequence[str] | None, allowed: Sequence[str], default: Sequence[str], fmt: str) -> list[str]:
    """The task tokens of ``tasks`` (``default`` when none), each one the format ``fmt`` can give."""
    if not tasks:
        return list(default)
    tokens = []
    for name in tasks:
        token = get_task(name).token
        if token not in allowed:
            raise TaskError(f"the {fmt} format gives no {token} samples; it gives: {', '.join(allowed)}")
        tokens.append(token)
    return list(dict.fromkeys(tokens))
