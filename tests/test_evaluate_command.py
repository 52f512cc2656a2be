"""`tinyroberta-es evaluate` end to end on tiny SQuAD files: the table, the intervals, the comparison of two
prediction files, the --output JSON, the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from cli_helpers import assert_one_line_error, read_strict_json, run_cli
from tinyroberta_es.cli import main
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.evaluation import evaluate_predictions
from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer

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


def test_v2_na_probs_file_with_null_writes_standard_json(tmp_path: Path, capsys) -> None:
    # q2 had no span: a null-odds file (predict --null-odds-output) has null (+inf); gold "." normalises to ""
    qas = [qa("q1", ["El Real Madrid"], v2=True), qa("q2", ["."], v2=True)]
    data = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    dataset = write_json(tmp_path / "dev-v2.json", data)
    preds = write_json(tmp_path / "preds.json", {"q1": "Real Madrid", "q2": ""})
    na_probs = tmp_path / "na.json"
    na_probs.write_text('{"q1": 0.2, "q2": null}', encoding="utf-8")
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--dataset", str(dataset), "--predictions", str(preds), "--na-probs", str(na_probs)]
    assert main([*argv, "--normalization", "mlqa-es", "--output", str(out)]) == 0
    report = read_strict_json(out)
    # q2 abstains at every threshold (+inf > 1.0): answerable, so 0; q1 right. Best: answer both, "" being
    # right for q2: 2 of 2 at +inf, written null
    assert (report["exact"], report["best_exact"], report["best_exact_thresh"]) == (50.0, 100.0, None)
    assert "probabilities: --na-probs" in report["headline"]


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
    """Run `evaluate --dataset sample_dev FLAGS --output ...`; the stdout lines and the strict report."""
    out = tmp_path / "eval.json"
    status, stdout, err = run_cli(capsys, "evaluate", "--dataset", "sample_dev", *flags, "--output", str(out))
    assert status == 0, err
    return stdout.splitlines(), read_strict_json(out)


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
    assert len(lines) == 5 and not any("95% bootstrap" in line or "95% CI" in line for line in lines)
    assert lines[3] == (
        'scores above: the predictions as written ("" is no answer), then the official --na-prob-thresh '
        '1.0 ("" where the no-answer probability exceeds it; probabilities: 0.0 for every question: no '
        "--na-probs)"
    )
    assert report["headline"] == lines[3].removeprefix("scores above: ")
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


# --- --model on v2 data: the model's own null decision, then the official threshold on probabilities -------

# What a model gives each question: its best span (None: no span) and null score - best span score (logits)
MODEL_OUTPUT = {
    "a": ("Real Madrid", 1.5),  # right; answered at --null-threshold 2.0, but 1.5 > 1.0
    "b": ("Liga", 0.5),  # unanswerable, answered
    "c": ("1605", 3.0),  # unanswerable, abstained at 2.0
    "d": ("Cervantes", -1.0),  # partly right
    "e": (None, math.inf),  # no span at all; its gold "." normalises to nothing, so "" is right
}
MODEL_GOLDS = {"a": ["El Real Madrid"], "b": [], "c": [], "d": ["Miguel de Cervantes"], "e": ["."]}


def null_probability(diff: float) -> float:
    """A stand-in for the model's null probability: increasing in the difference, 1.0 without a span."""
    return 1.0 / (1.0 + math.exp(-diff)) if math.isfinite(diff) else 1.0


