"""Two ways of computing the same thing in CPU inference, chosen by timing both on this machine.

Which way is faster depends on the CPU (its BLAS library, caches, cores, and what else runs on it)
more than on the model, and rules of thumb measured on one CPU were wrong on the next:

* **Products of a few rows** (incremental decoding multiplies one row per sequence or beam by each
  weight matrix): ``F.linear`` (``x @ W.T``, a matrix-vector product for one row) or the few-row
  route ``W @ x.T`` (a GEMM with a few columns, and a 2-column one for one row). The few-row route
  was 2-4x faster for 1-4 rows on a 2-core AMD EPYC (MKL), while on an Intel Xeon with AVX-512 and
  AMX it made 100 tokens with 3 beams at base size 1.35x slower. On the AMD EPYC again, with one
  thread on a loaded machine: the output head (51289 x 768) took 25 ms by the few-row route against
  53 ms by ``F.linear`` for 3 rows, but 25 ms against 17 ms for one row; the decoder's 768-wide
  layers were faster by ``F.linear`` at every row count.
* **A batch of images through the vision tower**: as one batch, or one image at a time. On the AMD
  EPYC at 768x768 (base size) an image took 3.2 s alone and 4.1 s per image in a batch of 8 (its
  first stages hold large activations), while 128x128 images took 26 ms for a batch of 8 and 58 ms
  one at a time.

So neither is fixed. The first time a case arises, both ways are timed on its actual operands and
the faster is kept for the rest of the process:

* :func:`linear`, per (rows, weight shape, dtype, bias or not), for 1 to :data:`FEW_ROWS_MAX` rows
  on the CPU: each way runs once to warm up, then both alternate (so a machine whose speed drifts
  slows both alike) for at least 3 and at most 20 runs each, until 50 ms are spent; the minimum of
  each counts. The few-row route is kept only when it takes at most :data:`MARGIN` (90%) of
  ``F.linear``'s time, so it is never kept for being as fast within noise. It costs a few tenths of a
  second for the largest weights, once per row count, on the first decoding steps.
* :func:`run_images`, per (image height, width, dtype, batch size rounded up to a power of two), for
  batches of 2 or more images on the CPU: the batch runs as one (that is the answer of this call,
  timed), then the first image alone, twice (the faster counts); one image at a time is kept when
  its time times the batch size is at most :data:`MARGIN` of the batch's. This costs two extra
  single-image passes, once per case.

Both ways give the same numbers up to float rounding. Training (gradients required), tracing, other
devices and more rows take ``F.linear`` and whole batches without measuring. The choices are kept
per process, made once even when several threads arrive together (the others wait for it), and
print nothing; :func:`choices` lists them.

Overrides, for this process: :func:`set_linear_route` (``"auto"``, ``"linear"``, ``"few-rows"``)
and :func:`set_vision_route` (``"auto"``, ``"batch"``, ``"split"``), or before it starts the
environment variables ``FLORENCE2_LINEAR_ROUTE`` and ``FLORENCE2_VISION_ROUTE`` with the same
values. A forced route applies where ``"auto"`` would measure.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
import torch.nn.functional as F

T = TypeVar("T")

LINEAR_ROUTES = ("auto", "linear", "few-rows")
VISION_ROUTES = ("auto", "batch", "split")
LINEAR_ENV = "FLORENCE2_LINEAR_ROUTE"
VISION_ENV = "FLORENCE2_VISION_ROUTE"

FEW_ROWS_MAX = 8  # products of at most this many rows are measured; more rows always take F.linear
MARGIN = 0.9  # the alternative way is kept when it takes at most this share of the usual way's time

# measuring: at least MIN_RUNS timed runs of each way, then more until BUDGET_S is spent or MAX_RUNS
MIN_RUNS, MAX_RUNS, BUDGET_S = 3, 20, 0.05

_lock = threading.Lock()  # guards the tables and the per-key locks
_key_locks: dict[Hashable, threading.Lock] = {}
_linear_choices: dict[Hashable, str] = {}  # key -> "linear" or "few-rows"
_vision_choices: dict[Hashable, str] = {}  # key -> "batch" or "split"
_overrides: dict[str, str | None] = {"linear": None, "vision": None}  # None: not yet read from the environment


# --- overrides -----------------------------------------------------------------------------------


def _checked(route: str, routes: tuple[str, ...], where: str) -> str:
    if route not in routes:
        raise ValueError(f"unknown route {route!r} ({where}); choose from {routes}")
    return route


def set_linear_route(route: str | None) -> None:
    """Force how few-row products run in this process: ``"linear"`` (``F.linear``), ``"few-rows"``
    (``W @ x.T``) or ``"auto"`` (measured); None: back to ``FLORENCE2_LINEAR_ROUTE`` or ``"auto"``."""
    _overrides["linear"] = None if route is None else _checked(route, LINEAR_ROUTES, "set_linear_route")


def set_vision_route(route: str | None) -> None:
    """Force how CPU batches of images go through the vision tower in this process: ``"batch"``,
    ``"split"`` (one image at a time) or ``"auto"`` (measured); None: back to ``FLORENCE2_VISION_ROUTE``
    or ``"auto"``."""
    _overrides["vision"] = None if route is None else _checked(route, VISION_ROUTES, "set_vision_route")


def linear_route() -> str:
    """The route setting for few-row products: the override, else the environment, else ``"auto"``."""
    route = _overrides["linear"]
    if route is None:
        route = _overrides["linear"] = _checked(os.environ.get(LINEAR_ENV, "auto"), LINEAR_ROUTES, LINEAR_ENV)
    return route


def vision_route() -> str:
    """The route setting for batches of images: the override, else the environment, else ``"auto"``."""
    route = _overrides["vision"]
    if route is None:
        route = _overrides["vision"] = _checked(os.environ.get(VISION_ENV, "auto"), VISION_ROUTES, VISION_ENV)
    return route


def choices() -> dict[str, dict[Hashable, str]]:
    """The choices measured so far in this process: ``{"linear": {key: route}, "vision": {key: route}}``."""
    with _lock:
        return {"linear": dict(_linear_choices), "vision": dict(_vision_choices)}


def clear_choices() -> None:
    """Forget every measured choice (the next case measures again)."""
    with _lock:
        _linear_choices.clear()
        _vision_choices.clear()


# --- measuring -----------------------------------------------------------------------------------


def fastest(ways: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The minimum time in seconds of each of ``ways`` (callables doing the same work): one warm-up
    run each, then rounds that run each once, in turn, until every way has :data:`MIN_RUNS` runs and
    :data:`BUDGET_S` are spent, or :data:`MAX_RUNS` runs."""
    for way in ways.values():
        way()
    best = dict.fromkeys(ways, float("inf"))
    began = time.perf_counter()
    for run in range(MAX_RUNS):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            best[name] = min(best[name], time.perf_counter() - start)
        if run + 1 >= MIN_RUNS and time.perf_counter() - began >= BUDGET_S:
            break
    return best


