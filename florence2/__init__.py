"""florence2: a standalone, fast and faithful PyTorch implementation of Microsoft's Florence-2."""

from florence2.config import VARIANTS, Florence2Config, TextConfig, VisionConfig
from florence2.errors import CheckpointError, Florence2Error, ImageLoadError, TaskError
from florence2.generation import DecodingOptions, generate
from florence2.image import ImageProcessor, load_image
from florence2.model.florence2 import Florence2Model
from florence2.pipeline import Florence2
from florence2.processor import Florence2Processor
from florence2.tasks import TASKS, get_task
from florence2.tokenizer import Florence2Tokenizer
from florence2.visualize import draw_result
from florence2.weights import load_model, save_model

__version__ = "0.1.0"

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
    "generate",
    "get_task",
    "load_image",
    "load_model",
    "save_model",
]
