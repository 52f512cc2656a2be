"""The export's parity check: every exported backend against PyTorch fp32 on windows of real dev questions.

Per backend: the largest logit differences to the reference, EM and F1 (mlqa-es normalisation), the F1 it
loses and the share of questions whose answer is identical. A backend that loses more than the budget fails;
`export` keeps its file only as `*.rejected.*` and `--backend auto` never picks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyroberta_es.data.schema import Example
from tinyroberta_es.evaluation import evaluate_predictions
from tinyroberta_es.features import Features
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.runtimes import Runner


@dataclass
class ParitySet:
    """The questions of the check, their windows and the reference logits of PyTorch fp32."""

    dataset: Any  # data.schema.Dataset, sliced to the questions checked
    tokenizer: Any
    inference: InferenceConfig
    features: Features
    reference: dict[str, Any]  # the reference row: exact_match, f1
    answers: dict[str, str]  # the reference's answer per question id
    start: np.ndarray  # (N, L) reference logits
    end: np.ndarray

    @property
    def examples(self) -> list[Example]:
        """The questions checked."""
        return list(self.dataset.examples)


def reference(dataset: Any, tokenizer: Any, runner: Runner, inference: InferenceConfig) -> ParitySet:
    """Windows of `dataset` and the answers, scores and logits of `runner` (PyTorch fp32) on them."""
    answerer = QuestionAnswerer(runner, tokenizer, inference)
    features = answerer.features(dataset.examples)
    start, end = answerer.logits(features)
    answers = {p.id: p.text for p in answerer.extract(dataset.examples, features, start, end)}
    return ParitySet(dataset, tokenizer, inference, features, _scores(dataset, answers), answers, start, end)


def check(ref: ParitySet, runner: Runner) -> dict[str, Any]:
    """One backend's row: logit differences, EM/F1, F1 drop against the reference, identical answers."""
    answerer = QuestionAnswerer(runner, ref.tokenizer, ref.inference)
    start, end = answerer.logits(ref.features)
    answers = {p.id: p.text for p in answerer.extract(ref.examples, ref.features, start, end)}
    lengths = ref.features.lengths
    valid = np.arange(lengths.max())[None, :] < lengths[:, None]  # (N, L)
    row = _scores(ref.dataset, answers)
    return row | {
        "max_abs_diff_start": float(np.abs(start[valid] - ref.start[valid]).max()),
        "max_abs_diff_end": float(np.abs(end[valid] - ref.end[valid]).max()),
        "f1_drop": ref.reference["f1"] - row["f1"],
        "same_answers": sum(answers[q] == ref.answers[q] for q in answers) / len(answers),
    }


def f1_function(
    tokenizer: Any, inference: InferenceConfig, wrap: Callable[[Any], Runner], dataset: Any
) -> Callable[[Any, Any], tuple[float, list[float]]]:
    """NNCF's validation function: F1 (points) of a compiled model on questions, and each question's F1."""
    import dataclasses

    from tinyroberta_es.evaluation import evaluate_with_question_scores

    def f1_of(compiled: Any, questions: Any) -> tuple[float, list[float]]:
        subset = dataclasses.replace(dataset, examples=list(questions))
        answerer = QuestionAnswerer(wrap(compiled), tokenizer, inference)
        answers = {p.id: p.text for p in answerer.predict(subset.examples)}
        scores, per_question = evaluate_with_question_scores(subset, answers, normalization="mlqa-es")
        return float(scores["f1"]), [100 * f for f in per_question.f1]

    return f1_of


def _scores(dataset: Any, answers: dict[str, str]) -> dict[str, Any]:
    scores = evaluate_predictions(dataset, answers, normalization="mlqa-es")
    return {"exact_match": float(scores.get("exact_match", scores.get("exact"))), "f1": float(scores["f1"])}


def over_budget(report: dict[str, Any], max_f1_drop: float) -> list[str]:
    """The backends of a parity report that lose more than `max_f1_drop` F1 points."""
    return [b for b, row in report["variants"].items() if row.get("f1_drop", 0.0) > max_f1_drop]


def format_report(report: dict[str, Any]) -> str:
    """The parity report as a short aligned table."""
    header = ["backend", "file", "max|d start|", "max|d end|", "EM", "F1", "F1 drop", "same answers"]
    rows = [header]
    for backend, r in report["variants"].items():
        diffs = [f"{r[k]:.2e}" if k in r else "-" for k in ("max_abs_diff_start", "max_abs_diff_end")]
        rows.append(
            [
                backend,
                r.get("file") or "(source)",
                *diffs,
                f"{r['exact_match']:.2f}",
                f"{r['f1']:.2f}",
                f"{r['f1_drop']:+.2f}" if "f1_drop" in r else "-",
                f"{100 * r['same_answers']:.1f}%" if "same_answers" in r else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # names left-aligned, numbers right-aligned
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    title = f"parity on {report['dev']}: {report['questions']} questions, {report['windows']} windows"
    ops = report.get("fused_ops")
    graph = "fused: " + ", ".join(f"{n} {op}" for op, n in ops.items()) if ops else "not fused"
    lines = [title, *map(line, rows), f"ONNX graph {graph}"]
    for name, how in report.get("int8", {}).items():
        lines.append(f"{name}: {how['method']}, {how['calibration_windows']} calibration windows")
    return "\n".join(lines)
