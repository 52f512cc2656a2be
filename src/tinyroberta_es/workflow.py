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
(`run_backends.unavailable`); the teacher, unless exported, runs on the PyTorch backends (and `auto`) only.
With `auto` in `backends`, a row's `backend` is the backend auto chose, `backend_requested` is "auto" and
`auto` holds the choice (`Runner.selection`: chosen, reason, candidates with their measured ms).

Each stage is the code of the command of the same name, called as a function; `stages.StageRecords`
skips finished stages and resumes interrupted ones. Here: the plan and the stages up to the export, and the
report; the recipe's checks are in `recipe_checks`, the evaluate stage in `run_evaluation`, the bench stage in
`run_benchmarks`. Files of the run folder (`recipe.output`):
`recipe.yaml` (the resolved recipe), `stages/*.json`, `evaluation/*.json` (one per model, backend and set,
with the predictions), `bench/bench.{json,md,png}`, `summary.json` and `report/`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from tinyroberta_es import atomic
from tinyroberta_es.config import to_dict, to_yaml
from tinyroberta_es.errors import UserError
from tinyroberta_es.parity_rows import failure_reason
from tinyroberta_es.recipe import Recipe
from tinyroberta_es.recipe_checks import check_recipe, distill_order
from tinyroberta_es.run_benchmarks import bench_models
from tinyroberta_es.run_evaluation import evaluate_models
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
    for backend in failed:  # every rejected backend too: `parity.judge` marked it not passed
        log.warning(
            "%s: %s failed the parity check on %s (%s): %sleft out of the run",
            folder,
            backend,
            report["dev"],
            failure_reason(report["variants"][backend], e.max_f1_drop),
            "kept as *.rejected.* and " if backend in report["rejected"] else "",
        )
    return {"folder": str(config.output_dir), "formats": list(config.formats), "rejected": report["rejected"]}


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
