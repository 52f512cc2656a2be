"""Every recipe file in the repository loads into the typed configs; the paper recipe is the paper."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyroberta_es.recipe import load_recipe
from tinyroberta_es.workflow import check_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in ROOT.rglob("*.yaml") if ".venv" not in p.parts and "runs" not in p.parts)


def test_recipes_are_found():
    assert {p.name for p in RECIPES} >= {"paper.yaml", "reproduction-small.yaml", "sample.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_loads(path: Path):
    recipe = load_recipe(path)
    assert recipe.finetune is not None or recipe.distill
    names = [d.name for d in recipe.distill]
    assert len(names) == len(set(names)), "student names must be unique"
    check_recipe(recipe)  # what `tinyroberta-es run` checks before any slow work


def test_paper_recipe_is_the_papers_setup():
    recipe = load_recipe(ROOT / "recipes" / "paper.yaml")
    assert recipe.finetune.model == "PlanTL-GOB-ES/roberta-large-bne"
    assert recipe.finetune.data.train == "squad_es_v1.1_train"
    (student,) = recipe.distill
    assert student.student.preset == "paper" and student.student.init == "random"
    loss = student.loss
    assert (loss.kd, loss.ce, loss.hidden, loss.attention, loss.temperature) == (1, 1, 1, 1, 1)
    assert loss.layer_map == "uniform" and student.schedule == "one-stage"
    t, d = student.train, student.data
    assert (t.batch_size, t.lr, t.warmup_ratio, d.max_length, d.doc_stride) == (32, 3e-5, 0.2, 384, 128)
