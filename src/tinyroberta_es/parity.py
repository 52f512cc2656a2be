"""The export's parity check: every exported backend against PyTorch fp32 on windows of real dev questions.

Per backend: the largest logit differences to the reference, EM and F1 (mlqa-es normalisation), the F1 it
loses and the share of questions whose answer text is identical. A backend fails when it loses more F1 than
`max_f1_drop` or when its share of identical answers is below its `min_identical` (by default per precision,
`MIN_IDENTICAL`: F1 alone hides answers that change in both directions); `export` keeps a failed backend's
file only as `*.rejected.*`.

The questions (`choose_dev`): `--dev auto` takes the first real Spanish dev set of `AUTO_DEV_SETS` that is on
this machine (in the dataset cache, or in a data folder: `TINYROBERTA_ES_DATA`, else `../shared/data` beside
the working directory or the source checkout) and that the model did not train on, as far as its
`run_config.json` (and its teacher's) tells: the training file's question ids when it is local, known overlaps
of named sets otherwise. Without one it falls back to the embedded sample, where one flipped answer of N
questions moves F1 by up to 100/N points, and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.schema import Example
from tinyroberta_es.data.sources import DATASETS, cache_dir, named_source, normalize_name
from tinyroberta_es.errors import UserError
from tinyroberta_es.evaluation import evaluate_predictions
from tinyroberta_es.features import Features
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.runtimes import Runner

log = logging.getLogger(__name__)

AUTO = "auto"
# Real Spanish dev sets for `--dev auto`, best first: XQuAD-es (1,190 questions, professional translation,
# held out of the small-scale recipe), MLQA-es dev, then SQuAD-es dev (machine translation) full and small.
AUTO_DEV_SETS = ("xquad_es", "mlqa_es_dev", "squad_es_v1.1_dev", "squad_es_v1.1_dev_small")
FALLBACK_DEV_SETS = ("sample", "sample_dev")  # embedded: sample_dev when the model trained on sample_train
AUTO_MAX_QUESTIONS = 2000  # `auto` checks at most this many (one flip: 0.05 F1) unless --dev-limit says
DATA_ENV = "TINYROBERTA_ES_DATA"  # folders (os.pathsep) holding local copies of the named datasets
# Sets built from the same SQuAD v1.1 dev paragraphs: a model trained on one has seen part of every other.
SQUAD_DEV_FAMILY = frozenset(
    {
        "xquad_es",
        "squad_es_v1.1_dev",
        "squad_es_v2.0_dev",
        "squad_es_v1.1_dev_small",
        "squad_es_v2.0_dev_small",
    }
)
# The least share of answers identical to PyTorch fp32's, per precision. Measured on trained models
# (benchmarks/results/int8-parity-*.json, 300 XQuAD-es questions): bf16 0.97-0.98; int8 within the F1 budget
# 0.72-0.87, the per-tensor int8 that lost 4.86 F1 0.62; fp32 exports 1.0.
MIN_IDENTICAL = {"fp32": 0.98, "bf16": 0.90, "int8": 0.70}


@dataclass(frozen=True)
class DevChoice:
    """The parity check's questions: what to call them, what to load, why, and how many to keep."""

    name: str  # as parity.json reports it: the --dev value, or the set `auto` chose
    source: str  # what `load_dataset` reads: a name or a path
    reason: str
    limit: int | None
    fallback: bool = False  # `auto` found no real dev set: the embedded sample


def choose_dev(dev: str, model: str | Path, dev_limit: int | None = None) -> DevChoice:
    """The dev set of the parity check: `dev` itself, or for `auto` the best real set on this machine."""
    if dev != AUTO:
        return DevChoice(dev, dev, "given with --dev", dev_limit)
    runs, unknown = training_data(model)
    memo: dict[str, set[str]] = {}

    def ids_of(source: str) -> set[str]:  # question ids, each file read once
        if source not in memo:
            memo[source] = {e.id for e in load_dataset(source, bad_spans="keep", labels="optional").examples}
        return memo[source]

    skipped = []
    for name in (*AUTO_DEV_SETS, *FALLBACK_DEV_SETS):
        local = local_copy(name)
        if local is None:
            continue
        seen = _seen_in_training(name, local, runs, ids_of)
        if seen:
            skipped.append(f"{name} ({seen})")
            continue
        fallback = name in FALLBACK_DEV_SETS
        where = "embedded in the package" if fallback else "cached" if local == name else f"at {local}"
        parts = [f"--dev auto chose {name} ({where})"]
        parts += [f"skipped {', '.join(skipped)}"] if skipped else []
        parts += [unknown] if unknown else []
        limit = dev_limit or (None if fallback else AUTO_MAX_QUESTIONS)
        return DevChoice(name, local, "; ".join(parts), limit, fallback)
    raise UserError(
        f"--dev auto found no dev set the model {model} did not train on (skipped {', '.join(skipped)}): "
        "pass --dev NAME|PATH"
    )


