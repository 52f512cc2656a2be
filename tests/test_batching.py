"""The micro-batcher alone, with fake engines: token budgets, fault isolation, deadlines, cancellation, load
shedding with a measured Retry-After, graceful stop, top_k cuts, the metrics it feeds, and window-level
scheduling (short questions before a long one's remaining windows, aging, failures and cancellation mid-way).

The fake model records the questions of every call, raises on a batch holding "💥", and blocks a batch holding
"wait" until the test opens its gate, so tests control what is in the model and what is queued without
relying on timing. Each test runs its own event loop (`asyncio.run`) under a global timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_helpers import until
from tinyroberta_es.data.schema import Example
from tinyroberta_es.extraction import Prediction, Span
from tinyroberta_es.serve.batching import (
    FALLBACK_TOKENS_PER_S,
    BatcherClosed,
    BatchStats,
    DeadlineExceeded,
    MicroBatcher,
    ModelError,
    Overloaded,
)
from tinyroberta_es.serve.engines import Job, Part, PredictEngine, QueueItem, truncate
from tinyroberta_es.serve.metrics import ServerMetrics

CONTEXT = "Gabriel García Márquez nació en Aracataca en 1927."


def prediction(example: Example, n: int) -> Prediction:
    """`n` spans of the context, best first, each with a probability that does not depend on `n`."""
    spans = [Span(CONTEXT[: i + 1], 0, i + 1, -float(i), 0.5 / (i + 1)) for i in range(n)]
    return Prediction(id=example.id, answers=spans, null_score_diff=-1.0, is_null=False)


class FakeModel:
    """`predict` that records its calls, raises on "💥", and holds a batch with "wait" until `gate` opens."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.entered, self.gate = threading.Event(), threading.Event()
        self.seconds = seconds  # time spent per call, besides waiting for the gate

    def predict(self, examples: Sequence[Example], top_k: int) -> list[Prediction]:
        questions = [ex.question for ex in examples]
        self.calls.append(questions)
        if any("wait" in q for q in questions):
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        time.sleep(self.seconds)
        if any("💥" in q for q in questions):
            raise RuntimeError("simulated failure")
        return [prediction(ex, top_k) for ex in examples]

    def called(self) -> list[str]:
        return [q for call in self.calls for q in call]


def item(question: str, tokens: int = 100, windows: int = 1, top_k: int = 1) -> QueueItem:
    return QueueItem(Example(id=question, question=question, context=CONTEXT), top_k, tokens, windows)


def run(main) -> None:
    """Run the coroutine function `main` in a fresh event loop; a hang fails the test instead of the suite."""

    async def bounded() -> None:
        await asyncio.wait_for(main(), 60)

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def started(model: FakeModel, **options) -> AsyncIterator[MicroBatcher]:
    batcher = MicroBatcher(PredictEngine(model.predict), **options)
    await batcher.start()
    try:
        yield batcher
    finally:
        model.gate.set()
        await batcher.stop()


async def in_model(model: FakeModel) -> None:
    """Wait (off the event loop) until a batch with "wait" is inside the model."""
    assert await asyncio.to_thread(model.entered.wait, 30)


def test_calls_fill_the_question_and_token_budgets_and_a_job_too_large_for_a_call_runs_alone():
    model = FakeModel()

    async def main() -> None:
        async with started(model, max_batch=3, max_batch_tokens=700, wait_ms=50) as batcher:
            sizes = [300, 300, 300, 900, 200, 10, 10, 10, 10]
            items = [item(f"q{i}", tokens) for i, tokens in enumerate(sizes)]
            predictions = await batcher.submit_all(items, deadline=None)
            assert [p.id for p in predictions] == [f"q{i}" for i in range(len(sizes))]

    run(main)
    # One window each, so by arrival: 300+300 fit 700, the next 300, 900 and 200 do not, 10 does (3 questions
    # at most); then 300+200+10; then 900, over the budget, alone; then the rest.
    assert model.calls == [["q0", "q1", "q5"], ["q2", "q4", "q6"], ["q3"], ["q7", "q8"]]


