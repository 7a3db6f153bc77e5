"""Running a predictor over many (image, task, text) requests: batching, grouping, progress.

``predict`` takes a list of images and one text per call, so requests are grouped: tasks without
input run together on one vision encoding per image, and a text task runs once per distinct text
over every image that asks it. Requests whose texts are unique to an image (referring expressions,
captions to ground) therefore run one image per call; ``batch_size`` batches the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

__all__ = ["Answer", "Predictor", "Request", "answer_requests", "chunks"]


class Predictor(Protocol):
    """What the evaluators need of a model: :meth:`florence2.Florence2.predict`'s signature."""

    def predict(self, image: Any, task: Any = ..., text: str | None = ..., **kwargs: Any) -> Any: ...


class Request(NamedTuple):
    """One question: an image (index into the images of the call), a task token, a text or None."""

    image: int
    task: str
    text: str | None


class Answer(NamedTuple):
    """The task's own result (``result[task]``) and its sequence score when ``predict`` gives one
    (``result["sequence_scores"][task]``), else None."""

    result: Any
    sequence_score: float | None


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of at most ``size`` items."""
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + max(1, size)]


def _answer(result: Mapping[str, Any], task: str) -> Answer:
    scores = result.get("sequence_scores")
    score = scores.get(task) if isinstance(scores, Mapping) else None
    return Answer(result[task], None if score is None else float(score))


def answer_requests(
    predictor: Predictor,
    images: Sequence[Any],
    requests: Sequence[Request],
    batch_size: int,
    decoding: Mapping[str, Any],
    advance: Callable[[int], None] = lambda n: None,
) -> dict[Request, Answer]:
    """Each distinct request's answer, in as few ``predict`` calls as possible (one per set of
    input-free tasks, one per text task with each image's own text).

    Args:
        images: anything ``predict`` takes (paths, PIL images); requests index into it.
        batch_size: images per forward pass, passed to ``predict``.
        decoding: keyword arguments for ``predict`` (``num_beams``, ``max_new_tokens``, ...).
        advance: called with the number of requests each ``predict`` call answered.
    """
    answers: dict[Request, Answer] = {}
    # Tasks without input: one call per set of tasks, all of them on one vision encoding per image.
    plain: dict[int, list[str]] = {}
    for r in requests:
        if r.text is None:
            plain.setdefault(r.image, []).append(r.task)
    by_tasks: dict[tuple[str, ...], list[int]] = {}
    for image, tasks in plain.items():
        by_tasks.setdefault(tuple(dict.fromkeys(tasks)), []).append(image)
    for tasks, indices in by_tasks.items():
        results = predictor.predict([images[i] for i in indices], list(tasks), batch_size=batch_size, **decoding)
        for i, result in zip(indices, results):
            for task in tasks:
                answers[Request(i, task, None)] = _answer(result, task)
        advance(len(indices) * len(tasks))
    # Text tasks: one call per task over every (image, text) pair; each image gets its own text.
    by_task: dict[str, dict[tuple[int, str], None]] = {}  # ordered set of (image, text) per task
    for r in requests:
        if r.text is not None:
            by_task.setdefault(r.task, {})[(r.image, r.text)] = None
    for task, asking in by_task.items():
        pairs = list(asking)
        results = predictor.predict(
            [images[i] for i, _ in pairs], task, text=[t for _, t in pairs], batch_size=batch_size, **decoding
        )
        for (i, text), result in zip(pairs, results):
            answers[Request(i, task, text)] = _answer(result, task)
        advance(len(pairs))
    return answers
