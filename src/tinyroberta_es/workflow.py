"""`run_recipe`: a recipe from its teacher to documented, exported, measured students, as stages.

    split      (recipes with a `split` section) the training set without the held-out paragraphs (`split`)
    build      (recipes with a `build` section) a tiny encoder and tokenizer, made offline
    teacher    fine-tune `finetune.model` (`finetune`), or check and fetch the given QA `teacher`
    distill-*  one stage per student (`distill`), each after the students it reads (teaching assistants)
    export-*   each student (and the teacher, with `export.teacher`) to ONNX and/or OpenVINO, fp32 and
               int8, as `backends` needs (`export_formats`), with its parity check (`export`)
    evaluate   every model on every backend and every `evaluate.datasets` set, under mlqa-es and squad
    bench      every model on every backend (`bench`)
    report     summary.json, the report folder (report.md, report.html, plots) and each student's model card

A backend that failed the export's parity check, or whose export is missing, is skipped with the reason
(`unavailable`); the teacher, unless exported, runs on the PyTorch backends (and `auto`) only. With `auto`
in `backends`, a row's `backend` is the backend auto chose, `backend_requested` is "auto" and `auto` holds
the choice (`Runner.selection`: chosen, reason, candidates with their measured ms).

Each stage is the code of the command of the same name, called as a function; `stages.StageRecords`
skips finished stages and resumes interrupted ones. Files of the run folder (`recipe.output`):
`recipe.yaml` (the resolved recipe), `stages/*.json`, `evaluation/*.json` (one per model, backend and set,
with the predictions), `bench/bench.{json,md,png}`, `summary.json` and `report/`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from pathlib import Path
from typing import Any

from tinyroberta_es import atomic
from tinyroberta_es.commands.evaluate import DEFAULT_NORMALIZATIONS
from tinyroberta_es.config import DistillConfig, to_dict, to_yaml
from tinyroberta_es.errors import UserError
from tinyroberta_es.recipe import Recipe
from tinyroberta_es.stages import Stage, StageRecords

log = logging.getLogger(__name__)


def run_recipe(recipe: Recipe, command: str = "", only: list[str] | None = None) -> Path:
    """Run (or resume) every stage of `recipe`; returns the report folder."""
    recipe = check_recipe(recipe)
    out = Path(recipe.output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "recipe.yaml", to_yaml(to_dict(recipe)))
    records = StageRecords(out)
    stages = plan(recipe, out, command)
    names = [s.name for s in stages]
    unknown = [n for n in only or [] if n not in names and not any(s.startswith(f"{n}-") for s in names)]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}: choose from {', '.join(names)}")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    first = [n for n in ("split", "build") if getattr(recipe, n) is not None and records.read(n) is None]
    if world > 1 and first:
        raise UserError(
            "under torchrun the processes share the training stages only: run the first stages in one "
            f"process, with tinyroberta-es run RECIPE --stages {','.join(first)}"
        )
    chosen = [s for s in stages if not only or any(s.name == n or s.name.startswith(f"{n}-") for n in only)]
    if rank == 0:
        log.info("stages: %s", ", ".join(f"{s.name} ({records.state(s)})" for s in chosen))
    for stage in chosen:
        if world > 1 and not stage.trains and (rank != 0 or stage.name in ("split", "build")):
            continue  # under torchrun every process trains; rank 0 alone exports, measures and reports
        records.run(stage, write=rank == 0)
    return out / "report"


def check_recipe(recipe: Recipe) -> Recipe:
    """Catch what would fail late (a wrong teacher, a missing section) before any slow work."""
    if recipe.finetune is not None and recipe.teacher is not None:
        raise UserError(
            "the recipe has both `finetune` and `teacher`: keep one (train a teacher, or give one)"
        )
    if recipe.teacher_folder is None:
        raise UserError("the recipe has no teacher: add a `finetune` section or `teacher: FOLDER_OR_HUB_ID`")
    if not recipe.distill:
        raise UserError("the recipe has no students: add a `distill` list with at least one entry")
    if recipe.split is not None:
        _check_split(recipe)
    if recipe.build is not None and (recipe.finetune is None or recipe.finetune.model != recipe.build.output):
        raise UserError(
            f"build.output {recipe.build.output} is not what finetune.model fine-tunes: make them equal"
        )
    for i, student in enumerate(recipe.distill):
        _check_reads(recipe, i, student)
    distill_order(recipe)  # refuses a cycle, naming the values as the recipe gives them
    recipe = recipe.with_student_folders()
    teacher = str(recipe.local_teacher)
    students = [
        dataclasses.replace(s, teacher=teacher) if s.teacher == recipe.teacher_folder else s
        for s in recipe.distill
    ]
    return dataclasses.replace(recipe, distill=students)


def _check_split(recipe: Recipe) -> None:
    """The split's output is what the teacher or a student trains on; no set it holds out is trained on."""
    split = recipe.split
    trains = {c.data.train for c in [recipe.finetune, *recipe.distill] if c is not None}
    if split.output not in trains:
        raise UserError(
            f"split.output {split.output} is not what any training stage reads: set finetune.data.train "
            f"(or a student's data.train) to {split.output}"
        )
    kept_out = sorted(set(split.held_out) & trains)
    if kept_out:
        raise UserError(
            f"{kept_out[0]} is both held out by split.held_out and trained on: train on split.output"
        )


