"""Exceptions raised by florence2. Each is also a standard exception type, so callers that catch
``ValueError`` or ``OSError`` keep working."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Florence2Error(Exception):
    """Base class of every error florence2 raises on purpose."""


class ImageLoadError(Florence2Error, ValueError):
    """An image could not be read: missing, unreadable, truncated, empty or too large."""


class CheckpointError(Florence2Error, ValueError):
    """A checkpoint is missing, malformed, or does not match the model it should build."""


class TaskError(Florence2Error, ValueError):
    """A task name, task input or prompt is not valid."""


class AnnotationError(Florence2Error, ValueError):
    """An annotation record or dataset file is malformed; the message names the file, line and field."""


def require_field(where: str, item: Any, key: str, kind: type | tuple[type, ...], sep: str = ".") -> Any:
    """``item[key]``, checked to exist and to be of ``kind`` (a bool is no int).

    Raises:
        AnnotationError: naming ``where`` (a file, line or record path) and, for a value of the wrong
            type, ``where`` + ``sep`` + ``key``.
    """
    at = f"{where}: " if where else ""
    if not isinstance(item, Mapping):
        raise AnnotationError(f"{at}expected a JSON object, got {type(item).__name__}")
    if key not in item:
        raise AnnotationError(f"{at}missing field {key!r}")
    value = item[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise AnnotationError(f"{where}{sep if where else ''}{key}: expected {names}, got {value!r}"[:300])
    return value
