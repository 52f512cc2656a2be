"""Prometheus metrics of one server, and the ASGI middleware that records every request.

Each app gets its own `CollectorRegistry` (not the process-wide default), so several apps in one process
(tests, notebooks) do not collide. Route labels are the app's route paths; any other path is counted as
"other", which keeps the label set bounded whatever clients send.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Request counts, latencies, in-flight requests and the sizes of model batches."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ns = "tinyroberta_es"
        self.requests = Counter(
            "requests",
            "HTTP requests by route, method and status code",
            ["route", "method", "status"],
            namespace=ns,
            registry=self.registry,
        )
        self.latency = Histogram(
            "request_latency_seconds",
            "HTTP request latency (first byte received to response sent) by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            namespace=ns,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "requests_in_flight", "HTTP requests being served", namespace=ns, registry=self.registry
        )
        self.batch_size = Histogram(
            "batch_size",
            "examples per model call (server-side micro-batching)",
            buckets=BATCH_BUCKETS,
            namespace=ns,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "model_seconds",
            "seconds per model call (tokenization, forward pass, span extraction)",
            buckets=LATENCY_BUCKETS,
            namespace=ns,
            registry=self.registry,
        )

    def record_batch(self, size: int, seconds: float) -> None:
        """Called by the batcher after every model call."""
        self.batch_size.observe(size)
        self.model_seconds.observe(seconds)

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
