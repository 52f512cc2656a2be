"""Percentile bootstrap over questions: how far EM/F1, and the gap between two systems, move with the sample.

On ~1,190 questions (XQuAD-es) a gap of a point of F1 can be the luck of which questions were asked.
Drawing the questions again with replacement and scoring each draw (Efron's percentile bootstrap) gives an
interval for a score; drawing the same questions for two systems and scoring their difference (the paired
bootstrap, as in Koehn 2004 for MT) gives one for their gap. Pairing cancels what both systems share (easy
and hard questions), so the paired interval is narrower than two separate intervals suggest.

Inputs are per-question scores (0/1 exact match, 0-1 F1, from `evaluation.evaluate_with_question_scores`);
means, intervals and differences come back x100, like the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
CHUNK_ELEMENTS = 1 << 22  # question indices drawn at a time: 32 MiB of int64, however large the dataset


def _vector(scores: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    vector = np.asarray(scores, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(
            f"{name}: need a non-empty 1-D sequence of per-question scores, got shape {vector.shape}"
        )
    if not np.isfinite(vector).all():
        raise ValueError(f"{name}: per-question scores must be finite numbers")
    return vector


def bootstrap_means(
    scores: Sequence[float] | np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """The mean of `scores` in each of `resamples` draws of its entries with replacement, shape (resamples,).

    Each draw takes as many questions as there are. Draws are made `CHUNK_ELEMENTS // len(scores)` at a time
    to bound memory, which does not change them: they depend only on the seed and the number of questions,
    so two score vectors of the same length and seed are resampled at the same questions.
    """
    vector = _vector(scores, "scores")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = vector.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    rows = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        picks = rng.integers(0, n, size=(stop - start, n))  # (draws, questions)
        means[start:stop] = vector[picks].mean(axis=1)
    return means


def _percentile_interval(means: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return 100.0 * float(low), 100.0 * float(high)


def confidence_interval(
    per_question_scores: Sequence[float] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of the mean score, x100 like EM/F1 (95% by default)."""
    return _percentile_interval(bootstrap_means(per_question_scores, resamples, seed), level)


def paired_difference(
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of mean(a) - mean(b), x100: `difference`, `ci_low`, `ci_high` and `p_value`.

    `scores_a[i]` and `scores_b[i]` must score the same question (the same dataset, in the same order).
    Each draw takes the same questions for both, which is resampling the per-question differences.
    `p_value` is two-sided and p-value-like: twice the share of draws whose difference is not of the
    observed sign (a draw at exactly 0 counts against), capped at 1; 1 when the observed difference is 0.
    Its resolution is 1 / resamples: 0 means below that.
    """
    a, b = _vector(scores_a, "scores_a"), _vector(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(
            f"scores_a has {a.size} questions and scores_b {b.size}: "
            "score both on the same questions, in the same order"
        )
    differences = a - b  # (questions,): resampling these resamples the same questions for both systems
    means = bootstrap_means(differences, resamples, seed)
    low, high = _percentile_interval(means, level)
    observed = float(differences.mean())
    if observed == 0.0:
        p_value = 1.0
    else:
        against = means <= 0.0 if observed > 0.0 else means >= 0.0
        p_value = min(1.0, 2.0 * float(against.mean()))
    return {"difference": 100.0 * observed, "ci_low": low, "ci_high": high, "p_value": p_value}
