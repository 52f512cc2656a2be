"""The life of a server: starting (warming up), ready, draining on shutdown, or failed.

``GET /readyz`` is 200 only in ``ready``: after the app's lifespan started the batcher and one real
prediction on a dummy example went through it (the warm-up, for every backend: it loads lazy kernels and
allocates buffers before the first client pays for it). Requests sent while the server warms up wait for it
in the queue.

`DrainingServer` is uvicorn's server that, on SIGTERM or SIGINT, first calls `Lifecycle.drain`, then lets
uvicorn shut down as usual. From then on /readyz is 503 (load balancers stop sending), new ``/v1`` requests
get 503 ``unavailable``, and the requests already queued are answered for up to `shutdown_timeout_s`
seconds; at that deadline `gave_up` is set and those still waiting get 503 ``unavailable``. uvicorn stops
listening at once, waits for the open requests (its ``timeout_graceful_shutdown`` is the shutdown timeout
plus `RESPONSE_GRACE_S`, time to write those 503s), then the lifespan stops the batcher.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)

RESPONSE_GRACE_S = 2.0  # after the drain deadline: time to write the last answers and 503s


class Lifecycle:
    """The server's state, and the drain deadline's event; `drain` may be called from a signal handler."""

    def __init__(self, shutdown_timeout_s: float) -> None:
        self.shutdown_timeout_s = shutdown_timeout_s
        self.state = "starting"
        self.drain_started: float | None = None  # time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.gave_up: asyncio.Event | None = None  # set at the drain deadline

    def bind(self) -> None:
        """Attach to the running event loop (the app's lifespan calls this first)."""
        self._loop = asyncio.get_running_loop()
        self.gave_up = asyncio.Event()
        self.state, self.drain_started = "starting", None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def draining(self) -> bool:
        return self.state == "draining"

    def set_ready(self) -> None:
        if self.state == "starting":
            self.state = "ready"

    def set_failed(self) -> None:
        if self.state == "starting":
            self.state = "failed"

    def drain(self) -> None:
        """Stop taking new requests; at `shutdown_timeout_s` from now, give up on those still waiting."""
        if self.drain_started is not None:
            return
        self.state, self.drain_started = "draining", time.monotonic()
        log.info(
            "draining: new requests get 503; answering the queued ones for up to %.1f s",
            self.shutdown_timeout_s,
        )
        if self._loop is not None and self.gave_up is not None and not self._loop.is_closed():
            event, delay = self.gave_up, self.shutdown_timeout_s
            self._loop.call_soon_threadsafe(lambda: self._loop.call_later(delay, event.set))  # type: ignore[union-attr]

    def drain_time_left(self) -> float:
        """Seconds left before the drain deadline (the whole timeout before a drain started)."""
        if self.drain_started is None:
            return self.shutdown_timeout_s
        return max(0.0, self.drain_started + self.shutdown_timeout_s - time.monotonic())


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains the app's `Lifecycle` when it is asked to exit."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.drain()
        super().handle_exit(sig, frame)

    def request_exit(self) -> None:
        """What SIGTERM does, from any thread (`BackgroundServer.stop`)."""
        self.handle_exit(signal.SIGTERM, None)
