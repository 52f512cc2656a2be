"""`tinyroberta-es run RECIPE.yaml`: teacher, students, export, evaluation, benchmark, report, model cards.

Rerun the same command to resume: finished stages are skipped, an interrupted training stage continues
from its last checkpoint. `--set` changes any setting of the recipe (`distill.0.train.epochs=3`,
`evaluate.limit=100`); `--stages` runs only some stages (`--stages evaluate,report`).
"""

from __future__ import annotations

import argparse
import shlex

from tinyroberta_es.config import add_set_flag

HELP = "run a recipe: fine-tune, distil, export, evaluate, benchmark, report (rerun to resume)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `run` flags to `parser`."""
    parser.add_argument("recipe", help="recipe YAML file, e.g. recipes/sample.yaml")
    add_set_flag(parser, "distill.0.train.epochs=3 or evaluate.limit=100")
    parser.add_argument(
        "--stages",
        default=None,
        help="comma-separated stages to run (build, teacher, distill, export, evaluate, bench, report)",
    )


def run(args: argparse.Namespace) -> None:
    """Load the recipe, apply the overrides, run its stages."""
    from tinyroberta_es.config import apply_overrides
    from tinyroberta_es.distributed import leave_process_group
    from tinyroberta_es.recipe import load_recipe
    from tinyroberta_es.workflow import run_recipe

    recipe = apply_overrides(load_recipe(args.recipe), args.overrides)
    words = ["tinyroberta-es", "run", args.recipe, *(f"--set={o}" for o in args.overrides)]
    only = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    report = run_recipe(recipe, command=" ".join(shlex.quote(w) for w in words), only=only)
    leave_process_group()
    print(f"done: open {report / 'report.html'}")
