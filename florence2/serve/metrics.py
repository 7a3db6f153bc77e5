"""Counters, gauges and histograms rendered in the Prometheus text exposition format (0.0.4).

A few dozen lines instead of a dependency: the server needs labelled counters, cumulative
histograms and gauges read at scrape time, all thread-safe (the inference thread records batches
while the event loop records requests).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(str(value))}"' for name, value in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Counter:
    """A monotonically increasing value per label combination."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Gauge:
    """A value read from a callback at scrape time (queue depth, busy flag)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def samples(self) -> Iterable[str]:
        yield f"{self.name} {_number(float(self.read()))}"


class Histogram:
    """Cumulative buckets, sum and count, per label combination."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            series = self._series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
            for index, bound in enumerate(self.buckets):
                if value <= bound:
                    series[index] += 1
            series[-2] += value
            series[-1] += 1

    def counts(self, *labels: str) -> dict[float, float]:
        """Cumulative count per upper bound (``math.inf`` included)."""
        with self._lock:
            series = list(self._series.get(labels, [0.0] * (len(self.buckets) + 2)))
        return {**dict(zip(self.buckets, series)), math.inf: series[-1]}

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted((labels, list(series)) for labels, series in self._series.items())
        for labels, series in items:
            for bound, count in zip((*self.buckets, math.inf), (*series[:-2], series[-1])):
                le = f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {_number(count)}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_number(series[-2])}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {_number(series[-1])}"


class ServerMetrics:
    """Everything ``/metrics`` shows. ``queue_depth`` and ``busy`` are read from the batcher."""

    def __init__(self, queue_depth: Callable[[], float], busy: Callable[[], float]) -> None:
        self.requests = Counter(
            "florence2_http_requests_total", "HTTP requests by route and status code.", ("route", "status")
        )
        self.latency = Histogram(
            "florence2_http_request_duration_seconds",
            "Time from request to response, by route.",
            LATENCY_BUCKETS,
            ("route",),
        )
        self.queue_wait = Histogram(
            "florence2_queue_wait_seconds", "Time a prediction waited for its batch to start.", LATENCY_BUCKETS
        )
        self.inference = Histogram("florence2_batch_inference_seconds", "Model time of one batch.", LATENCY_BUCKETS)
        self.batch_size = Histogram("florence2_batch_size", "Requests per model batch.", BATCH_SIZE_BUCKETS)
        self.rejected = Counter("florence2_queue_rejected_total", "Predictions refused because the queue was full.")
        self._metrics = [
            self.requests,
            self.latency,
            Gauge("florence2_queue_depth", "Predictions waiting for the model.", queue_depth),
            Gauge("florence2_inference_busy", "1 while a batch is running.", busy),
            self.queue_wait,
            self.inference,
            self.batch_size,
            self.rejected,
        ]

    def record_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self) -> str:
        lines = []
        for metric in self._metrics:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


def parse_histogram(text: str, name: str) -> dict[str, float]:
    """Read one unlabelled histogram's cumulative buckets from exposition text: ``{le: count}``.

    A small reader for tests and the load test, not a general parser.
    """
    prefix = f"{name}_bucket{{"
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, value = line[len(prefix) :].rsplit("} ", 1)
            le = dict(part.split("=", 1) for part in labels.split(","))["le"].strip('"')
            out[le] = float(value)
    return out