def test_a_failing_question_fails_alone_and_the_others_of_its_batch_are_answered(caplog):
    model = FakeModel()
    stats: list[BatchStats] = []

    async def main() -> None:
        async with started(model, wait_ms=200, on_batch=stats.append) as batcher:
            results = await asyncio.gather(
                *(
                    batcher.submit_all([item(q)], deadline=None, request_id=f"req-{q}")
                    for q in ("a", "💥", "c")
                ),
                return_exceptions=True,
            )
            assert [r[0].id for r in (results[0], results[2])] == ["a", "c"]
            assert isinstance(results[1], ModelError)
            assert "RuntimeError: simulated failure" in str(results[1])
            # The server goes on: a later batch is answered.
            [later] = await batcher.submit_all([item("d")], deadline=None)
            assert later.id == "d"

    with caplog.at_level(logging.WARNING, logger="tinyroberta_es.serve.batching"):
        run(main)
    assert model.calls[:4] == [["a", "💥", "c"], ["a"], ["💥"], ["c"]]  # the batch, then one call each
    assert (stats[0].questions, stats[0].retried, stats[0].failed) == (3, True, 1)
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.request_id == "req-💥" and "req-💥" in error.getMessage()
    assert "simulated failure" in error.getMessage() and error.exc_info is not None


def test_a_request_with_a_failing_question_fails_and_its_unanswered_questions_are_dropped():
    model = FakeModel()
    drops: list[tuple[str, int]] = []

    async def main() -> None:
        async with started(model, max_batch=1, wait_ms=0, on_drop=lambda *d: drops.append(d)) as batcher:
            with pytest.raises(ModelError):
                await batcher.submit_all([item("💥"), item("b"), item("c")], deadline=None)
            await until(lambda: batcher.queued_questions == 0)
            assert batcher.queued_tokens == 0

    run(main)
    assert model.calls[0] == ["💥"] and "c" not in model.called()
    assert sum(n for reason, n in drops if reason == "cancelled") >= 1


def test_wrong_number_of_predictions_is_a_model_error_of_that_question_only():
    class Lossy(FakeModel):
        def predict(self, examples, top_k):
            predictions = super().predict(examples, top_k)
            return predictions[1:] if any("🙃" in ex.question for ex in examples) else predictions

    model = Lossy()

    async def main() -> None:
        async with started(model, wait_ms=200) as batcher:
            ok, lost = await asyncio.gather(
                batcher.submit_all([item("a")], deadline=None),
                batcher.submit_all([item("🙃")], deadline=None),
                return_exceptions=True,
            )
            assert ok[0].id == "a"
            assert isinstance(lost, ModelError) and "ValueError" in str(lost)

    run(main)


def test_past_its_deadline_a_question_gets_deadline_exceeded_and_never_reaches_the_model():
    model = FakeModel()
    drops: list[tuple[str, int]] = []

    async def main() -> None:
        async with started(model, wait_ms=0, on_drop=lambda *d: drops.append(d)) as batcher:
            first = asyncio.create_task(batcher.submit_all([item("wait")], deadline=None))
            await in_model(model)
            with pytest.raises(DeadlineExceeded):
                await batcher.submit_all([item("late")], deadline=time.monotonic() + 0.05)
            assert batcher.queued_questions == 0  # it left the queue at its deadline
            with pytest.raises(DeadlineExceeded):  # a deadline already past: refused at once
                await batcher.submit_all([item("later")], deadline=time.monotonic() - 1)
            model.gate.set()
            assert (await first)[0].id == "wait"

    run(main)
    assert model.called() == ["wait"]
    assert drops == [("deadline", 1), ("deadline", 1)]


def test_a_question_taken_into_a_batch_after_its_deadline_is_not_run():
    model = FakeModel()
    batcher = MicroBatcher(PredictEngine(model.predict), wait_ms=0)
    drops: list[tuple[str, int]] = []
    batcher.on_drop = lambda *d: drops.append(d)

    async def main() -> None:
        # The deadline passes between taking the batch and running it: the batch check catches it.
        loop = asyncio.get_running_loop()
        await batcher.start()
        late = Job(item("late").example, 1, 100, 1, time.monotonic() - 1, loop.create_future())
        batcher._enqueue([late])  # as if queued just before its deadline
        with pytest.raises(DeadlineExceeded):
            await late.future
        await batcher.stop()

    run(main)
    assert model.calls == [] and drops == [("deadline", 1)]


