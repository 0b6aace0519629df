"""Prometheus metrics of the schedulers (batch sizes, queue wait, inference time) and of
transcription (temperature fallbacks).

Each app owns its registry (not the process-global one), so several apps in one
process, as in the tests, do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_size = Histogram(
            "voxserve_batch_size",
            "Items per model call, as the scheduler formed them.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "voxserve_queue_wait_seconds",
            "Time an item waited in the queue before its batch started.",
            ["model"],
            registry=self.registry,
        )
        self.inference = Histogram(
            "voxserve_inference_seconds",
            "Time one batch spent in the model.",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "voxserve_queue_depth",
            "Items waiting for a batch.",
            ["model"],
            registry=self.registry,
        )

        self.fallbacks = Counter(
            "voxserve_transcription_fallbacks",
            "Whisper windows decoded again at a higher temperature.",
            ["model"],
            registry=self.registry,
        )

    def fallback(self, model: str) -> None:
        self.fallbacks.labels(model).inc()

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def batch_done(
        self, model: str, size: int, queue_waits: Sequence[float], seconds: float
    ) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference.labels(model).observe(seconds)
        wait = self.queue_wait.labels(model)
        for seconds_waited in queue_waits:
            wait.observe(seconds_waited)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