def _check_reads(recipe: Recipe, i: int, student: DistillConfig) -> None:
    """A student learns from the run's teacher or another student, and starts from a student or a folder."""
    where, others = f"distill[{i}] ({student.name})", [s.name for s in recipe.distill if s is not student]
    students = f"another student ({', '.join(others)})" if others else "another student (none here)"
    named = recipe.student_named(student.teacher)
    if (named is None and student.teacher != recipe.teacher_folder) or named is student:
        what = "itself" if named is student else "neither the run's teacher nor a student of this recipe"
        raise UserError(
            f"{where} learns from {student.teacher}, which is {what}: set its teacher to "
            f"{recipe.teacher_folder} or to {students}"
        )
    folder = student.student.folder
    named = recipe.student_named(folder)
    if named is student or (folder and named is None and not Path(folder).expanduser().is_dir()):
        what = "itself" if named is student else "neither a student of this recipe nor an existing folder"
        raise UserError(
            f"{where} has student.folder {folder}, which is {what}: name {students} or a model folder"
        )


def distill_order(recipe: Recipe) -> list[DistillConfig]:
    """The students in training order: each after the students it reads, otherwise in recipe order.

    A stable topological order (the first ready student in recipe order goes next); a cycle is a UserError
    that names the students and the settings that close it.
    """
    order: list[DistillConfig] = []
    pending = list(recipe.distill)
    while pending:
        done = {s.name for s in order}
        ready = next((s for s in pending if set(recipe.reads(s)) <= done), None)
        if ready is None:
            raise UserError(_cycle(recipe, pending))
        order.append(ready)
        pending = [s for s in pending if s is not ready]
    return order


def _cycle(recipe: Recipe, pending: list[DistillConfig]) -> str:
    """The message for students that read each other in a circle (every pending one reads a pending one)."""
    left, path = {s.name for s in pending}, [pending[0]]
    while True:
        after = recipe.student_named(next(n for n in recipe.reads(path[-1]) if n in left))
        if after in path:
            path = [*path[path.index(after) :], after]
            break
        path.append(after)
    links, fixes = [], {}
    for a, b in itertools.pairwise(path):
        if recipe.student_named(a.teacher) is b:
            links.append(f"{a.name}'s teacher is {a.teacher}")
            fixes["teacher"] = f"one of these teachers to the run's teacher ({recipe.teacher_folder})"
        else:
            links.append(f"{a.name}'s student.folder is {a.student.folder}")
            fixes["folder"] = "one of these student.folder settings to a model folder"
    return (
        f"the students {' -> '.join(s.name for s in path)} learn from each other in a cycle "
        f"({'; '.join(links)}): set {' or '.join(fixes.values())}"
    )


