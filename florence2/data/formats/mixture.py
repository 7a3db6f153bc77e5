"""Mixing examples of several datasets, and holding images out."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from florence2.data.formats.records import Example


def held_out_names(names: Iterable[str], fraction: float, seed: int = 0) -> set[str]:
    """The names held out of ``names``: about ``fraction`` of them, each chosen by a hash of
    ``seed`` and the name alone, so the choice is the same in every run and process, whatever the
    order of ``names``, and does not move when other names are added. With a positive fraction and
    two names or more, at least one name is held out and at least one kept."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    keys = {}
    for name in names:
        if name not in keys:
            digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
            keys[name] = int.from_bytes(digest[:8], "big") / 2**64
    held = {name for name, key in keys.items() if key < fraction}
    if fraction > 0 and len(keys) >= 2:
        if not held:
            held = {min(keys, key=keys.get)}
        elif len(held) == len(keys):
            held.remove(max(keys, key=keys.get))
    return held


def split_held_out(examples: Sequence[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: about ``fraction`` of the *images* are held out, all their examples
    with them (no image is on both sides), chosen by :func:`held_out_names` on the image's file
    name, so wherever the data lies."""
    names = {e.image: Path(e.image).name for e in examples}
    held_names = held_out_names(names.values(), fraction, seed)
    held_images = {image for image, name in names.items() if name in held_names}
    train = [e for e in examples if e.image not in held_images]
    return train, [e for e in examples if e.image in held_images]


class Mixture:
    """An endless, shuffled stream of examples drawn with weights, epoch after epoch.

    ``weights[i]`` is how many times example ``i`` is drawn per epoch on average (1: once; 2: twice;
    0.5: every other epoch); the fractional part is drawn at random per epoch. ``mixture[k]`` is a
    pure function of ``(seed, k)``, which is what the trainer's exact resume and DDP need.
    """

    def __init__(self, examples: Sequence[Any], weights: Sequence[float] | None = None, seed: int = 0) -> None:
        if not examples:
            raise ValueError("a mixture needs at least one example")
        self.examples = list(examples)
        w = np.ones(len(self.examples)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.examples),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("mixture weights must be finite, >= 0, one per example, and not all 0")
        self.weights = w
        self.seed = seed
        self._starts = [0]  # global index of the first item of each epoch computed so far
        self._epochs: list[np.ndarray] = []

    def epoch(self, e: int) -> np.ndarray:
        """Indices of epoch ``e`` in order."""
        while len(self._epochs) <= e:
            n = len(self._epochs)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, n]))
            whole = np.floor(self.weights).astype(np.int64)
            counts = whole + (rng.random(len(self.weights)) < self.weights - whole)
            order = rng.permutation(np.repeat(np.arange(len(self.weights)), counts))
            self._epochs.append(order)
            self._starts.append(self._starts[-1] + len(order))
        return self._epochs[e]

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            raise IndexError("a mixture is endless: indices are >= 0")
        while self._starts[-1] <= index:
            self.epoch(len(self._epochs))
        e = bisect.bisect_right(self._starts, index) - 1
        return self.examples[int(self._epochs[e][index - self._starts[e]])]

    @property
    def epoch_length(self) -> float:
        """Expected items per epoch."""
        return float(self.weights.sum())
