"""A question as the model runs it: a `Job` cut into `Part`s, the `Engine` that runs parts, and two engines.

The batcher (serve/batching.py) queues jobs and chooses which parts share a model call; an engine says how a
job is cut, runs the parts of one call, and makes a job's answer once all its parts have run.

- `WindowEngine`, for a `QuestionAnswerer` (anything with ``prepare``, ``logits`` and ``extract``): a
  question's parts are its windows, tokenized once by `prepare` (the server calls it on its validation
  thread) and carried by the job. A model call runs the chosen windows of several questions as one
  `Features` (`merge_windows`) through ``logits``; a question's answer is extracted, with its own `top_k`,
  from the logits of all its windows once the last one has run, whichever calls they ran in. Answers equal
  ``QuestionAnswerer.predict`` on the same examples.
- `PredictEngine`, for anything with ``predict(examples, top_k)`` and ``cost(example)``: one part per
  question; a call is ``predict`` on the questions with the largest `top_k` among them, each answer then cut
  to its own (`truncate`). For answerers that only offer ``predict`` (wrappers, fakes in tests).

`make_engine` picks the window engine when the answerer can run windows, else the predict engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from tinyroberta_es.data.schema import Example
from tinyroberta_es.extraction import Prediction
from tinyroberta_es.features import Features, pad_rows


class QueueItem(NamedTuple):
    """One question of a request, as `submit_all` takes it; `tokens` and `windows`: its size in the model."""

    example: Example
    top_k: int
    tokens: int
    windows: int
    features: Any = None  # what the engine prepared for it (the window engine: its Features)


class Part(NamedTuple):
    """A unit of a job that the model runs: a window (window engine) or a whole question (predict engine)."""

    tokens: int
    windows: int


_arrivals = itertools.count()


@dataclass
class Job:
    """One question waiting for its answer, and how far the model got with it."""

    example: Example
    top_k: int
    tokens: int
    windows: int
    deadline: float | None  # time.monotonic() after which it is no longer worth answering; None: never
    future: asyncio.Future[Prediction] = field(repr=False)
    request_id: str = ""
    features: Any = field(default=None, repr=False)  # QueueItem.features
    queued_at: float = field(default_factory=time.monotonic)
    seq: int = field(default_factory=lambda: next(_arrivals))  # arrival order
    parts: list[Part] = field(default_factory=list, repr=False)  # set when queued (`engine.parts`)
    next_part: int = 0  # parts[:next_part] went to the model
    outputs: list[Any] = field(default_factory=list, repr=False)  # the engine's output of each part run
    passed_over: int = 0  # calls in a row formed without any of its parts while it had some left
    waiting: bool = field(default=False, repr=False)  # queued with parts not yet given to the model

    @property
    def left_tokens(self) -> int:
        """Tokens of the parts not yet given to the model."""
        return sum(p.tokens for p in self.parts[self.next_part :])

    @property
    def left_windows(self) -> int:
        """Windows of the parts not yet given to the model."""
        return sum(p.windows for p in self.parts[self.next_part :])


Work = list[tuple[Job, list[int]]]  # a model call: parts (indices into job.parts) of each job, in order


class Engine(Protocol):
    """What the batcher runs; `run` and `finish` are called on the model thread, one call at a time."""

    def prepare(self, example: Example, top_k: int) -> QueueItem:
        """The queue item of `example` (tokenizing it if the engine needs to); called before queueing."""
        ...

    def parts(self, job: Job) -> list[Part]:
        """The job cut into parts, in the order they must run (called on the event loop: cheap)."""
        ...

    def run(self, work: Work) -> list[list[Any]]:
        """Run the given parts of several jobs in one model call: one output per part, per job."""
        ...

    def finish(self, job: Job, outputs: list[Any]) -> Prediction:
        """The job's answer from the outputs of all its parts, in part order."""
        ...


Outcome = tuple[list[Any], Prediction | Exception | None]  # a job's outputs in a call; its answer or error


def run_call(engine: Engine, work: Work) -> list[Outcome]:
    """One model call (on the model thread): per job, its outputs and, when the call completes it, its answer.

    A failing ``engine.run`` raises (the whole call failed); a failing ``engine.finish`` is its job's outcome.
    """
    outputs = engine.run(work)
    if [len(o) for o in outputs] != [len(idx) for _, idx in work]:
        raise ValueError(f"the engine gave {len(outputs)} outputs for parts {[idx for _, idx in work]}")
    out: list[Outcome] = []
    for (job, idx), parts in zip(work, outputs, strict=True):
        answer: Prediction | Exception | None = None
        if idx[-1] == len(job.parts) - 1 and not job.future.done():
            try:
                answer = engine.finish(job, [*job.outputs, *parts])
            except Exception as err:  # only this question fails
                answer = err
        out.append((parts, answer))
    return out


PredictFn = Callable[[Sequence[Example], int], list[Prediction]]
CostFn = Callable[[Example], tuple[int, int]]  # (windows, tokens) of one example alone