def questions(
    choice: DevChoice, max_length: int, doc_stride: int, max_f1_drop: float, data: Any = None
) -> tuple[Any, InferenceConfig]:
    """The questions of `choice` (cut to its limit) and the window settings they are read with; `data`: the
    set `choice` names, when the caller has loaded it already."""
    dev = load_dataset(choice.source, bad_spans="keep") if data is None else data
    dev = dataclasses.replace(dev, examples=dev.examples[: choice.limit])
    if not dev.examples:
        raise UserError(f"--dev {choice.name} has no questions for the parity check: pick another dataset")
    if choice.fallback:
        flip = 100 / len(dev.examples)
        log.warning(
            "no real Spanish dev set on this machine (%s): the parity check runs on the embedded %s, %d "
            "questions, where one flipped answer costs up to %.2f F1%s; pass --dev xquad_es (or mlqa_es_dev, "
            "squad_es_v1.1_dev, a SQuAD file) for a check that means something",
            ", ".join(AUTO_DEV_SETS),
            choice.name,
            len(dev.examples),
            flip,
            f", more than --max-f1-drop {max_f1_drop}" if flip > max_f1_drop else "",
        )
    inference = InferenceConfig(
        max_length=max_length, doc_stride=doc_stride, null_threshold=0.0 if dev.is_v2 else None
    )
    return dev, inference


def data_dirs() -> list[Path]:
    """Folders searched for local copies of named datasets: `TINYROBERTA_ES_DATA` (os.pathsep-separated;
    empty: none), else `../shared/data` beside the working directory and beside the source checkout."""
    given = os.environ.get(DATA_ENV)
    if given is not None:
        return [Path(p).expanduser() for p in given.split(os.pathsep) if p.strip()]
    here = Path(__file__).resolve().parents  # src/tinyroberta_es/parity.py in a source checkout
    found = [Path.cwd().parent / "shared" / "data", *([here[3] / "shared" / "data"] if len(here) > 3 else [])]
    return list(dict.fromkeys(p.resolve() for p in found if p.is_dir()))


def local_copy(name: str) -> str | None:
    """What `load_dataset` can read for the named dataset without a download, or None.

    The name itself for a packaged or cached set; a file in `data_dirs()` with the set's file name (its
    sha256 checked where the registry knows it; a file that differs is not that set).
    """
    entry = DATASETS[name]
    if entry.resource or (cache_dir() / entry.filename).is_file():
        return name
    if entry.member and entry.sha256:
        return None  # the sha256 is the archive's: a loose member cannot be checked
    basename = Path(entry.member or urllib.parse.urlparse(entry.url).path).name
    for folder in data_dirs():
        for path in [folder / basename, *sorted(folder.glob(f"*/{basename}"))]:
            if path.is_file() and (entry.sha256 is None or _sha256(path) == entry.sha256):
                return str(path)
            if path.is_file():
                log.debug("%s differs from %s's sha256: not used", path, name)
    return None


def training_data(model: str | Path) -> tuple[list[tuple[str, list[str]]], str]:
    """The (train, exclude) pairs of the runs that made `model` (its own and its teacher's, from their
    `run_config.json`), and a note when that is unknown."""
    runs, notes = [], []
    folder: Path | None = Path(model).expanduser()
    for _ in range(2):  # the model, then the teacher it was distilled from
        if folder is None:
            break
        config = folder / "run_config.json"
        if not config.is_file():
            notes.append(f"no {config}: the model's training data is unknown")
            break
        record = json.loads(config.read_text(encoding="utf-8"))
        data = record.get("data") or {}
        if data.get("train"):
            runs.append((str(data["train"]), [str(e) for e in data.get("exclude") or []]))
        teacher = record.get("teacher")
        folder = Path(teacher).expanduser() if teacher and Path(teacher).expanduser().is_dir() else None
    return runs, "; ".join(notes)


