"""Random crops and mosaics of training examples that keep every region the example names.

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

A mosaic (:func:`mosaic_example`) changes what a scene holds rather than how it is framed: four
examples of a box-listing task (``<OD>``, ``<REGION_PROPOSAL>``) are tiled 2x2 into one image of the
first one's size, and their boxes are listed in one target in the task's order (reading order, the
boxes of one label together). The decoder then learns lists of up to four times as many objects,
each at half size, from scenes it has not seen whole.

    from florence2.data.augment import random_crops, random_mosaics
    get_item = random_mosaics(mixture.__getitem__, examples, share=0.5, seed=0)
    get_item = random_crops(get_item, min_scale=0.6, seed=0)   # item i is always cropped alike
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from florence2.coords import LOC_PATTERN, NUM_BINS, dequantize, loc_tokens, parse_loc_tokens, quantize
from florence2.data.formats import Example, example_field
from florence2.image import load_image

# a run of consecutive location tokens
_RUN = re.compile(rf"(?:{LOC_PATTERN.pattern})+")
# tasks whose targets list labelled boxes (labels then 4 location tokens per box), as mosaics rebuild
MOSAIC_TASKS = ("<OD>", "<REGION_PROPOSAL>")


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


def crop_example(
    example: Example | Mapping[str, Any], rng: np.random.Generator, min_scale: float = 0.6
) -> Example | Mapping[str, Any]:
    """``example`` seen through a random window holding every point it locates (module docstring).

    ``example`` may also be a mapping with those fields (a mosaic). Returns ``example`` itself when it
    is left unchanged, else a dict with the fields of an :class:`~florence2.data.formats.Example`
    whose ``image`` is the cropped, resized :class:`PIL.Image.Image` (the trainer's ``collate`` reads
    either).
    """
    _check_scale(min_scale)
    prompt, target = example_field(example, "prompt"), example_field(example, "target")
    prompt_runs, target_runs = _bins(prompt), _bins(target)
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
    image = load_image(example_field(example, "image"))
    width, height = image.size
    box = (left * width, top * height, (left + scale) * width, (top + scale) * height)
    cropped = image.resize((width, height), Image.Resampling.BICUBIC, box=box)
    return {
        "image": cropped,
        "prompt": _rewrite(prompt, left, top, scale),
        "target": _rewrite(target, left, top, scale),
        "task": example_field(example, "task"),
        "source": f"{example_field(example, 'source')} (cropped)",
    }


def random_crops(get_item: Callable[[int], Any], min_scale: float, seed: int) -> Callable[[int], Any]:
    """``get_item`` with each item passed through :func:`crop_example`; item ``i``'s window is drawn
    from a generator seeded with ``(seed, i)``, so a resumed run crops as an uninterrupted one."""
    _check_scale(min_scale)

    def cropped(index: int) -> Any:
        return crop_example(get_item(index), np.random.default_rng([seed, index]), min_scale)

    return cropped


def _labelled_boxes(target: str) -> list[tuple[str, np.ndarray]] | None:
    """``(label, 4 bins)`` per box of a target made of labels each followed by whole boxes (``<OD>``,
    region proposals: empty labels); None for any other target."""
    boxes, end = [], 0
    for run in _RUN.finditer(target):
        label, bins = target[end : run.start()], parse_loc_tokens(run.group(0))
        if len(bins) % 4 or "<" in label or ">" in label:
            return None
        boxes += [(label, np.asarray(bins[i : i + 4])) for i in range(0, len(bins), 4)]
        end = run.end()
    return boxes if boxes and not target[end:] else None


def mosaic_example(examples: Sequence[Example | Mapping[str, Any]]) -> Example | Mapping[str, Any]:
    """Four examples of one task of ``MOSAIC_TASKS`` (and one prompt) tiled 2x2, in order, into one
    image of the first one's size, each resized to its quarter; their boxes listed in one target the
    way the task's targets are built (top to bottom by the box's top bin, then left to right, ties in
    tile order; the boxes of one label together, labels in the order of their first box).

    Returns the first example unchanged unless all four qualify; else a dict with the fields of an
    :class:`~florence2.data.formats.Example` whose ``image`` is a :class:`PIL.Image.Image`.
    """
    first = examples[0]
    task, prompt = example_field(first, "task"), example_field(first, "prompt")
    if len(examples) != 4 or task not in MOSAIC_TASKS or _RUN.search(prompt):
        return first
    if any(example_field(e, "task") != task or example_field(e, "prompt") != prompt for e in examples):
        return first
    parsed = [_labelled_boxes(example_field(e, "target")) for e in examples]
    if any(p is None for p in parsed):
        return first
    images = [load_image(example_field(e, "image")) for e in examples]
    width, height = images[0].size
    canvas = Image.new("RGB", (width, height))
    xs, ys = (0, width // 2, width), (0, height // 2, height)  # tile edges in pixels
    placed = []
    for k, (image, boxes) in enumerate(zip(images, parsed)):
        col, row = k % 2, k // 2
        tile = (xs[col], ys[row], xs[col + 1], ys[row + 1])
        canvas.paste(
            image.convert("RGB").resize((tile[2] - tile[0], tile[3] - tile[1]), Image.Resampling.BICUBIC), tile[:2]
        )
        for label, bins in boxes:
            # bin centres of the example -> pixels of its tile -> bins of the canvas
            points = dequantize(bins.reshape(2, 2), (tile[2] - tile[0], tile[3] - tile[1])) + tile[:2]
            placed.append((label, quantize(points, (width, height)).reshape(-1)))
    order = sorted(range(len(placed)), key=lambda i: (placed[i][1][1], placed[i][1][0]))
    groups: dict[str, list[np.ndarray]] = {}
    for i in order:
        groups.setdefault(placed[i][0], []).append(placed[i][1])
    return {
        "image": canvas,
        "prompt": prompt,
        "target": "".join(label + loc_tokens(np.stack(boxes)) for label, boxes in groups.items()),
        "task": task,
        "source": " + ".join(str(example_field(e, "source")) for e in examples) + " (mosaic)",
    }


def random_mosaics(
    get_item: Callable[[int], Any], pool: Sequence[Example], share: float, seed: int
) -> Callable[[int], Any]:
    """``get_item`` with a ``share`` of its items of ``MOSAIC_TASKS`` made into mosaics
    (:func:`mosaic_example`) with three partners drawn from the examples of ``pool`` with the same
    task and prompt; item ``i``'s draw is seeded with ``(seed, i)``, so a resumed run sees the same
    mosaics as an uninterrupted one."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    partners: dict[tuple[str, str], list[Example]] = {}
    for example in pool:
        if example.task in MOSAIC_TASKS:
            partners.setdefault((example.task, example.prompt), []).append(example)

    def mosaic(index: int) -> Any:
        item = get_item(index)
        rng = np.random.default_rng([seed, index, 1])  # a stream of its own beside the crops' (seed, index)
        choices = partners.get((example_field(item, "task"), example_field(item, "prompt")))
        if not choices or rng.random() >= share:
            return item
        return mosaic_example([item, *(choices[j] for j in rng.integers(len(choices), size=3))])

    return mosaic
