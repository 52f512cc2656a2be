"""`tinyroberta-es evaluate` end to end on tiny SQuAD files: the table, the --output JSON, the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyroberta_es.cli import main

CONTEXT = "El Real Madrid ganó la Liga en 1605 con Miguel de Cervantes."


def qa(qid: str, answers: list[str], *, v2: bool = False) -> dict:
    entry = {
        "id": qid,
        "question": f"¿{qid}?",
        "answers": [{"text": text, "answer_start": CONTEXT.index(text)} for text in answers],
    }
    if v2:
        entry["is_impossible"] = not answers
    return entry


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def v1_files(tmp_path: Path) -> tuple[Path, Path]:
    """A v1 dataset of two questions and predictions for both."""
    qas = [qa("q1", ["El Real Madrid"]), qa("q2", ["1605"])]
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    dataset = write_json(tmp_path / "dev.json", data)
    preds = write_json(tmp_path / "preds.json", {"q1": "Real Madrid", "q2": "en 1605", "other": "x"})
    return dataset, preds


@pytest.fixture
def v2_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A v2 dataset (one answerable, one unanswerable question), predictions and no-answer probabilities."""
    qas = [qa("q1", ["El Real Madrid"], v2=True), qa("q2", [], v2=True)]
    data = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    dataset = write_json(tmp_path / "dev-v2.json", data)
    preds = write_json(tmp_path / "preds.json", {"q1": "Real Madrid", "q2": ""})
    na_probs = write_json(tmp_path / "na.json", {"q1": 0.2, "q2": 0.7})
    return dataset, preds, na_probs


