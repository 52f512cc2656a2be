"""The `evaluate` stage of `run`: every model on every backend and every `evaluate.datasets` set.

One file per model, backend and set in `evaluation/` (`<model>.<backend>.<set>.json`): the settings, the
model's mtime, the row (EM/F1 with bootstrap intervals under each normalisation), the predictions and the
per-question F1. A file whose settings and model files are unchanged is kept, not recomputed. Each student
row gains `vs_teacher` (a paired bootstrap difference against the teacher's PyTorch row), and each SQuAD v2
set its no-answer baseline. A backend that cannot run a model (`run_backends.unavailable`) is skipped with
the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from tinyroberta_es import atomic
from tinyroberta_es.commands.evaluate import DEFAULT_NORMALIZATIONS
from tinyroberta_es.config import to_dict
from tinyroberta_es.recipe import Recipe
from tinyroberta_es.run_backends import backends_of, unavailable

log = logging.getLogger(__name__)


def evaluate_models(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Every model x backend x dataset: predictions and EM/F1, one file each (kept when already there)."""
    rows, question_f1, skipped = [], [], []
    for name, folder in recipe.models().items():
        for backend in backends_of(recipe, name):
            reason = unavailable(folder, backend)
            if reason:
                skipped.append({"model": name, "backend": backend, "reason": reason})
                continue
            for dataset in recipe.evaluate.datasets:
                row, f1 = _evaluate_one(recipe, name, folder, backend, dataset, out)
                rows.append(row)
                question_f1.append(f1)
    _pair_with_teacher(rows, question_f1)
    baselines = [_no_answer_baseline(recipe, dataset) for dataset in recipe.evaluate.datasets]
    return {"rows": rows, "skipped": skipped, "baselines": [b for b in baselines if b]}


def _pair_with_teacher(rows: list[dict[str, Any]], question_f1: list[dict[str, list[float]] | None]) -> None:
    """Each student row gains `vs_teacher`: its F1 minus the teacher's (pytorch, same set), per
    normalisation, with a paired bootstrap interval over the questions both answered. `question_f1`: each
    row's per-question F1 by normalisation, as `_evaluate_one` returns it."""
    from tinyroberta_es.bootstrap import paired_difference

    for row, mine in zip(rows, question_f1, strict=True):
        teacher = next(
            (
                i
                for i, r in enumerate(rows)
                if (r["model"], r["backend"], r["dataset"]) == ("teacher", "pytorch", row["dataset"])
            ),
            None,
        )
        if row["model"] == "teacher" or teacher is None:
            continue
        theirs = question_f1[teacher]
        if not mine or not theirs:
            continue  # an evaluation kept from before per-question scores were saved
        row["vs_teacher"] = {
            norm: paired_difference(mine[norm], theirs[norm]) for norm in mine if norm in theirs
        }


def _no_answer_baseline(recipe: Recipe, dataset: str) -> dict[str, Any] | None:
    """What answering "no answer" to every question scores on a v2 set (the floor a model must beat)."""
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.evaluation import evaluate_predictions

    data = load_dataset(dataset, bad_spans="keep")
    if not data.is_v2:
        return None
    data = dataclasses.replace(data, examples=data.examples[: recipe.evaluate.limit])
    empty = {ex.id: "" for ex in data.examples}
    result = evaluate_predictions(data, empty, normalization=DEFAULT_NORMALIZATIONS[0])
    return {
        "dataset": dataset,
        "questions": len(data.examples),
        "unanswerable": sum(1 for ex in data.examples if not ex.answers),
        "f1": result["f1"],
        "exact_match": result["exact"],
    }


def _evaluate_one(
    recipe: Recipe, name: str, folder: str, backend: str, dataset: str, out: Path
) -> tuple[dict[str, Any], dict[str, list[float]] | None]:
    """The row of `name` on `backend` and `dataset`, and its per-question F1 by normalisation (None in a
    file kept from before those were saved); computed and saved, or kept from an up-to-date file."""
    import json

    from tinyroberta_es.bootstrap import confidence_interval
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.evaluation import evaluate_with_question_scores
    from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer

    e = recipe.evaluate
    path = out / f"{name}.{backend}.{_slug(dataset)}.json"
    settings = {**to_dict(e), "folder": folder, "dataset": dataset}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("settings") == settings and saved.get("model_mtime") == _mtime(folder, backend):
            log.info("evaluation of %s on %s with %s: done before; kept", name, dataset, backend)
            return saved["row"], saved.get("question_f1")
    data = load_dataset(dataset, bad_spans="keep")
    examples = data.examples[: e.limit]
    data = dataclasses.replace(data, examples=examples)
    config = InferenceConfig(
        max_length=e.max_length,
        doc_stride=e.doc_stride,
        batch_size=e.batch_size,
        null_threshold=0.0 if data.is_v2 else None,
        backend=backend,
        threads=recipe.bench.threads,
    )
    answerer = QuestionAnswerer.from_pretrained(folder, config)
    runner = answerer.runner  # with auto: the backend it chose, and why
    log.info("evaluating %s (%s) on %d questions of %s", name, runner.name, len(examples), dataset)
    predictions = answerer.predict(examples, progress=True)
    answers = {p.id: p.text for p in predictions}
    # The official no-answer probabilities are real probabilities: the answers above already hold the model's
    # own null decision (threshold 0.0 on logit differences), which the official threshold 1.0 leaves alone.
    na_probs = {p.id: p.null_probability for p in predictions} if data.is_v2 else None
    scores, question_f1 = {}, {}
    for norm in DEFAULT_NORMALIZATIONS:
        result, per_question = evaluate_with_question_scores(data, answers, na_probs, normalization=norm)
        exact = result.get("exact_match", result.get("exact"))
        scores[norm] = {**result, "exact_match": exact, "f1": result["f1"]}
        scores[norm].pop("exact", None)
        scores[norm]["f1_ci"] = list(confidence_interval(per_question.f1))
        scores[norm]["exact_match_ci"] = list(confidence_interval(per_question.exact))
        question_f1[norm] = list(per_question.f1)
    row = {
        "model": name,
        "backend": runner.name,
        "backend_requested": backend,
        "dataset": dataset,
        "questions": len(examples),
        "scores": scores,
    } | ({"auto": runner.selection} if runner.selection is not None else {})
    saved = {
        "settings": settings,
        "model_mtime": _mtime(folder, backend),
        "row": row,
        "predictions": answers,
        "question_f1": question_f1,  # per question, dataset order: paired comparisons read these
    }
    atomic.write_json(path, saved)
    return row, question_f1


def _mtime(folder: str, backend: str) -> float | None:
    """When the files a backend reads were written (an IR's .xml and .bin): a newer model or export makes
    an old evaluation stale. For auto: every file it chooses among, and the parity report it chooses by."""
    from tinyroberta_es.runtimes import BACKENDS, ONNX_DIR, engine_of, ir_path, onnx_path
    from tinyroberta_es.runtimes.ov import ir_files

    root, backends = Path(folder).expanduser(), list(BACKENDS) if backend == "auto" else [backend]
    files = list(root.glob("*.safetensors")) if any(engine_of(b) == "torch" for b in backends) else []
    for b in backends:
        if engine_of(b) == "ort":
            files.append(onnx_path(folder, b))
        elif engine_of(b) == "ov":
            files += ir_files(ir_path(folder, b))
    if backend == "auto":
        files.append(root / ONNX_DIR / "parity.json")
    return max((p.stat().st_mtime for p in files if p.is_file()), default=None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text).name if "/" in text else text)
