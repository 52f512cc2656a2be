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


# --- unlabeled questions: SQuAD without answers, and JSON Lines ------------------------------------------

BLIND = SHARED_DATA / "blind" / "mlqa_es_dev_questions.json"


def unlabeled_qa(qid: str, question: str = "¿Cuál es la capital de España?", **extra: Any) -> dict[str, Any]:
    """A question without an `answers` key."""
    return {"id": qid, "question": question, **extra}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """JSON Lines: objects are dumped, strings written as they are."""
    text = "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def line(qid: str, question: str = "¿Capital?", context: str = CONTEXT, **extra: Any) -> dict[str, Any]:
    return {"id": qid, "question": question, "context": context, **extra}


@pytest.mark.parametrize("version", ["1.1", "v2.0", None])
def test_squad_without_answers_is_unlabeled_and_refused_where_answers_are_required(
    tmp_path: Path, version: Any
) -> None:
    path = write(
        tmp_path / "blind.json", squad(unlabeled_qa("a"), unlabeled_qa("b", "¿Museo?"), version=version)
    )
    dataset = load_dataset(path, labels="optional")
    assert [(ex.id, ex.answers, ex.is_impossible, ex.is_labeled) for ex in dataset.examples] == [
        ("a", None, False, False),
        ("b", None, False, False),
    ]
    assert dataset.report is not None and (dataset.report.unlabeled, dataset.report.unanswerable) == (2, 0)
    with pytest.raises(UserError) as info:
        load_dataset(path)  # labels="required" is the default: training and evaluation
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: has no answers")
    assert "predict" in message


def test_mixed_file_keeps_answers_and_names_the_first_unlabeled_question(tmp_path: Path) -> None:
    obj = squad(qa("a", "¿Capital?", ("Madrid", 0)), unlabeled_qa("b"), qa("c", "¿Museo?", ("Prado", 58)),
                unlabeled_qa("d"))  # fmt: skip
    path = write(tmp_path / "mixed.json", obj)
    dataset = load_dataset(path, labels="optional")
    assert [ex.answers for ex in dataset.examples] == [
        (Answer("Madrid", 0),),
        None,
        (Answer("Prado", 58),),
        None,
    ]
    with pytest.raises(UserError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: 2 of 4 questions have no answers")
    assert "question id 'b'" in message and "'d'" not in message


def test_impossible_question_without_answers_key_stays_labeled_unanswerable() -> None:
    obj = squad(qa("a", "¿Capital?", ("Madrid", 0)), unlabeled_qa("b", is_impossible=True), version="v2.0")
    for labels in ("required", "optional"):
        b = parse_squad(obj, "x.json", labels=labels).examples[1]
        assert (b.answers, b.is_impossible, b.is_labeled) == ((), True, True)
    # the unlabeled question of a v2 file is not unanswerable: it has no key at all
    unlabeled = parse_squad(squad(unlabeled_qa("c"), version="v2.0"), "x.json", labels="optional").examples[0]
    assert (unlabeled.answers, unlabeled.is_impossible) == (None, False)


def test_unlabeled_questions_are_still_validated() -> None:
    obj = squad(unlabeled_qa("a", "  "), {"question": "¿Sin id?"}, unlabeled_qa("a"))
    with pytest.raises(UserError) as info:
        parse_squad(obj, "x.json", labels="optional")
    message = str(info.value)
    for part in ["'question' is empty", "missing key 'id'", "duplicate question id"]:
        assert part in message


def test_unknown_labels_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown labels 'maybe': choose one of required, optional"):
        load_dataset(tmp_path / "never-read.json", labels="maybe")


def test_save_round_trip_keeps_unlabeled_questions_unlabeled(tmp_path: Path) -> None:
    obj = squad(qa("a", "¿Capital?", ("Madrid", 0), is_impossible=False),
                qa("b", "¿Rey?", is_impossible=True), unlabeled_qa("c"), version="v2.0")  # fmt: skip
    dataset = parse_squad(obj, "x.json", labels="optional")
    again = load_dataset(save_squad(dataset, tmp_path / "out.json"), labels="optional")
    assert again.examples == dataset.examples
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == obj


@pytest.mark.parametrize("name", ["q.jsonl", "q.jsonl.gz", "q.ndjson", "Q.JSONL"])
def test_jsonl_questions_load_unlabeled(tmp_path: Path, name: str) -> None:
    path = write_lines(
        tmp_path / name, [line("a", title="Madrid"), "", "   ", line("b", "¿Museo?\u2028¿Cuál?")]
    )
    dataset = load_dataset(path, labels="optional")
    assert [(ex.id, ex.question, ex.context, ex.title, ex.answers) for ex in dataset.examples] == [
        ("a", "¿Capital?", CONTEXT, "Madrid", None),
        ("b", "¿Museo?\u2028¿Cuál?", CONTEXT, "", None),
    ]
    assert (dataset.version, dataset.is_v2) == ("jsonl", False)
    assert dataset.report is not None and (dataset.report.questions, dataset.report.unlabeled) == (2, 2)


def test_jsonl_is_refused_where_answers_are_required(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "q.jsonl", [line("a")])
    with pytest.raises(UserError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: has no answers")


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ('{"id": "b", "question": "¿Qué?"', "line 3: not valid JSON"),
        ('["b", "¿Qué?", "Algo."]', 'line 3: must be a JSON object, got ["b"'),
        (line("b", context=None), "line 3: 'context' must be a string, got null"),
        ({"id": 7, "question": "¿Qué?", "context": "Algo."}, "line 3: 'id' must be a string, got 7"),
        ({"id": "b", "context": "Algo."}, "line 3: missing key 'question'"),
        (line("b", question=" "), "line 3: 'question' is empty"),
        (line("b", title=3), "line 3: 'title' must be a string, got 3"),
        (line("a"), "line 3: duplicate id 'a' (first on line 1)"),
        (squad(qa("a", "¿Capital?", ("Madrid", 0))), "line 3: this is SQuAD JSON, not JSON Lines"),
    ],
)
def test_a_bad_jsonl_line_is_a_one_line_error_with_its_number(
    tmp_path: Path, bad: Any, expected: str
) -> None:
    path = write_lines(tmp_path / "q.jsonl", [line("a"), "", bad, line("c")])
    with pytest.raises(UserError) as info:
        load_dataset(path, labels="optional")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: 1 problem; first: {expected}"), message


