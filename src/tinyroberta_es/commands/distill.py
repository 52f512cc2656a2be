"""`tinyroberta-es distill`: a teacher QA model and a student specification into a student QA model.

Steps: resolve the config (recipe section, flags, `--set`), load the teacher and the training data
(held-out overlap removed), optionally augment it, build the student (preset/overrides, initialisation,
trimmed vocabulary), cache the teacher's logits, then train with the shared loop: one stage (all losses
together, as the paper's code does) or two (intermediate layers first, then the prediction layer, as
TinyBERT does).
"""

from __future__ import annotations

import argparse
import logging

from tinyroberta_es.config import add_set_flag

HELP = "distil a teacher QA model into a compact student QA model (TinyBERT-style)"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="recipe YAML file; its `distill` list holds the students")
    parser.add_argument("--name", help="which student of the recipe (default: the only one)")
    parser.add_argument("--teacher", help="teacher QA model folder (overrides the recipe)")
    parser.add_argument("--output", help="student model folder to write (overrides the recipe)")
    parser.add_argument("--train", help="training dataset name or path (overrides data.train)")
    parser.add_argument("--dev", help="dev dataset evaluated during training (overrides data.dev)")
    add_set_flag(parser, "train.lr=1e-4 or loss.attention=0")


def resolve_config(args: argparse.Namespace):
    """The `DistillConfig` from the recipe (or defaults), the direct flags, then `--set` overrides."""
    from tinyroberta_es.config import DistillConfig, apply_overrides
    from tinyroberta_es.errors import UserError
    from tinyroberta_es.recipe import load_recipe

    config = DistillConfig()
    if args.config:
        students = load_recipe(args.config).distill
        if not students:
            raise UserError(f"recipe {args.config} has no `distill` section; add one or drop --config")
        names = [s.name for s in students]
        if args.name is None and len(students) > 1:
            raise UserError(
                f"recipe {args.config} has {len(students)} students; pick one with --name "
                f"({', '.join(names)})"
            )
        if args.name is not None and args.name not in names:
            raise UserError(f"--name {args.name!r} is not in {args.config}: choose one of {', '.join(names)}")
        config = students[names.index(args.name) if args.name else 0]
    flags = {"teacher": args.teacher, "output": args.output, "data.train": args.train, "data.dev": args.dev}
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return apply_overrides(config, overrides + args.overrides)


def run(args: argparse.Namespace) -> None:
    from tinyroberta_es.distill.pipeline import distill
    from tinyroberta_es.distributed import leave_process_group

    distill(resolve_config(args))
    leave_process_group()
