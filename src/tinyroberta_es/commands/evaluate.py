"""`tinyroberta-es evaluate`: exact match and F1, as the official scripts give them.

Of a predictions file, or of a model folder (`--model`: answered first through the code path of `predict`).
With 95% percentile-bootstrap intervals over the questions (`bootstrap.py`), and with `--compare`, the paired
bootstrap of the gap to a second predictions file: is it larger than the luck of the questions?
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from tinyroberta_es.commands.predict import (
    add_inference_arguments,
    backend_record,
    check_inference_flags,
    predict_examples,
)

if TYPE_CHECKING:
    from tinyroberta_es.data.schema import QADataset
    from tinyroberta_es.evaluation import QuestionScores

HELP = "score a predictions file or a model (official SQuAD v1.1/v2.0 and MLQA metrics)"
DEFAULT_NORMALIZATIONS = ("mlqa-es", "squad")  # the first is the primary one, flat at the top of --output
LEVEL = 0.95  # of every interval the command reports

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
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="N",
        help="bootstrap resamples of the questions for 95%% intervals (default 1000; 0: no intervals)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws (default 0)")
    parser.add_argument(
        "--compare",
        default=None,
        metavar="OTHER.json",
        help="a second predictions file: its scores and the paired bootstrap of the difference to it",
    )
    parser.add_argument("--output", default=None, help="also write the scores to this JSON file")
    add_inference_arguments(parser)  # used with --model


def format_table(results: dict[str, dict]) -> str:
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


def _format_value(key: str, value: float | int | list[float]) -> str:
    if isinstance(value, list):  # an interval
        return "[" + ", ".join(f"{bound:.2f}" for bound in value) + "]"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if key.endswith("_thresh") else f"{value:.2f}"


def format_comparison(comparison: dict, label: str, resamples: int) -> str:
    """One line: both scores, their difference, its paired interval and p-value, for F1 then exact match."""
    parts = []
    for key, metric in comparison.items():
        if not isinstance(metric, dict):
            continue
        text = f"{key} {metric['predictions']:.2f} vs {metric['compare']:.2f}: {metric['difference']:+.2f}"
        if "difference_ci" in metric:
            low, high = metric["difference_ci"]
            p_value = metric["p_value"]
            p_text = f"p = {p_value:.3f}" if p_value > 0 else f"p < {1 / resamples:.3g}"
            text += f" (95% CI {low:+.2f} to {high:+.2f}, {p_text})"
        parts.append(text)
    return f"{comparison['normalization']}, {label} minus {comparison['compare']}: " + "; ".join(parts)


def _exact_key(dataset: QADataset) -> str:
    """The exact-match key of the official script for this dataset's version."""
    return "exact" if dataset.is_v2 else "exact_match"


def _intervals(scores: QuestionScores, exact_key: str, resamples: int, seed: int) -> dict[str, list[float]]:
    from tinyroberta_es.bootstrap import confidence_interval

    return {
        f"{exact_key}_ci": list(confidence_interval(scores.exact, resamples, LEVEL, seed)),
        "f1_ci": list(confidence_interval(scores.f1, resamples, LEVEL, seed)),
    }


def _compare(
    args: argparse.Namespace,
    dataset: QADataset,
    normalization: str,
    ours: tuple[dict, QuestionScores],
    other_predictions: dict[str, str],
    resamples: int,
) -> dict:
    """The `comparison` block: both scores, and the paired bootstrap of (ours - other) for F1 and EM."""
    from tinyroberta_es.bootstrap import paired_difference
    from tinyroberta_es.errors import UserError
    from tinyroberta_es.evaluation import evaluate_with_question_scores

    try:  # scored as written: its "" are its no-answers (--na-probs belong to --predictions)
        theirs = evaluate_with_question_scores(
            dataset, other_predictions, None, args.na_prob_thresh, normalization
        )
    except UserError as err:
        raise UserError(f"--compare {args.compare}: {err}") from None
    exact_key = _exact_key(dataset)
    comparison: dict = {"compare": args.compare, "normalization": normalization}
    for key, field in (("f1", "f1"), (exact_key, "exact")):
        ours_total, theirs_total = ours[0][key], theirs[0][key]
        metric: dict = {
            "predictions": ours_total,
            "compare": theirs_total,
            "difference": ours_total - theirs_total,
        }
        if resamples:
            paired = paired_difference(
                getattr(ours[1], field), getattr(theirs[1], field), resamples, LEVEL, args.seed
            )
            metric.update(difference_ci=[paired["ci_low"], paired["ci_high"]], p_value=paired["p_value"])
        comparison[key] = metric
    return comparison


