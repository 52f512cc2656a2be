"""Training data and dev evaluation shared by `finetune` and `distill`."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

log = logging.getLogger(__name__)

DEV_METRICS = ("f1", "exact_match", "squad_f1", "squad_exact_match")  # what `dev_evaluator` returns


def load_training_examples(data: Any) -> list[Any]:
    """The questions of `data.train` (a `DataConfig`) without held-out paragraphs, cut to `train_limit`."""
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.data.split import remove_overlap
    from tinyroberta_es.errors import UserError

    train_set = load_dataset(data.train, bad_spans=data.bad_spans)
    if data.exclude:
        held_out = [load_dataset(name, bad_spans="keep") for name in data.exclude]
        train_set, report = remove_overlap(train_set, held_out)
        log.info("without held-out paragraphs: %s", report.summary())
    examples = train_set.examples[: data.train_limit]
    if not examples:
        raise UserError(f"data.train {data.train} has no questions left to train on")
    return examples


def dev_evaluator(model: Any, tokenizer: Any, data: Any, device: Any = None) -> Any:
    """`evaluate()` for `train` (None without `data.dev`): answer the dev set, F1 and exact match in %.

    `f1` and `exact_match` are under the mlqa-es normalisation, `squad_f1` and `squad_exact_match` under
    SQuAD's. On a v2 dev set a window answers "no answer" when its null score beats its best span. Without
    `device`, the model runs where it is at the time of the call.
    """
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.evaluation import evaluate_predictions
    from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer

    if not data.dev:
        return None
    dev = load_dataset(data.dev, bad_spans="keep")  # scored like the official scripts
    dev = dataclasses.replace(dev, examples=dev.examples[: data.dev_limit])
    inference = InferenceConfig(
        max_length=data.max_length,
        doc_stride=data.doc_stride,
        max_query_length=data.max_query_length,
        null_threshold=0.0 if dev.is_v2 else None,
    )

    def evaluate() -> dict[str, float]:
        where = device or next(model.parameters()).device
        predictions = QuestionAnswerer(model, tokenizer, inference, where).predict(dev.examples)
        answers = {p.id: p.text for p in predictions}
        metrics: dict[str, float] = {}
        for name, prefix in (("mlqa-es", ""), ("squad", "squad_")):
            scores = evaluate_predictions(dev, answers, normalization=name)
            metrics[f"{prefix}f1"] = float(scores["f1"])
            metrics[f"{prefix}exact_match"] = float(scores.get("exact_match", scores.get("exact")))
        return metrics

    return evaluate


def training_features(examples: list[Any], tokenizer: Any, data: Any) -> Any:
    """Windows and labels of `examples` with the window settings of `data` (a `DataConfig`)."""
    from tinyroberta_es.features import prepare_features

    features = prepare_features(
        examples,
        tokenizer,
        max_length=data.max_length,
        doc_stride=data.doc_stride,
        max_query_length=data.max_query_length,
    )
    log.info("%d training questions -> %d windows", len(examples), len(features))
    return features