def decide(table: dict[Hashable, str], key: Hashable, measure: Callable[[], str]) -> str:
    """``table[key]``, made by ``measure()`` the first time: once, whichever threads ask together."""
    choice = table.get(key)
    if choice is not None:
        return choice
    with _lock:
        key_lock = _key_locks.setdefault((id(table), key), threading.Lock())
    with key_lock:
        choice = table.get(key)
        if choice is None:
            choice = measure()
            with _lock:
                table[key] = choice
    return choice


def _measurable(*tensors: torch.Tensor | None) -> bool:
    """CPU inference outside tracing: where a choice may be measured and used."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    return True


# --- few-row products ----------------------------------------------------------------------------


def few_rows_linear(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(flat, weight, bias)`` for ``flat`` (rows, in) as ``weight @ flat.T``, transposed
    back to contiguous rows (attention kernels need a unit stride in the last dimension)."""
    rows = flat.shape[0]
    if rows == 1:  # a 2-column product instead of the matrix-vector kernel
        flat = flat.repeat(2, 1)
    out = torch.mm(weight, flat.t()) if bias is None else torch.addmm(bias[:, None], weight, flat.t())
    return out[:, :rows].t().contiguous()


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, max_rows: int = FEW_ROWS_MAX
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; products of 1 to ``max_rows`` rows on the CPU by the route
    measured faster here (see the module docstring)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not 0 < rows <= max_rows or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    route = _overrides["linear"] or linear_route()
    if route == "linear":
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    if route == "auto":
        if not _measurable(x, weight, bias):
            return F.linear(x, weight, bias)
        key = (rows, *weight.shape, weight.dtype, bias is not None)
        route = _linear_choices.get(key) or decide(_linear_choices, key, lambda: _measure_linear(flat, weight, bias))
        if route == "linear":
            return F.linear(x, weight, bias)
    return few_rows_linear(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])


def _measure_linear(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    with torch.no_grad():
        times = fastest(
            {"linear": lambda: F.linear(flat, weight, bias), "few-rows": lambda: few_rows_linear(flat, weight, bias)}
        )
    return "few-rows" if times["few-rows"] <= MARGIN * times["linear"] else "linear"


# --- batches of images ---------------------------------------------------------------------------


def _bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()  # 2, 4, 8, 16, ...


def run_images(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """``fn(images)`` for a batch ``images`` (B, ...), run as one batch or one image at a time
    (results concatenated), whichever was measured faster here for such a batch (module docstring)."""
    n = images.shape[0]
    if n < 2 or images.device.type != "cpu" or torch.is_grad_enabled() or not _measurable(images):
        return fn(images)
    route = _overrides["vision"] or vision_route()
    if route == "auto":
        key = (*images.shape[1:], images.dtype, _bucket(n))
        route = _vision_choices.get(key)
        if route is None:
            answer: list[torch.Tensor] = []
            route = decide(_vision_choices, key, lambda: _measure_images(fn, images, answer))
            if answer:  # this call measured: its batch's result is the answer
                return answer[0]
    if route == "split":
        return torch.cat([fn(image) for image in images.split(1)])
    return fn(images)


def _measure_images(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, answer: list) -> str:
    start = time.perf_counter()
    answer.append(fn(images))
    batch_s = time.perf_counter() - start
    single_s = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        fn(images[:1])
        single_s = min(single_s, time.perf_counter() - start)
    return "split" if single_s * images.shape[0] <= MARGIN * batch_s else "batch"