def own_answers(threshold: float) -> dict[str, str]:
    """The model's answers at a null threshold: "" where the difference exceeds it."""
    return {qid: text if text and diff <= threshold else "" for qid, (text, diff) in MODEL_OUTPUT.items()}


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, list]:
    """A v2 dataset of MODEL_GOLDS, and `evaluate --model`'s predictions replaced by MODEL_OUTPUT, decided
    as extraction decides (is_null where the difference exceeds --null-threshold, or without a span).
    Returns the dataset and the list of null thresholds the command passed to the model."""
    from tinyroberta_es.commands import evaluate
    from tinyroberta_es.extraction import Prediction, Span

    seen: list = []

    def predict_examples(args, examples):
        seen.append(args.null_threshold)
        predictions = []
        for ex in examples:
            text, diff = MODEL_OUTPUT[ex.id]
            spans = (
                []
                if text is None
                else [Span(text, CONTEXT.index(text), CONTEXT.index(text) + len(text), 1.0)]
            )
            is_null = not spans or (args.null_threshold is not None and diff > args.null_threshold)
            predictions.append(Prediction(ex.id, spans, diff, is_null, null_probability(diff)))
        return predictions, SimpleNamespace(name="pytorch", selection=None)

    monkeypatch.setattr(evaluate, "predict_examples", predict_examples)
    qas = [qa(qid, golds, v2=True) for qid, golds in MODEL_GOLDS.items()]
    data = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    return write_json(tmp_path / "dev-v2.json", data), seen


def best_over_thresholds(dataset, key: str, normalization: str) -> float:
    """The best score any null threshold gives, each scored independently from the model's answers."""
    diffs = sorted({diff for _, diff in MODEL_OUTPUT.values() if math.isfinite(diff)})
    return max(
        evaluate_predictions(dataset, own_answers(t), normalization=normalization)[key]
        for t in [diffs[0] - 1.0, *diffs]
    )


def test_model_v2_headline_is_the_models_own_decision(fake_model, tmp_path: Path, capsys) -> None:
    dataset_path, seen = fake_model
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--dataset", str(dataset_path), "--model", "m", "--null-threshold", "2.0"]
    status, stdout, err = run_cli(capsys, *argv, "--bootstrap", "0", "--output", str(out))
    assert status == 0, err
    assert seen == [2.0]
    report = read_strict_json(out)  # the span-less example writes no Infinity
    dataset = load_dataset(str(dataset_path), bad_spans="keep")
    own = evaluate_predictions(dataset, own_answers(2.0), normalization="mlqa-es")
    assert (report["exact"], report["f1"]) == pytest.approx((own["exact"], own["f1"]))
    # the old headline, the logit differences read as probabilities against 1.0, differs: "a" abstains
    diffs = {qid: diff for qid, (_, diff) in MODEL_OUTPUT.items()}
    old = evaluate_predictions(dataset, own_answers(2.0), diffs, 1.0, normalization="mlqa-es")
    assert old["exact"] < own["exact"] and old["f1"] < own["f1"]
    # the official best_* are searched on the model's null probabilities
    probs = {qid: null_probability(diff) for qid, diff in diffs.items()}
    official = evaluate_predictions(dataset, own_answers(2.0), probs, 1.0, normalization="mlqa-es")
    assert {k: report[k] for k in official} == pytest.approx(official)
    assert report["null_threshold"] == 2.0 and report["null_threshold_source"] == "--null-threshold"
    assert report["na_probs"] == "the model's null_probability" and report["na_prob_thresh"] == 1.0
    headline = (
        'the model\'s answers at --null-threshold 2.0 ("" where null score - best span score, in logits, '
        'exceeds it), then the official --na-prob-thresh 1.0 ("" where the no-answer probability exceeds it; '
        "probabilities: the model's null_probability)"
    )
    assert report["headline"] == headline and f"scores above: {headline}" in stdout.splitlines()
    # the best null threshold in logits, per normalisation: the best any threshold gives, and it gives it
    searches = {
        "mlqa-es": report["null_threshold_search"],
        "squad": report["other_normalizations"]["squad"]["null_threshold_search"],
    }
    for name, search in searches.items():
        assert (search["searched_on"], search["questions"]) == (str(dataset_path), len(MODEL_OUTPUT))
        assert "optimistic" in search["note"]
        for key in ("exact", "f1"):
            assert search[f"best_{key}"] == pytest.approx(best_over_thresholds(dataset, key, name))
            at_best = own_answers(search[f"best_{key}_null_threshold"])
            assert evaluate_predictions(dataset, at_best, normalization=name)[key] == search[f"best_{key}"]
        prefix = (
            f"best --null-threshold searched on these {len(MODEL_OUTPUT)} questions (optimistic), {name}: "
        )
        line = next(line for line in stdout.splitlines() if line.startswith(prefix))
        assert f"F1 {search['best_f1']:.2f} at {search['best_f1_null_threshold']:.4f}" in line


