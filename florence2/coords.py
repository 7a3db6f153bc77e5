"""Coordinate quantization between pixels and Florence-2 location tokens.

Florence-2 writes every coordinate as one of ``NUM_BINS`` = 1000 location tokens ``<loc_0>`` ..
``<loc_999>`` per axis. Boxes ``(x0, y0, x1, y1)``, OCR quads ``(x0, y0, ..., x3, y3)`` and polygons
``(x0, y0, ..., xn, yn)`` are all lists of points, so one quantizer serves them all: the point
functions work on arrays of shape ``(..., 2)`` holding ``(x, y)``, the ``*_flat`` functions on
interleaved ``[x0, y0, x1, y1, ...]`` arrays of shape ``(..., 2k)``.

Conventions (the original processor's "floor" mode): ``image_size`` is ``(width, height)`` of the
original image in pixels; a pixel coordinate ``x`` falls in bin ``floor(x / (W / 1000))`` clamped to
``[0, 999]``; a bin maps back to its centre ``(bin + 0.5) * W / 1000`` as a float pixel coordinate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from florence2.errors import TaskError

NUM_BINS = 1000
LOC_PATTERN = re.compile(r"<loc_(\d+)>")

# int() refuses more than 4300 digits and float() overflows past ~1e308, so absurd numbers in
# generated text saturate here instead of crashing a parser.
_MAX_PARSED_BIN = 10**18


def _size_array(image_size: Sequence[float]) -> np.ndarray:
    size = np.asarray(image_size, dtype=np.float64)
    if size.shape != (2,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise TaskError(f"image_size must be (width, height) with positive sizes, got {image_size!r}")
    return size


def _points_array(points: ArrayLike) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] != 2:
        raise TaskError(f"points must have shape (..., 2) holding (x, y), got shape {array.shape}")
    return array


def _flat_as_points(array: np.ndarray) -> np.ndarray:
    if array.ndim == 0 or array.shape[-1] % 2:
        raise TaskError(f"flat coordinates must have shape (..., 2k) as [x0, y0, x1, y1, ...], got shape {array.shape}")
    return array.reshape(*array.shape[:-1], -1, 2)


def quantize(points: ArrayLike, image_size: Sequence[float]) -> np.ndarray:
    """Map pixel points to location bins.

    Args:
        points: ``(..., 2)`` array of ``(x, y)`` pixel coordinates of the original image.
        image_size: ``(width, height)`` of the original image in pixels.

    Returns:
        ``(..., 2)`` int64 bins in ``[0, NUM_BINS - 1]``: ``floor(x / (W / 1000))``, clamped.
    """
    size = _size_array(image_size)
    array = _points_array(points)
    bins = np.floor(array / (size / NUM_BINS))
    return np.clip(bins, 0, NUM_BINS - 1).astype(np.int64)


def dequantize(bins: ArrayLike, image_size: Sequence[float]) -> np.ndarray:
    """Map location bins to the float pixel coordinates of the bin centres.

    Args:
        bins: ``(..., 2)`` array of ``(x, y)`` bins. Values outside ``[0, 999]`` (generated text can
            hold e.g. ``<loc_1000>``) are not clamped; they extrapolate linearly.
        image_size: ``(width, height)`` of the original image in pixels.

    Returns:
        ``(..., 2)`` float64 pixel coordinates ``(bin + 0.5) * size / 1000``.
    """
    size = _size_array(image_size)
    array = _points_array(bins)
    return (array + 0.5) * size / NUM_BINS


def quantize_flat(values: ArrayLike, image_size: Sequence[float]) -> np.ndarray:
    """:func:`quantize` for interleaved ``[x0, y0, x1, y1, ...]`` coordinates.

    Args:
        values: ``(..., 2k)`` pixel coordinates, e.g. ``(N, 4)`` XYXY boxes, ``(N, 8)`` quads or one
            ``(2k,)`` polygon.
        image_size: ``(width, height)`` of the original image in pixels.

    Returns:
        int64 bins with the shape of ``values``.
    """
    array = np.asarray(values, dtype=np.float64)
    return quantize(_flat_as_points(array), image_size).reshape(array.shape)


def dequantize_flat(values: ArrayLike, image_size: Sequence[float]) -> np.ndarray:
    """:func:`dequantize` for interleaved ``[x0, y0, x1, y1, ...]`` bins.

    Args:
        values: ``(..., 2k)`` bins, e.g. ``(N, 4)`` XYXY boxes, ``(N, 8)`` quads or one polygon.
        image_size: ``(width, height)`` of the original image in pixels.

    Returns:
        float64 pixel coordinates (bin centres) with the shape of ``values``.
    """
    array = np.asarray(values, dtype=np.float64)
    return dequantize(_flat_as_points(array), image_size).reshape(array.shape)


def loc_tokens(bins: ArrayLike) -> str:
    """Write bins as location tokens in order, e.g. ``[53, 334]`` -> ``"<loc_53><loc_334>"``.

    Args:
        bins: integer bins of any shape (flattened in C order), each in ``[0, NUM_BINS - 1]``.
    """
    flat = np.asarray(bins).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise TaskError(f"location bins must be integers, got dtype {flat.dtype}")
    if np.any((flat < 0) | (flat >= NUM_BINS)):
        raise TaskError(f"location bins must lie in [0, {NUM_BINS - 1}], got {flat.tolist()}")
    return "".join(f"<loc_{int(b)}>" for b in flat)


def parse_bin(digits: str) -> int:
    """The bin number of the digits captured by :data:`LOC_PATTERN`; absurdly long numbers
    saturate at 10**18 instead of raising."""
    return int(digits) if len(digits) <= 18 else _MAX_PARSED_BIN


def parse_loc_tokens(text: str) -> list[int]:
    """All ``<loc_k>`` numbers in ``text`` in order, e.g. ``"a<loc_1>b<loc_22>"`` -> ``[1, 22]``.

    Numbers are not range-checked (generated text can contain ``<loc_1000>``).
    """
    return [parse_bin(m.group(1)) for m in LOC_PATTERN.finditer(text)]


def box_to_loc_tokens(box_xyxy_pixels: ArrayLike, image_size: Sequence[float]) -> str:
    """Quantize one XYXY box in pixels of the original image to four location tokens.

    Args:
        box_xyxy_pixels: ``(4,)`` box ``(x0, y0, x1, y1)``, top-left and bottom-right corners.
        image_size: ``(width, height)`` of the original image in pixels.

    Returns:
        e.g. ``"<loc_53><loc_334><loc_933><loc_775>"``, the region input of region tasks.
    """
    box = np.asarray(box_xyxy_pixels, dtype=np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise TaskError(f"a region must be 4 finite numbers (x0, y0, x1, y1), got {box_xyxy_pixels!r}")
    return loc_tokens(quantize_flat(box, image_size))
