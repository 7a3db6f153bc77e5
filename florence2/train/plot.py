"""Training curves drawn with PIL only (no matplotlib): loss, evaluation metrics and learning rate.

One panel per quantity, stacked vertically, sharing the step axis: train loss together with any
evaluation key that holds "loss", then one panel per other evaluation metric, then the learning rate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))
_PANEL_HEIGHT = 200
_MARGIN = {"left": 72, "right": 16, "top": 26, "bottom": 26}
_MAX_PANELS = 8
# record keys that are not curves
_NOT_PLOTTED = {"step", "grad_norm", "samples_per_s", "elapsed"}


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: Sequence[dict], key: str) -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[key])) for r in records if "step" in r and _finite(r.get(key))]


def _panels(records: Sequence[dict]) -> list[tuple[str, list[str]]]:
    keys: list[str] = []
    for r in records:
        keys.extend(k for k, v in r.items() if k not in keys and k not in _NOT_PLOTTED and _finite(v))
    loss_keys = [k for k in keys if "loss" in k]
    panels = [("loss", loss_keys)] if loss_keys else []
    panels += [(k, [k]) for k in keys if "loss" not in k and k != "lr"]
    if "lr" in keys:
        panels.append(("learning rate", ["lr"]))
    return panels[:_MAX_PANELS]


def _ticks(low: float, high: float, count: int = 6, integer: bool = False) -> list[float]:
    """Round tick values inside [low, high]: multiples of 1, 2 or 5 times a power of ten."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont,
    box: tuple[int, int, int, int],
    title: str,
    curves: list[tuple[str, list[tuple[float, float]]]],
    x_range: tuple[float, float],
) -> None:
    x0, y0, x1, y1 = box
    values = [v for _, pts in curves for _, v in pts]
    low, high = min(values), max(values)
    if high - low < 1e-12 * max(1.0, abs(high)):
        low, high = low - 0.5 * max(abs(low), 1e-3), high + 0.5 * max(abs(high), 1e-3)
    pad = 0.05 * (high - low)
    low, high = low - pad, high + pad
    sx = lambda s: x0 + (s - x_range[0]) / max(x_range[1] - x_range[0], 1e-12) * (x1 - x0)
    sy = lambda v: y1 - (v - low) / (high - low) * (y1 - y0)
    for v in _ticks(low, high):
        y = sy(v)
        draw.line([(x0 - 4, y), (x0, y)], fill=(0, 0, 0))
        draw.line([(x0 + 1, y), (x1 - 1, y)], fill=(232, 232, 232))
        draw.text((x0 - 6, y), f"{v:.3g}", fill=(0, 0, 0), font=font, anchor="rm")
    for s in _ticks(*x_range, integer=True):
        x = sx(s)
        draw.line([(x, y1), (x, y1 + 4)], fill=(0, 0, 0))
        draw.text((x, y1 + 6), f"{s:.0f}", fill=(0, 0, 0), font=font, anchor="mt")
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0, y0 - 6), title, fill=(0, 0, 0), font=font, anchor="ld")
    for i, (_, points) in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        xy = [(sx(s), sy(v)) for s, v in points]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy if len(xy) < 40 else xy[-1:]:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    legend_x = x1
    for i, (name, _) in reversed(list(enumerate(curves)) if len(curves) > 1 else []):
        legend_x -= int(draw.textlength(name, font=font)) + 22
        draw.rectangle([legend_x, y0 - 14, legend_x + 10, y0 - 6], fill=PALETTE[i % len(PALETTE)])
        draw.text((legend_x + 14, y0 - 6), name, fill=(0, 0, 0), font=font, anchor="ld")


def plot_metrics(records: Sequence[dict], path: str | os.PathLike, width: int = 900) -> Path:
    """Draw the curves of ``records`` (metrics.jsonl rows: ``step`` plus numeric keys) into a PNG."""
    path = Path(path)
    panels = [(t, [(k, _series(records, k)) for k in keys]) for t, keys in _panels(records)]
    panels = [(t, [(k, pts) for k, pts in curves if pts]) for t, curves in panels]
    panels = [(t, curves) for t, curves in panels if curves]
    font = ImageFont.load_default()
    height = max(1, len(panels)) * _PANEL_HEIGHT
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if not panels:
        draw.text((width // 2, height // 2), "no metrics yet", fill=(0, 0, 0), font=font, anchor="mm")
    steps = [s for _, curves in panels for _, pts in curves for s, _ in pts]
    x_range = (min(steps), max(steps)) if steps else (0.0, 1.0)
    if x_range[1] == x_range[0]:
        x_range = (x_range[0] - 1, x_range[1] + 1)
    for i, (title, curves) in enumerate(panels):
        top = i * _PANEL_HEIGHT
        box = (
            _MARGIN["left"],
            top + _MARGIN["top"],
            width - _MARGIN["right"],
            top + _PANEL_HEIGHT - _MARGIN["bottom"],
        )
        _draw_panel(draw, font, box, title, curves, x_range)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)  # a reader never sees a half-written picture
    return path