def run(args: argparse.Namespace) -> None:
    """Read the predictions (and no-answer probabilities), load the dataset, score, print and write."""
    from tinyroberta_es import atomic
    from tinyroberta_es.bootstrap import DEFAULT_RESAMPLES
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.errors import UserError
    from tinyroberta_es.evaluation import (
        evaluate_with_question_scores,
        get_normalizer,
        read_na_probs,
        read_predictions,
    )

    names = [args.normalization] if args.normalization else list(DEFAULT_NORMALIZATIONS)
    for name in names:
        get_normalizer(name)  # fail on a typo before any file is read
    resamples = DEFAULT_RESAMPLES if args.bootstrap is None else args.bootstrap
    if resamples < 0:
        raise UserError(
            f"--bootstrap {resamples} is negative: give a number of resamples (default {DEFAULT_RESAMPLES}), "
            "or 0 for no intervals"
        )
    if args.model is not None and args.na_probs:
        raise UserError("with --model the no-answer scores come from the model: drop --na-probs")
    if args.model is not None:
        check_inference_flags(args)  # before the dataset is read: a --backend typo fails at once
    if args.predictions is not None:
        predictions = read_predictions(args.predictions)
        na_probs = read_na_probs(args.na_probs) if args.na_probs else None
    other = read_predictions(args.compare) if args.compare else None
    dataset = load_dataset(args.dataset, bad_spans="keep")  # the official scripts ignore answer_start
    runner = None
    if args.model is not None:
        answered, runner = predict_examples(args, dataset.examples)
        predictions = {p.id: p.text for p in answered}
        na_probs = {p.id: p.null_score_diff for p in answered} if dataset.is_v2 else None
    scored = {
        name: evaluate_with_question_scores(dataset, predictions, na_probs, args.na_prob_thresh, name)
        for name in names
    }
    results = {name: totals for name, (totals, _) in scored.items()}
    print(format_table(results))

    primary, *others = names
    exact_key = _exact_key(dataset)
    intervals: dict[str, dict[str, list[float]]] = {}
    if resamples:
        intervals = {
            name: _intervals(per, exact_key, resamples, args.seed) for name, (_, per) in scored.items()
        }
        questions = len(scored[primary][1].ids)
        print(f"95% bootstrap intervals ({questions} questions, {resamples} resamples, seed {args.seed})")
        print(format_table(intervals))
    comparison = None
    if other is not None:
        comparison = _compare(args, dataset, primary, scored[primary], other, resamples)
        label = args.predictions if args.model is None else args.model
        print(format_comparison(comparison, label, resamples))

    if args.output:
        report: dict = {
            **results[primary],
            **intervals.get(primary, {}),
            "normalization": primary,
            "dataset": args.dataset,
            **({"predictions": args.predictions} if args.model is None else {"model": args.model}),
        }
        if runner is not None:  # what ran: with --backend auto, the backend it chose and why
            report.update(backend_record(args.backend, runner))
        if dataset.is_v2:
            report.update(na_probs=args.na_probs, na_prob_thresh=args.na_prob_thresh)
        if resamples:
            report["bootstrap"] = {"resamples": resamples, "seed": args.seed, "level": LEVEL}
        if others:
            report["other_normalizations"] = {
                name: {**results[name], **intervals.get(name, {})} for name in others
            }
        if comparison is not None:
            report["comparison"] = comparison
        try:
            atomic.write_json(args.output, report)
        except OSError as err:
            raise UserError(
                f"cannot write --output {args.output} ({err.strerror or err}): check the path"
            ) from None
        log.info("wrote %s", args.output)
