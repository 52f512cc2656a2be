"""Exact match and F1 of extractive QA predictions, equal to the official evaluation scripts.

Three answer normalisers (`NORMALIZERS`) and two scoring semantics:

- v1 (official SQuAD v1.1 script, and MLQA's `evaluate_mlqa.py`): F1 is 0 whenever the token overlap is 0,
  even when both sides normalise to nothing; a question without a prediction scores 0 and still counts.
- v2 (official SQuAD v2.0 script): gold answers that normalise to "" are dropped (`[""]` when none remain);
  F1 is 1 when both sides have no tokens and 0 when only one has; optional no-answer probabilities, a
  threshold on them, and the best threshold found by a sweep.

A model's own no-answer decision is a different threshold, in its own units: it answers "" where the null
score minus its best span score (logits) exceeds `--null-threshold`. `find_best_null_threshold` sweeps that
threshold on a v2 dataset; the official `na_probs` and `na_prob_thresh` are probabilities, applied after it.

Any normaliser goes with either semantics: `normalization="mlqa-es"` on a v2 dataset is the v2.0 script
with MLQA's Spanish normaliser. `evaluate_with_question_scores` also returns the score of each question behind
the totals, which `bootstrap.py` resamples for confidence intervals.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tinyroberta_es.data.schema import Example, QADataset
from tinyroberta_es.errors import UserError
from tinyroberta_es.prediction_files import first_ids

log = logging.getLogger(__name__)

Normalizer = Callable[[str], str]

_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPANISH_ARTICLES = re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b")  # "lo" is not dropped, as in MLQA
_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)


# --- Normalisers -------------------------------------------------------------------------------------------


def normalize_squad(text: str) -> str:
    """Official SQuAD v1.1/v2.0 `normalize_answer`: lowercase, drop ASCII punctuation and a|an|the."""
    text = text.lower().translate(_ASCII_PUNCTUATION)
    return " ".join(_ENGLISH_ARTICLES.sub(" ", text).split())


@functools.cache
def mlqa_punctuation() -> frozenset[str]:
    """MLQA's punctuation: the code points below `sys.maxunicode` of category P*, plus ASCII punctuation.

    Built once, on first use (about a million code points are inspected).
    """
    unicode_p = (chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P"))
    return frozenset(unicode_p).union(string.punctuation)


@functools.cache
def _mlqa_translation() -> dict[int, None]:
    return dict.fromkeys(map(ord, mlqa_punctuation()))


def _normalize_mlqa(text: str, articles: re.Pattern[str]) -> str:
    text = text.lower().translate(_mlqa_translation())
    return " ".join(token for token in articles.sub(" ", text).split() if token.strip())


def normalize_mlqa_es(text: str) -> str:
    """Official MLQA `normalize_answer(s, "es")`: lowercase, drop Unicode punctuation and Spanish articles."""
    return _normalize_mlqa(text, _SPANISH_ARTICLES)


def normalize_mlqa_en(text: str) -> str:
    """Official MLQA `normalize_answer(s, "en")`: lowercase, drop Unicode punctuation and a|an|the."""
    return _normalize_mlqa(text, _ENGLISH_ARTICLES)


NORMALIZERS: dict[str, Normalizer] = {
    "squad": normalize_squad,
    "mlqa-es": normalize_mlqa_es,
    "mlqa-en": normalize_mlqa_en,
}


def get_normalizer(name: str) -> Normalizer:
    """The normaliser called `name`, or a UserError listing the choices."""
    if name not in NORMALIZERS:
        raise UserError(f"unknown normalization {name!r}: choose one of {', '.join(NORMALIZERS)}")
    return NORMALIZERS[name]


# --- Per-question scores -----------------------------------------------------------------------------------


def exact_match(prediction: str, gold: str, normalize: Normalizer = normalize_squad) -> int:
    """1 if both strings normalise to the same text, else 0 (same in v1 and v2)."""
    return int(normalize(prediction) == normalize(gold))


def _precision_recall_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_v1(prediction: str, gold: str, normalize: Normalizer = normalize_squad) -> float:
    """Token F1 as in SQuAD v1.1 and MLQA: 0 when no token is shared, even if both sides are empty."""
    return _precision_recall_f1(normalize(prediction).split(), normalize(gold).split())


def f1_v2(prediction: str, gold: str, normalize: Normalizer = normalize_squad) -> float:
    """Token F1 as in SQuAD v2.0: when either side has no tokens, 1 if both have none, else 0."""
    pred_tokens, gold_tokens = normalize(prediction).split(), normalize(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _precision_recall_f1(pred_tokens, gold_tokens)


def score_v1(
    prediction: str, golds: Sequence[str], normalize: Normalizer = normalize_squad
) -> tuple[int, float]:
    """(exact match, F1) of one prediction, each the maximum over the gold answers (v1 semantics)."""
    if not golds:
        raise ValueError("v1 scoring needs at least one gold answer")
    return (
        max(exact_match(prediction, gold, normalize) for gold in golds),
        max(f1_v1(prediction, gold, normalize) for gold in golds),
    )


def score_v2(
    prediction: str, golds: Sequence[str], normalize: Normalizer = normalize_squad
) -> tuple[int, float]:
    """(exact match, F1) of one prediction, v2 semantics: golds that normalise to "" are dropped first."""
    kept = [gold for gold in golds if normalize(gold)] or [""]
    return (
        max(exact_match(prediction, gold, normalize) for gold in kept),
        max(f1_v2(prediction, gold, normalize) for gold in kept),
    )


# --- v2 no-answer thresholds -------------------------------------------------------------------------------


def apply_no_answer_threshold(
    scores: Mapping[str, float], na_probs: Mapping[str, float], has_ans: Mapping[str, bool], threshold: float
) -> dict[str, float]:
    """Scores after predicting "no answer" wherever `na_probs[id] > threshold` (1 if unanswerable, else 0)."""
    return {
        qid: float(not has_ans[qid]) if na_probs[qid] > threshold else score for qid, score in scores.items()
    }


def find_best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """(best score in percent, its threshold) over all no-answer thresholds, as official `find_best_thresh`.

    Start from abstaining everywhere (every unanswerable question right), then answer questions in increasing
    order of no-answer probability. Ties keep the order of `na_probs` (a stable sort), so the file order
    matters. Ids of `na_probs` that were not scored are skipped.
    """
    current = best = sum(1 for answerable in has_ans.values() if not answerable)
    best_threshold = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            current += scores[qid]
        elif predictions[qid]:  # answering an unanswerable question costs the point abstaining earned
            current -= 1
        if current > best:
            best, best_threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), best_threshold


def find_best_null_threshold(
    dataset: QADataset,
    span_answers: Mapping[str, str],
    null_score_diffs: Mapping[str, float],
    normalization: str = "squad",
) -> dict[str, float | None]:
    """The model's null threshold (logits) that maximises exact match, and the one for F1, on `dataset`.

    A model answers "" where `null_score_diffs[id] > threshold` (null score minus best span score,
    `extraction.Prediction.null_score_diff`) and `span_answers[id]`, its best span, elsewhere; an example
    without a span (difference +inf) has "" at every threshold. Every threshold is tried: each answers the
    questions whose difference is at most it, ties together, scored with v2 semantics. Returns `best_exact`
    and `best_f1` (percent) with `best_exact_null_threshold` and `best_f1_null_threshold`: the midpoint of
    the gap between the last difference answered and the next one (a value rounded for printing decides the
    same), 1 below the smallest finite difference when abstaining everywhere is best (lowest threshold wins
    ties), 1 above the largest when answering every span is; None when no example has a span. Found on the
    questions it scores, the best scores are optimistic: pass the threshold to other data.
    """
    normalize = get_normalizer(normalization)
    if not dataset.is_v2:
        raise UserError(f"null thresholds need a SQuAD v2.0 dataset, but {dataset.source} is not one")
    examples = {ex.id: ex for ex in dataset.examples}  # a repeated id counts once, as in _evaluate_v2
    missing = [qid for qid in examples if qid not in span_answers or qid not in null_score_diffs]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(examples)} questions have no span answer or null score difference "
            f"({first_ids(missing)}): give both for every question"
        )
    nan = [qid for qid in examples if math.isnan(null_score_diffs[qid])]
    if nan:
        raise ValueError(f"{len(nan)} null score differences are NaN ({first_ids(nan)})")
    pairs = {}  # (exact, f1) of abstaining and of answering the span, per question, for both keys at once
    for qid, ex in examples.items():
        golds = [a.text for a in ex.answers]
        pairs[qid] = (score_v2("", golds, normalize), score_v2(span_answers[qid], golds, normalize))
    diffs = sorted({null_score_diffs[qid] for qid in examples if math.isfinite(null_score_diffs[qid])})
    result: dict[str, float | None] = {}
    for key, field in (("exact", 0), ("f1", 1)):
        abstain = {qid: empty[field] for qid, (empty, _) in pairs.items()}
        gain = {  # what answering the span instead of "" adds
            qid: span[field] - empty[field] for qid, (empty, span) in pairs.items()
        }
        if not diffs:
            result[f"best_{key}"] = 100.0 * sum(abstain.values()) / len(examples)
            result[f"best_{key}_null_threshold"] = None
            continue
        by_diff: dict[float, float] = dict.fromkeys(diffs, 0.0)
        for qid in examples:
            if math.isfinite(null_score_diffs[qid]):
                by_diff[null_score_diffs[qid]] += gain[qid]
        current = best = sum(abstain.values())
        answered = -1  # index in `diffs` of the largest difference answered at the best threshold
        for i, diff in enumerate(diffs):
            current += by_diff[diff]
            if current > best:
                best, answered = current, i
        if answered < 0:
            threshold = diffs[0] - 1.0
        elif answered == len(diffs) - 1:
            threshold = diffs[-1] + 1.0
        else:
            threshold = (diffs[answered] + diffs[answered + 1]) / 2
        result[f"best_{key}"] = 100.0 * best / len(examples)
        result[f"best_{key}_null_threshold"] = threshold
    return result


# --- Whole datasets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionScores:
    """Exact match (0 or 1) and F1 (0 to 1) of every question the totals count, in dataset order.

    The totals are 100 times the means of `exact` and `f1`. v1: one entry per question, 0 where there is no
    prediction; v2: one per question id, after the no-answer threshold. Two `QuestionScores` of the same
    dataset and version list the same ids in the same order, so they pair question by question.
    """

    ids: tuple[str, ...]
    exact: tuple[float, ...]
    f1: tuple[float, ...]


def _summary(
    exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]
) -> dict[str, float | int]:
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
        "f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
        "total": len(qids),
    }


def _evaluate_v1(
    examples: Sequence[Example], predictions: Mapping[str, str], normalize: Normalizer
) -> tuple[dict[str, float | int], QuestionScores]:
    no_gold = [ex.id for ex in examples if not ex.answers]
    if no_gold:
        raise UserError(
            f"{len(no_gold)} questions of a v1 dataset have no gold answer ({first_ids(no_gold)}): "
            "v1 scoring needs one per question; use a SQuAD v2.0 file for unanswerable questions"
        )
    missing = [ex.id for ex in examples if ex.id not in predictions]
    if missing:
        log.warning(
            "%d of %d questions have no prediction and score 0 (%s)",
            len(missing),
            len(examples),
            first_ids(missing),
        )
    per_exact: list[float] = []
    per_f1: list[float] = []
    for ex in examples:  # every question counts in the total, answered or not, as in the official scripts
        em, f = (
            score_v1(predictions[ex.id], [a.text for a in ex.answers], normalize)
            if ex.id in predictions
            else (0, 0.0)
        )
        per_exact.append(float(em))
        per_f1.append(f)
    exact = f1 = 0.0
    for em, f in zip(per_exact, per_f1, strict=True):  # summed in order, as the official scripts do
        exact += em
        f1 += f
    result = {"exact_match": 100.0 * exact / len(examples), "f1": 100.0 * f1 / len(examples)}
    return result, QuestionScores(tuple(ex.id for ex in examples), tuple(per_exact), tuple(per_f1))


def _evaluate_v2(
    examples: Sequence[Example],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None,
    threshold: float,
    normalize: Normalizer,
) -> tuple[dict[str, float | int], QuestionScores]:
    missing = [ex.id for ex in examples if ex.id not in predictions]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(examples)} questions have no prediction ({first_ids(missing)}): "
            'v2 evaluation needs a prediction for every question (the empty string "" means no answer)'
        )
    if na_probs is not None:
        missing = [ex.id for ex in examples if ex.id not in na_probs]
        if missing:
            raise UserError(
                f"{len(missing)} of {len(examples)} questions have no no-answer probability "
                f"({first_ids(missing)}): "
                "give one for every question, or no probabilities at all"
            )
    # Dicts keyed by id, as in the official script (a repeated id is scored once, with its last occurrence).
    has_ans = {ex.id: bool(ex.answers) for ex in examples}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for ex in examples:
        exact_raw[ex.id], f1_raw[ex.id] = score_v2(
            predictions[ex.id], [a.text for a in ex.answers], normalize
        )

    probs = na_probs if na_probs is not None else dict.fromkeys(predictions, 0.0)
    exact = apply_no_answer_threshold(exact_raw, probs, has_ans, threshold)
    f1 = apply_no_answer_threshold(f1_raw, probs, has_ans, threshold)
    result = _summary(exact, f1, list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid, answerable in has_ans.items() if answerable == wanted]
        if qids:
            result.update({f"{prefix}_{key}": value for key, value in _summary(exact, f1, qids).items()})
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = find_best_threshold(
            predictions, exact_raw, na_probs, has_ans
        )
        result["best_f1"], result["best_f1_thresh"] = find_best_threshold(
            predictions, f1_raw, na_probs, has_ans
        )
    per_exact = tuple(float(exact[qid]) for qid in exact)
    return result, QuestionScores(tuple(exact), per_exact, tuple(float(f1[qid]) for qid in exact))


def evaluate_predictions(
    dataset: QADataset,
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
    normalization: str = "squad",
) -> dict[str, float | int]:
    """Score `predictions` (question id -> answer text) on `dataset` exactly as the official script would.

    A v1 dataset gives `exact_match` and `f1` (percent); questions without a prediction score 0. A v2
    dataset gives the official v2.0 keys: `exact`, `f1`, `total`, the `HasAns_*` and `NoAns_*` breakdowns
    when such questions exist, and `best_exact`, `best_exact_thresh`, `best_f1`, `best_f1_thresh` when
    `na_probs` is given (without it, every no-answer probability is 0.0). Predictions for ids outside the
    dataset are ignored.
    """
    return evaluate_with_question_scores(dataset, predictions, na_probs, na_prob_thresh, normalization)[0]


def evaluate_with_question_scores(
    dataset: QADataset,
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
    normalization: str = "squad",
) -> tuple[dict[str, float | int], QuestionScores]:
    """`evaluate_predictions`'s totals, and the per-question scores they are the means of (x100).

    The per-question scores honour `na_probs` and `na_prob_thresh` as the totals do; `best_*` are not
    per-question (each is a different threshold).
    """
    normalize = get_normalizer(normalization)
    if not dataset.examples:
        raise UserError(f"dataset {dataset.source} has no questions to evaluate")
    if math.isnan(na_prob_thresh):
        raise UserError("the no-answer probability threshold is NaN: give a number (the default is 1.0)")
    ids = {ex.id for ex in dataset.examples}
    extra = sum(1 for qid in predictions if qid not in ids)
    if extra:
        log.debug("ignoring %d predictions for ids that are not in %s", extra, dataset.source)
    if dataset.is_v2:
        return _evaluate_v2(dataset.examples, predictions, na_probs, na_prob_thresh, normalize)
    if na_probs is not None or na_prob_thresh != 1.0:
        raise UserError(
            f"no-answer probabilities and thresholds need a SQuAD v2.0 dataset, but {dataset.source} is "
            f"v{dataset.version.lstrip('v')}: drop them, or evaluate on a v2.0 file"
        )
    return _evaluate_v1(dataset.examples, predictions, normalize)
