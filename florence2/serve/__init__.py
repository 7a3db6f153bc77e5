"""HTTP server and web page for Florence-2: ``florence2 serve`` (the ``serve`` extra).

* :mod:`florence2.serve.settings`: limits and batching settings (a frozen dataclass).
* :mod:`florence2.serve.batching`: the dynamic batcher: one inference thread that groups queued
  requests sharing tasks, inputs and decoding options into one ``Florence2.predict`` call.
* :mod:`florence2.serve.requests`: reading, parsing and checking a prediction request.
* :mod:`florence2.serve.openai`: the OpenAI-compatible API (chat-completion requests to
  predictions, answers, stream chunks, errors).
* :mod:`florence2.serve.streaming`: a streamed answer's pieces from the inference thread to the
  event loop, as server-sent events.
* :mod:`florence2.serve.metrics`: the Prometheus metrics (``prometheus_client``), one registry per app.
* :mod:`florence2.serve.middleware`: request metrics by route, and the API key check.
* :mod:`florence2.serve.app`: the FastAPI application (``create_app``), its routes and the static page.

``settings``, ``batching`` and ``cli`` need nothing beyond the core, so ``import florence2.serve``
works without the extra; the other modules need it.
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