def test_a_cancelled_request_leaves_the_queue_and_never_reaches_the_model():
    model = FakeModel()
    drops: list[tuple[str, int]] = []

    async def main() -> None:
        async with started(model, wait_ms=0, on_drop=lambda *d: drops.append(d)) as batcher:
            first = asyncio.create_task(batcher.submit_all([item("wait")], deadline=None))
            await in_model(model)
            gone = asyncio.create_task(batcher.submit_all([item("gone", 300), item("gone too", 200)], None))
            await until(lambda: batcher.queued_questions == 2)
            assert batcher.queued_tokens == 500
            gone.cancel()  # the client disconnected: the server cancels the request's task
            with pytest.raises(asyncio.CancelledError):
                await gone
            await until(lambda: batcher.queued_questions == 0)
            assert batcher.queued_tokens == 0  # its tokens no longer count against the queue limit
            model.gate.set()
            assert (await first)[0].id == "wait"
            [after] = await batcher.submit_all([item("after")], deadline=None)
            assert after.id == "after"

    run(main)
    assert model.called() == ["wait", "after"]
    assert drops == [("cancelled", 2)]


def test_overloaded_refuses_the_whole_request_with_retry_after_from_measured_throughput():
    model = FakeModel(seconds=0.2)  # at least 0.2 s a call: at most 500 tokens/s for 100 tokens

    async def main() -> None:
        async with started(model, wait_ms=0, max_queue_tokens=3000) as batcher:
            assert batcher.tokens_per_s == FALLBACK_TOKENS_PER_S  # nothing measured yet
            await batcher.submit_all([item("measure", tokens=100)], deadline=None)
            rate = batcher.tokens_per_s
            assert rate <= 500 and rate != FALLBACK_TOKENS_PER_S

            first = asyncio.create_task(batcher.submit_all([item("wait", tokens=100)], deadline=None))
            await in_model(model)
            queued = asyncio.create_task(batcher.submit_all([item("big", tokens=2950)], deadline=None))
            await until(lambda: batcher.queued_tokens == 2950)
            with pytest.raises(Overloaded) as refused:
                await batcher.submit_all([item("x", 30), item("y", 30)], deadline=None)
            # Retry-After is the drain time of what waits and what runs (3050 tokens) at the measured rate.
            assert refused.value.retry_after_s == math.ceil(3050 / batcher.tokens_per_s) >= 7
            assert "--max-queue-tokens 3000" in str(refused.value) and "adds 60" in str(refused.value)
            assert (batcher.queued_questions, batcher.queued_tokens) == (1, 2950)  # nothing of it queued
            fits, _ = await asyncio.gather(batcher.submit_all([item("fits", 50)], None), _open(model))
            assert fits[0].id == "fits"
            assert (await first)[0].id == "wait" and (await queued)[0].id == "big"
            # With nothing waiting, a request over the limit is admitted (else it could never be answered).
            [huge] = await batcher.submit_all([item("huge", 5000)], deadline=None)
            assert huge.id == "huge"

    run(main)
    assert "x" not in model.called()


async def _open(model: FakeModel) -> None:
    model.gate.set()


def test_before_any_batch_retry_after_uses_the_fallback_throughput():
    model = FakeModel()

    async def main() -> None:
        async with started(model, wait_ms=0, max_queue_tokens=100) as batcher:
            first = asyncio.create_task(batcher.submit_all([item("wait", tokens=100)], deadline=None))
            await in_model(model)
            queued = asyncio.create_task(batcher.submit_all([item("q", tokens=100)], deadline=None))
            await until(lambda: batcher.queued_questions == 1)
            with pytest.raises(Overloaded) as refused:
                await batcher.submit_all([item("x", tokens=10 * int(FALLBACK_TOKENS_PER_S))], deadline=None)
            assert refused.value.retry_after_s == max(1, math.ceil(200 / FALLBACK_TOKENS_PER_S))
            model.gate.set()
            await asyncio.gather(first, queued)

    run(main)


