"""Bootstrap intervals over questions: coverage of the mean, pairing, determinism, the per-question scores."""

from __future__ import annotations

import numpy as np
import pytest

from tinyroberta_es import bootstrap
from tinyroberta_es.bootstrap import bootstrap_means, confidence_interval, paired_difference
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.schema import Answer, Example, QADataset
from tinyroberta_es.evaluation import evaluate_predictions, evaluate_with_question_scores


def scores(n: int, p: float = 0.7, seed: int = 1) -> np.ndarray:
    """`n` 0/1 per-question scores, each 1 with probability `p`."""
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


# --- Intervals of one system -------------------------------------------------------------------------------


def test_interval_contains_the_mean_and_narrows_with_more_questions() -> None:
    small, large = scores(100), scores(2000)
    small_ci, large_ci = confidence_interval(small), confidence_interval(large)
    assert small_ci[0] < 100 * small.mean() < small_ci[1]
    assert large_ci[0] < 100 * large.mean() < large_ci[1]
    assert width(large_ci) < width(small_ci) / 3  # the width shrinks as 1/sqrt(n): sqrt(20) ~ 4.5
    # a 95% interval of a mean of 0/1 scores is about 2 x 1.96 x sqrt(p(1-p)/n) wide
    expected = 2 * 1.96 * 100 * np.sqrt(large.mean() * (1 - large.mean()) / large.size)
    assert width(large_ci) == pytest.approx(expected, rel=0.15)


def test_constant_scores_give_a_point_interval() -> None:
    assert confidence_interval([0.25] * 50) == (25.0, 25.0)
    assert confidence_interval([1.0]) == (100.0, 100.0)


def test_bootstrap_means_are_means_of_draws_with_replacement() -> None:
    values = np.array([0.0, 0.5, 1.0, 1.0])
    picks = np.random.default_rng(3).integers(0, 4, size=(20, 4))  # the same draws the function makes
    np.testing.assert_allclose(bootstrap_means(values, resamples=20, seed=3), values[picks].mean(axis=1))


def test_draws_do_not_depend_on_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    values = scores(300)
    whole = bootstrap_means(values, resamples=50, seed=5)
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 7 * 300 + 1)  # 7 draws at a time, the last chunk of 1
    np.testing.assert_array_equal(bootstrap_means(values, resamples=50, seed=5), whole)


def test_deterministic_for_a_seed() -> None:
    a, b = scores(500, seed=1), scores(500, p=0.6, seed=2)
    assert confidence_interval(a, seed=7) == confidence_interval(a, seed=7)
    assert paired_difference(a, b, seed=7) == paired_difference(a, b, seed=7)
    assert confidence_interval(a, seed=7) != confidence_interval(a, seed=8)
    assert confidence_interval(a, resamples=200) != confidence_interval(a, resamples=1000)


def test_level_sets_the_percentiles() -> None:
    values = scores(400)
    means = 100 * bootstrap_means(values)
    assert confidence_interval(values, level=0.9) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])))
    assert width(confidence_interval(values, level=0.5)) < width(confidence_interval(values, level=0.99))


# --- Paired differences ------------------------------------------------------------------------------------


def test_identical_systems_differ_by_exactly_zero() -> None:
    f1 = np.random.default_rng(0).random(300)
    assert paired_difference(f1, f1.copy()) == {
        "difference": 0.0,
        "ci_low": 0.0,
        "ci_high": 0.0,
        "p_value": 1.0,
    }


def test_a_right_wherever_b_misses_is_strictly_better() -> None:
    # 200 questions: both right on 120, both wrong on 60; A right and B wrong on the last 20
    a = np.array([1.0] * 120 + [0.0] * 60 + [1.0] * 20)
    b = np.array([1.0] * 120 + [0.0] * 60 + [0.0] * 20)
    result = paired_difference(a, b)
    assert result["difference"] == pytest.approx(10.0)
    assert 0.0 < result["ci_low"] < 10.0 < result["ci_high"]
    assert result["p_value"] == 0.0  # no draw of 200 questions misses all 20 (chance 0.9^200)
    flipped = paired_difference(b, a)  # the other way round: mirrored interval, same p
    assert flipped["difference"] == pytest.approx(-10.0)
    assert (flipped["ci_low"], flipped["ci_high"]) == pytest.approx((-result["ci_high"], -result["ci_low"]))
    assert flipped["p_value"] == 0.0


