"""Prometheus metrics: requests by route and status, the schedulers (queue depth and wait,
batch sizes, inference time), audio seconds in and out, rejections by reason, and the
state of every model.

Each app owns its registry (not the process-global one), so several apps in one
process, as in the tests, do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
REALTIME_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
MODEL_STATES = ("loading", "ready", "failed")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "voxserve_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "voxserve_request_seconds",
            "Time from a request's arrival to the end of its response.",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "voxserve_requests_in_flight",
            "API requests being served (probes and metrics excluded).",
            registry=self.registry,
        )
        self.rejections = Counter(
            "voxserve_rejections",
            "Requests refused to protect the server, by model ('' for server-wide) and reason.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.audio_transcribed = Counter(
            "voxserve_audio_transcribed_seconds",
            "Seconds of input audio transcribed or translated.",
            ["model"],
            registry=self.registry,
        )
        self.audio_synthesized = Counter(
            "voxserve_audio_synthesized_seconds",
            "Seconds of speech synthesized.",
            ["model"],
            registry=self.registry,
        )
        self.decodes = Gauge(
            "voxserve_decodes",
            "Uploads being decoded (running) and waiting for a decode slot (waiting).",
            ["state"],
            registry=self.registry,
        )
        self.model_states = Gauge(
            "voxserve_model_state",
            "1 for the state each catalog model is in, 0 for the others.",
            ["model", "state"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "voxserve_batch_size",
            "Items per model call, as the scheduler formed them; for a step engine "
            "(continuous batching), the rows running in one trip to the worker.",
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
            "Time one batch spent in the model (for a step engine: one trip to the "
            "worker, admissions and the steps until a row finished).",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "voxserve_queue_depth",
            "Items waiting for a batch.",
            ["model"],
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "voxserve_connections_closed",
            "Connections the server closed to protect itself, by reason (header_timeout, "
            "body_timeout, send_timeout, line_too_long, headers_too_large, shed).",
            ["reason"],
            registry=self.registry,
        )

        self.fallbacks = Counter(
            "voxserve_transcription_fallbacks",
            "Whisper windows decoded again at a higher temperature.",
            ["model"],
            registry=self.registry,
        )

        self.speech_checks = Counter(
            "voxserve_transcription_speech_checks",
            "Short uploads' windows by how their silence gate went: `trusted` (the model "
            "was sure of its text; the VAD was not run), `speech` and `no_speech` (the "
            "model was in doubt and the VAD decided).",
            ["model", "outcome"],
            registry=self.registry,
        )

        self.realtime_sessions = Gauge(
            "voxserve_realtime_sessions",
            "Realtime transcription sessions open (WebSocket).",
            registry=self.registry,
        )
        self.realtime_utterances = Counter(
            "voxserve_realtime_utterances",
            "Utterances committed in realtime sessions, by model and outcome "
            "(completed, failed, cancelled: the client left first).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.realtime_latency_seconds = Histogram(
            "voxserve_realtime_latency_seconds",
            "From an utterance's commit (the end of speech, in server_vad mode) to its "
            "`completed` event.",
            ["model"],
            buckets=REALTIME_BUCKETS,
            registry=self.registry,
        )

    def realtime_utterance(self, model: str, outcome: str) -> None:
        self.realtime_utterances.labels(model, outcome).inc()

    def realtime_latency(self, model: str, seconds: float) -> None:
        self.realtime_latency_seconds.labels(model).observe(seconds)

    def fallback(self, model: str) -> None:
        self.fallbacks.labels(model).inc()

    def speech_check(self, model: str, outcome: str) -> None:
        self.speech_checks.labels(model, outcome).inc()

    def transcribed(self, model: str, seconds: float) -> None:
        self.audio_transcribed.labels(model).inc(seconds)

    def synthesized(self, model: str, seconds: float) -> None:
        self.audio_synthesized.labels(model).inc(seconds)

    def rejected(self, model: str, reason: str) -> None:
        self.rejections.labels(model, reason).inc()

    def model_state(self, model: str, state: str) -> None:
        for name in MODEL_STATES:
            self.model_states.labels(model, name).set(1 if name == state else 0)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def watch_decodes(self, running: Callable[[], float], waiting: Callable[[], float]) -> None:
        self.decodes.labels("running").set_function(running)
        self.decodes.labels("waiting").set_function(waiting)

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
