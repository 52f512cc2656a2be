"""QA augmentation: answer spans survive, the replaced share follows replace_prob, case, seeds, neighbours."""

from __future__ import annotations

import re
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.schema import Answer, Example
from tinyroberta_es.distill.augment import FUNCTION_WORDS, WORD, WordNeighbours, augment_examples, match_case
from tinyroberta_es.tiny import spanish_texts

REPLACEMENTS = ["xy", "árbol", "pingüinos", "ñu", "ciudadanía", "Río"]


def table_for(*texts: str) -> WordNeighbours:
    """Hand-made neighbours: every word of `texts` gets the same replacements of varied lengths."""
    words = {w for t in texts for w in WORD.findall(t)}
    table = {w: tuple(r for r in REPLACEMENTS if r.lower() != w.lower()) for w in words}
    return WordNeighbours(vocabulary=REPLACEMENTS, table=table)


def changed_words(old: str, new: str) -> tuple[int, int]:
    """(words changed, words) of two texts with the same separators."""
    a, b = WORD.findall(old), WORD.findall(new)
    assert len(a) == len(b) and WORD.split(old) == WORD.split(new)  # only words change, nothing between
    return sum(x != y for x, y in zip(a, b, strict=True)), len(a)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), prob=st.sampled_from([0.0, 0.4, 1.0]))
def test_answers_point_at_their_text_in_every_copy(qa_examples, data, prob):
    ex = data.draw(qa_examples)
    extra = data.draw(st.lists(st.integers(0, len(ex.context)), max_size=2))  # more answers, some empty
    answers = ex.answers + tuple(Answer(ex.context[s : s + 4], s) for s in extra if ex.answers)
    ex = Example(ex.id, ex.question, ex.context, answers, ex.is_impossible)
    out = augment_examples([ex], table_for(ex.context, ex.question), copies=3, replace_prob=prob, seed=1)
    assert [o.id for o in out] == ["q-aug0", "q-aug1", "q-aug2"]
    for new in out:
        assert new.is_impossible == ex.is_impossible and len(new.answers) == len(ex.answers)
        for old_answer, answer in zip(ex.answers, new.answers, strict=True):
            assert answer.text == old_answer.text
            assert new.context[answer.start : answer.end] == answer.text
        changed, total = changed_words(ex.context, new.context)
        changed_q, total_q = changed_words(ex.question, new.question)
        if prob == 0:
            assert new.context == ex.context and new.question == ex.question
        if prob == 1:
            assert changed_q == total_q
            protected = sum(
                any(m.start() < max(a.end, a.start + 1) and a.start < m.end() for a in ex.answers)
                for m in WORD.finditer(ex.context)
            )
            assert changed == total - protected


def test_replaced_share_is_close_to_replace_prob():
    words = ["río", "montaña", "ciudad", "Begoña", "pingüino"]
    context = " ".join(words[i % len(words)] for i in range(3000)) + "."
    ex = Example("long", "¿Dónde?", context, (Answer("ciudad", context.index("ciudad")),))
    table = WordNeighbours(words, {w: tuple(x for x in words if x != w) for w in words})
    for prob in (0.1, 0.4, 0.8):
        (new,) = augment_examples([ex], table, copies=1, replace_prob=prob, seed=0)
        changed, total = changed_words(ex.context, new.context)
        assert abs(changed / (total - 1) - prob) < 0.04, (prob, changed / total)


def test_capitalisation_follows_the_replaced_word():
    table = WordNeighbours(["lago", "laguna"], {"río": ("lago",), "Lago": ("laguna",)})
    ex = Example("c", "¿Qué río?", "Río arriba, el río y el RÍO; Lago y lago.")
    (new,) = augment_examples([ex], table, copies=1, replace_prob=1.0, seed=0)
    assert new.context == "Lago arriba, el lago y el LAGO; Laguna y lago."
    assert new.question == "¿Qué lago?"
    assert [match_case(w, "ñandú") for w in ("Ñu", "ÑU", "ñu", "A")] == ["Ñandú", "ÑANDÚ", "ñandú", "Ñandú"]


