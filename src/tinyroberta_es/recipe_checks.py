"""What a recipe must satisfy before `run` does any slow work, and the order its students train in.

`check_recipe` refuses, with one-line errors naming the setting and the fix: both or neither of `finetune`
and `teacher`, no students, a `split` whose output nothing trains on (or that trains on a held-out set), a
`build` that `finetune` does not fine-tune, a student that learns from or starts from neither the run's
teacher, another student nor a folder, and students that read each other in a cycle. `distill_order` is the
training order: each student after the students it reads (teaching assistants, `student.folder`).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from tinyroberta_es.config import DistillConfig
from tinyroberta_es.errors import UserError
from tinyroberta_es.recipe import Recipe


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
