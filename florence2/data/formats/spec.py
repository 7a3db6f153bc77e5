"""Datasets on the command line: ``FORMAT:PATH[:PATH...][@OPTION=VALUE,...]``, and reading them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from florence2.data.formats.detect import detect_format
from florence2.data.formats.records import Example
from florence2.data.formats.registry import FORMATS
from florence2.errors import AnnotationError, TaskError
from florence2.tasks import get_task


@dataclass(frozen=True)
class DataSpec:
    """A dataset on the command line: ``FORMAT:PATH[:PATH...][@OPTION=VALUE,...]``."""

    format: str
    paths: tuple[str, ...]
    tasks: tuple[str, ...] | None = None
    weight: float = 1.0
    options: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.format}:{':'.join(self.paths)}"


_OPTIONS = re.compile(r"[A-Za-z_]+=[^,@]*(?:,[A-Za-z_]+=[^,@]*)*")


def parse_data_spec(text: str, default_format: str | None = None) -> DataSpec:
    """Parse ``FORMAT:PATH[:PATH...][@OPTION=VALUE,...]``.

    Without a known ``FORMAT:`` prefix the paths take ``default_format`` or, without one, the format
    :func:`detect_format` recognises. Options: ``tasks=OD+OPEN_VOCABULARY_DETECTION`` (task names
    joined by ``+``), ``weight=2``, and the format's own (``split=train``).

    Raises:
        AnnotationError: unknown format or option, wrong number of paths, bad weight or task.
    """
    body, options = text, {}
    head, sep, tail = text.rpartition("@")
    if sep and _OPTIONS.fullmatch(tail):
        body = head
        for part in tail.split(","):
            key, _, value = part.partition("=")
            options[key.strip().lower()] = value.strip()
    name, colon, rest = body.partition(":")
    if colon and name.lower() in FORMATS:
        fmt, paths = name.lower(), tuple(rest.split(":"))
    else:
        paths = tuple(body.split(":"))
        fmt = (default_format or detect_format(paths)).lower()
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown data format {fmt!r}; formats: {', '.join(FORMATS)}")
    spec_format = FORMATS[fmt]
    paths = tuple(p for p in paths if p)
    if not spec_format.min_paths <= len(paths) <= spec_format.max_paths:
        raise AnnotationError(f"{text}: the {fmt} format takes {spec_format.usage}")
    known = {"tasks", "weight", *spec_format.options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AnnotationError(f"{text}: unknown option {unknown[0]!r} for {fmt}; options: {', '.join(sorted(known))}")
    tasks = None
    if options.get("tasks"):
        try:
            tasks = tuple(get_task(t).token for t in options.pop("tasks").split("+") if t.strip())
        except TaskError as e:
            raise AnnotationError(f"{text}: tasks: {e}") from None
    weight = 1.0
    if "weight" in options:
        try:
            weight = float(options.pop("weight"))
        except ValueError:
            weight = -1.0
        if not (math.isfinite(weight) and weight > 0):
            raise AnnotationError(f"{text}: weight: expected a positive number")
    return DataSpec(fmt, paths, tasks, weight, options)


def load_data(
    spec: DataSpec | str, tasks: Sequence[str] | None = None, notes: list[str] | None = None
) -> list[Example]:
    """The examples of one dataset spec. ``tasks``: used when the spec names none (the format's
    default otherwise); tasks the format cannot give are an error."""
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    fmt = FORMATS[spec.format]
    chosen = spec.tasks or (tuple(tasks) if tasks else None)
    if chosen and not fmt.tasks:
        raise TaskError(f"{spec}: the {fmt.name} format takes its tasks from the data; drop the tasks option")
    examples = fmt.read([Path(p) for p in spec.paths], chosen, spec.options, notes)
    if not examples:
        raise AnnotationError(f"{spec}: no examples for tasks {', '.join(chosen or fmt.default_tasks)}")
    return examples