def plan(recipe: Recipe, out: Path, command: str) -> list[Stage]:
    """The stages of `recipe` in order, each with its settings and its work; a student's distill stage
    comes after the stages of the students it reads."""
    teacher = str(recipe.local_teacher)
    students = distill_order(recipe)
    stages = []
    first = []  # what the teacher stage reads from earlier stages
    if recipe.split is not None:
        split = recipe.split
        stages.append(Stage("split", to_dict(split), lambda: split_data(split), outputs=[split.output]))
        first.append("split")
    if recipe.build is not None:
        build = recipe.build
        stages.append(Stage("build", to_dict(build), lambda: build_encoder(recipe), outputs=[build.output]))
        first.append("build")
    teacher_settings = to_dict(recipe.finetune) if recipe.finetune else {"teacher": recipe.teacher}
    stages.append(
        Stage(
            "teacher",
            teacher_settings,
            lambda: prepare_teacher(recipe, teacher),
            after=first,
            trains=recipe.finetune is not None,
            outputs=[teacher],
        )
    )
    for student in students:
        stages.append(
            Stage(
                f"distill-{student.name}",
                to_dict(student),
                lambda s=student: _distill(s),
                after=["teacher", *(f"distill-{name}" for name in recipe.reads(student))],
                trains=True,
                outputs=[student.output],
            )
        )
    settings = {**to_dict(recipe.export), "formats": list(export_formats(recipe)), "int8": wants_int8(recipe)}
    settings = {k: v for k, v in settings.items() if k != "teacher"} | _windows(recipe)
    exported = [("teacher", teacher, "teacher")] if recipe.export.teacher else []
    exported += [(s.name, s.output, f"distill-{s.name}") for s in students]
    for name, folder, after in exported if export_formats(recipe) else []:
        stages.append(
            Stage(f"export-{name}", settings, lambda f=folder: export_folder(recipe, f), after=[after])
        )
    trained = [s.name for s in stages if s.name not in ("split", "build")]
    stages.append(
        Stage(
            "evaluate",
            {**to_dict(recipe.evaluate), "backends": recipe.backends},
            lambda: evaluate_models(recipe, out / "evaluation"),
            after=trained,
        )
    )
    stages.append(
        Stage(
            "bench",
            {**to_dict(recipe.bench), "backends": recipe.backends},
            lambda: bench_models(recipe, out / "bench"),
            after=trained,
        )
    )
    stages.append(Stage("report", {}, lambda: write_report(recipe, out, command), always=True))
    return stages


# --- the stages -------------------------------------------------------------------------------------------


def split_data(split: Any) -> dict[str, Any]:
    """Write the training set without the held-out paragraphs; the counts."""
    from tinyroberta_es.commands.split import write_split

    report = write_split(split.train, split.held_out, split.output, split.bad_spans)
    log.info("split: %s; wrote %s", report.summary(), split.output)
    return {"output": split.output, **dataclasses.asdict(report)}


def build_encoder(recipe: Recipe) -> dict[str, Any]:
    """A tiny random encoder; its tokenizer learns from the built-in sentences and the training set only."""
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer

    b, out = recipe.build, Path(recipe.build.output).expanduser()
    train = load_dataset(recipe.finetune.data.train).examples
    texts = spanish_texts(include_sample=False) + sorted({ex.context for ex in train})
    texts += [ex.question for ex in train]
    tokenizer = train_tokenizer(b.tokenizer, texts, out.parent / f"{out.name}-tokenizer", b.vocab_size)
    create_tiny_qa_model(
        out,
        tokenizer,
        layers=b.layers,
        hidden=b.hidden_size,
        heads=b.heads,
        intermediate=b.intermediate_size,
        max_length=b.max_length,
        seed=b.seed,
    )
    return {"folder": str(out)}


