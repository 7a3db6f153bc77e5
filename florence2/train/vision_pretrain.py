"""Dense pre-training of a fresh vision tower on the synthetic world.

Florence-2 starts from a pre-trained DaViT. A tower trained from scratch only through the
encoder-decoder learns shape slowly, likely because the decoder's cross-attention starts out spread
evenly over the image tokens, so the loss reaches the tower through what amounts to a mean over
mostly-background tokens. Here every image token is given its own target instead: the class of what
covers it (a shape category, text, or background), read from the scene's polygons and text quads,
and optionally (``colors`` > 0) the colour of what covers it as a second target. Linear heads on
the tower's last stage are trained with cross-entropy and then thrown away; only the tower's weights
are kept. The colour target exists because a tower that learns to name shapes alone learns to ignore
colour: a model trained from such a tower named the colour of a shape in its true box no better
than chance. With ``boxes`` > 0 a third, regression head gives each token covered by a shape or text
the distances from the token's centre to the four edges of that shape's or text's box (in token
sides, L1 loss), so that the tower's features say where each object ends as well as what it is.

    from florence2.train.vision_pretrain import pretrain_vision
    stats = pretrain_vision(model, processor, world, steps=1000, batch_size=32, lr=3e-3)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from florence2.data.synthetic import SyntheticWorld, polygon_mask
from florence2.model.florence2 import Florence2Model
from florence2.processor import Florence2Processor
from florence2.progress import progress_bar
from florence2.train.trainer import TrainConfig, lr_at

# sub-samples per token side when measuring how much of a token a polygon covers
_SUBSAMPLE = 8
# a token takes the class of the shape or text covering the largest part of it, if at least this much
MIN_COVERAGE = 0.1
# target of a token that has no colour (the loss skips it)
IGNORE = -100


def token_classes(categories: Sequence[str]) -> list[str]:
    """The classes of the dense targets: the categories, then ``"text"``, then ``"background"``."""
    return [*categories, "text", "background"]


def item_coverage(record: dict, grid: tuple[int, int]) -> np.ndarray:
    """(items, rows, cols): the share of each image token covered by each shape of ``record``, then by
    each of its texts, painted in that order (as the world renders them) so that a later one hides an
    earlier one. The three target functions read this; compute it once per scene and pass it on."""
    rows, cols = grid
    items = [o["polygon"] for o in record["objects"]] + [t["quad"] for t in record["texts"]]
    sx, sy = cols * _SUBSAMPLE / record["width"], rows * _SUBSAMPLE / record["height"]
    painted = np.full((rows * _SUBSAMPLE, cols * _SUBSAMPLE), len(items), dtype=np.int64)
    for label, flat in enumerate(items):
        points = np.reshape(np.asarray(flat, dtype=np.float64), (-1, 2)) * (sx, sy)
        painted[polygon_mask(points, painted.shape[1], painted.shape[0])] = label
    painted = painted.reshape(rows, _SUBSAMPLE, cols, _SUBSAMPLE)
    shares = [(painted == i).mean(axis=(1, 3)) for i in range(len(items))]
    return np.stack(shares) if shares else np.zeros((0, rows, cols))


def _dominant(coverage: np.ndarray, empty: int) -> np.ndarray:
    """Per token, the label covering most of it if that covers at least ``MIN_COVERAGE``, else ``empty``."""
    if not len(coverage):
        return np.full(coverage.shape[1:], empty, dtype=np.int64)
    return np.where(coverage.max(0) >= MIN_COVERAGE, coverage.argmax(0), empty).astype(np.int64)


def _grouped(coverage: np.ndarray, labels: list[int | None], count: int) -> np.ndarray:
    """(count, rows, cols): the coverage of the items summed by label; items labelled None count for none."""
    grouped = np.zeros((count, *coverage.shape[1:]))
    for item, label in enumerate(labels):
        if label is not None:
            grouped[label] += coverage[item]
    return grouped


def token_targets(
    record: dict, grid: tuple[int, int], categories: Sequence[str], coverage: np.ndarray | None = None
) -> np.ndarray:
    """(rows, cols) class indices (see :func:`token_classes`) of a scene's image tokens.

    A token takes the class covering most of it (shapes and texts painted as in
    :func:`item_coverage`; ``coverage`` is that, if already computed) when that covers at least
    ``MIN_COVERAGE`` of the token, else background. A shape of a category not in ``categories`` is
    painted (it hides what lies below it) but counts for no class."""
    index = {name: i for i, name in enumerate(categories)}
    coverage = item_coverage(record, grid) if coverage is None else coverage
    labels = [index.get(o["category"]) for o in record["objects"]] + [len(categories)] * len(record["texts"])
    background = len(categories) + 1
    return _dominant(_grouped(coverage, labels, background), background)


def token_colors(
    record: dict, grid: tuple[int, int], colors: Sequence[str], coverage: np.ndarray | None = None
) -> np.ndarray:
    """(rows, cols) indices into ``colors`` of the colour covering most of each image token (shapes
    and texts, painted as in :func:`item_coverage`), or ``IGNORE`` where no colour covers at least
    ``MIN_COVERAGE`` of it (background, whose colour the target leaves out)."""
    index = {name: i for i, name in enumerate(colors)}
    coverage = item_coverage(record, grid) if coverage is None else coverage
    labels = [index.get(item.get("color")) for item in [*record["objects"], *record["texts"]]]
    return _dominant(_grouped(coverage, labels, len(colors)), IGNORE)


def token_boxes(
    record: dict, grid: tuple[int, int], coverage: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols, 4) distances from each image token's centre to the left, top, right and bottom
    edges of the box of the shape or text covering most of it (painted as in :func:`item_coverage`,
    every shape counted whatever its category), in token widths and heights, and the (rows, cols)
    mask of the tokens that one covers at least ``MIN_COVERAGE`` of (the others have no target).
    A distance is negative where the centre lies outside that box."""
    rows, cols = grid
    items = [o["polygon"] for o in record["objects"]] + [t["quad"] for t in record["texts"]]
    coverage = item_coverage(record, grid) if coverage is None else coverage
    owner = _dominant(coverage, -1)
    width, height = record["width"], record["height"]
    boxes = np.zeros((max(1, len(items)), 4))
    for i, flat in enumerate(items):
        points = np.reshape(np.asarray(flat, dtype=np.float64), (-1, 2))
        x0, y0 = np.clip(points.min(0), 0, (width, height))
        x1, y1 = np.clip(points.max(0), 0, (width, height))
        boxes[i] = (x0, y0, x1, y1)
    sx, sy = width / cols, height / rows
    cx = (np.arange(cols) + 0.5) * sx
    cy = (np.arange(rows) + 0.5) * sy
    box = boxes[np.maximum(owner, 0)]  # (rows, cols, 4)
    distances = np.stack(
        [
            (cx[None, :] - box[..., 0]) / sx,
            (cy[:, None] - box[..., 1]) / sy,
            (box[..., 2] - cx[None, :]) / sx,
            (box[..., 3] - cy[:, None]) / sy,
        ],
        axis=-1,
    )
    covered = owner >= 0
    return np.where(covered[..., None], distances, 0.0), covered


