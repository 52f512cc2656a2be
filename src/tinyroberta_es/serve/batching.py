"""Server-side batching by parts of questions: short questions never wait behind a long context.

Each question is a `Job`; an `Engine` cuts it into `Part`s (serve/engines.py has all three): the window
engine's parts are the question's windows, the predict engine's one part is the whole question. A request
with several items queues several jobs, all or none (`submit_all`). One background task forms model calls
from the parts of the queued jobs and runs ``engine.run`` on a single worker thread, so the model never runs
twice at once and the event loop keeps accepting requests meanwhile; a job whose last part has run gets its
answer from ``engine.finish`` on that thread. A long context's windows are thus spread over several calls,
between the windows of short questions.

Which parts go into a call (shortest remaining work first, with aging):

1. Aged jobs first, by arrival, while they fill at most half of `max_batch_tokens`: a job is aged when it was
   passed over by `aging_calls` calls in a row (it had parts left and got none of them into those calls).
2. Then the other jobs (aged ones that did not fit included) by fewest windows left, then by arrival, up to
   `max_batch_tokens`.
3. Each job gives its next parts while they fit; the first part of a call always goes in (a part larger than
   the budget runs alone); a job whose next part does not fit is passed over and smaller parts of later jobs
   may still go in. A call holds parts of at most `max_batch` jobs.
4. When what is queued fills less than a call (fewer than `max_batch` jobs and `max_batch_tokens` tokens), the
   task first waits up to `wait_ms` for more.

So a short question waits for the call in the model and goes into the next one, a long one runs in
budget-sized slices beside short ones, and under short questions that fill every call it still gets half of
one call in every ``aging_calls + 1``: nothing starves.

Isolation, in the order a job meets it:

- Admission: a request whose tokens would take the waiting tokens past `max_queue_tokens` is refused whole
  with `Overloaded`, whose `retry_after_s` is the queue's drain time at the throughput measured on recent
  calls (a request that finds nothing waiting is always admitted, so every request can be answered).
- A job whose request went away (the client disconnected, or another item of the request failed) or whose
  deadline passed (`DeadlineExceeded`) leaves the queue at once: its parts not yet run never reach the model.
- When a call with parts of several jobs fails, each job's parts of that call are run again alone, and only
  the jobs that fail alone get `ModelError` (as does a job whose `finish` fails); the task goes on.

`stop(timeout)` drains gracefully: new requests get `BatcherClosed`, queued ones are answered for up to
`timeout` seconds, and whatever is left then gets `BatcherClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tinyroberta_es.extraction import Prediction
from tinyroberta_es.serve.engines import Engine, Job, Outcome, QueueItem, Work, run_call

log = logging.getLogger(__name__)

# Drain-time guess before the first call is measured: low, so that Retry-After is never too hopeful.
FALLBACK_TOKENS_PER_S = 2000.0
THROUGHPUT_EWMA = 0.3  # weight of the newest call in the measured throughput
AGING_CALLS = 4  # calls in a row a job may be passed over before it goes first


class ModelError(RuntimeError):
    """The model failed on this request's question, run alone (its message is for logs, not for clients)."""


class BatcherClosed(RuntimeError):
    """The server is shutting down: the request was not answered."""


class DeadlineExceeded(RuntimeError):
    """The request's deadline passed before its question was answered."""


