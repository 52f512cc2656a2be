"""Every recipe file in the repository loads into the typed configs; the paper recipe is the paper; the
backends and export settings a recipe accepts, and the one-line errors for the ones it does not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tinyroberta_es.config import from_dict
from tinyroberta_es.errors import UserError
from tinyroberta_es.onnx_export import ExportConfig
from tinyroberta_es.recipe import ExportSection, Recipe, load_recipe
from tinyroberta_es.recipe_checks import check_recipe
from tinyroberta_es.runtimes import CHOICES

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


def recipe_with(**changes) -> dict:
    """The smoke recipe as plain data, with top-level keys replaced."""
    return yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text()) | changes


def test_every_runtime_backend_and_auto_is_a_recipe_backend():
    recipe = from_dict(Recipe, recipe_with(backends=list(CHOICES)), where="recipe.yaml")
    assert recipe.backends == list(CHOICES)
    assert {"openvino", "openvino-bf16", "openvino-int8", "openvino-int8-bf16", "auto"} <= set(CHOICES)


def test_an_unknown_backend_is_one_line_naming_the_value_and_every_choice():
    with pytest.raises(UserError) as err:
        from_dict(Recipe, recipe_with(backends=["pytorch", "openvino-fp8"]), where="recipe.yaml")
    message = str(err.value)
    assert "\n" not in message and "unknown backends entry 'openvino-fp8'" in message
    assert message.endswith(f"choose one of {', '.join(CHOICES)}")


@pytest.mark.parametrize(
    ("export", "needle"),
    [
        ({"int8_method": "fastest"}, "unknown export.int8_method 'fastest': choose one of auto, plain, "),
        ({"calibration_size": 0}, "export.calibration_size is 0; it must be positive"),
        ({"teacher": "yes please"}, "export.teacher"),
        ({"calibrate": "xquad_es"}, "unknown key recipe.yaml.export.calibrate"),
    ],
)
def test_bad_export_settings_are_one_line_errors(export, needle):
    with pytest.raises(UserError, match=re.escape(needle)) as err:
        from_dict(Recipe, recipe_with(export=export), where="recipe.yaml")
    assert "\n" not in str(err.value)


def test_export_section_takes_its_openvino_settings_and_their_defaults_are_the_export_commands():
    section = from_dict(
        ExportSection,
        {"calibration": "xquad_es", "calibration_size": 64, "int8_method": "accuracy-aware", "teacher": True},
    )
    assert (section.calibration, section.calibration_size, section.int8_method, section.teacher) == (
        "xquad_es",
        64,
        "accuracy-aware",
        True,
    )
    defaults, command = ExportSection(), ExportConfig(model="m")
    for name in ("calibration", "calibration_size", "int8_method"):
        assert getattr(defaults, name) == getattr(command, name), name
    assert defaults.teacher is False
