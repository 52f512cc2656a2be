"""Prometheus metrics of one server, and the ASGI middleware that records every request.

Each app gets its own `CollectorRegistry` (not the process-wide default), so several apps in one process
(tests, notebooks) do not collide. Route labels are the app's route paths; any other path is counted as
"other", which keeps the label set bounded whatever clients send.

The batcher feeds the rest: `record_batch` is its `on_batch` hook (batch sizes in questions, windows and
tokens, model time, queue waits, retries and failures), `record_drop` its `on_drop` hook (questions dropped
before the model: deadline passed, or the client went away), and `watch_queue` reads its queue depth at each
scrape. `set_info` publishes the model name, backend and package version.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tinyroberta_es.serve.batching import BatchStats, MicroBatcher

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
WINDOW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
DROP_REASONS = ("deadline", "cancelled")


class ServerMetrics:
    """Requests (counts, latencies, in flight), model batches, the queue, dropped work, the model served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        own = {"namespace": "tinyroberta_es", "registry": self.registry}  # every metric's prefix and registry
        self.requests = Counter(
            "requests",
            "HTTP requests by route, method and status code",
            ["route", "method", "status"],
            **own,
        )
        self.latency = Histogram(
            "request_latency_seconds",
            "HTTP request latency (first byte received to response sent) by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            **own,
        )
        self.in_flight = Gauge("requests_in_flight", "HTTP requests being served", **own)
        self.batch_size = Histogram(
            "batch_size",
            "questions with windows in a model call (a long context's windows can span several calls)",
            buckets=BATCH_BUCKETS,
            **own,
        )
        self.model_seconds = Histogram(
            "model_seconds",
            "seconds per model call (tokenization, forward pass, span extraction)",
            buckets=LATENCY_BUCKETS,
            **own,
        )
        self.batch_windows = Histogram(
            "batch_windows",
            "windows (model inputs of max_seq_length tokens) per batch",
            buckets=WINDOW_BUCKETS,
            **own,
        )
        self.batch_tokens = Histogram(
            "batch_tokens",
            "tokens per batch (the budget that --max-batch-tokens caps)",
            buckets=TOKEN_BUCKETS,
            **own,
        )
        self.queue_wait = Histogram(
            "queue_wait_seconds",
            "seconds a question waited in the queue before its batch went to the model",
            buckets=LATENCY_BUCKETS,
            **own,
        )
        self.queue_questions = Gauge("queue_questions", "questions waiting for the model", **own)
        self.queue_tokens = Gauge("queue_tokens", "tokens of the questions waiting", **own)
        self.batch_retries = Counter(
            "batch_retries",
            "model calls that failed on a batch of several questions, which were then run one by one",
            **own,
        )
        self.model_failures = Counter(
            "model_failures",
            "questions the model failed on when run alone (answered with model_error)",
            **own,
        )
        self.dropped = Counter(
            "dropped_questions",
            "questions dropped before reaching the model: deadline passed, or cancelled (client went away)",
            ["reason"],
            **own,
        )
        for reason in DROP_REASONS:
            self.dropped.labels(reason)  # both series exist from the start, at 0
        self.info = Info(
            "model",
            "the model served, its backend and the package version",
            **own,
        )

    def record_batch(self, stats: BatchStats) -> None:
        """The batcher's `on_batch` hook: called after every batch's model calls (retries included)."""
        self.batch_size.observe(stats.questions)
        self.batch_windows.observe(stats.windows)
        self.batch_tokens.observe(stats.tokens)
        self.model_seconds.observe(stats.model_seconds)
        for seconds in stats.queue_wait_seconds:
            self.queue_wait.observe(seconds)
        if stats.retried:
            self.batch_retries.inc()
        if stats.failed:
            self.model_failures.inc(stats.failed)

    def record_drop(self, reason: str, count: int) -> None:
        """The batcher's `on_drop` hook: `count` questions dropped before the model, for `reason`."""
        self.dropped.labels(reason).inc(count)

    def watch_queue(self, batcher: MicroBatcher) -> None:
        """Report `batcher`'s queue depth (questions and tokens waiting) at every scrape."""
        self.queue_questions.set_function(lambda: batcher.queued_questions)
        self.queue_tokens.set_function(lambda: batcher.queued_tokens)

    def set_info(self, *, model: str, backend: str, version: str) -> None:
        """Publish what is served: ``tinyroberta_es_model_info{model=..., backend=..., version=...} 1``."""
        self.info.info({"model": model, "backend": backend, "version": version})

    def render(self) -> bytes:
        """The Prometheus text exposition of this server's metrics."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count every HTTP request and time it; track how many are in flight."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500  # when the app raises before starting a response, the server answers 500
        t0 = time.perf_counter()

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