def test_stop_answers_what_is_queued_within_the_timeout_and_refuses_new_requests():
    model = FakeModel()

    async def main() -> None:
        batcher = MicroBatcher(PredictEngine(model.predict), max_batch=1, wait_ms=0)
        await batcher.start()
        requests = [asyncio.create_task(batcher.submit_all([item(q)], None)) for q in ("wait", "b", "c")]
        await in_model(model)
        stopping = asyncio.create_task(batcher.stop(timeout=30))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosed, match="shutting down"):
            await batcher.submit_all([item("new")], deadline=None)
        model.gate.set()
        await stopping
        assert [(await r)[0].id for r in requests] == ["wait", "b", "c"]

    run(main)
    assert model.calls == [["wait"], ["b"], ["c"]]


def test_stop_fails_what_is_left_at_the_timeout_with_batcher_closed():
    model = FakeModel()

    async def main() -> None:
        batcher = MicroBatcher(PredictEngine(model.predict), max_batch=1, wait_ms=0)
        await batcher.start()
        requests = [asyncio.create_task(batcher.submit_all([item(q)], None)) for q in ("wait", "b")]
        await in_model(model)
        try:
            await batcher.stop(timeout=0.05)  # the model never finishes in time
            for request in requests:
                with pytest.raises(BatcherClosed):
                    await request
            assert batcher.queued_questions == 0
        finally:
            model.gate.set()  # let the model thread finish

    run(main)
    assert model.calls == [["wait"]]


def test_truncate_is_a_slice_of_the_answers_keeping_everything_else():
    example = Example(id="1", question="¿Quién?", context=CONTEXT)
    full = prediction(example, 5)
    cut = truncate(full, 2)
    assert cut.answers == full.answers[:2]
    assert [s.probability for s in cut.answers] == [0.5, 0.25]  # unchanged: not renormalised over the cut
    assert (cut.id, cut.is_null, cut.null_score_diff, cut.null_probability) == (
        full.id,
        full.is_null,
        full.null_score_diff,
        full.null_probability,
    )
    assert truncate(full, 5) is full and truncate(full, 20) is full


def test_each_question_gets_its_own_top_k_from_a_shared_batch():
    model = FakeModel()

    async def main() -> None:
        async with started(model, wait_ms=200) as batcher:
            one, three = await asyncio.gather(
                batcher.submit_all([item("a", top_k=1)], None), batcher.submit_all([item("b", top_k=3)], None)
            )
            assert (len(one[0].answers), len(three[0].answers)) == (1, 3)

    run(main)
    assert model.calls == [["a", "b"]]