class Overloaded(RuntimeError):
    """More tokens would wait for the model than `max_queue_tokens`: the request was not queued."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # whole seconds, at least 1: the queue's drain time


@dataclass
class BatchStats:
    """What one model call did, for metrics: given to `on_batch` after it (retries included)."""

    questions: int  # jobs with parts in the call
    windows: int
    tokens: int
    model_seconds: float  # in the engine (run and finish), retries included
    queue_wait_seconds: list[float]  # per job whose first part is in this call: from queueing to the call
    failed: int = 0  # jobs that got ModelError (after running alone)
    retried: bool = False  # the call failed and its jobs were run one by one


DropHook = Callable[[str, int], None]  # (reason: "deadline" or "cancelled", jobs whose work was dropped)


class MicroBatcher:
    """Queue questions and run their parts together: at most `max_batch` jobs, `max_batch_tokens` a call."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 16,
        max_batch_tokens: int = 1024,
        wait_ms: float = 5.0,
        max_queue_tokens: int | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_drop: DropHook | None = None,
        aging_calls: int = AGING_CALLS,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.wait_s = wait_ms / 1000
        self.max_queue_tokens = max_queue_tokens  # None: no limit
        self.on_batch = on_batch
        self.on_drop = on_drop
        self.tokens_per_s = FALLBACK_TOKENS_PER_S  # replaced by the first measured call, then an EWMA
        self.aging_calls = aging_calls
        self._measured = False
        self._pending: list[Job] = []  # jobs with parts not yet given to the model, in arrival order
        self._queued_tokens = 0  # tokens of those parts
        self._running: Work = []  # the call in the model
        self._arrived: asyncio.Event | None = None  # set by submit_all: the collector may have work
        self._idle: asyncio.Event | None = None  # set while nothing is queued or running
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the collecting task and the model thread (call from the running event loop)."""
        self._closing = False
        self._arrived, self._idle = asyncio.Event(), asyncio.Event()  # bound to this event loop
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyroberta-model")
        self._task = asyncio.create_task(self._run(), name="tinyroberta-batcher")

    async def stop(self, timeout: float = 0.0) -> None:
        """Stop accepting, answer what is queued for up to `timeout` seconds, then fail the rest.

        A model call still running at the timeout is not interrupted (a thread cannot be): its jobs get
        `BatcherClosed` at once and its result is thrown away when it comes.
        """
        self._closing = True
        left: list[Job] = []  # the jobs in the model when the task is cancelled (which clears _running)
        if self._task is not None and self._arrived is not None and self._idle is not None:
            self._arrived.set()  # the collector stops waiting for more jobs to join a call
            if not self._idle.is_set() and timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), timeout)
            left = [job for job, _ in self._running]
            if not self._idle.is_set():
                n = len({id(job) for job in [*self._pending, *left]})
                log.warning("stopping with %d questions unanswered after %.1f s", n, timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in [*left, *self._pending]:
            job.waiting = False
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the server is shutting down"))
        self._pending, self._running, self._queued_tokens = [], [], 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._executor = None

    @property
    def queued_questions(self) -> int:
        """Questions with work waiting for the model (a long one partly run included)."""
        return len(self._pending)

    @property
    def queued_tokens(self) -> int:
        """Tokens of the parts waiting for the model (not counting the call in the model)."""
        return self._queued_tokens

    def drain_seconds(self) -> float:
        """Seconds until the queue is empty: the tokens waiting and in the model over the measured rate."""
        running = sum(job.parts[i].tokens for job, idx in self._running for i in idx)
        return (self._queued_tokens + running) / self.tokens_per_s

    async def submit_all(
        self, items: Sequence[QueueItem], deadline: float | None, request_id: str = ""
    ) -> list[Prediction]:
        """The predictions for `items`, queued together or not at all (`Overloaded`), in order.

        `deadline` is a `time.monotonic()` time: past it, the questions not yet answered are dropped and this
        raises `DeadlineExceeded`. Cancelling the awaiting task drops them too. The first question to fail
        fails the request, and its other questions are dropped. The check and the queueing run without an
        await in between, so concurrent requests cannot all pass the check before any of them is queued.
        """
        if self._task is None or self._closing or self._arrived is None or self._idle is None:
            why = "the server is shutting down" if self._closing else "the batcher is not running"
            raise BatcherClosed(why)
        if not items:
            return []
        request_tokens = sum(item.tokens for item in items)
        limit = self.max_queue_tokens
        # A request alone in an empty queue is always admitted: otherwise one larger than the limit could
        # never be answered, whatever Retry-After said (the server answers those 413 before they get here).
        if limit is not None and self._pending and self._queued_tokens + request_tokens > limit:
            retry_after = max(1, math.ceil(self.drain_seconds()))
            raise Overloaded(
                f"{self._queued_tokens} tokens of {len(self._pending)} questions are waiting for the model "
                f"and this request adds {request_tokens} (--max-queue-tokens {limit}): "
                f"retry in {retry_after} s",
                retry_after,
            )
        loop = asyncio.get_running_loop()
        jobs = [
            Job(
                it.example,
                it.top_k,
                it.tokens,
                it.windows,
                deadline,
                loop.create_future(),
                request_id,
                it.features,
            )
            for it in items
        ]
        self._enqueue(jobs)
        futures = [job.future for job in jobs]
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, waiting = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # cancelled (client gone), or returning early: drop what is not answered yet
            self._withdraw([job for job in jobs if job.future.cancel()])
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        if waiting:
            raise DeadlineExceeded(
                f"the deadline passed with {len(waiting)} of {len(futures)} questions unanswered "
                f"({self.queued_questions} questions waiting for the model)"
            )
        return [f.result() for f in futures]

    def _enqueue(self, jobs: list[Job]) -> None:
        """Cut the jobs into parts and queue them (all or none: `engine.parts` may raise)."""
        cut = [self.engine.parts(job) for job in jobs]
        assert self._arrived is not None and self._idle is not None  # started
        for job, parts in zip(jobs, cut, strict=True):
            job.parts, job.next_part, job.waiting = parts, 0, True
            self._queued_tokens += job.left_tokens
        self._pending.extend(jobs)
        self._idle.clear()
        self._arrived.set()

    def _withdraw(self, jobs: list[Job]) -> None:
        """Jobs whose request went away leave the queue now (parts already in the model are thrown away)."""
        queued = [job for job in jobs if job.waiting]
        if queued:
            self._unqueue(queued)
            self._dropped(queued)

    def _unqueue(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.waiting:
                job.waiting = False
                self._queued_tokens -= job.left_tokens
        self._pending = [job for job in self._pending if job.waiting]

    def _dropped(self, jobs: list[Job]) -> None:
        """Report jobs whose work was dropped before the model by cause: deadline passed, or request left."""
        now = time.monotonic()
        late = sum(1 for job in jobs if job.deadline is not None and now >= job.deadline)
        for reason, n in (("deadline", late), ("cancelled", len(jobs) - late)):
            if n and self.on_drop is not None:
                try:
                    self.on_drop(reason, n)
                except Exception:  # metrics must never fail a request
                    log.exception("the on_drop hook failed")

    def _expire(self) -> None:
        """Queued jobs past their deadline get DeadlineExceeded and leave the queue."""
        now = time.monotonic()
        late = [job for job in self._pending if job.deadline is not None and now >= job.deadline]
        for job in late:
            if not job.future.done():
                job.future.set_exception(DeadlineExceeded("the deadline passed before the model ran"))
        if late:
            self._unqueue(late)
            self._dropped(late)

    def _call_full(self) -> bool:
        return len(self._pending) >= self.max_batch or self._queued_tokens >= self.max_batch_tokens

    async def _next_call(self) -> Work:
        """Wait for queued work, up to `wait_s` more while it fills less than a call, then choose a call."""
        assert self._arrived is not None and self._idle is not None  # started
        while True:
            while not self._pending:
                self._idle.set()
                self._arrived.clear()
                await self._arrived.wait()
            wait_until = time.monotonic() + self.wait_s
            while not self._closing and not self._call_full():
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            self._expire()
            work = self._select()
            if work:
                return work

    def _select(self) -> Work:
        """The parts of the next call, by the rule in the module doc; takes them out of the queue."""
        work: Work = []
        tokens = 0
        # Aged jobs take at most half the budget, so the short questions still fit in the other half.
        for aged_only, budget in ((True, self.max_batch_tokens // 2), (False, self.max_batch_tokens)):
            chosen = {id(job) for job, _ in work}
            if aged_only:  # in arrival order
                jobs = [j for j in self._pending if j.passed_over >= self.aging_calls]
            else:
                jobs = sorted(
                    (j for j in self._pending if id(j) not in chosen), key=lambda j: (j.left_windows, j.seq)
                )
            for job in jobs:
                if len(work) == self.max_batch or tokens >= budget:
                    break
                first = end = job.next_part
                while end < len(job.parts) and (tokens == 0 or tokens + job.parts[end].tokens <= budget):
                    tokens += job.parts[end].tokens
                    end += 1
                if end > first:
                    work.append((job, list(range(first, end))))
        chosen = {id(job) for job, _ in work}
        for job in self._pending:
            job.passed_over = 0 if id(job) in chosen else job.passed_over + 1
        for job, idx in work:
            self._queued_tokens -= sum(job.parts[i].tokens for i in idx)
            job.next_part = idx[-1] + 1
            job.waiting = job.next_part < len(job.parts)
        self._pending = [job for job in self._pending if job.waiting]
        return work

    async def _run(self) -> None:
        while True:
            work = await self._next_call()
            self._running = work
            try:
                await self._answer(work)
            except Exception as err:  # a bug here (a hook, say) must not stop the batcher: fail these jobs
                log.exception("the batcher failed on a call with %d questions", len(work))
                self._fail([job for job, _ in work], err, log_each=False)
            finally:
                self._running = []

    async def _answer(self, work: Work) -> None:
        """One model call for `work`; when it fails and holds several jobs, one call per job."""
        started = time.monotonic()
        parts = [job.parts[i] for job, idx in work for i in idx]
        stats = BatchStats(
            questions=len(work),
            windows=sum(p.windows for p in parts),
            tokens=sum(p.tokens for p in parts),
            model_seconds=0.0,
            queue_wait_seconds=[started - job.queued_at for job, idx in work if idx[0] == 0],
        )
        t0 = time.perf_counter()
        try:
            stats.failed += self._accept(work, await self._call(work))
        except Exception as err:  # the model (or its output) failed on this call: find the faulty jobs
            if len(work) == 1:
                self._fail([work[0][0]], err)
                stats.failed = 1
            else:
                stats.retried = True
                log.warning(
                    "the model failed on a call with %d questions (requests %s); retrying one by one: %s: %s",
                    len(work),
                    ", ".join(sorted({job.request_id for job, _ in work})),
                    type(err).__name__,
                    err,
                )
                for entry in work:
                    if entry[0].future.done():  # its request went away meanwhile
                        continue
                    try:
                        stats.failed += self._accept([entry], await self._call([entry]))
                    except Exception as alone:
                        self._fail([entry[0]], alone)
                        stats.failed += 1
        stats.model_seconds = time.perf_counter() - t0
        self._measure(stats)
        if self.on_batch is not None:
            self.on_batch(stats)

    async def _call(self, work: Work) -> list[Outcome]:
        """`run_call` on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, run_call, self.engine, work)

    def _accept(self, work: Work, results: list[Outcome]) -> int:
        """Keep the outputs of a call; answer the jobs it completed. Returns how many `finish` failed."""
        failed = 0
        for (job, _), (parts, answer) in zip(work, results, strict=True):
            job.outputs = [] if job.future.done() else [*job.outputs, *parts]
            if isinstance(answer, Exception):
                self._fail([job], answer)
                failed += 1
            elif answer is not None and not job.future.done():
                job.outputs = []
                job.future.set_result(answer)
        return failed

    def _fail(self, jobs: list[Job], err: Exception, log_each: bool = True) -> None:
        """ModelError for each job; its parts not yet run leave the queue."""
        for job in jobs:
            if log_each:
                log.error(
                    "the model failed on request %s (question %s): %s: %s",
                    job.request_id,
                    job.example.id,
                    type(err).__name__,
                    err,
                    exc_info=err,
                    extra={"request_id": job.request_id},
                )
            job.outputs = []
            if not job.future.done():
                job.future.set_exception(ModelError(f"{type(err).__name__}: {err}"))
        self._unqueue(jobs)

    def _measure(self, stats: BatchStats) -> None:
        """Fold the call's tokens per second into the throughput that `drain_seconds` uses."""
        if stats.model_seconds <= 0 or stats.tokens <= 0:
            return
        rate = stats.tokens / stats.model_seconds
        if self._measured:
            rate = THROUGHPUT_EWMA * rate + (1 - THROUGHPUT_EWMA) * self.tokens_per_s
        self.tokens_per_s, self._measured = rate, True
