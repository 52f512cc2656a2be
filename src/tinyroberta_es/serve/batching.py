"""Server-side micro-batching: concurrent requests share one forward pass.

Each question is a `Job` (its example, its `top_k` and a future) on an asyncio queue; a request with several
items puts several jobs. One background task takes the first job, then keeps collecting jobs until the batch
holds `max_batch` of them or `wait_ms` have passed since the first one, and runs
``predict(examples, top_k=max of the jobs' top_k)`` once on a single worker thread, so the model never runs
twice at once and the event loop keeps accepting requests meanwhile. Each job's future then gets its own
prediction, cut to its own `top_k` (`truncate`). When the model raises, every job of that batch gets
`ModelError` and the task goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tinyroberta_es.data.schema import Example
from tinyroberta_es.extraction import Prediction, Span

log = logging.getLogger(__name__)

PredictFn = Callable[[Sequence[Example], int], list[Prediction]]
BatchHook = Callable[[int, float], None]  # (examples in the batch, seconds in the model)


class ModelError(RuntimeError):
    """The model failed on the batch that held this request."""


class BatcherClosed(RuntimeError):
    """The server is shutting down: the request was not answered."""


class Overloaded(RuntimeError):
    """More questions would wait for the model than `max_queue`: the request was not queued."""


@dataclass
class Job:
    """One question waiting for its answer."""

    example: Example
    top_k: int
    future: asyncio.Future[Prediction] = field(repr=False)


class MicroBatcher:
    """Queue requests and answer them together, at most `max_batch` examples per model call."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch: int = 16,
        wait_ms: float = 5.0,
        null_threshold: float | None = None,
        on_batch: BatchHook | None = None,
        max_queue: int | None = None,
    ) -> None:
        self.predict = predict
        self.max_queue = max_queue  # None: no limit
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.null_threshold = null_threshold  # needed to renormalise probabilities when cutting top_k
        self.on_batch = on_batch
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the collecting task and the model thread (call from the running event loop)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyroberta-model")
        self._task = asyncio.create_task(self._run(), name="tinyroberta-batcher")

    async def stop(self) -> None:
        """Stop collecting, fail the requests still queued, and release the model thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = []
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._queue = self._executor = None

    @property
    def queued(self) -> int:
        """Questions waiting for a batch."""
        return self._queue.qsize() if self._queue else 0

    async def submit(self, example: Example, top_k: int) -> Prediction:
        """The prediction for `example`, answered in a shared batch."""
        [prediction] = await self.submit_all([(example, top_k)])
        return prediction

    async def submit_all(self, items: Sequence[tuple[Example, int]]) -> list[Prediction]:
        """The predictions for (example, top_k) pairs, queued together or not at all (`Overloaded`).

        The check and the queueing run without an await in between, so concurrent requests cannot all pass
        the check before any of them is queued.
        """
        if self._queue is None:
            raise BatcherClosed("the batcher is not running")
        queued = self._queue.qsize()
        if self.max_queue is not None and queued + len(items) > self.max_queue:
            raise Overloaded(
                f"{queued} questions are waiting for the model and this request adds {len(items)} "
                f"(--max-queue {self.max_queue}): retry in a moment"
            )
        loop = asyncio.get_running_loop()
        jobs = [Job(example, top_k, loop.create_future()) for example, top_k in items]
        for job in jobs:
            self._queue.put_nowait(job)  # the queue is unbounded: this never blocks
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def _next_batch(self) -> list[Job]:
        """Block for the first job, then collect more until the batch is full or the wait is over."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
            batch.append(job)
        return batch

    async def _run(self) -> None:
        while True:
            batch = [job for job in await self._next_batch() if not job.future.done()]  # skip cancelled
            if not batch:
                continue
            try:
                await self._answer(batch)
            except Exception as err:  # the model (or anything after it) failed: this batch only
                log.exception("the model failed on a batch of %d questions", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(ModelError(f"{type(err).__name__}: {err}"))

    async def _answer(self, batch: list[Job]) -> None:
        """One model call for the whole batch, on the model thread; each job gets its own prediction."""
        examples = [job.example for job in batch]
        top_k = max(job.top_k for job in batch)
        t0 = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            predictions = await loop.run_in_executor(self._executor, self.predict, examples, top_k)
        finally:
            if self.on_batch is not None:
                self.on_batch(len(examples), time.perf_counter() - t0)
        for job, prediction in zip(batch, predictions, strict=True):
            if not job.future.done():
                job.future.set_result(truncate(prediction, job.top_k, self.null_threshold))


def truncate(prediction: Prediction, top_k: int, null_threshold: float | None) -> Prediction:
    """The prediction that ``predict(..., top_k)`` gives, from one made with a larger top_k.

    The best spans are a prefix of a longer list (while top_k <= n_best every window keeps the same
    candidates), but probabilities are a softmax over the kept spans (and the null answer when thresholded),
    so they are recomputed over the kept prefix. The null decision depends on the best span only.
    """
    if len(prediction.answers) <= top_k:
        return prediction
    spans = prediction.answers[:top_k]
    scores = [s.score for s in spans]
    if null_threshold is not None:
        scores.append(spans[0].score + prediction.null_score_diff)  # the null score
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    probs = [w / total for w in weights]
    return Prediction(
        id=prediction.id,
        answers=[Span(s.text, s.start, s.end, s.score, p) for s, p in zip(spans, probs, strict=False)],
        null_score_diff=prediction.null_score_diff,
        is_null=prediction.is_null,
        null_probability=probs[-1] if null_threshold is not None else 0.0,
    )
