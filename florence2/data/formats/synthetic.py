"""Splits of the synthetic world (:func:`florence2.data.write_split`) as fine-tuning data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from florence2.data.formats.records import Example, choose_tasks, examples
from florence2.data.synthetic import ANNOTATIONS_FILE, read_split
from florence2.tasks import TASKS


def read_synthetic(
    folder: str | os.PathLike, tasks: Sequence[str] | None = None, notes: list[str] | None = None
) -> list[Example]:
    """Examples from a synthetic split: every sample of ``tasks`` (any task; default ``<OD>``) for
    every record."""
    folder = Path(folder)
    tasks = choose_tasks(tasks, tuple(TASKS), ("<OD>",), "synthetic")
    out = []
    for number, item in enumerate(read_split(folder), start=1):
        item = {**item, "image": str(folder / item["image"])}
        out.extend(examples(item, tasks, f"{folder / ANNOTATIONS_FILE}:{number}"))
    return out
