"""The server's Prometheus metrics, kept and written by ``prometheus_client``.

Every app has its own :class:`~prometheus_client.CollectorRegistry` (never the library's global
one), so several apps in one process keep separate counts. The values are thread-safe: the
inference thread records batches while the event loop records requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# the text exposition format generate_latest writes
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64)


class ServerMetrics:
    """Everything ``/metrics`` shows. ``queue_depth`` and ``busy`` are read from the batcher at scrape time."""

    def __init__(self, queue_depth: Callable[[], float], busy: Callable[[], float]) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "florence2_http_requests_total",
            "HTTP requests by route and status code.",
            ("route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "florence2_http_request_duration_seconds",
            "Time from request to response, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        Gauge("florence2_queue_depth", "Predictions waiting for the model.", registry=registry).set_function(
            queue_depth
        )
        Gauge("florence2_inference_busy", "1 while a batch is running.", registry=registry).set_function(busy)
        self.queue_wait = Histogram(
            "florence2_queue_wait_seconds",
            "Time a prediction waited for its batch to start.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "florence2_batch_inference_seconds", "Model time of one batch.", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.batch_size = Histogram(
            "florence2_batch_size", "Requests per model batch.", buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self.rejected = Counter(
            "florence2_queue_rejected_total", "Predictions refused because the queue was full.", registry=registry
        )

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def record_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def value(self, sample: str, **labels: str) -> float:
        """One sample's current value (0 when it has none yet), e.g.
        ``value("florence2_http_requests_total", route="/v1/predict", status="200")``."""
        return self.registry.get_sample_value(sample, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """A registry's metrics without the ``*_created`` timestamps prometheus_client adds to counters
    and histograms: the server exposes its own series only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def parse_histogram(text: str, name: str) -> dict[str, float]:
    """One unlabelled histogram's cumulative buckets from exposition text: ``{le: count}``, each
    bound written as in the bucket list (``"4"``, ``"0.5"``, ``"+Inf"``)."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {
                _bound(sample.labels["le"]): sample.value
                for sample in family.samples
                if sample.name == f"{name}_bucket"
            }
    return {}


def _bound(le: str) -> str:
    value = float(le)  # prometheus_client writes 4 as "4.0"
    return str(int(value)) if value.is_integer() else le