def test_a_small_gap_is_not_significant() -> None:
    # A and B each right on 5 questions the other misses, and A on one more: +1 in 100
    a = np.array([1.0] * 50 + [1.0] * 6 + [0.0] * 5 + [0.0] * 39)
    b = np.array([1.0] * 50 + [0.0] * 6 + [1.0] * 5 + [0.0] * 39)
    result = paired_difference(a, b)
    assert result["difference"] == pytest.approx(1.0)
    assert result["ci_low"] < 0.0 < result["ci_high"]
    assert 0.5 < result["p_value"] <= 1.0


def test_paired_interval_is_narrower_than_unpaired_on_correlated_scores() -> None:
    rng = np.random.default_rng(4)
    a = (rng.random(1000) < 0.7).astype(float)
    b = np.where(rng.random(1000) < 0.05, 1.0 - a, a)  # B agrees with A on ~95% of the questions
    paired = paired_difference(a, b)
    # unpaired: the two systems resampled at independent questions, as if scored on different samples
    unpaired = 100 * np.quantile(bootstrap_means(a, seed=1) - bootstrap_means(b, seed=2), [0.025, 0.975])
    assert width((paired["ci_low"], paired["ci_high"])) < width(tuple(unpaired)) / 2
    assert width((paired["ci_low"], paired["ci_high"])) < width(confidence_interval(a)) + width(
        confidence_interval(b)
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: confidence_interval([]), "non-empty 1-D"),
        (lambda: confidence_interval([[1.0, 0.0]]), "non-empty 1-D"),
        (lambda: confidence_interval([1.0, float("nan")]), "finite"),
        (lambda: confidence_interval([1.0], resamples=0), "resamples must be at least 1"),
        (lambda: confidence_interval([1.0], level=1.0), "level must lie strictly between 0 and 1"),
        (lambda: paired_difference([1.0, 0.0], [1.0]), "scores_a has 2 questions and scores_b 1"),
    ],
)
def test_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --- The per-question scores the intervals resample --------------------------------------------------------


def test_question_scores_of_the_sample_match_the_totals() -> None:
    dataset = load_dataset("sample_dev", bad_spans="keep")
    predictions = {
        ex.id: (ex.answers[0].text if ex.answers else "") if i % 4 else "nada"
        for i, ex in enumerate(dataset.examples)
    }
    na_probs = {ex.id: (i % 10) / 10 for i, ex in enumerate(dataset.examples)}
    for thresh in (1.0, 0.55):  # the threshold turns some answers into abstentions, per question as in total
        totals, per = evaluate_with_question_scores(dataset, predictions, na_probs, thresh, "mlqa-es")
        assert totals == evaluate_predictions(dataset, predictions, na_probs, thresh, "mlqa-es")
        assert per.ids == tuple(ex.id for ex in dataset.examples)
        assert 100 * np.mean(per.exact) == pytest.approx(totals["exact"])
        assert 100 * np.mean(per.f1) == pytest.approx(totals["f1"])
        assert set(per.exact) <= {0.0, 1.0}


def test_v1_questions_without_a_prediction_score_zero() -> None:
    examples = [
        Example(id=qid, question="¿?", context=text, answers=(Answer(text, 0),))
        for qid, text in (("a", "Madrid"), ("b", "1605"), ("c", "Cervantes"))
    ]
    dataset = QADataset(source="test", version="1.1", examples=examples, is_v2=False)
    totals, per = evaluate_with_question_scores(dataset, {"a": "Madrid", "c": "Miguel de Cervantes"})
    assert per.ids == ("a", "b", "c") and per.exact == (1.0, 0.0, 0.0)
    assert per.f1 == pytest.approx((1.0, 0.0, 0.5))  # c: P 1/3, R 1 -> F1 1/2
    assert totals == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(50.0)}
