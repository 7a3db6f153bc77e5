"""Training data: items, the sources that give each step its items, and collation into model inputs.

An item is ``{"image": PIL image or path, "prompt": str, "target": str}`` (or an object with those
attributes). A source is ``source(step, rank, world_size, batch_size_per_rank) -> list[item]``, a pure
function of its arguments, so that resuming is continuing from a step number and N processes see
exactly the items one process sees (see :mod:`florence2.train.trainer`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from florence2.processor import Florence2Processor

Item = Any  # {"image", "prompt", "target"} mapping or an object with those attributes
TrainSource = Callable[[int, int, int, int], Sequence[Item]]
IGNORE_INDEX = -100  # the label of padding: no loss


def item_field(item: Item, name: str) -> Any:
    """``item[name]`` of a mapping, else ``item.name``."""
    return item[name] if isinstance(item, dict) else getattr(item, name)


def collate(
    items: Sequence[Item],
    processor: Florence2Processor,
    num_image_tokens: int | None = None,
    max_target_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Items -> the keyword arguments of ``Florence2Model.forward``.

    Returns ``pixel_values`` (B, 3, H, W); ``input_ids`` and ``attention_mask`` (B, T): the prompts
    as the tokenizer encodes them (``<s> prompt </s>``), right-padded; ``labels`` (B, L): the targets
    likewise (``<s> target </s>``), -100 on padding. The model shifts labels into decoder inputs.
    ``num_image_tokens`` checks that every prompt fits beside the image tokens.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    pixel_values = processor.image_processor.preprocess([item_field(it, "image") for it in items]).pixel_values
    prompts = [item_field(it, "prompt") for it in items]
    if num_image_tokens is None:
        input_ids, attention_mask = processor.tokenizer(prompts)
    else:
        input_ids, attention_mask = processor.tokenize(prompts, num_image_tokens)
    target_ids, target_mask = processor.tokenizer([item_field(it, "target") for it in items])
    labels = target_ids.masked_fill(target_mask == 0, IGNORE_INDEX)
    limit = max_target_length or processor.max_positions
    if labels.shape[1] > limit:
        longest = int(target_mask.sum(1).max())
        warnings.warn(f"a target of {longest} tokens is cut to {limit} (the decoder's limit)", stacklevel=2)
    return {
        "pixel_values": pixel_values,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels[:, :limit],
    }


def indexed_source(get_item: Callable[[int], Item]) -> TrainSource:
    """A train source from ``get_item(i)`` over an endless sequence: step s's global batch is items
    ``s*B ... (s+1)*B - 1`` with B = world_size * batch_size_per_rank; rank r takes its r-th slice."""

    def source(step: int, rank: int, world_size: int, batch_size_per_rank: int) -> list[Item]:
        start = (step * world_size + rank) * batch_size_per_rank
        return [get_item(start + i) for i in range(batch_size_per_rank)]

    return source


def by_target_length(source: TrainSource) -> TrainSource:
    """Order each step's items by target length, so that micro-batches (``grad_accum``) hold
    targets of similar length and pad less. The step's set of items, hence its loss, is unchanged."""

    def sorted_source(step: int, rank: int, world_size: int, batch_size_per_rank: int) -> list[Item]:
        items = source(step, rank, world_size, batch_size_per_rank)
        return sorted(items, key=lambda item: len(item_field(item, "target")))

    return sorted_source