@runtime_checkable
class WindowModel(Protocol):
    """What the window engine needs of a `QuestionAnswerer`."""

    def prepare(self, example: Example) -> Features: ...

    def logits(self, features: Features) -> tuple[np.ndarray, np.ndarray]: ...

    def extract(
        self,
        examples: Sequence[Example],
        features: Features,
        start: np.ndarray,
        end: np.ndarray,
        top_k: int = 1,
    ) -> list[Prediction]: ...


class WindowEngine:
    """Windows are the parts: a long context runs in slices between short questions."""

    def __init__(self, model: WindowModel) -> None:
        self.model = model

    def prepare(self, example: Example, top_k: int) -> QueueItem:
        """Tokenize `example` into its windows (UserError when the settings cannot answer it)."""
        features = self.model.prepare(example)
        return QueueItem(example, top_k, int(features.lengths.sum()), len(features), features)

    def parts(self, job: Job) -> list[Part]:
        if job.features is None:
            raise ValueError(
                f"question {job.example.id} was queued without its windows: use WindowEngine.prepare"
            )
        return [Part(int(n), 1) for n in job.features.lengths]

    def run(self, work: Work) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """(start, end) logits of each window, unpadded, per job; `ModelOutputError` on a NaN."""
        merged = merge_windows([(job.features, idx) for job, idx in work])
        start, end = self.model.logits(merged)  # (N, L), -inf past each window's end
        lengths = merged.lengths
        out, row = [], 0
        for _, idx in work:
            out.append(
                [
                    (start[r, : lengths[r]].copy(), end[r, : lengths[r]].copy())
                    for r in range(row, row + len(idx))
                ]
            )
            row += len(idx)
        return out

    def finish(self, job: Job, outputs: list[tuple[np.ndarray, np.ndarray]]) -> Prediction:
        start = pad_rows([s for s, _ in outputs], -np.inf, dtype=np.float32)  # (W, L)
        end = pad_rows([e for _, e in outputs], -np.inf, dtype=np.float32)
        [prediction] = self.model.extract([job.example], job.features, start, end, top_k=job.top_k)
        return prediction


class PredictEngine:
    """Whole questions are the parts: one ``predict`` call per model call."""

    def __init__(self, predict: PredictFn, cost: CostFn | None = None) -> None:
        self.predict = predict
        self.cost = cost

    def prepare(self, example: Example, top_k: int) -> QueueItem:
        """The queue item of `example`, sized by `cost` (one window of one token without it)."""
        windows, tokens = self.cost(example) if self.cost is not None else (1, 1)
        return QueueItem(example, top_k, tokens, windows)

    def parts(self, job: Job) -> list[Part]:
        return [Part(job.tokens, job.windows)]

    def run(self, work: Work) -> list[list[Prediction]]:
        examples = [job.example for job, _ in work]
        predictions = self.predict(examples, max(job.top_k for job, _ in work))
        if len(predictions) != len(examples):
            raise ValueError(f"predict returned {len(predictions)} predictions for {len(examples)} questions")
        return [[p] for p in predictions]

    def finish(self, job: Job, outputs: list[Prediction]) -> Prediction:
        return truncate(outputs[0], job.top_k)


def make_engine(answerer: Any) -> WindowEngine | PredictEngine:
    """The window engine when `answerer` can run windows (a `QuestionAnswerer`), else the predict engine."""
    if isinstance(answerer, WindowModel):
        return WindowEngine(answerer)
    return PredictEngine(answerer.predict, answerer.cost)


def merge_windows(selection: Sequence[tuple[Features, Sequence[int]]]) -> Features:
    """One `Features` of the windows `idx` of each features, in order; example i is selection i.

    All must come from the same tokenizer (same pad id, token types or none).
    """
    first = selection[0][0]
    rows = [(features, i) for features, idx in selection for i in idx]
    example_index = np.repeat(np.arange(len(selection)), [len(idx) for _, idx in selection])  # (N,)
    return Features(
        input_ids=[f.input_ids[i] for f, i in rows],
        offsets=[f.offsets[i] for f, i in rows],
        example_index=example_index.astype(np.int64),
        start_positions=np.array([f.start_positions[i] for f, i in rows], dtype=np.int64),
        end_positions=np.array([f.end_positions[i] for f, i in rows], dtype=np.int64),
        pad_token_id=first.pad_token_id,
        token_type_ids=None if first.token_type_ids is None else [f.token_type_ids[i] for f, i in rows],
    )


def truncate(prediction: Prediction, top_k: int) -> Prediction:
    """The prediction that ``predict(..., top_k)`` gives, from one made with a larger top_k.

    The best spans are a prefix of a longer list (while top_k <= n_best every window keeps the same
    candidates), and a span's probability does not depend on how many spans are returned, so this is a slice.
    """
    if len(prediction.answers) <= top_k:
        return prediction
    return dataclasses.replace(prediction, answers=prediction.answers[:top_k])
