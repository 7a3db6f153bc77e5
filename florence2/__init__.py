"""florence2: a standalone, fast and faithful PyTorch implementation of Microsoft's Florence-2.

The public names below are imported on first use, so ``import florence2`` (and a command such as
``florence2 tasks``) costs nothing until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "TASKS": "florence2.tasks",
    "VARIANTS": "florence2.config",
    "CheckpointError": "florence2.errors",
    "DecodingOptions": "florence2.config",
    "Florence2": "florence2.pipeline",
    "Florence2Config": "florence2.config",
    "Florence2Error": "florence2.errors",
    "Florence2Model": "florence2.model.florence2",
    "Florence2Processor": "florence2.processor",
    "Florence2Tokenizer": "florence2.tokenizer",
    "ImageLoadError": "florence2.errors",
    "ImageProcessor": "florence2.image",
    "TaskError": "florence2.errors",
    "TextConfig": "florence2.config",
    "VisionConfig": "florence2.config",
    "draw_result": "florence2.visualize",
    "export_onnx": "florence2.export.onnx",
    "generate": "florence2.generation",
    "get_task": "florence2.tasks",
    "load_image": "florence2.image",
    "load_model": "florence2.weights",
    "save_model": "florence2.weights",
}

__all__ = [
    "TASKS",
    "VARIANTS",
    "CheckpointError",
    "DecodingOptions",
    "Florence2",
    "Florence2Config",
    "Florence2Error",
    "Florence2Model",
    "Florence2Processor",
    "Florence2Tokenizer",
    "ImageLoadError",
    "ImageProcessor",
    "TaskError",
    "TextConfig",
    "VisionConfig",
    "draw_result",
    "export_onnx",
    "generate",
    "get_task",
    "load_image",
    "load_model",
    "save_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'florence2' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # names for type checkers and IDEs; never executed
    from florence2.config import VARIANTS, DecodingOptions, Florence2Config, TextConfig, VisionConfig
    from florence2.errors import CheckpointError, Florence2Error, ImageLoadError, TaskError
    from florence2.export.onnx import export_onnx
    from florence2.generation import generate
    from florence2.image import ImageProcessor, load_image
    from florence2.model.florence2 import Florence2Model
    from florence2.pipeline import Florence2
    from florence2.processor import Florence2Processor
    from florence2.tasks import TASKS, get_task
    from florence2.tokenizer import Florence2Tokenizer
    from florence2.visualize import draw_result
    from florence2.weights import load_model, save_model
