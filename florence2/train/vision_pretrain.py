"""Dense pre-training of a fresh vision tower on the synthetic world.

Florence-2 starts from a pre-trained DaViT. A tower trained from scratch only through the
encoder-decoder learns shape slowly, likely because the decoder's cross-attention starts out spread
evenly over the image tokens, so the loss reaches the tower through what amounts to a mean over
mostly-background tokens. Here every image token is given its own target instead: the class of what covers it (a
shape category, text, or background), read from the scene's polygons and text quads. A linear head
on the tower's last stage is trained with cross-entropy and then thrown away; only the tower's
weights are kept.

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
from florence2.train.trainer import TrainConfig, lr_at

# sub-samples per token side when measuring how much of a token a polygon covers
_SUBSAMPLE = 8
# a token takes the class of the shape or text covering the largest part of it, if at least this much
MIN_COVERAGE = 0.1


def token_classes(categories: Sequence[str]) -> list[str]:
    """The classes of the dense targets: the categories, then ``"text"``, then ``"background"``."""
    return [*categories, "text", "background"]


def token_targets(record: dict, grid: tuple[int, int], categories: Sequence[str]) -> np.ndarray:
    """(rows, cols) class indices (see :func:`token_classes`) of a scene's image tokens.

    Shapes are painted in the record's order and texts after them, as the world renders them, so a
    later shape hides an earlier one. A token takes the class covering most of it when that covers
    at least ``MIN_COVERAGE`` of the token, else background."""
    rows, cols = grid
    width, height = record["width"], record["height"]
    sx, sy = cols * _SUBSAMPLE / width, rows * _SUBSAMPLE / height
    index = {name: i for i, name in enumerate(categories)}
    text_class, background = len(categories), len(categories) + 1
    painted = np.full((rows * _SUBSAMPLE, cols * _SUBSAMPLE), background, dtype=np.int64)
    shapes = [(o["polygon"], index[o["category"]]) for o in record["objects"] if o["category"] in index]
    for flat, label in shapes + [(t["quad"], text_class) for t in record["texts"]]:
        points = np.reshape(np.asarray(flat, dtype=np.float64), (-1, 2)) * (sx, sy)
        painted[polygon_mask(points, painted.shape[1], painted.shape[0])] = label
    painted = painted.reshape(rows, _SUBSAMPLE, cols, _SUBSAMPLE)
    coverage = np.stack([(painted == c).mean(axis=(1, 3)) for c in range(background)])  # (C, rows, cols)
    best = coverage.argmax(0)
    return np.where(coverage.max(0) >= MIN_COVERAGE, best, background).astype(np.int64)


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
) -> dict[str, Any]:
    """Train ``model.vision_tower`` in place to classify each image token of scenes ``0, 1, ...`` of
    ``world`` (``batch_size`` fresh scenes per step; AdamW, ``steps // 20`` warm-up steps, cosine to
    a tenth of ``lr``, gradients clipped to norm 1). The rest of the model is untouched.

    Returns ``{"steps", "loss", "token_accuracy", "object_token_accuracy", "seconds"}``: the loss and
    accuracies are means over the last tenth of the steps, measured on each batch before its update,
    so on scenes the tower had not seen (object tokens: those of a shape or text)."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"pretrain_vision needs steps >= 1, batch_size >= 1 and lr > 0: {steps}, {batch_size}, {lr}")
    from tqdm.auto import tqdm

    tower = model.vision_tower
    classes = token_classes(world.config.categories)
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(model.config.vision.out_dim, len(classes)).to(model.device)
    nn.init.normal_(head.weight, std=0.02, generator=generator)
    nn.init.zeros_(head.bias)
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    # the trainer's schedule: linear warm-up, then a cosine to a tenth of the peak
    schedule = TrainConfig(total_steps=steps, lr=lr, warmup_steps=max(1, steps // 20), min_lr_ratio=0.1)
    background = len(classes) - 1
    window = max(1, steps // 10)
    recent: list[tuple[float, float, float]] = []
    was_training = tower.training
    tower.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="vision pre-training", disable=not progress, dynamic_ncols=True)
    for step in bar:
        scenes = [world.scene(step * batch_size + i) for i in range(batch_size)]
        pixels = processor.image_processor.preprocess([image for image, _ in scenes]).pixel_values
        logits = head(tower(pixels.to(device=model.device, dtype=model.dtype)))  # (B, rows, cols, classes)
        grid = (logits.shape[1], logits.shape[2])
        targets = torch.from_numpy(np.stack([token_targets(r, grid, world.config.categories) for _, r in scenes]))
        targets = targets.to(model.device)
        loss = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten())
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
        recent = (recent + [(loss_value, float(right.float().mean()), object_accuracy)])[-window:]
        bar.set_postfix(loss=f"{loss_value:.3f}", objects=f"{object_accuracy:.2f}", refresh=False)
    bar.close()
    tower.train(was_training)
    object_scores = [r[2] for r in recent if not math.isnan(r[2])]
    return {
        "steps": steps,
        "loss": float(np.mean([r[0] for r in recent])),
        "token_accuracy": float(np.mean([r[1] for r in recent])),
        "object_token_accuracy": float(np.mean(object_scores)) if object_scores else float("nan"),
        "seconds": time.perf_counter() - start,
    }