def test_every_bad_jsonl_line_is_collected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "q.jsonl", [line("a"), "nope", line("a"), {"id": "c"}])
    with pytest.raises(UserError) as info:
        load_dataset(path, labels="optional")
    message = str(info.value)
    assert message.startswith(f"{path}: 4 problems; first: line 2: not valid JSON")
    for part in [
        "line 3: duplicate id 'a'",
        "line 4: missing key 'question'",
        "line 4: missing key 'context'",
    ]:
        assert part in message


def test_empty_jsonl_and_ignored_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UserError, match="no questions"):
        load_dataset(write_lines(tmp_path / "empty.jsonl", ["", " "]), labels="optional")
    with caplog.at_level(logging.WARNING):
        load_dataset(write_lines(tmp_path / "q.jsonl", [line("a", answers=[])]), labels="optional")
    assert "ignored the keys 'answers'" in caplog.text


def test_json_lines_in_a_json_file_get_a_hint(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "q.json", [line("a"), line("b")])
    with pytest.raises(UserError, match=r"not valid JSON \(Extra data.*name it \.jsonl"):
        load_dataset(path, labels="optional")


def test_blind_mlqa_questions_load_as_500_unlabeled_questions() -> None:
    if not BLIND.is_file():
        pytest.skip(f"shared data absent: {BLIND} (see ../shared/data/blind/README.md)")
    dataset = load_dataset(BLIND, labels="optional")
    assert len(dataset) == 500 and len(dataset.by_id()) == 500
    assert dataset.report is not None
    assert (dataset.report.unlabeled, dataset.report.articles, dataset.is_v2) == (500, 259, False)
    assert all(ex.answers is None and ex.question.strip() and ex.context.strip() for ex in dataset.examples)
    with pytest.raises(UserError, match="has no answers"):
        load_dataset(BLIND)
