"""From the items of one HTTP request to their answers, without letting it hurt any other request.

In order, for one request:

1. Draining (shutdown under way): 503 ``unavailable``.
2. Size limits of this server: 413 ``context_too_long`` / ``question_too_long``, naming the items.
3. Each item alone through the batcher's engine's ``prepare`` (tokenization only, on a validation thread: a
   20k-character context takes a while; the window engine keeps the windows, so the model thread never
   tokenizes again): a question the model's settings cannot answer (e.g. so long that ``doc_stride`` no
   longer fits) is 422 ``invalid_request`` naming the item, before anything is queued, so it can never fail
   a batch it would have shared with others. A request of more tokens than the whole queue holds is 413
   ``too_many_tokens``.
4. Queued with its size in tokens and windows (`QueueItem`) and a deadline: ``--request-timeout-s``, or
   less with the ``X-Request-Timeout`` header (seconds; more than the server's timeout is cut to it). While
   it waits, the client's connection is watched: when the client goes away the submission is cancelled, and
   its questions leave the queue before they reach the model.
5. The outcome: the answers; 503 ``overloaded`` with ``Retry-After`` (the queue's drain time); 504
   ``deadline_exceeded``; 500 ``model_error`` with a generic text (the model's message goes to the log with
   the request id); 503 ``unavailable`` when the shutdown deadline came first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from starlette.requests import Request

from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import UserError
from tinyroberta_es.extraction import Prediction
from tinyroberta_es.prediction_files import first_ids
from tinyroberta_es.serve.batching import (
    BatcherClosed,
    DeadlineExceeded,
    MicroBatcher,
    ModelError,
    Overloaded,
)
from tinyroberta_es.serve.config import ServeConfig
from tinyroberta_es.serve.engines import QueueItem
from tinyroberta_es.serve.lifecycle import Lifecycle
from tinyroberta_es.serve.schema import AnswerRequest, AnswerResponse, SpanOut

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "x-request-timeout"
CLIENT_GONE = 499  # nginx's "client closed request": counted in metrics, read by nobody


class Answerer(Protocol):
    """What the server needs of a `QuestionAnswerer`.

    One that also has ``prepare``, ``logits`` and ``extract`` is run window by window (serve/engines.py).
    """

    config: Any  # an InferenceConfig: its backend (what was asked for)
    runner: Any  # a runtimes.Runner: /health reports its name and, with --backend auto, its selection

    def predict(self, examples: Sequence[Example], top_k: int = 1) -> list[Prediction]: ...

    def cost(self, example: Example) -> tuple[int, int]: ...


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with `status` (and `headers`)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


class Answering:
    """Validate, queue and await the items of requests (see the module doc); one per app."""

    def __init__(
        self, answerer: Answerer, batcher: MicroBatcher, config: ServeConfig, lifecycle: Lifecycle
    ) -> None:
        self.answerer, self.batcher, self.config, self.lifecycle = answerer, batcher, config, lifecycle
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyroberta-validate")

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def prepare(self, examples: Sequence[Example], top_ks: Sequence[int]) -> list[QueueItem | str]:
        """The queue item of each example alone, or the UserError's message; on the validation thread."""
        engine = self.batcher.engine

        def measure() -> list[QueueItem | str]:
            out: list[QueueItem | str] = []
            for example, top_k in zip(examples, top_ks, strict=True):
                try:
                    out.append(engine.prepare(example, top_k))
                except UserError as err:
                    out.append(str(err))
            return out

        return await asyncio.get_running_loop().run_in_executor(self._executor, measure)

    async def answer(self, items: Sequence[AnswerRequest], request: Request) -> list[AnswerResponse]:
        """The answers to `items` in order, or an `ApiError`."""
        if self.lifecycle.draining:
            raise ApiError(503, "unavailable", "the server is shutting down; retry on another instance")
        if self.lifecycle.state == "failed":
            raise ApiError(503, "unavailable", "the model failed its warm-up; see the server log")
        deadline = time.monotonic() + self.timeout(request)
        self.check_sizes(items)
        examples = [
            Example(id=str(i), question=it.question, context=it.context) for i, it in enumerate(items)
        ]
        prepared = await self.prepare(examples, [it.top_k for it in items])
        problems = [(i, p) for i, p in enumerate(prepared) if isinstance(p, str)]
        if problems:
            where = (lambda i: "") if len(items) == 1 else (lambda i: f"items.{i}: ")
            raise ApiError(422, "invalid_request", "; ".join(f"{where(i)}{why}" for i, why in problems))
        queue = [p for p in prepared if isinstance(p, QueueItem)]
        tokens = sum(q.tokens for q in queue)
        if tokens > self.config.max_queue_tokens:
            raise ApiError(
                413,
                "too_many_tokens",
                f"the request is {tokens} tokens, more than the queue holds (--max-queue-tokens "
                f"{self.config.max_queue_tokens}): send fewer items or shorter contexts",
            )
        t0 = time.perf_counter()
        predictions = await self.wait(queue, deadline, request)
        ms = (time.perf_counter() - t0) * 1000
        return [_response(p, ms, it.id) for p, it in zip(predictions, items, strict=True)]

    async def warm_up(self) -> None:
        """One real prediction on a dummy example through the whole path; then the server is ready."""
        example = Example(id="warm-up", question="¿Dónde está el río?", context="El río pasa por la ciudad.")
        t0 = time.perf_counter()
        try:
            [item] = await self.prepare([example], [1])
            if isinstance(item, str):
                raise UserError(item)
            await self.batcher.submit_all([item], None, "warm-up")
        except Exception:
            log.exception("the warm-up prediction failed: /readyz stays 503 and /v1 requests get 503")
            self.lifecycle.set_failed()
            return
        self.lifecycle.set_ready()
        log.info("warmed up in %.0f ms: ready", (time.perf_counter() - t0) * 1000)

    def timeout(self, request: Request) -> float:
        """Seconds this request may take: the server's timeout, or less when X-Request-Timeout asks."""
        limit = self.config.request_timeout_s
        header = request.headers.get(TIMEOUT_HEADER)
        if header is None:
            return limit
        try:
            asked = float(header)
        except ValueError:
            asked = math.nan
        if not (asked > 0 and math.isfinite(asked)):
            raise ApiError(
                422, "invalid_request", f"X-Request-Timeout {header!r}: give a positive number of seconds"
            )
        return min(asked, limit)

    def check_sizes(self, items: Sequence[AnswerRequest]) -> None:
        """413 for contexts or questions over this server's character limits, naming the items."""
        c = self.config
        for code, field, limit, flag in (
            ("context_too_long", "context", c.max_context_chars, "--max-context-chars"),
            ("question_too_long", "question", c.max_question_chars, "--max-question-chars"),
        ):
            over = [i for i, item in enumerate(items) if len(getattr(item, field)) > limit]
            if over:
                where = (
                    f"the {field} has"
                    if len(items) == 1
                    else f"the {field}s of items {first_ids(over, n=10)} have"
                )
                raise ApiError(
                    413, code, f"{where} more than {limit} characters ({flag}); send a shorter {field}"
                )

    async def wait(self, queue: list[QueueItem], deadline: float, request: Request) -> list[Prediction]:
        """Submit and await, until the answers, the deadline, the client leaving or the shutdown deadline."""
        request_id = getattr(request.state, "request_id", "")
        submission = asyncio.ensure_future(self.batcher.submit_all(queue, deadline, request_id))
        gone = asyncio.ensure_future(_disconnected(request))
        assert self.lifecycle.gave_up is not None  # bound by the lifespan
        shutdown = asyncio.ensure_future(self.lifecycle.gave_up.wait())
        try:
            await asyncio.wait(
                {submission, gone, shutdown},
                timeout=max(0.0, deadline - time.monotonic()) + 0.5,  # the batcher's own deadline comes first
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in (submission, gone, shutdown):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(submission, gone, shutdown, return_exceptions=True)
        if submission.done() and not submission.cancelled():
            return self.outcome(submission, request_id)
        if gone.done() and not gone.cancelled():
            log.info("the client went away: its %d questions were dropped", len(queue))
            raise ApiError(CLIENT_GONE, "client_closed_request", "the client closed the connection")
        if shutdown.done() and not shutdown.cancelled():
            raise ApiError(
                503, "unavailable", "the server shut down before answering; retry on another instance"
            )
        raise ApiError(504, "deadline_exceeded", _late(deadline))

    def outcome(self, submission: asyncio.Future[list[Prediction]], request_id: str) -> list[Prediction]:
        """The submission's answers, or its error as the `ApiError` clients see."""
        try:
            return submission.result()
        except Overloaded as err:
            retry = max(1, math.ceil(err.retry_after_s))
            raise ApiError(503, "overloaded", str(err), {"Retry-After": str(retry)}) from None
        except DeadlineExceeded:
            raise ApiError(
                504, "deadline_exceeded", "the request's deadline passed before it was answered"
            ) from None
        except ModelError as err:
            log.error("answered 500 model_error: %s", err)  # the details stay in the log
            raise ApiError(
                500,
                "model_error",
                f"the model failed on this request; see the server log for request id {request_id}",
            ) from None
        except BatcherClosed:
            raise ApiError(
                503, "unavailable", "the server is shutting down; retry on another instance"
            ) from None


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body is read already, so the next message says so)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _late(deadline: float) -> str:
    late = max(0.0, time.monotonic() - deadline)
    return f"the request's deadline passed {late:.1f} s ago before it was answered"


def _response(prediction: Prediction, latency_ms: float, item_id: str | None) -> AnswerResponse:
    return AnswerResponse(
        id=item_id,
        answer=prediction.text,
        is_null=prediction.is_null,
        answers=[
            SpanOut(text=s.text, start=s.start, end=s.end, score=s.score, probability=s.probability)
            for s in prediction.answers
        ],
        latency_ms=round(latency_ms, 3),
    )
