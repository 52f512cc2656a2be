"""`tinyroberta-es evaluate`: exact match and F1, as the official scripts give them.

Of a predictions file, or of a model folder (`--model`: answered first through the code path of `predict`).
"""

from __future__ import annotations

import argparse
import logging

from tinyroberta_es.commands.predict import add_inference_arguments, predict_examples

HELP = "score a predictions file or a model (official SQuAD v1.1/v2.0 and MLQA metrics)"
DEFAULT_NORMALIZATIONS = ("mlqa-es", "squad")  # the first is the primary one, flat at the top of --output

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `evaluate` flags to `parser`."""
    parser.add_argument(
        "--dataset", required=True, help="dataset name (e.g. xquad_es) or SQuAD JSON path/URL"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help='predictions JSON: {question id: answer or ""}')
    source.add_argument(
        "--model",
        help="or a QA model folder to predict with first (on v2 data its null scores serve as --na-probs)",
    )
    parser.add_argument("--na-probs", default=None, help="no-answer probabilities JSON (v2 datasets only)")
    parser.add_argument(
        "--na-prob-thresh",
        type=float,
        default=1.0,
        help="predict no answer where the no-answer probability exceeds this (default 1.0)",
    )
    parser.add_argument(
        "--normalization",
        default=None,
        help="squad, mlqa-es or mlqa-en (default: mlqa-es, with squad beside it)",
    )
    parser.add_argument("--output", default=None, help="also write the scores to this JSON file")
    add_inference_arguments(parser)  # used with --model


def format_table(results: dict[str, dict[str, float | int]]) -> str:
    """An aligned text table: one row per normalisation, one column per metric key of the first row."""
    keys = list(next(iter(results.values())))
    header = ["normalization", *keys]
    rows = [[name, *(_format_value(key, scores[key]) for key in keys)] for name, scores in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join(
            [first, *(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))]
        )

    return "\n".join(line(row) for row in [header, *rows])


def _format_value(key: str, value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if key.endswith("_thresh") else f"{value:.2f}"


def run(args: argparse.Namespace) -> None:
    """Read the predictions (and no-answer probabilities), load the dataset, score, print and write."""
    from tinyroberta_es import atomic
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.errors import UserError
    from tinyroberta_es.evaluation import (
        evaluate_predictions,
        get_normalizer,
        read_na_probs,
        read_predictions,
    )

    names = [args.normalization] if args.normalization else list(DEFAULT_NORMALIZATIONS)
    for name in names:
        get_normalizer(name)  # fail on a typo before any file is read
    if args.model is not None and args.na_probs:
        raise UserError("with --model the no-answer scores come from the model: drop --na-probs")
    if args.predictions is not None:
        predictions = read_predictions(args.predictions)
        na_probs = read_na_probs(args.na_probs) if args.na_probs else None
    dataset = load_dataset(args.dataset, bad_spans="keep")  # the official scripts ignore answer_start
    if args.model is not None:
        answered = predict_examples(args, dataset.examples)
        predictions = {p.id: p.text for p in answered}
        na_probs = {p.id: p.null_score_diff for p in answered} if dataset.is_v2 else None
    results = {
        name: evaluate_predictions(dataset, predictions, na_probs, args.na_prob_thresh, normalization=name)
        for name in names
    }
    print(format_table(results))

    if args.output:
        primary, *others = names
        report: dict = {
            **results[primary],
            "normalization": primary,
            "dataset": args.dataset,
            **({"predictions": args.predictions} if args.model is None else {"model": args.model}),
        }
        if args.model is not None:
            report["backend"] = args.backend
        if dataset.is_v2:
            report.update(na_probs=args.na_probs, na_prob_thresh=args.na_prob_thresh)
        if others:
            report["other_normalizations"] = {name: results[name] for name in others}
        try:
            atomic.write_json(args.output, report)
        except OSError as err:
            raise UserError(
                f"cannot write --output {args.output} ({err.strerror or err}): check the path"
            ) from None
        log.info("wrote %s", args.output)