def prepare_teacher(recipe: Recipe, folder: str) -> dict[str, Any]:
    """Fine-tune the teacher, or check the given one answers questions (saving a Hub teacher locally)."""
    from tinyroberta_es.model_folder import load_qa_model

    if recipe.finetune is not None:
        from tinyroberta_es.commands.finetune import finetune

        return {"dev": finetune(recipe.finetune) or {}}
    model, tokenizer = load_qa_model(recipe.teacher)  # one-line error unless it is a QA model
    if not Path(recipe.teacher).expanduser().is_dir():  # a Hub id: the students read a local copy
        model.save_pretrained(Path(folder).expanduser())
        tokenizer.save_pretrained(Path(folder).expanduser())
    return {"source": recipe.teacher}


def _distill(student: Any) -> dict[str, Any]:
    from tinyroberta_es.distill.pipeline import distill

    return {"dev": distill(student) or {}}


def _windows(recipe: Recipe) -> dict[str, int]:
    return {"max_length": recipe.evaluate.max_length, "doc_stride": recipe.evaluate.doc_stride}


def export_formats(recipe: Recipe) -> tuple[str, ...]:
    """What the export stages write: onnx for an onnx* backend, openvino for an openvino* one, both for auto
    (it chooses among every backend that passed parity); () when every backend is a PyTorch one."""
    from tinyroberta_es.onnx_export import FORMATS

    wanted = set(FORMATS) if "auto" in recipe.backends else {b.split("-")[0] for b in recipe.backends}
    return tuple(f for f in FORMATS if f in wanted)


def wants_int8(recipe: Recipe) -> bool:
    """Whether the export stages quantise (with `export.quantize`): an int8 backend or auto is listed."""
    return any("int8" in b or b == "auto" for b in recipe.backends)


def export_folder(recipe: Recipe, folder: str) -> dict[str, Any]:
    """The files of `export_formats` (int8 too, when `wants_int8`) in `<folder>/onnx/`, checked for parity;
    a variant over the F1 budget is kept as *.rejected.* and, like a bf16 run over it, left out of the run."""
    from tinyroberta_es.onnx_export import ExportConfig, export_model

    e = recipe.export
    config = ExportConfig(
        model=folder,
        quantize=e.quantize if wants_int8(recipe) else None,
        per_channel=e.per_channel,
        dev=e.dev or recipe.evaluate.datasets[0],
        dev_limit=e.dev_limit,
        max_f1_drop=e.max_f1_drop,
        min_identical=e.min_identical,
        formats=export_formats(recipe),
        calibration=e.calibration,
        calibration_size=e.calibration_size,
        int8_method=e.int8_method,
        **_windows(recipe),
    )
    report = export_model(config, strict=False)
    failed = [b for b, row in report["variants"].items() if row.get("passed") is False]
    for backend in dict.fromkeys([*report["rejected"], *failed]):
        log.warning(
            "%s: %s failed the parity check on %s (%s): %sleft out of the run",
            folder,
            backend,
            report.get("dev", config.dev),
            parity_failures(report["variants"][backend], e.max_f1_drop),
            "kept as *.rejected.* and " if backend in report["rejected"] else "",
        )
    return {"folder": str(config.output_dir), "formats": list(config.formats), "rejected": report["rejected"]}


