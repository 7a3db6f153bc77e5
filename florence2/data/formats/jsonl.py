"""JSON lines of ``{"image", "prefix", "suffix"}``: prompts and targets written out, the layout other
Florence-2 fine-tuning tools use."""

from __future__ import annotations

import os
import re
from pathlib import Path

from florence2.coords import NUM_BINS, parse_loc_tokens
from florence2.data.formats.records import Example
from florence2.data.formats.validate import Images, json_lines, require
from florence2.errors import AnnotationError, TaskError
from florence2.tasks import TASKS, construct_prompt

_TASK_TOKEN = re.compile("|".join(re.escape(token) for token in TASKS))


def read_jsonl(path: str | os.PathLike, images: str | os.PathLike | None = None) -> list[Example]:
    """Examples from JSON lines ``{"image": ..., "prefix": ..., "suffix": ...}``. The prefix is a task
    token (``"<OD>"``), a task token followed by its input (``"<CAPTION_TO_PHRASE_GROUNDING>a red
    car"``), or a free prompt; task tokens are expanded as the reference processor does. The suffix is
    the target as the model should answer, e.g. ``"car<loc_52><loc_333><loc_932><loc_774>"``; location
    tokens must lie in 0..999."""
    path = Path(path)
    resolver = Images(Path(images) if images is not None else path.parent)
    out = []
    for where, item in json_lines(path):
        image = resolver.path(f"{where}: image", require(where, item, "image", str))
        if not image.is_file():
            raise AnnotationError(f"{where}: image: file {image} not found")
        prefix = require(where, item, "prefix", str)
        suffix = require(where, item, "suffix", str)
        try:
            prompt = construct_prompt(prefix.strip())
        except TaskError as e:
            raise AnnotationError(f"{where}: prefix: {e}") from None
        if not prompt.strip():
            raise AnnotationError(f"{where}: prefix: empty prompt")
        for name, value in (("prefix", prefix), ("suffix", suffix)):
            bad = [b for b in parse_loc_tokens(value) if b >= NUM_BINS]
            if bad:
                limits = f"<loc_0> to <loc_{NUM_BINS - 1}>"
                raise AnnotationError(f"{where}: {name}: location tokens go from {limits}, got <loc_{bad[0]}>")
        token = _TASK_TOKEN.search(prefix)
        out.append(Example(str(image), prompt, suffix.strip(), token.group(0) if token else None, where))
    if not out:
        raise AnnotationError(f"{path}: no examples")
    return out
