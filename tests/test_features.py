"""Windows, offsets and span labels from `prepare_features`, for real and tiny tokenizers alike."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyroberta_es.data.schema import Answer, Example
from tinyroberta_es.errors import UserError
from tinyroberta_es.features import Features, label_window, prepare_features

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WINDOWS = st.sampled_from([(64, 8), (64, 24), (96, 32), (160, 48)])  # (max_length, doc_stride)

LONG_CONTEXT = " ".join(
    f"En {1900 + i} la ciudad número {i} celebró su fiesta «mayor»; ¡qué alegría, señor Muñoz! 😀"
    for i in range(30)
)


def covered_chars(offsets: np.ndarray) -> set[int]:
    """Characters inside the non-empty spans of a window's context tokens."""
    return {c for a, b in offsets.tolist() if a >= 0 and b > a for c in range(a, b)}


def answer_of(example: Example) -> tuple[int, int, str]:
    answer = example.answers[0]
    text = answer.text.strip()
    start = answer.start + answer.text.index(text) if text else answer.start
    return start, start + len(text), text


@PROPERTY
@given(data=st.data())
def test_labels_map_back_to_the_answer_and_every_window_holding_it_is_labelled(
    any_tokenizer, qa_examples, data
):
    example = data.draw(qa_examples)
    max_length, stride = data.draw(WINDOWS)
    features = prepare_features(
        [example], any_tokenizer, max_length=max_length, doc_stride=stride, max_query_length=16
    )
    assert len(features) >= 1
    assert (features.example_index == 0).all()
    for i in range(len(features)):
        ids, offsets = features.input_ids[i], features.offsets[i]
        start, end = features.start_positions[i], features.end_positions[i]
        assert len(ids) <= max_length and offsets.shape == (len(ids), 2)
        if example.is_impossible:
            assert start == end == 0
            continue
        a, b, text = answer_of(example)
        holds_answer = all(
            c in covered_chars(offsets) for c in range(a, b) if not example.context[c].isspace()
        )
        assert (start != 0) == holds_answer, (i, offsets.tolist(), (a, b))
        assert (start == 0) == (end == 0)
        if start:
            assert 0 < start <= end < len(ids)
            assert offsets[start, 0] >= 0 and offsets[end, 0] >= 0  # context tokens, not question or special
            assert example.context[offsets[start, 0] : offsets[end, 1]].strip() == text


