"""Reading, checking, writing SQuAD JSON: tiny files written here, and the real files in ../shared/data."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tinyroberta_es.data.loading import load_dataset, parse_squad, save_squad
from tinyroberta_es.data.schema import Answer
from tinyroberta_es.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_FILES = {
    "v1.1_small": SHARED_DATA / "squad_es_v1.1_small" / "dev-v1.1-es_small.json",
    "v2.0_small": SHARED_DATA / "squad_es_v2.0_small" / "dev-v2.0-es_small.json",
    "xquad_es": SHARED_DATA / "xquad_es" / "xquad.es.json",
}

CONTEXT = "Madrid es la capital de España. Madrid tiene el museo del Prado."


def squad(*qas: dict[str, Any], version: Any = "1.1", context: str = CONTEXT) -> dict[str, Any]:
    """A one-article, one-paragraph SQuAD object."""
    obj: dict[str, Any] = {
        "data": [{"title": "Madrid", "paragraphs": [{"context": context, "qas": list(qas)}]}]
    }
    if version is not None:
        obj["version"] = version
    return obj


def qa(qid: str, question: str = "¿Cuál es la capital de España?", *answers: tuple[str, int], **extra: Any):
    """A question with answers given as (text, start) pairs."""
    return {
        "id": qid,
        "question": question,
        "answers": [{"text": t, "answer_start": s} for t, s in answers],
        **extra,
    }


def write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def test_v1_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path / "v1.json", squad(qa("a", "¿Capital?", ("Madrid", 0)), qa("b", "¿Museo?", ("Prado", 58)))
    )
    dataset = load_dataset(path)
    assert (dataset.version, dataset.is_v2, len(dataset)) == ("1.1", False, 2)
    first = dataset.examples[0]
    assert (first.id, first.context, first.answers, first.title) == (
        "a",
        CONTEXT,
        (Answer("Madrid", 0),),
        "Madrid",
    )
    assert dataset.report is not None
    assert (dataset.report.questions, dataset.report.paragraphs, dataset.report.articles) == (2, 1, 1)
    assert dataset.source == str(path)


def test_v2_file_loads_with_unanswerable_questions(tmp_path: Path) -> None:
    obj = squad(qa("a", "¿Capital?", ("Madrid", 0), is_impossible=False),
                qa("b", "¿Rey?", is_impossible=True), version="v2.0")  # fmt: skip
    dataset = load_dataset(write(tmp_path / "v2.json", obj))
    assert dataset.is_v2 and dataset.version == "v2.0"
    assert [ex.is_impossible for ex in dataset.examples] == [False, True]
    assert dataset.examples[1].answers == ()
    assert dataset.report is not None and dataset.report.unanswerable == 1


def test_is_impossible_key_alone_makes_v2() -> None:
    dataset = parse_squad(squad(qa("a", "¿Rey?", is_impossible=True)), "x.json")
    assert dataset.is_v2 and dataset.version == "1.1"


def test_gzip_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "v1.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(squad(qa("a", "¿Capital?", ("Madrid", 0))), f)
    assert len(load_dataset(path)) == 1


def test_numeric_version_is_kept_as_string() -> None:
    assert parse_squad(squad(qa("a", "¿Capital?", ("Madrid", 0)), version=1.0), "mlqa.json").version == "1.0"


def test_absent_version_is_inferred_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        dataset = parse_squad(squad(qa("a", "¿Capital?", ("Madrid", 0)), version=None), "sqac.json")
    assert (dataset.version, dataset.is_v2) == ("1.1", False)
    assert dataset.report is not None and dataset.report.version_inferred
    assert "no 'version' field" in caplog.text
    v2 = parse_squad(squad(qa("a", "¿Rey?", is_impossible=True), version=None), "sqac.json")
    assert (v2.version, v2.is_v2) == ("v2.0", True)


def test_every_problem_is_collected_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    obj = {
        "version": "1.1",
        "data": [
            {"title": "A", "paragraphs": [{"context": CONTEXT, "qas": [
                {"id": "q1", "answers": [{"text": "Madrid", "answer_start": 0}]},  # missing question
                qa("q2", "   ", ("Madrid", 0)),  # empty question
                qa("q2", "¿Otra?", ("Madrid", 0)),  # duplicate id
                {"id": 7, "question": "¿Id numérico?", "answers": [{"text": "Madrid", "answer_start": "0"}]},
                qa("q3", "¿Sin respuesta?"),  # v1 question without answers
                qa("q5", "¿Vacía?", ("", 0)),  # its only answer is empty
            ]}]},
            {"title": "B"},  # no paragraphs
            {"title": "C", "paragraphs": [{"context": " \n", "qas": []}, {"qas": "no"}]},
        ],
    }  # fmt: skip
    path = write(tmp_path / "broken.json", obj)
    with caplog.at_level(logging.DEBUG), pytest.raises(UserError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: 11 problems; first: ")
    for part in [
        "article 0, paragraph 0, question id 'q1': missing key 'question'",
        "question id 'q2': 'question' is empty",
        "question id 'q2': duplicate question id (first at article 0, paragraph 0)",
        "question 3: 'id' must be a string, got number 7",
        "question 3, answer 0: 'answer_start' must be an integer, got string '0'",
    ]:
        assert part in message
    assert "fix the file" in message and "bad_spans='drop'" in message
    assert "-v" in message
    # the rest are in the debug log
    for part in [
        "question id 'q3': no answers, and SQuAD v1 questions are all answerable",
        "question id 'q5': all 1 answer(s) have an empty 'text'",
        "article 1: missing key 'paragraphs'",
        "article 2, paragraph 0: 'context' is empty",
        "article 2, paragraph 1: missing key 'context'",
        "article 2, paragraph 1: 'qas' must be an array, got string 'no'",
    ]:
        assert part in caplog.text


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ([1, 2], "not a SQuAD file: got a JSON array"),
        ({"version": "1.1"}, "not a SQuAD file: got an object without a 'data' list (keys: version)"),
        ({"version": True, "data": []}, "'version' must be a string or a number, got boolean True"),
    ],
)
def test_top_level_problems(obj: Any, expected: str) -> None:
    with pytest.raises(UserError, match=r"x\.json: ") as info:
        parse_squad(obj, "x.json")
    assert expected in str(info.value)


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.json: not valid JSON .* line 1"):
        load_dataset(bad)
    with pytest.raises(UserError, match="file does not exist"):
        load_dataset(tmp_path / "missing.json")


def test_repair_moves_start_to_nearest_occurrence() -> None:
    # "Madrid" occurs at 0 and 32; a start of 30 is wrong but nearest to 32, a start of 5 nearest to 0
    dataset = parse_squad(
        squad(qa("a", "¿Capital?", ("Madrid", 30), ("Madrid", 5), ("Madrid", 32))), "x.json"
    )
    assert dataset.examples[0].answers == (Answer("Madrid", 32), Answer("Madrid", 0), Answer("Madrid", 32))
    assert dataset.report is not None and dataset.report.repaired_answers == 2


def test_repair_reports_text_that_is_nowhere_with_drop_hint() -> None:
    with pytest.raises(UserError) as info:
        parse_squad(squad(qa("a", "¿Capital?", ("Barcelona", 0))), "x.json")
    message = str(info.value)
    assert "question id 'a', answer 0: text 'Barcelona' occurs nowhere in the context" in message
    assert "bad_spans='drop'" in message


def test_drop_counts_answers_and_questions() -> None:
    obj = squad(qa("a", "¿Capital?", ("Madrid", 0), ("Madrid", 3)),
                qa("b", "¿Ciudad?", ("Barcelona", 0)),
                qa("c", "¿Museo?", ("Prado", 58)))  # fmt: skip
    dataset = parse_squad(obj, "x.json", bad_spans="drop")
    assert [ex.id for ex in dataset.examples] == ["a", "c"]
    assert dataset.examples[0].answers == (Answer("Madrid", 0),)
    report = dataset.report
    assert report is not None
    assert (report.dropped_answers, report.dropped_questions, report.questions) == (2, 1, 2)


def test_keep_skips_the_span_check() -> None:
    dataset = parse_squad(squad(qa("a", "¿Capital?", ("Barcelona", 3))), "x.json", bad_spans="keep")
    assert dataset.examples[0].answers == (Answer("Barcelona", 3),)


def test_empty_answers_beside_real_ones_are_skipped_and_counted() -> None:
    dataset = parse_squad(squad(qa("a", "¿Capital?", ("", 0), ("Madrid", 0), ("", 5))), "x.json")
    assert dataset.examples[0].answers == (Answer("Madrid", 0),)
    assert dataset.report is not None and dataset.report.empty_answers == 2


def test_keep_keeps_empty_answers_as_the_official_v1_script_scores_them() -> None:
    from tinyroberta_es.evaluation import evaluate_predictions

    dataset = parse_squad(squad(qa("a", "¿Capital?", ("", 0), ("Madrid", 0))), "x.json", bad_spans="keep")
    assert dataset.examples[0].answers == (Answer("", 0), Answer("Madrid", 0))
    # v1.1 script: EM of "" against the gold "" is 1; F1 of two empty token lists is 0
    assert evaluate_predictions(dataset, {"a": ""}) == {"exact_match": 100.0, "f1": 0.0}


def test_v2_question_without_key_and_answers_is_unanswerable() -> None:
    obj = squad(qa("a", "¿Capital?", ("Madrid", 0), is_impossible=False), qa("b", "¿Rey?"), version="v2.0")
    assert [ex.is_impossible for ex in parse_squad(obj, "x.json").examples] == [False, True]
    contradiction = squad(qa("b", "¿Rey?", is_impossible=False), version="v2.0")
    with pytest.raises(UserError, match="no answers but 'is_impossible' is false"):
        parse_squad(contradiction, "x.json")


def test_impossible_question_with_answers_is_a_problem() -> None:
    with pytest.raises(
        UserError, match=r"x.json: 1 problem; first: .*question id 'a': 'is_impossible' is true"
    ):
        parse_squad(squad(qa("a", "¿Capital?", ("Madrid", 0), is_impossible=True)), "x.json")


def test_invalid_bad_spans_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown bad_spans 'fix': choose one of repair, drop, keep"):
        load_dataset(tmp_path / "never-read.json", bad_spans="fix")


def test_save_round_trip(tmp_path: Path) -> None:
    obj = {"version": "v2.0", "data": [
        {"title": "Uno", "paragraphs": [
            {"context": CONTEXT, "qas": [qa("a", "¿Capital?", ("Madrid", 0), is_impossible=False),
                                         qa("b", "¿Rey?", is_impossible=True)]},
            {"context": "Sevilla está en Andalucía.", "qas": [qa("c", "¿Dónde?", ("Andalucía", 16),
                                                                 is_impossible=False)]},
        ]},
        {"title": "Dos", "paragraphs": [{"context": "Bilbao.", "qas": [qa("d", "¿Qué?", ("Bilbao", 0),
                                                                          is_impossible=False)]}]},
    ]}  # fmt: skip
    dataset = parse_squad(obj, "x.json")
    for name in ("out.json", "out.json.gz"):
        out = save_squad(dataset, tmp_path / "sub" / name)
        again = load_dataset(out)
        assert again.examples == dataset.examples
        assert (again.version, again.is_v2) == ("v2.0", True)
    assert json.loads((tmp_path / "sub" / "out.json").read_text(encoding="utf-8")) == obj
    assert [p.name for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")] == []


def test_save_regroups_shuffled_examples(tmp_path: Path) -> None:
    obj = {"version": "1.1", "data": [
        {"title": "Uno", "paragraphs": [{"context": CONTEXT, "qas": [qa("a", "¿Capital?", ("Madrid", 0))]},
                                        {"context": "Bilbao.", "qas": [qa("b", "¿Qué?", ("Bilbao", 0))]}]},
    ]}  # fmt: skip
    dataset = parse_squad(obj, "x.json")
    dataset.examples.reverse()
    save_squad(dataset, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == obj


@pytest.mark.parametrize(
    ("key", "questions", "paragraphs", "unanswerable", "is_v2"),
    [
        ("v1.1_small", 6583, 1996, 0, False),
        ("v2.0_small", 7134, 1192, 3256, True),
        ("xquad_es", 1190, 240, 0, False),
    ],
)
def test_real_files_load_with_documented_counts(
    key: str, questions: int, paragraphs: int, unanswerable: int, is_v2: bool
) -> None:
    path = REAL_FILES[key]
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is absent (see ../shared/data/README.md)")
    dataset = load_dataset(path)
    report = dataset.report
    assert report is not None
    assert (report.questions, report.paragraphs, report.unanswerable) == (questions, paragraphs, unanswerable)
    assert dataset.is_v2 == is_v2
    assert (report.repaired_answers, report.dropped_answers, report.dropped_questions) == (0, 0, 0)
    assert all(ex.context[a.start : a.end] == a.text for ex in dataset.examples for a in ex.answers)
