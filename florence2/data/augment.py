"""Random crops of training examples that keep every region the example names.

A fine-tuning set of a few hundred images is memorised within a few dozen passes. A crop makes each
pass see the images at another scale and position. An example's prompt and target hold its regions
as location tokens (``<loc_k>``, relative to the image; x and y alternate in every run of
consecutive tokens: boxes, polygons, quads). :func:`crop_example` cuts a window out of the image that
holds every one of those points, its sides a random share in ``[min_scale, 1]`` of the image's (the
aspect ratio kept), resizes it back to the image's size, and rewrites each location token for the
window. Nothing located is cut off, so the target stays complete.

Left unchanged: examples without location tokens (a crop could cut out an object a caption names),
and those with a run of an odd number of them (x and y cannot be told apart). Words are never
rewritten: a target or prompt that states a position or a size ("at the top left", "a large
circle") can be wrong after a crop, so crop examples of tasks whose texts name neither, such as
``<OD>``, region proposals, OCR with regions, phrase grounding and segmentation.

    from florence2.data.augment import random_crops
    get_item = random_crops(mixture.__getitem__, min_scale=0.6, seed=0)   # item i is always cropped alike
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from florence2.coords import LOC_PATTERN, NUM_BINS, dequantize, loc_tokens, parse_loc_tokens, quantize
from florence2.data.formats import Example
from florence2.image import load_image

# a run of consecutive location tokens
_RUN = re.compile(rf"(?:{LOC_PATTERN.pattern})+")


def _check_scale(min_scale: float) -> None:
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must lie in (0, 1], got {min_scale}")


def _bins(text: str) -> list[list[int]] | None:
    """The bins of each run of location tokens in ``text``; None if a run has an odd length."""
    runs = [parse_loc_tokens(run.group(0)) for run in _RUN.finditer(text)]
    return None if any(len(r) % 2 for r in runs) else runs


def _rewrite(text: str, left: float, top: float, scale: float) -> str:
    """``text`` with each location token moved from the whole image (a unit square) into the window
    at ``(left, top)`` whose sides are ``scale`` of the image's: bin centre in, window bin out."""

    def run(match: re.Match) -> str:
        bins = np.reshape(parse_loc_tokens(match.group(0)), (-1, 2))
        return loc_tokens(quantize(dequantize(bins, (1.0, 1.0)) - (left, top), (scale, scale)))

    return _RUN.sub(run, text)


def crop_example(example: Example, rng: np.random.Generator, min_scale: float = 0.6) -> Example | dict[str, Any]:
    """``example`` seen through a random window holding every point it locates (module docstring).

    Returns ``example`` itself when it is left unchanged, else a dict with the fields of an
    :class:`~florence2.data.formats.Example` whose ``image`` is the cropped, resized
    :class:`PIL.Image.Image` (the trainer's ``collate`` reads either).
    """
    _check_scale(min_scale)
    prompt_runs, target_runs = _bins(example.prompt), _bins(example.target)
    if prompt_runs is None or target_runs is None or not (prompt_runs or target_runs):
        return example
    runs = prompt_runs + target_runs
    xs = np.array([b for r in runs for b in r[0::2]], dtype=np.float64)
    ys = np.array([b for r in runs for b in r[1::2]], dtype=np.float64)
    # shares of the image's sides, bin edges included so that whole bins stay inside
    x_low, x_high = xs.min() / NUM_BINS, (xs.max() + 1) / NUM_BINS
    y_low, y_high = ys.min() / NUM_BINS, (ys.max() + 1) / NUM_BINS
    scale = rng.uniform(max(min_scale, x_high - x_low, y_high - y_low), 1.0)
    left = rng.uniform(max(0.0, x_high - scale), min(x_low, 1.0 - scale))
    top = rng.uniform(max(0.0, y_high - scale), min(y_low, 1.0 - scale))
    image = load_image(example.image)
    width, height = image.size
    box = (left * width, top * height, (left + scale) * width, (top + scale) * height)
    cropped = image.resize((width, height), Image.Resampling.BICUBIC, box=box)
    return {
        "image": cropped,
        "prompt": _rewrite(example.prompt, left, top, scale),
        "target": _rewrite(example.target, left, top, scale),
        "task": example.task,
        "source": f"{example.source} (cropped)",
    }


def random_crops(get_item: Callable[[int], Example], min_scale: float, seed: int) -> Callable[[int], Any]:
    """``get_item`` with each item passed through :func:`crop_example`; item ``i``'s window is drawn
    from a generator seeded with ``(seed, i)``, so a resumed run crops as an uninterrupted one."""
    _check_scale(min_scale)

    def cropped(index: int) -> Any:
        return crop_example(get_item(index), np.random.default_rng([seed, index]), min_scale)

    return cropped
