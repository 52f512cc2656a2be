"""From start/end logits back to answer spans in the original contexts (the SQuAD v1/v2 recipe, vectorised).

Per window: keep the `n_best` best start and end tokens among context tokens, score every pair at once by
broadcasting (`start[:, None] + end[None, :]`), drop pairs that end before they start or run longer than
`max_answer_length` tokens. Per example: gather the pairs of all its windows, map them to character spans,
strip surrounding whitespace (SentencePiece offsets include the space before a word), drop empty spans and
duplicates (overlapping windows see the same span: the best-scoring one is kept), and keep the `top_k` best.
With `align_to_words` (the default, as in Hugging Face's question-answering pipeline), a stripped span that
starts or ends inside a word (between two alphanumeric characters, `str.isalnum`) is widened to whole words
before duplicates are dropped: widening can make two candidates one, and the better one is kept.

The null ("no answer") score of an example is the smallest ``start[0] + end[0]`` (the CLS/<s> position) over
its windows, as in Hugging Face's SQuAD v2 recipe.

Probabilities do not depend on `top_k`. Per window, the start logits and the end logits each go through a
softmax over that window's context tokens, plus position 0 (CLS/<s>) when a null threshold is set (v2 models:
the null answer lives in the same space). A span's probability is ``p_start[s] * p_end[e]`` in the window it
was taken from; the null probability is ``p_start[0] * p_end[0]`` in the window whose null score the decision
uses. Within one window the spans and the null answer are disjoint events, so their probabilities sum to at
most 1; spans taken from different windows of a long context are scored in different windows and need not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tinyroberta_es.data.schema import Example
from tinyroberta_es.features import Features, pad_rows

_WINDOWS_PER_CHUNK = 512  # windows scored at once: bounds the (C, T) and (C, n, n) temporaries


@dataclass(frozen=True)
class Span:
    """A candidate answer: `context[start:end] == text`; `score` is start logit + end logit."""

    text: str
    start: int
    end: int
    score: float
    # p_start[start token] * p_end[end token], each a softmax over the context tokens of the window the
    # span was taken from (plus CLS/<s> when a null threshold is set): the same whatever top_k
    probability: float = 0.0


@dataclass
class Prediction:
    """The answer to one example: candidate spans best first and the no-answer decision."""

    id: str
    answers: list[Span] = field(default_factory=list)
    null_score_diff: float = math.inf  # null score minus best span score (+inf when there is no span)
    is_null: bool = True
    # p_start[0] * p_end[0] in the window with the smallest null score (0.0 without a null threshold)
    null_probability: float = 0.0

    @property
    def text(self) -> str:
        """The predicted answer text; "" for no answer."""
        return "" if self.is_null or not self.answers else self.answers[0].text


def extract_answers(
    examples: Sequence[Example],
    features: Features,
    start_logits: np.ndarray | Sequence[np.ndarray],
    end_logits: np.ndarray | Sequence[np.ndarray],
    *,
    top_k: int = 1,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float | None = None,
    align_to_words: bool = True,
) -> list[Prediction]:
    """One `Prediction` per example, in example order, from per-window logits.

    `start_logits`/`end_logits` are (N, T) arrays with T at least the longest window (positions past a
    window's end are ignored), or N 1-D arrays. With `null_threshold` None (SQuAD v1 models) the best span
    is always the answer; with a float, the answer is null when ``null_score_diff > null_threshold``.
    With `align_to_words`, spans that cut a word are widened to whole words.
    """
    for name, value in (("top_k", top_k), ("n_best", n_best), ("max_answer_length", max_answer_length)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    n = len(features)
    if len(start_logits) != n or len(end_logits) != n:
        raise ValueError(
            f"got {len(start_logits)} start and {len(end_logits)} end logit rows for {n} windows"
        )
    if n and (features.example_index.min() < 0 or features.example_index.max() >= len(examples)):
        raise ValueError(
            "features refer to examples that are not in `examples`: pass the examples they came from"
        )

    # Each window contributes its best max(n_best, top_k) pairs: every pair among an example's n_best best
    # (what the Hugging Face recipe keeps) is among its own window's n_best best, and memory stays bounded.
    keep = max(n_best, top_k)
    window_null = np.empty(n)  # (N,) start[0] + end[0] of each window
    window_norm = np.empty(n)  # (N,) log of the start softmax's denominator plus the end softmax's
    parts: list[tuple[np.ndarray, ...]] = []
    for lo in range(0, n, _WINDOWS_PER_CHUNK):
        hi = min(lo + _WINDOWS_PER_CHUNK, n)
        offsets = pad_rows(features.offsets[lo:hi], -1)  # (C, T, 2)
        width = offsets.shape[1]
        start = _rows(start_logits, lo, hi, width)  # (C, T)
        end = _rows(end_logits, lo, hi, width)
        domain = offsets[..., 0] >= 0  # (C, T) what the softmaxes run over: context tokens ...
        if null_threshold is not None:
            domain[:, 0] = True  # ... and the null answer's position for v2 models
        window_norm[lo:hi] = _log_sum_exp(start, domain) + _log_sum_exp(end, domain)
        window_null[lo:hi] = start[:, 0] + end[:, 0]
        window, char_start, char_end, score = _window_candidates(
            start, end, offsets, n_best=n_best, keep=keep, max_answer_length=max_answer_length
        )
        log_prob = score - window_norm[lo + window]  # log(p_start * p_end) in the span's own window
        parts.append((features.example_index[lo + window], char_start, char_end, score, log_prob))

    if parts:
        cand_example, cand_start, cand_end, cand_score, cand_log_prob = (
            np.concatenate(c) for c in zip(*parts, strict=True)
        )
    else:
        cand_example = cand_start = cand_end = np.empty(0, np.int64)
        cand_score = cand_log_prob = np.empty(0)
    order = np.lexsort((-cand_score, cand_example))  # by example, best score first
    cand_example, cand_start, cand_end, cand_score, cand_log_prob = (
        x[order] for x in (cand_example, cand_start, cand_end, cand_score, cand_log_prob)
    )
    bounds = np.searchsorted(cand_example, np.arange(len(examples) + 1))  # (E + 1,)
    null, null_log_prob = _null_per_example(features.example_index, window_null, window_norm, len(examples))

    predictions = []
    for e, example in enumerate(examples):
        a, b = bounds[e], bounds[e + 1]
        spans = _best_spans(
            example.context,
            cand_start[a:b],
            cand_end[a:b],
            cand_score[a:b],
            cand_log_prob[a:b],
            top_k,
            align_to_words,
        )
        null_probability = math.exp(null_log_prob[e]) if null_threshold is not None else 0.0
        predictions.append(_decide(example.id, spans, float(null[e]), null_probability, null_threshold))
    return predictions


def _log_sum_exp(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, log(sum(exp(logits))) over the positions where `mask` holds, (C,); -inf for an empty row."""
    masked = np.where(mask, logits, -np.inf)  # (C, T)
    top = masked.max(axis=1, initial=-np.inf)  # (C,)
    shift = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf for an empty row
        return shift + np.log(np.exp(masked - shift[:, None]).sum(axis=1))


def _null_per_example(
    example_index: np.ndarray, window_null: np.ndarray, window_norm: np.ndarray, n_examples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per example, the smallest null score over its windows and log(p_start[0] * p_end[0]) in that window.

    (E,) each; +inf and -inf for an example without windows. Ties go to the first window.
    """
    null = np.full(n_examples, np.inf)
    log_prob = np.full(n_examples, -np.inf)
    order = np.lexsort((window_null, example_index))  # by example, smallest null score first (stable)
    ex = example_index[order]
    first = np.flatnonzero(np.r_[True, ex[1:] != ex[:-1]]) if len(ex) else np.empty(0, np.int64)
    chosen = order[first]  # the deciding window of each example that has windows
    null[ex[first]] = window_null[chosen]
    log_prob[ex[first]] = window_null[chosen] - window_norm[chosen]
    return null, log_prob


def _rows(logits: np.ndarray | Sequence[np.ndarray], lo: int, hi: int, width: int) -> np.ndarray:
    """Rows lo:hi of the logits as one (C, width) float64 array, -inf past each given row."""
    if isinstance(logits, np.ndarray) and logits.ndim == 2:
        if logits.shape[1] < width:
            raise ValueError(f"logits have {logits.shape[1]} positions but a window has {width} tokens")
        return logits[lo:hi, :width].astype(np.float64)
    rows = [np.asarray(r, dtype=np.float64).reshape(-1)[:width] for r in logits[lo:hi]]
    return pad_rows(rows, -np.inf, width=width, dtype=np.float64)


def _window_candidates(
    start: np.ndarray, end: np.ndarray, offsets: np.ndarray, *, n_best: int, keep: int, max_answer_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The `keep` best valid (start, end) pairs of each window, as (window, char_start, char_end, score)."""
    chunk, width = start.shape
    context = offsets[..., 0] >= 0  # (C, T)
    start = np.where(context, start, -np.inf)
    end = np.where(context, end, -np.inf)
    k = min(n_best, width)
    start_idx = np.argpartition(-start, k - 1, axis=1)[:, :k]  # (C, k) the k best starts, unordered
    end_idx = np.argpartition(-end, k - 1, axis=1)[:, :k]
    scores = (
        np.take_along_axis(start, start_idx, 1)[:, :, None] + np.take_along_axis(end, end_idx, 1)[:, None, :]
    )  # (C, k, k)
    length = end_idx[:, None, :] - start_idx[:, :, None] + 1  # (C, k, k) tokens in the span
    scores[(length < 1) | (length > max_answer_length)] = -np.inf
    flat = scores.reshape(chunk, k * k)  # (C, k*k)
    m = min(keep, k * k)
    best = np.argpartition(-flat, m - 1, axis=1)[:, :m]  # (C, m) the m best pairs of each window
    best_scores = np.take_along_axis(flat, best, 1)
    window, slot = np.nonzero(np.isfinite(best_scores))  # context tokens only, valid pairs only
    pair = best[window, slot]
    s_tok = start_idx[window, pair // k]
    e_tok = end_idx[window, pair % k]
    return window, offsets[window, s_tok, 0], offsets[window, e_tok, 1], best_scores[window, slot]


def _best_spans(
    context: str,
    starts: np.ndarray,
    ends: np.ndarray,
    scores: np.ndarray,
    log_probs: np.ndarray,
    top_k: int,
    align_to_words: bool,
) -> list[Span]:
    """Walk candidates best first: strip whitespace, widen to words, skip empty and repeated spans, stop at
    `top_k`."""
    spans: list[Span] = []
    seen: set[tuple[int, int]] = set()
    for s, e, score, log_prob in zip(
        starts.tolist(), ends.tolist(), scores.tolist(), log_probs.tolist(), strict=True
    ):
        raw = context[s:e]
        text = raw.strip()
        if not text:
            continue
        s += len(raw) - len(raw.lstrip())
        e = s + len(text)
        if align_to_words:
            s, e = _widen_to_words(context, s, e)
        if (s, e) in seen:
            continue
        seen.add((s, e))
        spans.append(Span(text=context[s:e], start=s, end=e, score=score, probability=math.exp(log_prob)))
        if len(spans) == top_k:
            break
    return spans


def _widen_to_words(context: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) grown to whole words where it cuts one (an alphanumeric character on both sides)."""
    while start > 0 and context[start - 1].isalnum() and context[start].isalnum():
        start -= 1
    while end < len(context) and context[end].isalnum() and context[end - 1].isalnum():
        end += 1
    return start, end


def _decide(
    example_id: str,
    spans: list[Span],
    null_score: float,
    null_probability: float,
    null_threshold: float | None,
) -> Prediction:
    """Make the no-answer decision for one example (its spans already carry their probabilities)."""
    diff = float(null_score - spans[0].score) if spans else math.inf  # no span: null at every threshold
    is_null = not spans or (null_threshold is not None and diff > null_threshold)
    return Prediction(
        id=example_id,
        answers=spans,
        null_score_diff=diff,
        is_null=is_null,
        null_probability=null_probability,
    )