def _seen_in_training(
    name: str, local: str, runs: list[tuple[str, list[str]]], ids_of: Callable[[str], set[str]]
) -> str | None:
    """Why the named set `name` (read from `local`) is not held out of the training `runs`, or None."""
    for train, exclude in runs:
        if any(_same_set(name, local, e) for e in exclude):
            continue  # the run removed its paragraphs from training
        if _same_set(name, local, train):
            return f"the model trained on {train}"
        train_local = _local_source(train)
        if train_local is None:
            entry = named_source(train)
            if entry is not None and {entry.name, name} <= SQUAD_DEV_FAMILY:
                return f"{train}, which the model trained on, shares its SQuAD v1.1 dev paragraphs"
            continue
        shared = len(ids_of(local) & ids_of(train_local))
        if shared:
            return f"{shared} of its question ids are in {train}, which the model trained on"
    return None


def _same_set(name: str, local: str, other: str) -> bool:
    entry = named_source(other)
    if entry is not None:
        return normalize_name(entry.name) == normalize_name(name)
    path = Path(other).expanduser()
    return path.is_file() and Path(local).is_file() and path.resolve() == Path(local).resolve()


def _local_source(source: str) -> str | None:
    """`source` (a name or a path) when it can be read without a download, else None."""
    entry = named_source(source)
    if entry is not None:
        return local_copy(entry.name)
    return source if Path(source).expanduser().is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def precision_of(backend: str) -> str:
    """int8, bf16 or fp32: what a backend's weights and matmuls run in (int8 wins over bf16)."""
    return "int8" if "int8" in backend else "bf16" if "bf16" in backend else "fp32"


def min_identical_of(backend: str, min_identical: float | None) -> float:
    """The least share of identical answers `backend` must give: `min_identical`, else per precision."""
    return MIN_IDENTICAL[precision_of(backend)] if min_identical is None else min_identical


def failures(backend: str, row: dict[str, Any], max_f1_drop: float, min_identical: float | None) -> list[str]:
    """Why a backend's row fails the check (empty when it passes; the reference row always passes)."""
    reasons = []
    if row.get("f1_drop", 0.0) > max_f1_drop:
        reasons.append(f"loses {row['f1_drop']:.2f} F1 (budget --max-f1-drop {max_f1_drop})")
    need = min_identical_of(backend, min_identical)
    if "same_answers" in row and row["same_answers"] < need - 1e-9:
        reasons.append(
            f"gives PyTorch fp32's answer to {100 * row['same_answers']:.1f}% of the questions "
            f"(budget --min-identical {need:g})"
        )
    return reasons


def judge(report: dict[str, Any], max_f1_drop: float, min_identical: float | None) -> list[str]:
    """Mark every row of `report` passed or not (with `min_identical` and `failed`); the failed backends."""
    failed = []
    for backend, row in report["variants"].items():
        if "same_answers" in row:
            row["min_identical"] = min_identical_of(backend, min_identical)
        reasons = failures(backend, row, max_f1_drop, min_identical)
        row["passed"] = not reasons
        if reasons:
            row["failed"] = reasons
            failed.append(backend)
        else:
            row.pop("failed", None)
    return failed


def format_report(report: dict[str, Any]) -> str:
    """The parity report as a short aligned table."""
    header = [
        "backend",
        "file",
        "max|d start|",
        "max|d end|",
        "EM",
        "F1",
        "F1 drop",
        "same answers",
        "passed",
    ]
    rows = [header]
    for backend, r in report["variants"].items():
        diffs = [f"{r[k]:.2e}" if k in r else "-" for k in ("max_abs_diff_start", "max_abs_diff_end")]
        same = "-"
        if "same_answers" in r:
            need = r.get("min_identical")
            same = f"{100 * r['same_answers']:.1f}%" + (f" (min {100 * need:g}%)" if need is not None else "")
        rows.append(
            [
                backend,
                r.get("file") or "(source)",
                *diffs,
                f"{r['exact_match']:.2f}",
                f"{r['f1']:.2f}",
                f"{r['f1_drop']:+.2f}" if "f1_drop" in r else "-",
                same,
                {True: "yes", False: "NO"}.get(r.get("passed"), "-") if "f1_drop" in r else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # names left-aligned, numbers right-aligned
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    title = f"parity on {report['dev']}: {report['questions']} questions, {report['windows']} windows"
    if "max_f1_drop" in report:
        title += f"; budget: F1 drop <= {report['max_f1_drop']:g}, identical answers >= the min shown"
    ops = report.get("fused_ops")
    graph = "fused: " + ", ".join(f"{n} {op}" for op, n in ops.items()) if ops else "not fused"
    lines = [title, *map(line, rows), f"ONNX graph {graph}"]
    if report.get("external_data"):
        lines.append("ONNX weights saved as external data (<file>.onnx.data beside each graph)")
    for name, how in report.get("int8", {}).items():
        lines.append(f"{name}: {how['method']}, {how['calibration_windows']} calibration windows")
    return "\n".join(lines)