def test_model_v2_default_null_threshold_and_official_threshold(fake_model, tmp_path: Path, capsys) -> None:
    dataset_path, seen = fake_model
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--dataset", str(dataset_path), "--model", "m", "--normalization", "squad"]
    status, _, err = run_cli(capsys, *argv, "--na-prob-thresh", "0.5", "--output", str(out))
    assert status == 0, err
    assert seen == [0.0]  # no --null-threshold on v2 data: 0.0, as the run pipeline evaluates
    report = read_strict_json(out)
    assert (report["null_threshold"], report["null_threshold_source"]) == (0.0, "default on v2 data")
    assert "--null-threshold 0.0, the default on v2 data" in report["headline"]
    assert "--na-prob-thresh 0.5" in report["headline"]
    # then the official threshold on the model's probabilities: "" where they exceed 0.5
    dataset = load_dataset(str(dataset_path), bad_spans="keep")
    probs = {qid: null_probability(diff) for qid, (_, diff) in MODEL_OUTPUT.items()}
    expected = evaluate_predictions(dataset, own_answers(0.0), probs, 0.5, normalization="squad")
    assert (report["exact"], report["f1"]) == pytest.approx((expected["exact"], expected["f1"]))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--na-prob-thresh", "inf"], "--na-prob-thresh inf is not a finite number"),
        (["--null-threshold", "nan"], "--null-threshold nan is not a finite number"),
    ],
)
def test_model_non_finite_thresholds(fake_model, capsys, flags: list[str], expected: str) -> None:
    dataset_path, _ = fake_model
    status, _, err = run_cli(capsys, "evaluate", "--dataset", str(dataset_path), "--model", "m", *flags)
    assert_one_line_error(status, err, expected)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random QA model with a BPE tokenizer trained on the embedded sample."""
    root = tmp_path_factory.mktemp("tiny-eval")
    tokenizer_dir = train_tokenizer("bpe", spanish_texts(), root / "tokenizer", vocab_size=1000)
    return create_tiny_qa_model(root / "model", tokenizer_dir, max_length=96, seed=1)


def test_model_v2_end_to_end_matches_predict_and_its_own_best_threshold(
    tiny_model: Path, tmp_path: Path, capsys
) -> None:
    flags = ["--dataset", "sample_dev", "--max-length", "96", "--doc-stride", "32", "--bootstrap", "0"]
    model = ["--model", str(tiny_model)]
    _, report = evaluate_sample(capsys, tmp_path, *model, *flags[2:])
    assert report["null_threshold"] == 0.0
    # the same answers as `predict` at the same threshold, scored as a file without --na-probs
    preds = tmp_path / "preds.json"
    status, _, err = run_cli(
        capsys, "predict", *model, *flags[:6], "--null-threshold", "0.0", "--output", str(preds)
    )
    assert status == 0, err
    _, from_file = evaluate_sample(capsys, tmp_path, "--predictions", str(preds), "--bootstrap", "0")
    assert (report["exact"], report["f1"]) == (from_file["exact"], from_file["f1"])
    # the best null threshold, passed back, gives the best score it promised
    search = report["null_threshold_search"]
    threshold = search["best_f1_null_threshold"]
    _, again = evaluate_sample(capsys, tmp_path, *model, *flags[2:], "--null-threshold", repr(threshold))
    assert again["f1"] == pytest.approx(search["best_f1"])
    assert again["null_threshold_search"] == search  # the search does not depend on the threshold used