@PROPERTY
@given(data=st.data())
def test_batch_pads_with_the_pad_id_and_masks_exactly_the_real_tokens(any_tokenizer, qa_examples, data):
    examples = [data.draw(qa_examples) for _ in range(3)]
    features = prepare_features(examples, any_tokenizer, max_length=64, doc_stride=16, max_query_length=16)
    indices = data.draw(st.lists(st.integers(0, len(features) - 1), min_size=1, max_size=6))
    multiple = data.draw(st.sampled_from([None, 8]))
    batch = features.batch(indices, pad_to_multiple_of=multiple)
    lengths = features.lengths[indices]
    width = batch["input_ids"].shape[1]
    assert width >= lengths.max() and ((multiple is None and width == lengths.max()) or width % 8 == 0)
    assert set(batch) == {"input_ids", "attention_mask"} | (
        {"token_type_ids"} if "token_type_ids" in any_tokenizer.model_input_names else set()
    )
    for row, i in enumerate(indices):
        n = lengths[row]
        assert batch["input_ids"].dtype == np.int64
        np.testing.assert_array_equal(batch["input_ids"][row, :n], features.input_ids[i])
        assert (batch["input_ids"][row, n:] == any_tokenizer.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        if "token_type_ids" in batch:
            np.testing.assert_array_equal(batch["token_type_ids"][row, :n], features.token_type_ids[i])
            assert (batch["token_type_ids"][row, n:] == 0).all()


def test_windows_of_a_long_context_overlap_by_the_stride_and_cover_it_all(any_tokenizer):
    example = Example(id="long", question="¿Quién celebró la fiesta?", context=LONG_CONTEXT)
    stride = 16
    features = prepare_features([example], any_tokenizer, max_length=64, doc_stride=stride)
    assert len(features) >= 5
    in_context = [f[:, 0] >= 0 for f in features.offsets]
    context_tokens = [f[m] for f, m in zip(features.offsets, in_context, strict=True)]  # (C_i, 2) each
    covered = set().union(*(covered_chars(c) for c in context_tokens))
    assert covered >= {i for i, ch in enumerate(LONG_CONTEXT) if not ch.isspace()}
    context_ids = [ids[m] for ids, m in zip(features.input_ids, in_context, strict=True)]
    for left, right in itertools.pairwise(context_ids):
        np.testing.assert_array_equal(left[-stride:], right[:stride])
    for left, right in itertools.pairwise(context_tokens):
        # Byte-level BPE quirk: the first token of an overflowing window keeps its leading space.
        shared = [LONG_CONTEXT[a:b].strip() for a, b in left[-stride:].tolist()]
        assert shared == [LONG_CONTEXT[a:b].strip() for a, b in right[:stride].tolist()]
    assert context_tokens[0][0, 0] <= 1 and context_tokens[-1][-1, 1] == len(LONG_CONTEXT)


def test_long_questions_are_cut_and_leading_whitespace_is_dropped(any_tokenizer):
    context = "Gabriel García Márquez nació en Aracataca en 1927."
    long_question = "¿" + " ".join(["por qué razón exactamente"] * 40) + "?"
    features = prepare_features(
        [Example(id="q", question=long_question, context=context)],
        any_tokenizer,
        max_length=64,
        doc_stride=8,
        max_query_length=12,
    )
    question_tokens = features.offsets[0][:, 0] < 0
    specials = any_tokenizer.num_special_tokens_to_add(pair=True)
    assert 1 <= question_tokens.sum() - specials <= 12
    assert (features.offsets[0][:, 0] >= 0).sum() >= 8  # the context still fits

    plain = prepare_features([Example(id="a", question="¿Quién?", context=context)], any_tokenizer)
    padded = prepare_features([Example(id="b", question=" \n\t  ¿Quién?", context=context)], any_tokenizer)
    np.testing.assert_array_equal(plain.input_ids[0], padded.input_ids[0])


def test_answer_with_surrounding_whitespace_in_the_gold_span_is_labelled_on_its_words(any_tokenizer):
    context = "El autor fue   Gabriel García\u00a0Márquez , en 1967."
    start = context.index("   Gabriel")
    example = Example(
        id="q",
        question="¿Quién?",
        context=context,
        answers=(Answer(text="   Gabriel García\u00a0Márquez ", start=start),),
    )
    features = prepare_features([example], any_tokenizer)
    s, e = features.start_positions[0], features.end_positions[0]
    o = features.offsets[0]
    assert context[o[s, 0] : o[e, 1]].strip() == "Gabriel García\u00a0Márquez"


def test_examples_are_indexed_in_order_and_unanswerable_ones_get_zero_labels(unigram_tokenizer):
    examples = [
        Example(id="a", question="¿Qué?", context=LONG_CONTEXT, is_impossible=True),
        Example(id="b", question="¿Año?", context="En 1900 hubo fiesta.", answers=(Answer("1900", 3),)),
    ]
    features = prepare_features(examples, unigram_tokenizer, max_length=64, doc_stride=16)
    assert features.example_index.tolist() == sorted(features.example_index.tolist())
    assert set(features.example_index.tolist()) == {0, 1}
    first = features.example_index == 0
    assert (features.start_positions[first] == 0).all() and (features.end_positions[first] == 0).all()
    assert features.start_positions[~first].tolist() != [0]
    assert isinstance(features, Features) and len(features) == len(features.lengths)


def test_label_window_handles_space_including_empty_and_shared_offsets():
    # Metaspace: " García" spans the space before it; byte-level BPE: an empty lone "Ġ" and two tokens
    # sharing the character of an emoji.
    offsets = np.array([[-1, -1], [0, 2], [2, 9], [9, 9], [9, 10], [9, 10], [10, 14], [-1, -1]])
    assert label_window(offsets, (3, 9)) == (2, 2)  # "García" inside " García"
    assert label_window(offsets, (9, 10)) == (4, 5)  # both byte tokens of the emoji
    assert label_window(offsets, (3, 14)) == (2, 6)
    assert label_window(offsets, (12, 16)) == (0, 0)  # runs past the window
    assert label_window(offsets, None) == (0, 0)
    assert label_window(np.full((4, 2), -1), (0, 1)) == (0, 0)


class _SlowTokenizer:
    is_fast = False
    name_or_path = "slow-one"
    padding_side = "right"
    pad_token_id = 0


def test_bad_tokenizers_and_window_sizes_raise_one_line_user_errors(unigram_tokenizer):
    example = Example(id="q", question="¿Quién escribió el libro?", context="Lo escribió Cervantes.")
    with pytest.raises(UserError, match=r"slow-one.*use_fast=True"):
        prepare_features([example], _SlowTokenizer())
    left = copy.deepcopy(unigram_tokenizer)
    left.padding_side = "left"
    with pytest.raises(UserError, match="padding_side='right'"):
        prepare_features([example], left)
    with pytest.raises(UserError, match="max_length 12 leaves"):
        prepare_features([example], unigram_tokenizer, max_length=12, doc_stride=2)
    with pytest.raises(UserError, match="doc_stride 40 must be smaller"):
        prepare_features([example], unigram_tokenizer, max_length=48, doc_stride=40)
    with pytest.raises(UserError, match="max_query_length must be at least 1"):
        prepare_features([example], unigram_tokenizer, max_query_length=0)
    try:
        prepare_features([example], unigram_tokenizer, max_length=12)
    except UserError as err:
        assert "\n" not in str(err)