def samples(metrics: ServerMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of the text exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_metrics_render_queue_batches_retries_drops_and_model_info():
    model = FakeModel()
    metrics = ServerMetrics()
    metrics.set_info(model="tiny", backend="pytorch", version="1.2.3")

    async def main() -> None:
        async with started(
            model, wait_ms=200, on_batch=metrics.record_batch, on_drop=metrics.record_drop
        ) as batcher:
            metrics.watch_queue(batcher)
            await asyncio.gather(
                batcher.submit_all([item("a", tokens=300, windows=2)], None),
                batcher.submit_all([item("💥", tokens=100, windows=1)], None),
                return_exceptions=True,
            )
            first = asyncio.create_task(batcher.submit_all([item("wait", tokens=50)], None))
            await in_model(model)
            queued = asyncio.create_task(batcher.submit_all([item("q", tokens=70)], None))
            await until(lambda: batcher.queued_questions == 1)
            now = samples(metrics)
            assert now[("tinyroberta_es_queue_questions", ())] == 1
            assert now[("tinyroberta_es_queue_tokens", ())] == 70
            queued.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await queued
            with pytest.raises(DeadlineExceeded):
                await batcher.submit_all([item("late")], deadline=time.monotonic() - 1)
            model.gate.set()
            await first

    run(main)
    values = samples(metrics)
    info = {"model": "tiny", "backend": "pytorch", "version": "1.2.3"}
    assert values[("tinyroberta_es_model_info", tuple(sorted(info.items())))] == 1
    assert values[("tinyroberta_es_batch_size_count", ())] == 2  # [a, 💥] then [wait]
    assert values[("tinyroberta_es_batch_windows_sum", ())] == 3 + 1
    assert values[("tinyroberta_es_batch_tokens_sum", ())] == 400 + 50
    assert values[("tinyroberta_es_queue_wait_seconds_count", ())] == 3
    assert values[("tinyroberta_es_model_seconds_count", ())] == 2
    assert values[("tinyroberta_es_batch_retries_total", ())] == 1
    assert values[("tinyroberta_es_model_failures_total", ())] == 1
    assert values[("tinyroberta_es_dropped_questions_total", (("reason", "cancelled"),))] == 1
    assert values[("tinyroberta_es_dropped_questions_total", (("reason", "deadline"),))] == 1
    assert values[("tinyroberta_es_queue_questions", ())] == 0


def test_a_failing_metrics_hook_does_not_stop_the_batcher():
    model = FakeModel()

    def broken(stats: BatchStats) -> None:
        raise RuntimeError("hook bug")

    async def main() -> None:
        async with started(model, wait_ms=0, on_batch=broken) as batcher:
            [a] = await batcher.submit_all([item("a")], None)  # answered before the hook ran
            [b] = await batcher.submit_all([item("b")], None)
            assert (a.id, b.id) == ("a", "b")

    run(main)


# --- Window-level scheduling, with a fake engine whose parts are windows -------------------------------


class FakeWindows:
    """An engine whose parts are windows of 100 tokens (`windows` per question).

    It records each call as [(question, window indices)], blocks a call that holds the first window of a
    question with "wait" until `gate` opens, raises on a call holding a window in `bad`, and checks that a
    question is finished with the outputs of all its windows, in order.
    """

    def __init__(self, bad: set[tuple[str, int]] = frozenset()) -> None:
        self.calls: list[list[tuple[str, list[int]]]] = []
        self.finished: list[str] = []
        self.bad = bad
        self.entered, self.gate = threading.Event(), threading.Event()

    def parts(self, job: Job) -> list[Part]:
        return [Part(100, 1)] * job.windows

    def run(self, work):
        self.calls.append([(job.example.question, list(idx)) for job, idx in work])
        if any("wait" in job.example.question and idx[0] == 0 for job, idx in work):
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        if any((job.example.question, i) in self.bad for job, idx in work for i in idx):
            raise RuntimeError("simulated window failure")
        return [[(job.example.question, i) for i in idx] for job, idx in work]

    def finish(self, job: Job, outputs) -> Prediction:
        assert outputs == [(job.example.question, i) for i in range(job.windows)]
        self.finished.append(job.example.question)
        return prediction(job.example, job.top_k)

    def windows_run(self, question: str) -> list[int]:
        return [i for call in self.calls for q, idx in call if q == question for i in idx]


@contextlib.asynccontextmanager
async def windowed(engine: FakeWindows, **options) -> AsyncIterator[MicroBatcher]:
    batcher = MicroBatcher(engine, **options)
    await batcher.start()
    try:
        yield batcher
    finally:
        engine.gate.set()
        await batcher.stop()


def long_item(question: str, windows: int) -> QueueItem:
    return item(question, tokens=100 * windows, windows=windows)


def test_short_questions_run_before_the_remaining_windows_of_a_long_one():
    engine = FakeWindows()

    async def main() -> None:
        async with windowed(engine, max_batch_tokens=400, wait_ms=0) as batcher:
            long = asyncio.create_task(batcher.submit_all([long_item("wait long", 10)], None))
            await asyncio.to_thread(engine.entered.wait, 30)  # its first 4 windows are in the model
            assert batcher.queued_questions == 1 and batcher.queued_tokens == 600  # 6 windows left
            shorts = asyncio.gather(*(batcher.submit_all([item(q)], None) for q in ("a", "b")))
            await until(lambda: batcher.queued_questions == 3)
            engine.gate.set()
            await shorts
            assert not long.done()  # the short ones were answered while the long one still had windows
            assert (await long)[0].id == "wait long"

    run(main)
    assert engine.calls == [
        [("wait long", [0, 1, 2, 3])],
        [("a", [0]), ("b", [0]), ("wait long", [4, 5])],  # short ones first, the budget's rest to the long
        [("wait long", [6, 7, 8, 9])],
    ]
    assert engine.finished == ["a", "b", "wait long"]


@pytest.mark.parametrize("aging_calls", [2, 1000])
def test_a_long_question_is_not_starved_by_a_stream_of_short_ones(aging_calls):
    engine = FakeWindows()

    async def main() -> None:
        async with windowed(
            engine, max_batch=2, max_batch_tokens=400, wait_ms=0, aging_calls=aging_calls
        ) as b:
            first = asyncio.create_task(b.submit_all([item("wait")], None))
            await asyncio.to_thread(engine.entered.wait, 30)
            # Queued while the model is busy: more short questions than calls, each call full with two.
            long = asyncio.create_task(b.submit_all([long_item("long", 3)], None))
            shorts = [asyncio.create_task(b.submit_all([item(f"s{i}")], None)) for i in range(8)]
            await until(lambda: b.queued_questions == 9)
            engine.gate.set()
            await asyncio.gather(first, long, *shorts)

    run(main)
    calls = [[q for q, _ in call] for call in engine.calls]
    if aging_calls == 2:  # passed over by two calls, it goes first in the third, with half the budget
        assert calls == [["wait"], ["s0", "s1"], ["s2", "s3"], ["long", "s4"], ["s5", "s6"], ["s7", "long"]]
        assert [idx for call in engine.calls for q, idx in call if q == "long"] == [[0, 1], [2]]
    else:  # without aging it would wait for every short question
        assert calls[-1] == ["long"]


def test_a_failing_window_fails_only_its_question_and_its_other_windows_never_run(caplog):
    engine = FakeWindows(bad={("boom", 1)})
    stats: list[BatchStats] = []

    async def main() -> None:
        async with windowed(engine, max_batch_tokens=400, wait_ms=200, on_batch=stats.append) as batcher:
            a, b, boom = await asyncio.gather(
                batcher.submit_all([item("a")], None),
                batcher.submit_all([item("b")], None),
                batcher.submit_all([long_item("boom", 5)], None, request_id="req-boom"),
                return_exceptions=True,
            )
            assert (a[0].id, b[0].id) == ("a", "b")
            assert isinstance(boom, ModelError) and "simulated window failure" in str(boom)
            assert batcher.queued_questions == 0 and batcher.queued_tokens == 0
            [later] = await batcher.submit_all([item("later")], None)
            assert later.id == "later"

    with caplog.at_level(logging.WARNING, logger="tinyroberta_es.serve.batching"):
        run(main)
    assert engine.calls[:4] == [
        [("a", [0]), ("b", [0]), ("boom", [0, 1])],  # the shared call fails ...
        [("a", [0])],  # ... and each question's windows of it run again alone
        [("b", [0])],
        [("boom", [0, 1])],
    ]
    assert engine.windows_run("boom") == [0, 1, 0, 1]  # windows 2-4 never reach the model
    assert (stats[0].questions, stats[0].windows, stats[0].retried, stats[0].failed) == (3, 4, True, 1)
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.request_id == "req-boom"


def test_a_cancelled_long_question_stops_before_its_remaining_windows():
    engine = FakeWindows()
    drops: list[tuple[str, int]] = []

    async def main() -> None:
        async with windowed(engine, max_batch_tokens=200, wait_ms=0, on_drop=lambda *d: drops.append(d)) as b:
            long = asyncio.create_task(b.submit_all([long_item("wait long", 6)], None))
            await asyncio.to_thread(engine.entered.wait, 30)  # windows 0 and 1 in the model
            assert b.queued_tokens == 400
            long.cancel()  # the client went away
            with pytest.raises(asyncio.CancelledError):
                await long
            assert (b.queued_questions, b.queued_tokens) == (0, 0)
            engine.gate.set()
            [after] = await b.submit_all([item("after")], None)
            assert after.id == "after"

    run(main)
    assert engine.windows_run("wait long") == [0, 1]
    assert engine.finished == ["after"] and drops == [("cancelled", 1)]


def test_queue_wait_is_reported_once_per_question_at_its_first_window():
    engine = FakeWindows()
    stats: list[BatchStats] = []

    async def main() -> None:
        async with windowed(engine, max_batch_tokens=200, wait_ms=0, on_batch=stats.append) as batcher:
            await batcher.submit_all([long_item("long", 5)], None)

    run(main)
    assert [(s.questions, s.windows, s.tokens, len(s.queue_wait_seconds)) for s in stats] == [
        (1, 2, 200, 1),
        (1, 2, 200, 0),
        (1, 1, 100, 0),
    ]
