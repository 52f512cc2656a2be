"""Answer extraction: hand-made windows with known scores, perfect logits for every tokenizer, and speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyroberta_es.data.schema import Example
from tinyroberta_es.extraction import Prediction, Span, extract_answers
from tinyroberta_es.features import Features, prepare_features

Q = 4  # hand-made windows: [CLS] q q [SEP] context... [SEP]; context tokens start at position 4
CONTEXT = "Gabriel García Márquez nació en Aracataca"
WORDS = [(0, 7), (8, 14), (15, 22), (23, 28), (29, 31), (32, 41)]  # character span of each word


def make_features(windows: list[list[tuple[int, int]]], example_index: list[int]) -> Features:
    """Windows of 2 question tokens plus the given context-token offsets, with special tokens around them."""
    offsets = [np.array([(-1, -1)] * Q + w + [(-1, -1)], dtype=np.int32) for w in windows]
    return Features(
        input_ids=[np.arange(len(o), dtype=np.int32) for o in offsets],
        offsets=offsets,
        example_index=np.array(example_index),
        start_positions=np.zeros(len(windows), np.int64),
        end_positions=np.zeros(len(windows), np.int64),
        pad_token_id=0,
    )


def logits(length: int, values: dict[int, float]) -> np.ndarray:
    row = np.zeros(length)
    for i, v in values.items():
        row[i] = v
    return row


def one_window(start: dict[int, float], end: dict[int, float], **kwargs) -> Prediction:
    features = make_features([WORDS], [0])
    n = Q + len(WORDS) + 1
    example = Example(id="e", question="¿Quién?", context=CONTEXT)
    return extract_answers([example], features, logits(n, start)[None], logits(n, end)[None], **kwargs)[0]


def test_hand_made_scores_rank_spans_and_window_softmaxes_give_their_probabilities():
    # start: Gabriel 5, García 3; end: García 1, Márquez 4; every other position 0. Pairs of at most two
    # words: García Márquez 3+4, Gabriel García 5+1, Gabriel 5+0, then García 3+1 and Márquez 0+4.
    pred = one_window({Q: 5.0, Q + 1: 3.0}, {Q + 1: 1.0, Q + 2: 4.0}, top_k=3, max_answer_length=2)
    assert [s.text for s in pred.answers] == ["García Márquez", "Gabriel García", "Gabriel"]
    assert [s.score for s in pred.answers] == [7.0, 6.0, 5.0]
    assert pred.answers[0] == Span("García Márquez", 8, 22, 7.0, pred.answers[0].probability)
    # Softmaxes over the 6 context tokens only (no null threshold: CLS is not part of them).
    p_start = np.exp([5.0, 3.0, 0, 0, 0, 0]) / np.exp([5.0, 3.0, 0, 0, 0, 0]).sum()
    p_end = np.exp([0, 1.0, 4.0, 0, 0, 0]) / np.exp([0, 1.0, 4.0, 0, 0, 0]).sum()
    expected = [p_start[1] * p_end[2], p_start[0] * p_end[1], p_start[0] * p_end[0]]
    np.testing.assert_allclose([s.probability for s in pred.answers], expected)
    assert pred.text == "García Márquez" and not pred.is_null and pred.null_probability == 0.0
    assert pred.null_score_diff == 0.0 - 7.0  # CLS logits are 0
    for span in pred.answers:
        assert CONTEXT[span.start : span.end] == span.text


@pytest.mark.parametrize("null_threshold", [None, 0.0])
def test_probabilities_do_not_depend_on_top_k_and_sum_to_at_most_one(null_threshold):
    rng = np.random.default_rng(3)
    n = Q + len(WORDS) + 1
    start, end = rng.normal(size=(1, n)), rng.normal(size=(1, n))
    features = make_features([WORDS], [0])
    example = [Example(id="e", question="¿Quién?", context=CONTEXT)]
    by_k = {
        k: extract_answers(example, features, start, end, top_k=k, null_threshold=null_threshold)[0]
        for k in (1, 3, 20)
    }
    best = by_k[1].answers[0]
    assert 0.0 < best.probability < 1.0
    for k, pred in by_k.items():
        assert pred.answers[0] == best, k
        assert [s.probability for s in pred.answers] == [s.probability for s in by_k[20].answers[:k]]
        assert pred.null_probability == by_k[1].null_probability
    all_spans = by_k[20].answers
    assert len(all_spans) == 20 and sum(s.probability for s in all_spans) + by_k[20].null_probability <= 1.0
    assert (by_k[1].null_probability > 0.0) == (null_threshold is not None)


def test_max_answer_length_counts_tokens():
    pred = one_window({Q: 9.0}, {Q + 5: 9.0}, top_k=20, max_answer_length=3)
    assert pred.answers and all(len(s.text.split()) <= 3 for s in pred.answers)
    assert "Gabriel García Márquez nació en Aracataca" not in [s.text for s in pred.answers]
    longer = one_window({Q: 9.0}, {Q + 5: 9.0}, max_answer_length=6)
    assert longer.text == CONTEXT


def test_question_and_special_tokens_are_never_part_of_a_span():
    features = make_features([WORDS], [0])
    n = Q + len(WORDS) + 1
    start = logits(n, {0: 50.0, 1: 100.0, 2: 100.0, 3: 100.0, n - 1: 100.0, Q + 3: 1.0})
    end = logits(n, {1: 100.0, 2: 100.0, n - 1: 100.0, Q + 3: 1.0})
    pred = extract_answers(
        [Example(id="e", question="¿?", context=CONTEXT)], features, start[None], end[None], top_k=20
    )[0]
    assert pred.text == "nació" and pred.answers[0].score == 2.0
    assert all(s.start >= 0 and s.end <= len(CONTEXT) for s in pred.answers)


def test_spans_are_stripped_of_whitespace_and_blank_spans_are_dropped():
    # Metaspace-like offsets: each token's span includes the space before it; token 2 is a lone space.
    context = "Hola  amigo mío"
    offsets = [(0, 4), (4, 5), (5, 11), (11, 15)]
    features = make_features([offsets], [0])
    n = Q + len(offsets) + 1
    start = logits(n, {Q + 1: 9.0, Q + 2: 5.0})
    end = logits(n, {Q + 1: 9.0, Q + 2: 1.0, Q + 3: 0.5})
    pred = extract_answers(
        [Example(id="e", question="¿?", context=context)], features, start[None], end[None], top_k=3
    )[0]
    # (lone space) alone is blank and dropped; "  amigo" is stripped to "amigo".
    assert pred.answers[0] == Span("amigo", 6, 11, 10.0, pred.answers[0].probability)
    assert all(s.text == s.text.strip() and context[s.start : s.end] == s.text for s in pred.answers)


def test_the_same_span_from_overlapping_windows_appears_once_with_its_best_score():
    features = make_features([WORDS[:4], WORDS[2:]], [0, 0])  # both windows hold "Márquez nació"
    n0, n1 = Q + 4 + 1, Q + 4 + 1
    start = [logits(n0, {Q + 2: 2.0}), logits(n1, {Q: 6.0})]
    end = [logits(n0, {Q + 3: 2.0}), logits(n1, {Q + 1: 6.0})]
    pred = extract_answers([Example(id="e", question="¿?", context=CONTEXT)], features, start, end, top_k=5)[
        0
    ]
    texts = [s.text for s in pred.answers]
    assert texts[0] == "Márquez nació" and pred.answers[0].score == 12.0
    assert len(texts) == len(set(texts)) == 5
    assert [s.score for s in pred.answers] == sorted((s.score for s in pred.answers), reverse=True)


def test_null_score_is_the_smallest_cls_score_over_windows_and_the_threshold_decides():
    features = make_features([WORDS[:4], WORDS[2:]], [0, 0])
    n = Q + 4 + 1
    start = np.stack([logits(n, {0: 3.0, Q: 4.0}), logits(n, {0: 1.0})])  # (2, n)
    end = np.stack([logits(n, {0: 3.0, Q + 1: 4.0}), logits(n, {0: 1.0})])
    example = [Example(id="e", question="¿?", context=CONTEXT)]
    run = lambda threshold: extract_answers(example, features, start, end, null_threshold=threshold)[0]  # noqa: E731
    never = run(None)
    assert never.null_score_diff == 2.0 - 8.0 and not never.is_null and never.null_probability == 0.0
    assert never.text == "Gabriel García"
    assert run(-7.0).is_null and run(-7.0).text == ""
    kept = run(-6.0)  # diff == threshold: not above it
    assert not kept.is_null and kept.text == "Gabriel García"
    # The null probability comes from the deciding window (the second: null score 2 < 6), whose softmaxes
    # run over CLS (logit 1) and 4 context tokens (logit 0); the span's from its own window, the first
    # (CLS 3, Gabriel 4 or García 4, and 3 more context tokens at 0).
    np.testing.assert_allclose(kept.null_probability, (math.e / (math.e + 4)) ** 2)
    np.testing.assert_allclose(
        kept.answers[0].probability, (math.exp(4) / (math.exp(3) + math.exp(4) + 3)) ** 2
    )
    assert run(-7.0).null_probability == kept.null_probability


# "García" and "Aracataca" cut into subwords, as a tokenizer may do.
SUBWORDS = [(0, 7), (8, 11), (11, 14), (15, 22), (23, 28), (29, 31), (32, 37), (37, 41)]


def subword_prediction(start: dict[int, float], end: dict[int, float], **kwargs) -> Prediction:
    features = make_features([SUBWORDS], [0])
    n = Q + len(SUBWORDS) + 1
    example = Example(id="e", question="¿Quién?", context=CONTEXT)
    return extract_answers([example], features, logits(n, start)[None], logits(n, end)[None], **kwargs)[0]


def test_align_to_words_widens_spans_that_cut_a_word_and_merges_what_becomes_the_same():
    # Best: "cía Márquez" (subwords 2..3), then "García Márquez" (1..3): the same span once widened.
    start, end = {Q + 2: 6.0, Q + 1: 5.0}, {Q + 3: 6.0}
    cut = subword_prediction(start, end, top_k=2, max_answer_length=3, align_to_words=False)
    assert [s.text for s in cut.answers] == ["cía Márquez", "García Márquez"]
    whole = subword_prediction(start, end, top_k=2, max_answer_length=3)  # align_to_words is the default
    assert whole.answers[0] == Span("García Márquez", 8, 22, 12.0, cut.answers[0].probability)
    assert [s.text for s in whole.answers].count("García Márquez") == 1  # the worse duplicate is dropped
    # An end inside a word: "en Araca" -> "en Aracataca"; a span already on word boundaries is unchanged.
    assert subword_prediction({Q + 5: 9.0}, {Q + 6: 9.0}).text == "en Aracataca"
    assert subword_prediction({Q + 5: 9.0}, {Q + 6: 9.0}, align_to_words=False).text == "en Araca"
    assert subword_prediction({Q + 4: 9.0}, {Q + 5: 9.0}).text == "nació en"


def test_align_to_words_stops_at_punctuation_and_at_a_leading_space():
    context = "Gabriel García-Pérez"
    offsets = [(0, 7), (7, 14), (14, 15), (15, 18), (18, 20)]  # Metaspace-like " García", "-", "Pér", "ez"
    features = make_features([offsets], [0])
    n = Q + len(offsets) + 1
    example = [Example(id="e", question="¿?", context=context)]

    def run(s: int, e: int) -> list[Prediction]:
        return extract_answers(example, features, logits(n, {s: 9.0})[None], logits(n, {e: 9.0})[None])

    assert run(Q + 1, Q + 1)[0].text == "García"  # stripped first: the space is not inside a word
    assert run(Q + 3, Q + 3)[0].text == "Pérez"  # widened right only; "-" is not alphanumeric
    assert run(Q + 1, Q + 3)[0].text == "García-Pérez"


def test_n_best_limits_the_candidate_starts_and_ends_per_window():
    pred = one_window({Q: 3.0, Q + 1: 2.0, Q + 2: 1.0}, {Q + 3: 3.0, Q + 4: 2.0}, top_k=10, n_best=1)
    assert [s.text for s in pred.answers] == ["Gabriel García Márquez nació"]


def test_a_context_without_words_predicts_null_even_without_a_threshold():
    features = make_features([[(0, 1), (1, 3)]], [0])
    n = Q + 2 + 1
    pred = extract_answers(
        [Example(id="e", question="¿?", context=" \n\t")], features, np.zeros((1, n)), np.zeros((1, n))
    )[0]
    assert pred.answers == [] and pred.is_null and pred.text == "" and pred.null_score_diff == math.inf


def test_list_logits_and_padded_logits_give_the_same_predictions():
    features = make_features([WORDS[:3], WORDS], [0, 1])
    rng = np.random.default_rng(0)
    rows_s = [rng.normal(size=len(o)) for o in features.offsets]
    rows_e = [rng.normal(size=len(o)) for o in features.offsets]
    width = 16
    pad = lambda rows: np.stack([np.pad(r, (0, width - len(r)), constant_values=-np.inf) for r in rows])  # noqa: E731
    examples = [
        Example(id="a", question="¿?", context=CONTEXT),
        Example(id="b", question="¿?", context=CONTEXT),
    ]
    a = extract_answers(examples, features, rows_s, rows_e, top_k=5, null_threshold=0.0)
    b = extract_answers(examples, features, pad(rows_s), pad(rows_e), top_k=5, null_threshold=0.0)
    assert a == b and [p.id for p in a] == ["a", "b"]


def test_mismatched_logits_are_a_programming_error():
    features = make_features([WORDS], [0])
    with pytest.raises(ValueError, match="logit rows"):
        extract_answers(
            [Example(id="e", question="¿?", context=CONTEXT)], features, np.zeros((2, 11)), np.zeros((2, 11))
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_perfect_logits_extract_exactly_the_gold_answer(any_tokenizer, qa_examples, data):
    example = data.draw(qa_examples)
    features = prepare_features([example], any_tokenizer, max_length=96, doc_stride=32, max_query_length=16)
    width = int(features.lengths.max())
    start = np.zeros((len(features), width))  # (N, T)
    end = np.zeros((len(features), width))
    rows = np.arange(len(features))
    start[rows, features.start_positions] = 10.0  # window without the answer: high at CLS (null)
    end[rows, features.end_positions] = 10.0
    pred = extract_answers([example], features, start, end, max_answer_length=200, null_threshold=0.0)[0]
    if example.is_impossible:
        assert pred.is_null and pred.text == ""
    elif (features.start_positions > 0).any():
        assert pred.text == example.answers[0].text.strip()
        assert example.context[pred.answers[0].start : pred.answers[0].end] == pred.text
        assert not pred.is_null and pred.null_score_diff == -20.0


def test_extraction_of_2000_long_windows_is_vectorised():
    rng = np.random.default_rng(0)
    n_windows, length, context_tokens = 2000, 384, 360
    words = ["palabra"] * context_tokens
    context = " ".join(words)
    starts = np.arange(context_tokens) * 8
    window_offsets = [(int(s), int(s) + 7) for s in starts]
    offsets = np.array([(-1, -1)] * (length - context_tokens - 1) + window_offsets + [(-1, -1)], np.int32)
    features = Features(
        input_ids=[np.zeros(length, np.int32)] * n_windows,
        offsets=[offsets] * n_windows,
        example_index=np.repeat(np.arange(n_windows // 4), 4),
        start_positions=np.zeros(n_windows, np.int64),
        end_positions=np.zeros(n_windows, np.int64),
        pad_token_id=0,
    )
    examples = [Example(id=str(i), question="¿?", context=context) for i in range(n_windows // 4)]
    start = rng.normal(size=(n_windows, length)).astype(np.float32)
    end = rng.normal(size=(n_windows, length)).astype(np.float32)
    t0 = time.perf_counter()
    preds = extract_answers(examples, features, start, end, top_k=5, null_threshold=0.0)
    elapsed = time.perf_counter() - t0
    assert len(preds) == len(examples) and all(len(p.answers) == 5 for p in preds)
    assert elapsed < 10.0, f"{elapsed:.1f} s for {n_windows} windows"
