"""The embedded Spanish sample: well-formed SQuAD v2.0, exact answer spans, and the counts SAMPLE.md states.

Reads the files through `importlib.resources`, as an installed package sees them, and uses no other
project module, so a broken loader cannot hide a broken sample (or the other way round).
"""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

RESOURCES = resources.files("tinyroberta_es") / "resources"
COUNT_KEYS = ("articles", "paragraphs", "questions", "answerable", "unanswerable")
COUNT_LINE = re.compile(r"^- (\w+): (\d+)\s*$", re.MULTILINE)
ID_FORMAT = re.compile(r"es-sample-\d{4}")


@pytest.fixture(scope="module")
def sample() -> dict:
    path = RESOURCES / "sample_es.json"
    assert path.is_file(), "sample_es.json is not packaged under tinyroberta_es/resources"
    return json.loads(path.read_text(encoding="utf-8"))


def _questions(sample: dict) -> list[tuple[str, dict]]:
    """(context, qa) for every question, in file order."""
    return [(p["context"], qa) for a in sample["data"] for p in a["paragraphs"] for qa in p["qas"]]


def _counts(sample: dict) -> dict[str, int]:
    qas = [qa for _, qa in _questions(sample)]
    unanswerable = sum(qa["is_impossible"] for qa in qas)
    return {
        "articles": len(sample["data"]),
        "paragraphs": sum(len(a["paragraphs"]) for a in sample["data"]),
        "questions": len(qas),
        "answerable": len(qas) - unanswerable,
        "unanswerable": unanswerable,
    }


def test_is_squad_v2_with_titled_articles(sample):
    assert sample["version"] == "v2.0"
    assert sample["data"], "no articles"
    for article in sample["data"]:
        assert isinstance(article["title"], str) and article["title"].strip()
        assert article["paragraphs"], f"article {article['title']!r} has no paragraphs"
        for paragraph in article["paragraphs"]:
            assert isinstance(paragraph["context"], str) and paragraph["context"].strip()
            assert paragraph["qas"], f"a paragraph of {article['title']!r} has no questions"


def test_is_big_enough(sample):
    counts = _counts(sample)
    assert counts["paragraphs"] >= 40
    assert counts["questions"] >= 150
    assert counts["unanswerable"] >= 30


def test_ids_are_unique_and_numbered_in_file_order(sample):
    ids = [qa["id"] for _, qa in _questions(sample)]
    assert len(ids) == len(set(ids)), "duplicate question ids"
    assert all(ID_FORMAT.fullmatch(i) for i in ids), [i for i in ids if not ID_FORMAT.fullmatch(i)]
    assert ids == [f"es-sample-{n:04d}" for n in range(1, len(ids) + 1)]


def test_questions_are_spanish_questions(sample):
    for _, qa in _questions(sample):
        question = qa["question"]
        assert question.startswith("¿") and question.endswith("?"), qa["id"]
        assert question == question.strip(), qa["id"]


def test_every_answer_span_matches_its_context(sample):
    for context, qa in _questions(sample):
        for key in ("answers", "plausible_answers"):
            for answer in qa.get(key, []):
                text, start = answer["text"], answer["answer_start"]
                assert isinstance(start, int) and not isinstance(start, bool), (qa["id"], answer)
                assert text and text == text.strip(), (qa["id"], answer)
                assert 0 <= start <= len(context) - len(text), (qa["id"], answer)
                assert context[start : start + len(text)] == text, (
                    f"{qa['id']}: {key} {text!r} at {start} but the context has "
                    f"{context[start : start + len(text)]!r} there"
                )


def test_unanswerable_questions_have_no_answers(sample):
    for _, qa in _questions(sample):
        assert isinstance(qa["is_impossible"], bool), qa["id"]
        if qa["is_impossible"]:
            assert qa["answers"] == [], qa["id"]
        else:
            assert qa["answers"], f"{qa['id']} is answerable but has no answers"
            assert "plausible_answers" not in qa, qa["id"]


def test_sample_md_states_the_counts_of_the_file(sample):
    note = (RESOURCES / "SAMPLE.md").read_text(encoding="utf-8")
    stated = {key: int(value) for key, value in COUNT_LINE.findall(note) if key in COUNT_KEYS}
    missing = sorted(set(COUNT_KEYS) - set(stated))
    assert not missing, f"SAMPLE.md has no '- <name>: <number>' line for {missing}"
    assert stated == _counts(sample)
