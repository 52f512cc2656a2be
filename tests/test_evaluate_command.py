"""`tinyroberta-es evaluate` end to end on tiny SQuAD files: the table, the intervals, the comparison of two
prediction files, the --output JSON, the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run_cli
from tinyroberta_es.cli import main
from tinyroberta_es.data.loading import load_dataset

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
    # 95% intervals of two questions: draws score both, one of them twice, or the other twice
    #   mlqa-es EM {0, 50, 100}, F1 {66.67, 83.33, 100}; squad EM {0}, F1 {66.67, 73.33, 80}
    assert capsys.readouterr().out.splitlines() == [
        "normalization  exact_match     f1",
        "mlqa-es              50.00  83.33",
        "squad                 0.00  73.33",
        "95% bootstrap intervals (2 questions, 1000 resamples, seed 0)",
        "normalization  exact_match_ci            f1_ci",
        "mlqa-es        [0.00, 100.00]  [66.67, 100.00]",
        "squad            [0.00, 0.00]   [66.67, 80.00]",
    ]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert list(report) == [
        "exact_match", "f1", "exact_match_ci", "f1_ci", "normalization", "dataset", "predictions",
        "bootstrap", "other_normalizations",
    ]  # fmt: skip
    assert report["exact_match_ci"] == [0.0, 100.0] and report["f1_ci"] == pytest.approx([100 * 2 / 3, 100.0])
    assert report["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95}
    assert report["exact_match"] == 50.0 and report["f1"] == pytest.approx(100 * 5 / 6)
    assert (report["normalization"], report["dataset"], report["predictions"]) == (
        "mlqa-es",
        str(dataset),
        str(preds),
    )
    assert report["other_normalizations"] == {
        "squad": {
            "exact_match": 0.0,
            "f1": pytest.approx(100 * 22 / 30),
            "exact_match_ci": [0.0, 0.0],
            "f1_ci": pytest.approx([100 * 2 / 3, 80.0]),
        }
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
    assert report["exact_ci"] == [0.0, 100.0] and report["f1_ci"] == [80.0, 100.0]  # v2: named after `exact`
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


# --- Bootstrap intervals and --compare, on the embedded sample ---------------------------------------------


@pytest.fixture(scope="module")
def sample_dev() -> list[tuple[str, str]]:
    """(question id, first gold answer or "") of every question of the embedded `sample_dev` set."""
    dataset = load_dataset("sample_dev", bad_spans="keep")
    return [(ex.id, ex.answers[0].text if ex.answers else "") for ex in dataset.examples]


def evaluate_sample(capsys, tmp_path: Path, *flags: str) -> tuple[list[str], dict]:
    """Run `evaluate --dataset sample_dev FLAGS --output ...`; return the stdout lines and the report."""
    out = tmp_path / "eval.json"
    status, stdout, err = run_cli(capsys, "evaluate", "--dataset", "sample_dev", *flags, "--output", str(out))
    assert status == 0, err
    return stdout.splitlines(), json.loads(out.read_text(encoding="utf-8"))


def test_sample_intervals_and_identical_comparison(sample_dev, tmp_path: Path, capsys) -> None:
    # right on every other question ("" abstains on unanswerable ones, a wrong text misses the rest)
    preds = write_json(
        tmp_path / "a.json", {qid: gold if i % 2 else "mal" for i, (qid, gold) in enumerate(sample_dev)}
    )
    twin = write_json(tmp_path / "twin.json", json.loads(preds.read_text(encoding="utf-8")))
    lines, report = evaluate_sample(capsys, tmp_path, "--predictions", str(preds), "--compare", str(twin))
    assert lines[3] == f"95% bootstrap intervals ({len(sample_dev)} questions, 1000 resamples, seed 0)"
    for key in ("exact", "f1"):
        assert report[f"{key}_ci"][0] < report[key] < report[f"{key}_ci"][1]
        assert (
            report["other_normalizations"]["squad"][f"{key}_ci"][0]
            < report["other_normalizations"]["squad"][key]
        )
    comparison = report["comparison"]
    assert (comparison["compare"], comparison["normalization"]) == (str(twin), "mlqa-es")
    for key in ("f1", "exact"):
        assert comparison[key] == {
            "predictions": report[key],
            "compare": report[key],
            "difference": 0.0,
            "difference_ci": [0.0, 0.0],
            "p_value": 1.0,
        }
    assert lines[-1] == (
        f"mlqa-es, {preds} minus {twin}: f1 {report['f1']:.2f} vs {report['f1']:.2f}: +0.00 "
        f"(95% CI +0.00 to +0.00, p = 1.000); exact {report['exact']:.2f} vs {report['exact']:.2f}: +0.00 "
        "(95% CI +0.00 to +0.00, p = 1.000)"
    )


def test_sample_comparison_of_a_better_file(sample_dev, tmp_path: Path, capsys) -> None:
    # A is right everywhere; B misses every fourth question (a wrong text, or an answer where there is none)
    gold = dict(sample_dev)
    worse = {qid: "mal" if i % 4 == 0 else answer for i, (qid, answer) in enumerate(sample_dev)}
    a, b = write_json(tmp_path / "a.json", gold), write_json(tmp_path / "b.json", worse)
    flags = ["--predictions", str(a), "--compare", str(b), "--normalization", "squad"]
    lines, report = evaluate_sample(capsys, tmp_path, *flags, "--seed", "3")
    assert report["bootstrap"] == {"resamples": 1000, "seed": 3, "level": 0.95}
    assert report["f1_ci"] == [100.0, 100.0]  # every question right in every draw
    missed = 100 * len(range(0, len(sample_dev), 4)) / len(sample_dev)
    for key in ("f1", "exact"):
        metric = report["comparison"][key]
        assert metric["predictions"] == 100.0 and metric["compare"] == pytest.approx(100.0 - missed)
        assert metric["difference"] == pytest.approx(missed)
        assert 0.0 < metric["difference_ci"][0] < missed < metric["difference_ci"][1]
        assert metric["p_value"] == 0.0
    assert lines[-1].startswith(
        f"squad, {a} minus {b}: f1 100.00 vs {100 - missed:.2f}: +{missed:.2f} (95% CI +"
    )
    assert lines[-1].endswith("p < 0.001)")
    # the same seed gives the same intervals; another seed others
    assert evaluate_sample(capsys, tmp_path, *flags, "--seed", "3")[1] == report
    other_seed = evaluate_sample(capsys, tmp_path, *flags, "--seed", "4")[1]
    assert other_seed["comparison"]["f1"]["difference_ci"] != report["comparison"]["f1"]["difference_ci"]


def test_bootstrap_zero_turns_the_intervals_off(sample_dev, tmp_path: Path, capsys) -> None:
    preds = write_json(tmp_path / "a.json", dict(sample_dev))
    other = write_json(tmp_path / "b.json", {qid: "" for qid, _ in sample_dev})
    argv = ["--predictions", str(preds), "--compare", str(other), "--bootstrap", "0"]
    lines, report = evaluate_sample(capsys, tmp_path, *argv)
    assert len(lines) == 4 and not any("95% bootstrap" in line or "95% CI" in line for line in lines)
    assert not any(key.endswith("_ci") for key in report) and "bootstrap" not in report
    assert not any(key.endswith("_ci") for key in report["other_normalizations"]["squad"])
    unanswerable = 100 * sum(1 for _, gold in sample_dev if not gold) / len(sample_dev)
    assert report["comparison"]["exact"] == {
        "predictions": 100.0,
        "compare": pytest.approx(unanswerable),
        "difference": pytest.approx(100.0 - unanswerable),
    }


def test_bootstrap_resamples_flag(v1_files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    dataset, preds = v1_files
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--bootstrap", "20"]
    status, out, _ = run_cli(capsys, *argv)
    assert status == 0 and "(2 questions, 20 resamples, seed 0)" in out


def test_negative_bootstrap(v1_files: tuple[Path, Path], capsys) -> None:
    dataset, preds = v1_files
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--bootstrap", "-5"]
    status, _, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, "--bootstrap -5 is negative", "or 0 for no intervals")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist: check the path"),
        ('["Real Madrid", "1605"]', "holds a JSON array, not an object"),
        ('{"q1": ["Real Madrid"]}', "1 ids have a value that is not a string ('q1': array)"),
    ],
)
def test_bad_compare_file(v1_files: tuple[Path, Path], tmp_path: Path, capsys, content, expected) -> None:
    dataset, preds = v1_files
    other = tmp_path / "other-preds.json"
    if content is not None:
        other.write_text(content, encoding="utf-8")
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--compare", str(other)]
    status, _, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, str(other), expected)


def test_compare_file_missing_a_v2_prediction(
    v2_files: tuple[Path, Path, Path], tmp_path: Path, capsys
) -> None:
    dataset, preds, _ = v2_files
    partial = write_json(tmp_path / "partial.json", {"q1": "Real Madrid"})
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--compare", str(partial)]
    status, _, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, f"--compare {partial}: 1 of 2 questions have no prediction ('q2')")