def pretrain_vision(
    model: Florence2Model,
    processor: Florence2Processor,
    world: SyntheticWorld,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    progress: bool = True,
    colors: float = 0.0,
    boxes: float = 0.0,
) -> dict[str, Any]:
    """Train ``model.vision_tower`` in place to classify each image token of scenes ``0, 1, ...`` of
    ``world`` (``batch_size`` fresh scenes per step; AdamW, ``steps // 20`` warm-up steps, cosine to
    a tenth of ``lr``, gradients clipped to norm 1). The rest of the model is untouched. ``colors`` > 0:
    also classify the colour of each covered token (:func:`token_colors`) with a second head, whose
    cross-entropy is added to the first with this weight. ``boxes`` > 0: also regress each covered
    token's distances to its object's box edges (:func:`token_boxes`) with a third head, the L1 loss
    added with this weight.

    Returns ``{"steps", "loss", "token_accuracy", "object_token_accuracy", "seconds"}``, plus
    ``"color_token_accuracy"`` with ``colors`` and ``"box_error_px"`` (mean absolute error of an
    edge, in pixels of the scene) with ``boxes``: the loss and accuracies are means over the last tenth
    of the steps, measured on each batch before its update, so on scenes the tower had not seen
    (object tokens: those of a shape or text; the colour accuracy is over the tokens with a colour)."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"pretrain_vision needs steps >= 1, batch_size >= 1 and lr > 0: {steps}, {batch_size}, {lr}")
    if colors < 0 or boxes < 0:
        raise ValueError(f"pretrain_vision needs colors >= 0 and boxes >= 0: {colors}, {boxes}")
    tower = model.vision_tower
    classes = token_classes(world.config.categories)
    generator = torch.Generator().manual_seed(seed)

    def new_head(outputs: int) -> nn.Linear:
        layer = nn.Linear(model.config.vision.out_dim, outputs)  # initialised on the CPU, as the generator is
        nn.init.normal_(layer.weight, std=0.02, generator=generator)
        nn.init.zeros_(layer.bias)
        return layer.to(model.device)

    head = new_head(len(classes))
    heads = [head]
    if colors:
        color_head = new_head(len(world.config.colors))
        heads.append(color_head)
    if boxes:
        box_head = new_head(4)
        heads.append(box_head)
    params = [p for p in tower.parameters() if p.requires_grad] + [p for h in heads for p in h.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    # the trainer's schedule: linear warm-up, then a cosine to a tenth of the peak
    schedule = TrainConfig(total_steps=steps, lr=lr, warmup_steps=max(1, steps // 20), min_lr_ratio=0.1)
    background = len(classes) - 1
    window = max(1, steps // 10)
    recent: list[tuple[float, float, float, float, float]] = []
    was_training = tower.training
    tower.train()
    start = time.perf_counter()
    bar = progress_bar(steps, enabled=progress, desc="vision pre-training")
    for step in range(steps):
        scenes = [world.scene(step * batch_size + i) for i in range(batch_size)]
        pixels = processor.image_processor.preprocess([image for image, _ in scenes]).pixel_values
        features = tower(pixels.to(device=model.device, dtype=model.dtype))  # (B, rows, cols, dim)
        logits = head(features)  # (B, rows, cols, classes)
        grid = (logits.shape[1], logits.shape[2])
        coverages = [item_coverage(r, grid) for _, r in scenes]  # each scene painted once for all targets
        targets = [token_targets(r, grid, world.config.categories, c) for (_, r), c in zip(scenes, coverages)]
        targets = torch.from_numpy(np.stack(targets))
        targets = targets.to(model.device)
        loss = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten())
        color_accuracy = float("nan")
        if colors:
            color_logits = color_head(features).flatten(0, 2).float()
            color_targets = np.stack(
                [token_colors(r, grid, world.config.colors, c) for (_, r), c in zip(scenes, coverages)]
            )
            color_targets = torch.from_numpy(color_targets).to(model.device).flatten()
            colored = color_targets != IGNORE
            if bool(colored.any()):  # all ignored would make the mean NaN
                loss = loss + colors * F.cross_entropy(color_logits[colored], color_targets[colored])
                with torch.no_grad():
                    color_accuracy = float((color_logits[colored].argmax(-1) == color_targets[colored]).float().mean())
        box_error = float("nan")
        if boxes:
            pairs = [token_boxes(r, grid, c) for (_, r), c in zip(scenes, coverages)]
            box_targets = torch.from_numpy(np.stack([d for d, _ in pairs])).to(model.device).flatten(0, 2)
            covered = torch.from_numpy(np.stack([m for _, m in pairs])).to(model.device).flatten()
            if bool(covered.any()):
                error = (box_head(features).flatten(0, 2).float()[covered] - box_targets[covered].float()).abs()
                loss = loss + boxes * error.mean()
                # in pixels: the targets are in token sides (x: width / cols, y: height / rows)
                sx, sy = scenes[0][1]["width"] / grid[1], scenes[0][1]["height"] / grid[0]
                box_error = float((error.detach().cpu() * torch.tensor([sx, sy, sx, sy])).mean())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            loss_value = loss.item()
            right = logits.argmax(-1) == targets
            objects = targets != background
            object_accuracy = float(right[objects].float().mean()) if bool(objects.any()) else float("nan")
        figures = (loss_value, float(right.float().mean()), object_accuracy, color_accuracy, box_error)
        recent = (recent + [figures])[-window:]
        bar.set_postfix(loss=f"{loss_value:.3f}", objects=f"{object_accuracy:.2f}")
        bar.update()
    bar.close()
    tower.train(was_training)
    stats = {
        "steps": steps,
        "loss": float(np.mean([r[0] for r in recent])),
        "token_accuracy": float(np.mean([r[1] for r in recent])),
        "object_token_accuracy": _mean_of_known([r[2] for r in recent]),
        "seconds": time.perf_counter() - start,
    }
    if colors:
        stats["color_token_accuracy"] = _mean_of_known([r[3] for r in recent])
    if boxes:
        stats["box_error_px"] = _mean_of_known([r[4] for r in recent])
    return stats


def _mean_of_known(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return float(np.mean(known)) if known else float("nan")
