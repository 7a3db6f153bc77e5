"""The processor: everything between user inputs and token ids, and back to result dicts.

Images go through :class:`~florence2.image.ImageProcessor`, task + text through the task registry
(:func:`~florence2.tasks.build_prompt`) and the tokenizer; generated ids come back through
``batch_decode`` and :func:`~florence2.parsing.post_process_generation`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from florence2.errors import TaskError
from florence2.image import ImageProcessor, ImageSource
from florence2.parsing import post_process_generation
from florence2.tasks import build_prompt
from florence2.tokenizer import Florence2Tokenizer


@dataclass
class ModelInputs:
    pixel_values: torch.Tensor  # (B, 3, H, W)
    input_ids: torch.Tensor  # (B, T) prompt ids, right-padded
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    image_sizes: list[tuple[int, int]]  # (width, height) of each original image


class Florence2Processor:
    """Tokenizer + image processor + prompt construction + post-processing."""

    def __init__(
        self, tokenizer: Florence2Tokenizer, image_processor: ImageProcessor | None = None, max_positions: int = 1024
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor or ImageProcessor()
        self.max_positions = max_positions

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, max_positions: int = 1024) -> Florence2Processor:
        return cls(Florence2Tokenizer.from_pretrained(folder), ImageProcessor.from_pretrained(folder), max_positions)

    def save_pretrained(self, folder: str | os.PathLike, image_seq_length: int | None = None) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder, image_seq_length=image_seq_length)

    @property
    def image_size(self) -> tuple[int, int]:
        """Model input (height, width)."""
        return self.image_processor.size

    def build_prompt(
        self,
        task: str | None,
        text: str | None = None,
        region: Sequence[float] | str | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> str:
        return build_prompt(task, text, region, image_size)

    def tokenize(self, prompts: Sequence[str], num_image_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids (B, T) and mask; a prompt that cannot fit beside the image tokens is an error."""
        input_ids, mask = self.tokenizer(list(prompts))
        lengths = mask.sum(1)
        limit = self.max_positions - num_image_tokens
        too_long = [(p, int(n)) for p, n in zip(prompts, lengths) if n > limit]
        if too_long:
            prompt, n = too_long[0]
            raise TaskError(
                f"prompt is {n} tokens but only {limit} fit beside the {num_image_tokens} image tokens "
                f"({self.max_positions} encoder positions): {prompt[:80]!r}..."
            )
        return input_ids, mask

    def __call__(
        self, images: ImageSource | Sequence[ImageSource], prompts: str | Sequence[str], num_image_tokens: int
    ) -> ModelInputs:
        pixel_values, sizes = self.image_processor.preprocess(images)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(sizes):
            raise ValueError(f"{len(sizes)} images but {len(prompts)} prompts")
        input_ids, mask = self.tokenize(prompts, num_image_tokens)
        return ModelInputs(pixel_values, input_ids, mask, sizes)

    def batch_decode(self, sequences: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Decode generated ids keeping special tokens (``</s><s>car<loc_53>...``), as parsers expect."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=False)

    def post_process_generation(
        self, text: str, task: str | None, image_size: tuple[int, int] | None = None, **options: Any
    ) -> dict[str, Any]:
        """The reference's name and signature: decoded text -> ``{task_token: result}``."""
        return post_process_generation(text, task, image_size, **options)
