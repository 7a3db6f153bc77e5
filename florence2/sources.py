"""Where images come from: which files are images, and the image files of a folder.

Kept free of torch and PIL so that listing files costs nothing (the command line uses it before
any model is loaded).
"""

from __future__ import annotations

import os
from pathlib import Path

# file name endings taken for images when a folder is searched
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    """True for a file whose name ends in one of :data:`IMAGE_SUFFIXES` (any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def find_images(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursively, by :data:`IMAGE_SUFFIXES`), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if is_image_file(p))
