"""`tinyroberta-es evaluate`: exact match and F1, as the official scripts give them.

Of a predictions file, or of a model folder (`--model`: answered first through the code path of `predict`).
With 95% percentile-bootstrap intervals over the questions (`bootstrap.py`), and with `--compare`, the paired
bootstrap of the gap to a second predictions file: is it larger than the luck of the questions?

Two thresholds decide "no answer" on v2 data, in this order. With `--model`, the model's own: it answers ""
where its null score minus its best span score (logits) exceeds `--null-threshold` (default 0.0 on v2 data,
as the `run` pipeline evaluates). Then the official one: "" where the no-answer probability exceeds
`--na-prob-thresh` (default 1.0, which keeps every prediction); the probabilities are `--na-probs` for a
predictions file and each prediction's `null_probability` for a model, and the official `best_*` keys are
searched on them. For a model, the null threshold is also searched, in logits, on the questions evaluated
(`null_threshold_search`: optimistic, as it is found on the set it scores; pass it to other data as
`--null-threshold`). The printed summary and the `--output` JSON (`headline`) say which thresholds made
the headline numbers. The JSON is standard (no NaN or Infinity): a `best_*_thresh` of +inf (best to answer
even the questions whose no-answer probability is null, i.e. +inf: no span) and a null threshold search
without any span are written null.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
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
V2_NULL_THRESHOLD = 0.0  # --model on v2 data without --null-threshold: as the `run` pipeline evaluates
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
        help="or a QA model folder to predict with first (on v2 data: its --null-threshold, default 0.0, "
        "decides its answers; its null probabilities serve as --na-probs)",
    )
    parser.add_argument("--na-probs", default=None, help="no-answer probabilities JSON (v2 datasets only)")
    parser.add_argument(
        "--na-prob-thresh",
        type=float,
        default=1.0,
        help="official: predict no answer where the no-answer probability exceeds this (default 1.0: on "
        "probabilities, the predictions stand)",
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


def _number(value: float) -> str:
    return repr(float(value))


def headline(args: argparse.Namespace, dataset: QADataset, null_default: bool) -> str | None:
    """Which thresholds made the headline scores, in words; None when no threshold played a part."""
    if not dataset.is_v2 and (args.model is None or args.null_threshold is None):
        return None
    if args.model is None:
        text = 'the predictions as written ("" is no answer)'
    else:  # with --model, v2 data always has a null threshold (V2_NULL_THRESHOLD by default)
        default = ", the default on v2 data" if null_default else ""
        text = (
            f"the model's answers at --null-threshold {_number(args.null_threshold)}{default} "
            '("" where null score - best span score, in logits, exceeds it)'
        )
    if dataset.is_v2:
        if args.model is not None:
            source = "the model's null_probability"
        else:
            source = (
                f"--na-probs {args.na_probs}" if args.na_probs else "0.0 for every question: no --na-probs"
            )
        text += (
            f", then the official --na-prob-thresh {_number(args.na_prob_thresh)} "
            f'("" where the no-answer probability exceeds it; probabilities: {source})'
        )
    return text


def _standard_totals(totals: dict) -> dict:
    """The official totals, with a non-finite `best_*_thresh` (+inf from a null probability) as None."""
    from tinyroberta_es import atomic

    return {key: atomic.finite_or_none(v) if key.endswith("_thresh") else v for key, v in totals.items()}


def _null_search_record(search: dict, args: argparse.Namespace, questions: int) -> dict:
    """The `null_threshold_search` block of the report: the best thresholds, labelled as found on this set.

    find_best_null_threshold gives finite thresholds or None, so the search goes in as it is.
    """
    return {
        "searched_on": args.dataset,
        "questions": questions,
        "note": "searched on the questions it scores, so its best scores are optimistic; "
        "pass the threshold as --null-threshold on other data",
        **search,
    }


def format_null_search(name: str, search: dict, questions: int) -> str:
    """One line: the best --null-threshold for F1 and for exact match, and what each scores."""
    parts = []
    for key, label in (("f1", "F1"), ("exact", "exact")):
        threshold = search[f"best_{key}_null_threshold"]
        at = f"at {threshold:.4f}" if threshold is not None else "(no question has a span)"
        parts.append(f"{label} {search[f'best_{key}']:.2f} {at}")
    return (
        f"best --null-threshold searched on these {questions} questions (optimistic), {name}: "
        + ", ".join(parts)
    )


def run(args: argparse.Namespace) -> None:
    """Read the predictions (and no-answer probabilities), load the dataset, score, print and write."""
    from tinyroberta_es import atomic
    from tinyroberta_es.bootstrap import DEFAULT_RESAMPLES
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.errors import UserError
    from tinyroberta_es.evaluation import (
        evaluate_with_question_scores,
        find_best_null_threshold,
        get_normalizer,
    )
    from tinyroberta_es.prediction_files import read_na_probs, read_predictions

    names = [args.normalization] if args.normalization else list(DEFAULT_NORMALIZATIONS)
    for name in names:
        get_normalizer(name)  # fail on a typo before any file is read
    resamples = DEFAULT_RESAMPLES if args.bootstrap is None else args.bootstrap
    if resamples < 0:
        raise UserError(
            f"--bootstrap {resamples} is negative: give a number of resamples (default {DEFAULT_RESAMPLES}), "
            "or 0 for no intervals"
        )
    if not math.isfinite(args.na_prob_thresh):
        raise UserError(
            f"--na-prob-thresh {args.na_prob_thresh} is not a finite number: give one "
            "(default 1.0: on probabilities, the predictions stand)"
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
    null_default = False
    null_search: dict[str, dict] = {}
    if args.model is not None:
        if dataset.is_v2 and args.null_threshold is None:
            args = copy.copy(args)
            args.null_threshold, null_default = V2_NULL_THRESHOLD, True
        answered, runner = predict_examples(args, dataset.examples)
        predictions = {p.id: p.text for p in answered}  # the model's own decision: "" where is_null
        na_probs = None
        if dataset.is_v2:
            na_probs = {p.id: p.null_probability for p in answered}  # probabilities, for the official keys
            spans = {p.id: p.answers[0].text if p.answers else "" for p in answered}
            diffs = {p.id: p.null_score_diff for p in answered}
            null_search = {name: find_best_null_threshold(dataset, spans, diffs, name) for name in names}
    scored = {
        name: evaluate_with_question_scores(dataset, predictions, na_probs, args.na_prob_thresh, name)
        for name in names
    }
    results = {name: totals for name, (totals, _) in scored.items()}
    print(format_table(results))

    primary, *others = names
    exact_key = _exact_key(dataset)
    questions = len(scored[primary][1].ids)
    intervals: dict[str, dict[str, list[float]]] = {}
    if resamples:
        intervals = {
            name: _intervals(per, exact_key, resamples, args.seed) for name, (_, per) in scored.items()
        }
        print(f"95% bootstrap intervals ({questions} questions, {resamples} resamples, seed {args.seed})")
        print(format_table(intervals))
    thresholds = headline(args, dataset, null_default)
    if thresholds is not None:
        print(f"scores above: {thresholds}")
    for name, search in null_search.items():
        print(format_null_search(name, search, questions))
    comparison = None
    if other is not None:
        comparison = _compare(args, dataset, primary, scored[primary], other, resamples)
        label = args.predictions if args.model is None else args.model
        print(format_comparison(comparison, label, resamples))

    if args.output:
        searches = {name: _null_search_record(s, args, questions) for name, s in null_search.items()}
        report: dict = {
            **_standard_totals(results[primary]),
            **intervals.get(primary, {}),
            "normalization": primary,
            "dataset": args.dataset,
            **({"predictions": args.predictions} if args.model is None else {"model": args.model}),
        }
        if runner is not None:  # what ran: with --backend auto, the backend it chose and why
            report.update(backend_record(args.backend, runner))
        if thresholds is not None:
            report["headline"] = thresholds
        if args.model is not None and args.null_threshold is not None:
            source = "default on v2 data" if null_default else "--null-threshold"
            report.update(null_threshold=args.null_threshold, null_threshold_source=source)
        if dataset.is_v2:
            source = args.na_probs if args.model is None else "the model's null_probability"
            report.update(na_probs=source, na_prob_thresh=args.na_prob_thresh)
        if primary in searches:
            report["null_threshold_search"] = searches[primary]
        if resamples:
            report["bootstrap"] = {"resamples": resamples, "seed": args.seed, "level": LEVEL}
        if others:
            report["other_normalizations"] = {
                name: {
                    **_standard_totals(results[name]),
                    **intervals.get(name, {}),
                    **({"null_threshold_search": searches[name]} if name in searches else {}),
                }
                for name in others
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
