"""Dynamic batching: concurrent requests that can share a model call run as one batch.

``Batcher`` owns one inference thread. Requests are queued with a *key*; the thread takes the
oldest queued request, waits for more requests with the same key until ``max_wait_s`` after that
request's arrival or after the previous batch ended, whichever is later, and runs up to
``max_batch_size`` of them with one ``run_batch(key, items)`` call (at once when the batch is full).
Requests with other keys keep their place in the queue for the next batch. Counting the wait from
the end of the previous batch too lets the clients it just answered join the next one, instead of
batches alternating between many requests and the few left over.

The queue is bounded: ``submit`` raises :class:`QueueFullError` when ``max_queue`` requests are
waiting. A request can take its place before it is ready (``with batcher.slot() as slot: ...
slot.submit(key, item)``), so that the work of getting it ready (decoding an image) is only done
for requests that will be queued, and never for more than ``max_queue`` at a time.

``run_batch`` returns one result per item; an item whose result is an exception fails alone (its
request gets that exception), the others are answered from the same batch. Nothing here knows
about HTTP or the model; ``run_batch`` does the work.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

# run_batch(key, items) -> one result per item; an exception instance as a result fails that item alone
RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests; ``retry_after_s`` estimates when there is room."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        super().__init__(f"the server is busy: {depth} requests are waiting; retry in {retry_after_s} s")
        self.depth = depth
        self.retry_after_s = retry_after_s


class ShuttingDownError(Exception):
    """The batcher was stopped before the request ran."""


@dataclass(frozen=True)
class Outcome:
    """What one request gets back: its own result and how it was run."""

    result: Any
    queue_s: float  # from submit to the start of its batch
    inference_s: float  # run time of the whole batch
    batch_size: int


@dataclass
class _Job:
    key: Hashable
    item: Any
    future: Future = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)


class Slot:
    """A place in the queue taken before the request is ready; see :meth:`Batcher.slot`."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._held = True

    def submit(self, key: Hashable, item: Any) -> Future:
        """Queue the request in this slot (the slot is then used up)."""
        if not self._held:
            raise RuntimeError("this queue slot was already used or given back")
        self._held = False
        return self._batcher._submit(key, item, reserved=True)

    def release(self) -> None:
        """Give the slot back unused (idempotent)."""
        if self._held:
            self._held = False
            self._batcher._unreserve()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Batcher:
    """Groups queued requests by key into batches run on one worker thread.

    Args:
        run_batch: ``run_batch(key, items) -> results``, one result per item, in order. Called on
            the worker thread only, so it may use a model that is not thread-safe.
        max_batch_size: most items per call.
        max_wait_s: longest time the oldest queued request waits for companions.
        max_queue: most requests waiting (not yet in a running batch).
        on_batch: called after every batch with ``(batch_size, seconds)``, for metrics.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: list[_Job] = []
        self._reserved = 0  # slots taken for requests not yet submitted
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False
        self._batch_seconds = 0.0  # moving average, for Retry-After
        self._free_since = 0.0  # when the last batch ended (monotonic)

    # -- public --------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch that is running)."""
        with self._cond:
            return len(self._pending)

    @property
    def busy(self) -> bool:
        """Whether a batch is running now."""
        with self._cond:
            return self._busy

    def start(self) -> None:
        """Start the worker thread (idempotent; ``submit`` starts it too, unless stopped)."""
        with self._cond:
            self._stopping = False
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        # the caller holds self._cond
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="florence2-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Let the running batch finish, fail every waiting request with ShuttingDownError."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            leftovers, self._pending = self._pending, []
            self._thread = None
        for job in leftovers:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDownError("the server is shutting down"))

    def submit(self, key: Hashable, item: Any) -> Future:
        """Queue one request; the future resolves to an :class:`Outcome` or the request's error.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting (or have a slot).
            ShuttingDownError: the batcher was stopped (``start`` runs it again).
        """
        return self._submit(key, item, reserved=False)

    def slot(self) -> Slot:
        """Take a place in the queue now for a request that is queued later (``slot.submit``), or
        given back (``slot.release``, or leaving its ``with`` block). Slots count against
        ``max_queue`` like waiting requests.

        Raises:
            QueueFullError, ShuttingDownError: as ``submit``.
        """
        with self._cond:
            self._check_room()
            self._reserved += 1
        return Slot(self)

    def _check_room(self) -> None:
        # the caller holds self._cond
        if self._stopping:
            raise ShuttingDownError("the server is shutting down")
        taken = len(self._pending) + self._reserved
        if taken >= self.max_queue:
            raise QueueFullError(taken, self._retry_after(taken))

    def _unreserve(self) -> None:
        with self._cond:
            self._reserved -= 1

    def _submit(self, key: Hashable, item: Any, reserved: bool) -> Future:
        job = _Job(key, item)
        with self._cond:
            if reserved:
                self._reserved -= 1
                if self._stopping:
                    raise ShuttingDownError("the server is shutting down")
            else:
                self._check_room()
            self._pending.append(job)
            self._ensure_thread()
            self._cond.notify_all()
        return job.future

    # -- worker --------------------------------------------------------------------------------

    def _retry_after(self, depth: int) -> int:
        batches_ahead = depth / self.max_batch_size + 1
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    def _take_batch(self) -> list[_Job] | None:
        """Block until a batch is due; None when stopping."""
        with self._cond:
            while True:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                first = self._pending[0]
                same = [job for job in self._pending if job.key == first.key][: self.max_batch_size]
                # Wait from the later of the oldest request's arrival and the end of the last batch:
                # clients answered by that batch get a chance to join the next one.
                remaining = max(first.enqueued_at, self._free_since) + self.max_wait_s - time.monotonic()
                if len(same) >= self.max_batch_size or remaining <= 0:
                    taken = {id(job) for job in same}
                    self._pending = [job for job in self._pending if id(job) not in taken]
                    self._busy = True
                    return same
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            jobs = self._take_batch()
            if jobs is None:
                return
            try:
                # A request whose client went away (future cancelled) costs no model time.
                live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
                if live:
                    self._run(live)
            finally:
                with self._cond:
                    self._busy = False
                    self._free_since = time.monotonic()

    def _run(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        try:
            results = list(self.run_batch(jobs[0].key, [job.item for job in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} items")
        except Exception as error:
            seconds = time.monotonic() - started
            self._record(len(jobs), seconds)
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
                return
            # The whole call failed (not one item): so that one bad item cannot fail the others,
            # and each request gets its own error, run them one by one.
            for job in jobs:
                self._run_alone(job)
            return
        seconds = time.monotonic() - started
        self._record(len(jobs), seconds)
        for job, result in zip(jobs, results):
            if isinstance(result, BaseException):  # this item failed alone
                job.future.set_exception(result)
            else:
                job.future.set_result(Outcome(result, started - job.enqueued_at, seconds, len(jobs)))

    def _run_alone(self, job: _Job) -> None:
        started = time.monotonic()
        try:
            (result,) = self.run_batch(job.key, [job.item])
        except Exception as error:
            job.future.set_exception(error)
            return
        finally:
            self._record(1, time.monotonic() - started)
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(Outcome(result, started - job.enqueued_at, time.monotonic() - started, 1))

    def _record(self, size: int, seconds: float) -> None:
        self._batch_seconds = seconds if self._batch_seconds == 0 else 0.8 * self._batch_seconds + 0.2 * seconds
        if self.on_batch is not None:
            try:
                self.on_batch(size, seconds)
            except Exception:  # metrics must never break inference
                pass
