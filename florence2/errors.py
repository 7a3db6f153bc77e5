"""Exceptions raised by florence2. Each is also a standard exception type, so callers that catch
``ValueError`` or ``OSError`` keep working."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class Florence2Error(Exception):
    """Base class of every error florence2 raises on purpose."""


class ImageLoadError(Florence2Error, ValueError):
    """An image could not be read: missing, unreadable, truncated, empty or too large."""


class CheckpointError(Florence2Error, ValueError):
    """A checkpoint is missing, malformed, or does not match the model it should build."""


class TaskError(Florence2Error, ValueError):
    """A task name, task input or prompt is not valid."""


class RegionError(TaskError):
    """A region input is not a box inside its image."""


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


def read_checkpoint_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in a checkpoint's file ``path`` (a config, a tokenizer or adapter config).

    Raises:
        CheckpointError: naming ``path`` when it cannot be read, is not valid JSON (``malformed``),
            or holds something other than a JSON object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"malformed {path}: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
