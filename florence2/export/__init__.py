"""Export a model for other runtimes: ``florence2 export onnx`` (:func:`export_onnx`, in
:mod:`florence2.export.onnx`), imported on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["export_onnx"]


def __getattr__(name: str) -> Any:
    if name == "export_onnx":
        from florence2.export.onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module 'florence2.export' has no attribute {name!r}")