def test_same_seed_same_examples_and_unanswerable_stay_unanswerable():
    examples = [ex for ex in load_dataset("sample").examples[:60]]
    assert any(ex.is_impossible for ex in examples)
    table = table_for(*(ex.context for ex in examples), *(ex.question for ex in examples))
    first = augment_examples(examples, table, copies=2, replace_prob=0.4, seed=7)
    assert first == augment_examples(examples, table, copies=2, replace_prob=0.4, seed=7)
    assert first != augment_examples(examples, table, copies=2, replace_prob=0.4, seed=8)
    assert (
        len(first) == 2 * len(examples)
        and augment_examples(examples, table, copies=0, replace_prob=0.4) == []
    )
    for ex, new in zip([ex for ex in examples for _ in range(2)], first, strict=True):
        assert new.is_impossible == ex.is_impossible and new.title == ex.title
        if ex.is_impossible:
            assert new.answers == ()
        for answer in new.answers:
            assert new.context[answer.start : answer.end] == answer.text
    # a copy depends on the example's position and id, not on the examples around it
    assert augment_examples(examples[:1], table, copies=2, replace_prob=0.4, seed=7) == first[:2]


def test_augmentation_is_fast():
    examples = load_dataset("sample").examples
    table = table_for(*(ex.context for ex in examples), *(ex.question for ex in examples))
    begin = time.perf_counter()
    out = augment_examples(examples, table, copies=10, replace_prob=0.4, seed=0)
    assert len(out) / (time.perf_counter() - begin) > 2000  # examples per second, on a busy 2-core machine


def test_neighbours_of_a_tiny_model_are_candidate_words(tiny_qa_model_dir):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qa_model_dir))
    model = AutoModelForQuestionAnswering.from_pretrained(str(tiny_qa_model_dir))
    texts = spanish_texts()
    nb = WordNeighbours.build(tokenizer, model.get_input_embeddings().weight, texts, top_k=5)
    corpus = {w for t in texts for w in WORD.findall(t)}
    assert len(nb.vocabulary) > 50 and set(nb.vocabulary) <= corpus
    for word in nb.vocabulary:
        assert word.isalpha() and len(word) >= 2 and word.lower() not in FUNCTION_WORDS
        (piece,) = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        name = tokenizer.convert_ids_to_tokens(piece)
        assert name.startswith(("Ġ", "▁")) or (tokenizer.cls_token == "[CLS]" and not name.startswith("##"))
    vocabulary = set(nb.vocabulary)
    for word, found in nb.table.items():
        assert 0 < len(found) <= 5 and set(found) <= vocabulary and word not in found
        assert len({w.lower() for w in found}) == len(found) and word.lower() not in {
            w.lower() for w in found
        }
        if word.islower():
            assert all(w.islower() for w in found)
    multi = [
        w
        for w in nb.table
        if w not in vocabulary and len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) > 1
    ]
    assert multi  # words of several pieces get neighbours too (from the mean of their pieces)
    assert nb.neighbours("Ñandú") == nb.neighbours("ñandú") != []  # capitalised: falls back on the lowercase
    assert nb.neighbours("de") == [] and nb.neighbours("ONU") == [] and nb.neighbours("zzzz") == []


@pytest.mark.slow  # reads the 384 MB embedding matrix
def test_me5_neighbours_of_common_words_are_spanish_words(me5_dir, capsys):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(me5_dir))
    with safe_open(str(me5_dir / "model.safetensors"), "pt") as f:
        (name,) = [k for k in f.keys() if k.endswith("word_embeddings.weight")]  # noqa: SIM118
        embeddings = f.get_tensor(name)  # (250037, 384)
    examples = load_dataset("sample").examples
    nb = WordNeighbours.build(tokenizer, embeddings, [ex.context for ex in examples] + spanish_texts())
    for word in ("ciudad", "río", "años"):
        found = nb.neighbours(word)
        assert len(found) == 15 and word not in found
        assert all(re.fullmatch(r"[a-záéíóúüñ]{2,}", w) for w in found), found
    assert capsys.readouterr().out == ""


def test_bad_arguments_are_named():
    from tinyroberta_es.errors import UserError

    ex = Example("x", "q", "c")
    with pytest.raises(UserError, match="replace_prob"):
        augment_examples([ex], table_for(), copies=1, replace_prob=1.5)
    with pytest.raises(UserError, match="copies"):
        augment_examples([ex], table_for(), copies=-1, replace_prob=0.5)
    with pytest.raises(UserError, match="candidates"):
        WordNeighbours.build(None, torch.zeros(1, 1), [], top_k=0)
