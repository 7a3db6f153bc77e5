"""HTTP server and web page for Florence-2: ``florence2 serve`` (the ``serve`` extra).

* :mod:`florence2.serve.settings`: limits and batching settings (a frozen dataclass).
* :mod:`florence2.serve.batching`: the dynamic batcher: one inference thread that groups queued
  requests sharing tasks, inputs and decoding options into one ``Florence2.predict`` call.
* :mod:`florence2.serve.metrics`: counters, gauges and histograms in the Prometheus text format.
* :mod:`florence2.serve.app`: the FastAPI application (``create_app``) and the static page.

Only ``app`` imports FastAPI; the rest needs nothing beyond the core, so ``import florence2.serve``
works without the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from florence2.serve.settings import ServeSettings

if TYPE_CHECKING:
    from florence2.serve.app import create_app

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from florence2.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
