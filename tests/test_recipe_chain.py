"""Teacher-assistant chains in recipes (12 -> 6 -> 3): a student learns from, or starts from, another student.

`check_recipe` resolves student names to output folders and refuses cycles, self-references and unknown
names in one line; `plan` trains every student after the students it reads. One end-to-end run of the
smoke recipe with a second student that learns from the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_helpers import assert_one_line_error, run_cli
from test_run import SAMPLE, SMALL, cli_env, overrides
from tinyroberta_es.config import from_dict
from tinyroberta_es.recipe import Recipe, load_recipe
from tinyroberta_es.recipe_checks import check_recipe
from tinyroberta_es.workflow import plan

TEACHER = "runs/smoke/teacher"


def student(name: str, teacher: str, **spec) -> dict:
    """A distill entry of the smoke recipe (its data and training), named `name`, learning from `teacher`."""
    entry = yaml.safe_load(SAMPLE.read_text())["distill"][0]
    return entry | {"name": name, "teacher": teacher, "output": f"runs/smoke/{name}", "student": spec}


def recipe_with(*students: dict) -> Recipe:
    data = yaml.safe_load(SAMPLE.read_text()) | {"distill": list(students)}
    return from_dict(Recipe, data, where="recipe.yaml")


def write_recipe(tmp_path: Path, *students: dict) -> Path:
    data = yaml.safe_load(SAMPLE.read_text()) | {"distill": list(students)}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_trains_a_chain_given_in_reverse_after_the_students_it_reads(tmp_path):
    recipe = check_recipe(
        recipe_with(
            student("s3", "s6", layers=3, init="folder-layers", folder="s12-copy"),
            student("other", TEACHER, layers=2),
            student("s12-copy", TEACHER, layers=4, init="teacher-layers"),
            student("s6", "runs/smoke/s12-copy", layers=2, init="teacher-layers", init_layers="bottom"),
        )
    )
    stages = plan(recipe, tmp_path, "")
    distill = [s for s in stages if s.name.startswith("distill-")]
    assert [s.name for s in distill] == ["distill-other", "distill-s12-copy", "distill-s6", "distill-s3"]
    after = {s.name: list(s.after) for s in distill}
    assert after["distill-s3"] == ["teacher", "distill-s6", "distill-s12-copy"]
    assert after["distill-s6"] == ["teacher", "distill-s12-copy"] and after["distill-other"] == ["teacher"]
    names = [s.name for s in stages]
    assert all(names.index(f"export-{n}") > names.index(f"distill-{n}") for n in ("s3", "s6"))
    assert names.index("evaluate") > names.index("distill-s3")
    by_name = {s.name: s for s in recipe.distill}  # the recipe keeps its order; names became folders
    assert [s.name for s in recipe.distill] == ["s3", "other", "s12-copy", "s6"]
    assert by_name["s3"].teacher == "runs/smoke/s6"
    assert by_name["s3"].student.folder == "runs/smoke/s12-copy"
    assert by_name["s6"].teacher == "runs/smoke/s12-copy" and by_name["other"].teacher == TEACHER
    assert distill[-1].settings["teacher"] == "runs/smoke/s6"  # what run_config.json will record
    assert recipe.models()["teacher"] == TEACHER and recipe.chain("s3") == ["s3", "s6", "s12-copy", "teacher"]


def test_load_recipe_resolves_names_so_distill_config_name_reads_the_assistant(tmp_path):
    path = write_recipe(tmp_path, student("s1", "s2", layers=1), student("s2", TEACHER, layers=2))
    s1 = load_recipe(path).distill[0]
    assert s1.teacher == "runs/smoke/s2"


@pytest.mark.parametrize(
    ("students", "needles"),
    [
        (
            [student("a", "b", layers=1), student("b", "c", layers=1), student("c", "a", layers=1)],
            ["the students a -> b -> c -> a learn from each other in a cycle", "a's teacher is", TEACHER],
        ),
        (
            [student("a", TEACHER, layers=1, init="pretrained", folder="b"), student("b", "a", layers=1)],
            ["a -> b -> a", "a's student.folder is", "b's teacher is", TEACHER],
        ),
        (
            [student("a", "a", layers=1), student("b", TEACHER, layers=1)],
            ["distill[0] (a) learns from a, which is itself", f"set its teacher to {TEACHER}", "(b)"],
        ),
        (
            [student("a", TEACHER, layers=1), student("b", "assistant", layers=1)],
            ["distill[1] (b) learns from assistant, which is neither the run's teacher nor a student", "(a)"],
        ),
        (
            [student("a", TEACHER, layers=1, init="folder-layers", folder="a")],
            ["distill[0] (a) has student.folder a, which is itself", "another student (none here)"],
        ),
        (
            [student("a", TEACHER, layers=1), student("b", TEACHER, init="folder-layers", folder="nowhere")],
            ["distill[1] (b) has student.folder nowhere", "nor an existing folder", "(a)"],
        ),
    ],
)
def test_cycles_self_references_and_unknown_names_are_one_line_errors(
    tmp_path, capsys, monkeypatch, students, needles
):
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(capsys, "run", str(write_recipe(tmp_path, *students)))
    assert_one_line_error(status, err, *needles)
    assert not (tmp_path / "runs").exists()  # refused before any work


@pytest.mark.slow
def test_a_student_of_a_student_trains_after_it_and_its_card_names_the_chain(tmp_path):
    data = yaml.safe_load(SAMPLE.read_text())
    data["distill"].append(
        student("student-1l", "student-2l", layers=1, init="teacher-layers", init_layers="bottom")
    )
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(data))
    shrink = [*SMALL, "backends=[pytorch]"]  # no export: the chain is what is tested here
    shrink += [f"distill.1.train.{key}=3" for key in ("max_steps", "eval_every", "checkpoint_every")]
    stages = ["--stages", "build,teacher,distill,evaluate,report"]  # timing is tested in test_run.py
    argv = [sys.executable, "-m", "tinyroberta_es.cli", "run", str(path), *overrides(shrink), *stages]
    done = subprocess.run(argv, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "runs" / "smoke"
    for name, steps, layers in (("student-2l", 6, 2), ("student-1l", 3, 1)):
        assert json.loads((run / name / "train_state.json").read_text())["step"] == steps
        assert json.loads((run / name / "config.json").read_text())["num_hidden_layers"] == layers
    first, second = run / "stages" / "distill-student-2l.json", run / "stages" / "distill-student-1l.json"
    assert json.loads(second.read_text())["after"] == ["teacher", "distill-student-2l"]
    assert second.stat().st_mtime_ns > first.stat().st_mtime_ns
    assert done.stderr.index("stage distill-student-2l: running") < done.stderr.index(
        "stage distill-student-1l: running"
    )
    config = json.loads((run / "student-1l" / "run_config.json").read_text())
    assert config["teacher"] == "runs/smoke/student-2l" and config["student"]["init_layers"] == "bottom"
    assert "copied from the teacher (2 layers, init_layers bottom): its embeddings, layers [1]" in done.stderr

    summary = json.loads((run / "summary.json").read_text())
    models = {m["name"]: m for m in summary["models"]}
    assert models["student-1l"]["chain"] == ["student-1l", "student-2l", "teacher"]
    assert models["student-1l"]["source"] == "runs/smoke/student-2l"
    assert models["student-2l"]["chain"] == ["student-2l", "teacher"]
    assert {r["model"] for r in summary["evaluation"]["rows"]} == {"teacher", "student-2l", "student-1l"}
    card = (run / "student-1l" / "README.md").read_text()
    assert "a student distilled from **student-2l**, itself distilled from **teacher** with" in card
    assert "- Teaching assistant: **student-2l** (`runs/smoke/student-2l`" in card
    assert "a student distilled from **teacher** with" in (run / "student-2l" / "README.md").read_text()
    assert "teacher: runs/smoke/student-2l" in (run / "report" / "report.md").read_text()