def test_v1_default_normalizations(v1_files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    dataset, preds = v1_files
    out = tmp_path / "scores" / "eval.json"
    assert (
        main(["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--output", str(out)]) == 0
    )
    # mlqa-es: q1 "real madrid" both sides (EM 1, F1 1); q2 [en, 1605] vs [1605]: P 1/2, R 1 -> F1 2/3
    #   EM 50, F1 (1 + 2/3) / 2 = 83.33
    # squad keeps "el": q1 [real, madrid] vs [el, real, madrid]: P 1, R 2/3 -> F1 0.8; q2 as above
    #   EM 0, F1 (0.8 + 2/3) / 2 = 73.33
    assert capsys.readouterr().out.splitlines() == [
        "normalization  exact_match     f1",
        "mlqa-es              50.00  83.33",
        "squad                 0.00  73.33",
    ]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert list(report) == [
        "exact_match", "f1", "normalization", "dataset", "predictions", "other_normalizations"
    ]  # fmt: skip
    assert report["exact_match"] == 50.0 and report["f1"] == pytest.approx(100 * 5 / 6)
    assert (report["normalization"], report["dataset"], report["predictions"]) == (
        "mlqa-es",
        str(dataset),
        str(preds),
    )
    assert report["other_normalizations"] == {
        "squad": {"exact_match": 0.0, "f1": pytest.approx(100 * 22 / 30)}
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"]  # no temporary file left behind


def test_v2_one_normalization_with_na_probs(
    v2_files: tuple[Path, Path, Path], tmp_path: Path, capsys
) -> None:
    dataset, preds, na_probs = v2_files
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--na-probs", str(na_probs)]
    assert main([*argv, "--normalization", "squad", "--output", str(out)]) == 0
    # q1: EM 0, F1 0.8 (as in the v1 test); q2 unanswerable and "" predicted: 1, 1. No probability > 1.0.
    # best: start at 1 (q2 abstains); q1 (0.2) adds 0 / 0.8 -> EM stays 1 (thresh 0.0), F1 1.8 at 0.2;
    # q2 (0.7) adds 0
    expected = {
        "exact": 50.0, "f1": 90.0, "total": 2,
        "HasAns_exact": 0.0, "HasAns_f1": 80.0, "HasAns_total": 1,
        "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 1,
        "best_exact": 50.0, "best_exact_thresh": 0.0, "best_f1": 90.0, "best_f1_thresh": 0.2,
    }  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["normalization", *expected]
    assert lines[1].split() == [
        "squad", "50.00", "90.00", "2", "0.00", "80.00", "1", "100.00", "100.00", "1",
        "50.00", "0.0000", "90.00", "0.2000",
    ]  # fmt: skip
    report = json.loads(out.read_text(encoding="utf-8"))
    assert {key: report[key] for key in expected} == pytest.approx(expected)
    assert report["normalization"] == "squad" and "other_normalizations" not in report
    assert (report["na_probs"], report["na_prob_thresh"]) == (str(na_probs), 1.0)


def test_v2_threshold_flag(v2_files: tuple[Path, Path, Path], capsys) -> None:
    dataset, preds, na_probs = v2_files
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--na-probs", str(na_probs)]
    assert main([*argv, "--normalization", "mlqa-es", "--na-prob-thresh", "0.1"]) == 0
    # both probabilities exceed 0.1: q1 (answerable) scores 0, q2 (unanswerable) 1 -> 50 / 50
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["mlqa-es", "50.00", "50.00", "2"]


def run_error(argv: list[str], capsys) -> str:
    """Run a command that must fail; return its one-line error message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tinyroberta-es evaluate: error: ")
    return lines[0]


def test_missing_predictions_file(v1_files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    dataset, _ = v1_files
    message = run_error(
        ["evaluate", "--dataset", str(dataset), "--predictions", str(tmp_path / "nope.json")], capsys
    )
    assert "nope.json does not exist" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"q1": "Real Madrid",', "is not valid JSON"),
        ('{"q1": 3, "q2": null}', "2 ids have a value that is not a string ('q1': number, 'q2': null)"),
        ('["Real Madrid"]', "holds a JSON array, not an object"),
    ],
)
def test_bad_predictions_file(
    v1_files: tuple[Path, Path], tmp_path: Path, capsys, content: str, expected: str
):
    dataset, _ = v1_files
    bad = tmp_path / "bad-preds.json"
    bad.write_text(content, encoding="utf-8")
    message = run_error(["evaluate", "--dataset", str(dataset), "--predictions", str(bad)], capsys)
    assert "bad-preds.json" in message and expected in message


def test_unknown_normalization(v1_files: tuple[Path, Path], capsys) -> None:
    dataset, preds = v1_files
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--normalization", "mlqa-fr"]
    message = run_error(argv, capsys)
    assert "unknown normalization 'mlqa-fr': choose one of squad, mlqa-es, mlqa-en" in message


def test_missing_dataset_path(v1_files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, preds = v1_files
    missing = tmp_path / "no-such-dev.json"
    message = run_error(["evaluate", "--dataset", str(missing), "--predictions", str(preds)], capsys)
    assert "no-such-dev.json" in message


def test_na_probs_on_a_v1_dataset(v1_files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    dataset, preds = v1_files
    na_probs = write_json(tmp_path / "na.json", {"q1": 0.1, "q2": 0.9})
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--na-probs", str(na_probs)]
    assert "need a SQuAD v2.0 dataset" in run_error(argv, capsys)


def test_v2_missing_prediction(v2_files: tuple[Path, Path, Path], tmp_path: Path, capsys) -> None:
    dataset, _, _ = v2_files
    preds = write_json(tmp_path / "partial.json", {"q1": "Real Madrid"})
    message = run_error(["evaluate", "--dataset", str(dataset), "--predictions", str(preds)], capsys)
    assert "1 of 2 questions have no prediction ('q2')" in message


def test_bad_na_probs_file(v2_files: tuple[Path, Path, Path], tmp_path: Path, capsys) -> None:
    dataset, preds, _ = v2_files
    na_probs = tmp_path / "na-bad.json"
    na_probs.write_text('{"q1": NaN, "q2": "0.5"}', encoding="utf-8")
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--na-probs", str(na_probs)]
    message = run_error(argv, capsys)
    assert "na-bad.json" in message and "('q1': NaN, 'q2': string)" in message


def test_unwritable_output(v1_files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    dataset, preds = v1_files
    blocker = write_json(tmp_path / "file", {})  # a file where the output's folder should be
    argv = [
        "evaluate",
        "--dataset",
        str(dataset),
        "--predictions",
        str(preds),
        "--output",
        str(blocker / "x.json"),
    ]
    assert "cannot write --output" in run_error(argv, capsys)
