"""The service's Prometheus metrics, in a registry of its own (one per app, so tests and several
apps in one process do not collide): requests and errors by code, refusals by reason, a latency
histogram per endpoint, batch sizes, the time per stage of a request, and the queue depth."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hardened.serve.batching import BatchStats

__all__ = ["ServiceMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """The counters, histograms and gauges of one service; ``render()`` is the /metrics body."""

    def __init__(self, queue_depth: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hardened_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.errors = Counter("hardened_errors", "HTTP answers with status >= 400, by status code",
                              ["code"], registry=r)
        self.images = Counter("hardened_images", "images answered, by outcome (accepted or refused)",
                              ["outcome"], registry=r)
        self.refusals = Counter("hardened_refusals", "images refused, by reason (unreliable, unscorable, "
                                "abstained)", ["reason"], registry=r)
        self.latency = Histogram("hardened_request_latency_seconds", "time from request to answer, by endpoint",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("hardened_stage_seconds", "time per request spent parsing, queued, in inference",
                               ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("hardened_batch_size", "images per model batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.batch_requests = Histogram("hardened_batch_requests", "requests per model batch",
                                        buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("hardened_queue_depth", "requests waiting for a batch", registry=r)
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.images)
        self.batch_requests.observe(stats.requests)
        for wait in stats.waits:
            self.stage.labels("queue").observe(wait)
            self.stage.labels("inference").observe(stats.seconds)

    def observe_answers(self, answers: list[dict]) -> None:
        for answer in answers:
            self.images.labels("accepted" if answer["accepted"] else "refused").inc()
            if not answer["accepted"]:
                reason = "abstained" if answer.get("abstained") else (
                    "unscorable" if answer.get("score") is None else "unreliable")
                self.refusals.labels(reason).inc()

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
