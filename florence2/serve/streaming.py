"""Streaming a request's answer while it is generated: from the inference thread to the event loop.

The batcher's thread runs the model; ``Florence2.predict(stream=...)`` calls a request's
:meth:`StreamSink.on_piece` with each piece of text as decoding produces it. The sink hands every
piece to the event loop (``loop.call_soon_threadsafe`` into an ``asyncio.Queue``), where the route
writes it to the client as a server-sent event. Each piece is queued as ``(task, text)``;
:data:`END` follows the last piece once the request's future is done (its result or error is then
read from the future).

A client that goes away cancels its sink: the next ``on_piece`` returns False, which stops that
request's rows of the batch (the others run on), and the batch ends when no row is left.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Future
from typing import Any

# what the queue holds after the last piece: the request's future is done
END = object()


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event: ``data`` as JSON (a str as it is), with an optional event name."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, allow_nan=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n"


class StreamSink:
    """One streaming request's pieces, from the inference thread to its route on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.started = False  # a piece was sent (inference thread only)
        self.broken = False  # run again after a piece was sent: the stream cannot go on

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """The client is gone: stop generating for it (the batch's other requests go on)."""
        self._cancelled.set()

    def restart(self) -> None:
        """Called before every model call that includes the request. A second call happens when a
        whole batch failed and each request runs again alone; a stream already begun cannot be
        continued from it, so the request then stops and its route reports the failure."""
        if self.started:
            self.broken = True

    def on_piece(self, task: str | None, piece: str) -> bool:
        """``Florence2.predict``'s stream callback (inference thread): False stops the request."""
        if self.cancelled or self.broken:
            return False
        if piece:
            self.started = True
            if not self._put((task, piece)):
                return False
        return True

    def follow(self, future: Future) -> None:
        """Put :data:`END` after the last piece once ``future`` is done."""
        future.add_done_callback(lambda _: self._put(END))

    def _put(self, item: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()
            return False
        return True
