"""The batcher's engines with a real tiny model: window-by-window answers equal `QuestionAnswerer.predict`,
a NaN window fails only its question, and the tokenizer is safe to share between the server's threads."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest

from serve_helpers import build_tiny_model
from tinyroberta_es.data.schema import Example
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.serve.batching import MicroBatcher, ModelError
from tinyroberta_es.serve.engines import PredictEngine, WindowEngine, make_engine, merge_windows
from tinyroberta_es.tiny import SPANISH_TEXTS

# Small windows, so that a context of a few sentences makes many of them.
CONFIG = InferenceConfig(max_length=48, doc_stride=16, max_query_length=16)


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory) -> QuestionAnswerer:
    model = build_tiny_model(tmp_path_factory.mktemp("engines"))
    return QuestionAnswerer.from_pretrained(model, CONFIG, "cpu")


def examples() -> list[Example]:
    """Short and long contexts: one sentence, and up to a dozen sentences (tens of windows)."""
    out = []
    for i, text in enumerate(SPANISH_TEXTS[:8]):
        context = text if i % 2 else " ".join(SPANISH_TEXTS[i : i + 12])
        out.append(Example(id=str(i), question=f"¿Qué dice «{text[:30]}»?", context=context))
    return out


class Recording(WindowEngine):
    """The window engine, recording the windows of each call as [(question id, window indices)]."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.calls: list[list[tuple[str, list[int]]]] = []

    def run(self, work):
        self.calls.append([(job.example.id, list(idx)) for job, idx in work])
        return super().run(work)


def answer_all(engine, items, **options) -> list:
    """Submit every item as its own request at once; the answers or exceptions, in order."""

    async def main() -> list:
        batcher = MicroBatcher(engine, **options)
        await batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit_all([it], None, f"req-{it.example.id}") for it in items),
                return_exceptions=True,
            )
        finally:
            await batcher.stop()

    return asyncio.run(asyncio.wait_for(main(), 120))


def test_window_by_window_answers_equal_predict(qa):
    exs = examples()
    engine = Recording(qa)
    top_ks = [1 + i % 3 for i in range(len(exs))]
    items = [engine.prepare(ex, k) for ex, k in zip(exs, top_ks, strict=True)]
    assert max(it.windows for it in items) >= 10 and min(it.windows for it in items) == 1
    got = answer_all(engine, items, max_batch_tokens=4 * CONFIG.max_length, wait_ms=50)
    # Each long context's windows were spread over several calls, some shared with other questions.
    calls_of = {ex.id: sum(any(q == ex.id for q, _ in call) for call in engine.calls) for ex in exs}
    assert all(calls_of[ex.id] > 1 for ex, it in zip(exs, items, strict=True) if it.windows > 4)
    assert any(len(call) > 1 for call in engine.calls)
    for ex, k, [prediction] in zip(exs, top_ks, got, strict=True):
        [want] = qa.predict([ex], top_k=k)
        assert [(s.text, s.start, s.end) for s in prediction.answers] == [
            (s.text, s.start, s.end) for s in want.answers
        ]
        assert [s.score for s in prediction.answers] == pytest.approx(
            [s.score for s in want.answers], rel=1e-4
        )
        assert [s.probability for s in prediction.answers] == pytest.approx(
            [s.probability for s in want.answers], rel=1e-4
        )
        assert (prediction.id, prediction.is_null) == (want.id, want.is_null)


def test_a_nan_window_fails_only_its_question(qa):
    exs = examples()
    exs[2] = dataclasses.replace(exs[2], question="¿ZQZQ?")  # a long context: its windows span calls
    ids = [{int(t) for w in qa.prepare(ex).input_ids for t in w} for ex in exs]
    bad_ids = ids[2].difference(*ids[:2], *ids[3:])  # tokens of its question only: NaN in its windows alone
    assert bad_ids
    forward = qa.runner.forward

    def poisoned(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        start, end = forward(inputs)
        rows = np.isin(inputs["input_ids"], list(bad_ids)).any(axis=1)  # (B,)
        start[rows] = np.nan
        return start, end

    broken = QuestionAnswerer(
        dataclasses.replace(qa.runner, forward=poisoned), qa.tokenizer, CONFIG, name="tiny"
    )
    engine = WindowEngine(broken)
    items = [engine.prepare(ex, 1) for ex in exs]
    got = answer_all(engine, items, max_batch_tokens=4 * CONFIG.max_length, wait_ms=50)
    for i, (ex, result) in enumerate(zip(exs, got, strict=True)):
        if i == 2:
            assert isinstance(result, ModelError) and "NaN" in str(result) and "tiny" in str(result)
        else:
            [want] = qa.predict([ex])
            assert (result[0].text, result[0].answers[0].start) == (want.text, want.answers[0].start)


def test_merge_windows_keeps_each_windows_rows_and_numbers_examples_by_selection(qa):
    a, b = (qa.prepare(ex) for ex in examples()[:2])
    merged = merge_windows([(a, [2, 3]), (b, [0])])
    assert merged.example_index.tolist() == [0, 0, 1]
    for got, want in zip(merged.input_ids, [a.input_ids[2], a.input_ids[3], b.input_ids[0]], strict=True):
        assert np.array_equal(got, want)
    assert np.array_equal(merged.offsets[2], b.offsets[0])
    assert merged.pad_token_id == a.pad_token_id and len(merged) == 3


def test_make_engine_runs_windows_for_a_question_answerer_and_predict_for_anything_else(qa):
    class PredictOnly:
        def predict(self, examples, top_k=1):
            return qa.predict(examples, top_k)

        def cost(self, example):
            return qa.cost(example)

    assert isinstance(make_engine(qa), WindowEngine)
    engine = make_engine(PredictOnly())
    assert isinstance(engine, PredictEngine)
    ex = examples()[0]
    item = engine.prepare(ex, 2)
    assert (item.windows, item.tokens) == qa.cost(ex) and item.features is None


class Overlap:
    """A tokenizer proxy that records how many threads were inside it at once."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.inside, self.most = tokenizer, 0, 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(0.005)  # a long context takes a while: let another thread come in meanwhile
            return self.tokenizer(*args, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


def test_one_thread_at_a_time_tokenizes_so_the_server_threads_can_share_the_tokenizer(qa):
    # The server tokenizes on a validation thread while the model thread may tokenize too (predict engine).
    # A fast tokenizer's truncation settings are set by each call, and a change while another thread encodes
    # fails with "Already borrowed": `QuestionAnswerer` lets one thread tokenize at a time.
    spy = Overlap(qa.tokenizer)
    shared = QuestionAnswerer(qa.runner, spy, CONFIG)
    exs = examples()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for ex in exs:
                shared.prepare(ex)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    assert spy.most == 1
