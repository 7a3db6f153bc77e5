"""Exceptions raised by florence2. Each is also a standard exception type, so callers that catch
``ValueError`` or ``OSError`` keep working."""


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