def evaluate_models(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Every model x backend x dataset: predictions and EM/F1, one file each (kept when already there)."""
    rows, skipped = [], []
    for name, folder in recipe.models().items():
        for backend in backends_of(recipe, name):
            reason = unavailable(folder, backend)
            if reason:
                skipped.append({"model": name, "backend": backend, "reason": reason})
                continue
            for dataset in recipe.evaluate.datasets:
                rows.append(_evaluate_one(recipe, name, folder, backend, dataset, out))
    _pair_with_teacher(rows, out)
    baselines = [_no_answer_baseline(recipe, dataset) for dataset in recipe.evaluate.datasets]
    return {"rows": rows, "skipped": skipped, "baselines": [b for b in baselines if b]}


def _pair_with_teacher(rows: list[dict[str, Any]], out: Path) -> None:
    """Each student row gains `vs_teacher`: its F1 minus the teacher's (pytorch, same set), per
    normalisation, with a paired bootstrap interval over the questions both answered."""
    import json

    from tinyroberta_es.bootstrap import paired_difference

    def question_f1(row: dict[str, Any]) -> dict[str, list[float]] | None:
        backend = row.get("backend_requested", row["backend"])  # auto rows are saved under "auto"
        path = out / f"{row['model']}.{backend}.{_slug(row['dataset'])}.json"
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return saved.get("question_f1")

    for row in rows:
        teacher = next(
            (
                r
                for r in rows
                if (r["model"], r["backend"], r["dataset"]) == ("teacher", "pytorch", row["dataset"])
            ),
            None,
        )
        if row["model"] == "teacher" or teacher is None:
            continue
        mine, theirs = question_f1(row), question_f1(teacher)
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


def backends_of(recipe: Recipe, name: str) -> list[str]:
    """The backends a model runs on: all of the recipe's, but only the PyTorch ones and auto for a teacher
    that is not exported (`export.teacher`)."""
    from tinyroberta_es.runtimes import engine_of

    if name == "teacher" and not recipe.export.teacher:
        return [b for b in recipe.backends if b == "auto" or engine_of(b) == "torch"]
    return list(recipe.backends)


def unavailable(folder: str, backend: str) -> str | None:
    """Why `backend` cannot run the model in `folder`: no export, or one whose parity check it failed
    (rejected: its files renamed *.rejected.*; or a bf16 run of kept files over budget, or never checked)."""
    import json

    from tinyroberta_es.bench import missing_export
    from tinyroberta_es.runtimes import ONNX_DIR, engine_of, export_command

    parity = Path(folder).expanduser() / ONNX_DIR / "parity.json"
    if backend == "auto" or engine_of(backend) == "torch" or not parity.is_file():
        return missing_export(folder, backend)
    report = json.loads(parity.read_text(encoding="utf-8"))
    row, budget = report.get("variants", {}).get(backend), report["max_f1_drop"]
    if row is None:
        return missing_export(folder, backend) or (
            f"not in the export's parity check {parity} (a bf16 backend needs a CPU with bf16): run "
            f"{export_command(folder, backend)}"
        )
    rejected = backend in report.get("rejected", [])
    if rejected or row.get("passed") is False or row.get("f1_drop", 0.0) > budget:
        what = "rejected by" if rejected else "failed"
        return (
            f"{what} the export's parity check on {report['dev']} ({parity_failures(row, budget)}); "
            f"see {parity}"
        )
    return missing_export(folder, backend)


def parity_failures(row: dict[str, Any], budget: float) -> str:
    """Why a parity row failed, in words: its recorded reasons, else the F1 it loses against the budget."""
    if row.get("failed"):
        return "; ".join(row["failed"])
    return f"loses {row.get('f1_drop', 0.0):.2f} F1, budget {budget:.2f}"


def _evaluate_one(recipe: Recipe, name: str, folder: str, backend: str, dataset: str, out: Path) -> dict:
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
            return saved["row"]
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
    return row


def _mtime(folder: str, backend: str) -> float | None:
    """When the files a backend reads were written (an IR's .xml and .bin): a newer model or export makes
    an old evaluation stale. For auto: every file it chooses among, and the parity report it chooses by."""
    from tinyroberta_es.runtimes import BACKENDS, ONNX_DIR, engine_of, ir_path, onnx_path

    root, backends = Path(folder).expanduser(), list(BACKENDS) if backend == "auto" else [backend]
    files = list(root.glob("*.safetensors")) if any(engine_of(b) == "torch" for b in backends) else []
    for b in backends:
        if engine_of(b) == "ort":
            files.append(onnx_path(folder, b))
        elif engine_of(b) == "ov":
            files += [ir_path(folder, b), ir_path(folder, b).with_suffix(".bin")]
    if backend == "auto":
        files.append(root / ONNX_DIR / "parity.json")
    return max((p.stat().st_mtime for p in files if p.is_file()), default=None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text).name if "/" in text else text)


def bench_models(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Time every model on every backend; bench.json/md/png in `out`; rows named as in the recipe.

    A backend whose files are there but that failed the export's parity check is not timed (skipped, with
    the reason): `run_bench` times every model on every backend it is given, so the models are timed in
    groups that share their backends (one group, one call, unless such a backend exists).
    """
    from tinyroberta_es.bench import missing_export
    from tinyroberta_es.commands.bench import write_report

    named = recipe.models()
    groups: dict[tuple[str, ...], list[str]] = {}  # backends -> the models timed on them
    left_out = []
    for name, folder in named.items():
        timed = []
        for backend in recipe.backends:
            reason = unavailable(folder, backend) if backend in backends_of(recipe, name) else None
            if reason and missing_export(folder, backend) is None:  # its files are there: it would run
                left_out.append({"model": name, "backend": backend, "reason": reason})
            else:
                timed.append(backend)
        groups.setdefault(tuple(timed), []).append(name)
    reports = [_bench_group(recipe, {n: named[n] for n in names}, list(b)) for b, names in groups.items()]
    measured = [r for r in reports if r is not None]
    if not measured:
        raise UserError("nothing was benchmarked: every backend of every model lacks its export")
    report = _merge(measured, recipe, left_out)
    skipped = [s for s in report["skipped"] if s["backend"] in backends_of(recipe, s["model"])]
    for s in skipped:
        s["reason"] = unavailable(named[s["model"]], s["backend"]) or s["reason"]
    report["skipped"] = skipped
    write_report(report, out)  # the labelled speedups, against the teacher (the first model)
    return {"file": str(out / "bench.json")}


def _bench_group(recipe: Recipe, named: dict[str, str], backends: list[str]) -> dict[str, Any] | None:
    """`run_bench` on these models and backends, rows renamed as in the recipe; None when none can run."""
    from tinyroberta_es.bench import BenchConfig, missing_export, model_names, run_bench

    runs = any(b == "auto" or missing_export(f, b) is None for f in named.values() for b in backends)
    if not runs:
        return None
    b = recipe.bench
    config = BenchConfig(
        models=list(named.values()),
        backends=backends,
        dataset=b.dataset,
        questions=b.questions,
        batch_size=b.batch_size,
        seq_len=b.seq_len,
        threads=b.threads,
        repeats=b.repeats,
        budget_s=b.budget_s,
    )
    report = run_bench(config, command=f"tinyroberta-es run {recipe.name} (stage bench)")
    by_label = dict(zip(model_names(config.models), named, strict=True))
    for row in [*report["rows"], *report["skipped"]]:
        row["model"] = by_label[row["model"]]
    for row in report["rows"]:
        row["backend_requested"] = "auto" if "auto" in row else row["backend"]
    return report


def _merge(reports: list[dict[str, Any]], recipe: Recipe, left_out: list[dict[str, Any]]) -> dict[str, Any]:
    """One bench report of the groups' reports: the first's machine and peaks, every row in recipe order
    (model, then backend), `speedup_vs_first` against the first row, the backends left out skipped."""
    from tinyroberta_es.speedups import add_speedups

    report = reports[0]
    models, backends = list(recipe.models()), list(recipe.backends)
    rows = [r for rep in reports for r in rep["rows"]]
    rows.sort(key=lambda r: (models.index(r["model"]), backends.index(r["backend_requested"])))
    add_speedups(rows, "speedup_vs_first")
    report["rows"] = rows
    report["skipped"] = [s for rep in reports for s in rep["skipped"]] + left_out
    report["baseline"] = {"model": rows[0]["model"], "backend": rows[0]["backend"]}
    report["config"] |= {"models": list(recipe.models().values()), "backends": backends}
    return report


def write_report(recipe: Recipe, out: Path, command: str) -> dict[str, Any]:
    """summary.json from the stage records and outputs, then the report folder and the model cards."""
    from tinyroberta_es.card import write_card
    from tinyroberta_es.report import write_report as render
    from tinyroberta_es.summary import build_summary

    summary = build_summary(recipe, out, command)
    atomic.write_json(out / "summary.json", summary)
    paths = render(summary, out / "report")
    cards = [str(write_card(summary, s.name)) for s in recipe.distill]
    print(f"report: {out / 'report' / 'report.html'} (and report.md); model cards: {', '.join(cards)}")
    return {"report": [str(p) for p in paths], "cards": cards}
