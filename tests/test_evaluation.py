"""Evaluation: normalisers, v1/v2 exact match and F1, thresholds, prediction files; hand-computed values."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import pytest

from tinyroberta_es.data.schema import Answer, Example, QADataset
from tinyroberta_es.errors import UserError
from tinyroberta_es.evaluation import (
    NORMALIZERS,
    evaluate_predictions,
    exact_match,
    f1_v1,
    f1_v2,
    find_best_null_threshold,
    find_best_threshold,
    mlqa_punctuation,
    normalize_mlqa_en,
    normalize_mlqa_es,
    normalize_squad,
    score_v1,
    score_v2,
)
from tinyroberta_es.prediction_files import read_na_probs, read_predictions

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
XQUAD_ES = SHARED / "data" / "xquad_es" / "xquad.es.json"
needs_xquad = pytest.mark.skipif(not XQUAD_ES.is_file(), reason=f"XQuAD-es not found at {XQUAD_ES}")


def make_dataset(golds: dict[str, list[str]], *, is_v2: bool = False) -> QADataset:
    """A dataset with one question per id; an empty gold list is an unanswerable (v2) question."""
    examples = [
        Example(
            id=qid,
            question="¿?",
            context=" ".join(texts),
            answers=tuple(Answer(t, 0) for t in texts),
            is_impossible=not texts,
        )
        for qid, texts in golds.items()
    ]
    return QADataset(source="test", version="v2.0" if is_v2 else "1.1", examples=examples, is_v2=is_v2)


# --- Normalisers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "squad", "mlqa_es", "mlqa_en"),
    [
        # squad drops the preposition "a" and keeps ¿ and the Spanish article; mlqa-es does the opposite
        ("¿Quién ganó a la Liga?", "¿quién ganó la liga", "quién ganó a liga", "quién ganó la liga"),
        ("«El Quijote» — 1605…", "«el quijote» — 1605…", "quijote 1605", "el quijote 1605"),
        ("“Los años 20”", "“los años 20”", "años 20", "los años 20"),
        ("¡Ay, Dios mío!", "¡ay dios mío", "ay dios mío", "ay dios mío"),
        (
            "The a an un una unos unas el la los las lo",
            "un una unos unas el la los las lo",
            "the a an lo",
            "un una unos unas el la los las lo",
        ),
        # whole words only: Laura, Elena, unanimidad keep their letters
        (
            "Laura y Elena por unanimidad",
            "laura y elena por unanimidad",
            "laura y elena por unanimidad",
            "laura y elena por unanimidad",
        ),
        # ASCII punctuation is deleted, not replaced by a space: "el-la" becomes the word "ella"
        ("el-la O'Donnell", "ella odonnell", "ella odonnell", "ella odonnell"),
        ("ÁRBOL Ñandú", "árbol ñandú", "árbol ñandú", "árbol ñandú"),  # accents kept
        ("100 $ y 50 €", "100 y 50 €", "100 y 50 €", "100 y 50 €"),  # $ is ASCII punctuation, € a symbol
        ("  10\u00a0km\t\n ", "10 km", "10 km", "10 km"),  # any Unicode whitespace, squeezed
        ("¿?", "¿", "", ""),
        ("", "", "", ""),
    ],
)
def test_normalizers(text: str, squad: str, mlqa_es: str, mlqa_en: str) -> None:
    assert normalize_squad(text) == squad
    assert normalize_mlqa_es(text) == mlqa_es
    assert normalize_mlqa_en(text) == mlqa_en


def test_normalizer_table() -> None:
    expected = {"squad": normalize_squad, "mlqa-es": normalize_mlqa_es, "mlqa-en": normalize_mlqa_en}
    assert expected == NORMALIZERS


def test_mlqa_punctuation_is_unicode_p_plus_ascii_and_cached() -> None:
    punct = mlqa_punctuation()
    assert punct is mlqa_punctuation()
    assert set("¿¡«»—…“”‘’·") <= punct  # Unicode category P*
    assert set("$+<=>^`|~") <= punct  # ASCII punctuation of category S
    assert not set("€°ºªa 1") & punct  # symbols, letters, digits and spaces stay
    assert "\U0010ffff" not in punct  # range(sys.maxunicode) stops one short, as the official script


# --- Per-question scores -----------------------------------------------------------------------------------


def test_partial_overlap_f1() -> None:
    # squad keeps "el": pred [el, real, madrid, club], gold [real, madrid]: P = 2/4, R = 2/2, F1 = 2/3
    assert f1_v1("el Real Madrid club", "Real Madrid") == pytest.approx(2 / 3)
    # mlqa-es drops "el": pred [real, madrid, club]: P = 2/3, R = 1, F1 = (4/3) / (5/3) = 4/5
    assert f1_v1("el Real Madrid club", "Real Madrid", normalize_mlqa_es) == pytest.approx(0.8)
    # Counter intersection: pred [muy, muy, bien] vs [muy, bien] share 2 tokens: P = 2/3, R = 1, F1 = 0.8
    assert f1_v2("muy muy bien", "muy bien") == pytest.approx(0.8)
    assert exact_match("El Real Madrid.", "el real madrid") == 1
    assert exact_match("El Real Madrid", "Real Madrid") == 0
    assert exact_match("El Real Madrid", "Real Madrid", normalize_mlqa_es) == 1


def test_multiple_golds_take_each_maximum_separately() -> None:
    # vs "1605": P = 1/2, R = 1 -> 2/3; vs "en 1605": P = R = 1/2 -> 1/2; no exact match
    assert score_v1("año 1605", ["1605", "en 1605"]) == (0, pytest.approx(2 / 3))
    assert score_v2("año 1605", ["en 1605", "1605"]) == (0, pytest.approx(2 / 3))
    assert score_v1("en 1605", ["1605", "en 1605"]) == (1, 1.0)


def test_empty_sides_v1_versus_v2() -> None:
    # both normalise to nothing: v1 EM compares "" == "" (1) but F1 has no overlap (0); v2 F1 is 1
    assert (exact_match("", "¿?", normalize_mlqa_es), f1_v1("", "¿?", normalize_mlqa_es)) == (1, 0.0)
    assert f1_v2("", "¿?", normalize_mlqa_es) == 1.0
    # only one side empty: 0 in both
    assert f1_v1("", "Madrid") == f1_v2("", "Madrid") == f1_v2("Madrid", "") == 0.0
    # v2 drops golds that normalise to "" ("el" under mlqa-es), leaving ["Madrid"]; v1 keeps it and matches it
    assert score_v1("", ["el", "Madrid"], normalize_mlqa_es) == (1, 0.0)
    assert score_v2("", ["el", "Madrid"], normalize_mlqa_es) == (0, 0.0)
    # every gold dropped -> [""]: only an empty prediction is right
    assert score_v2("", ["¿?", "la"], normalize_mlqa_es) == (1, 1.0)
    assert score_v2("nada", ["¿?"], normalize_mlqa_es) == (0, 0.0)
    assert score_v2("", ["¿?"], normalize_squad) == (0, 0.0)  # squad keeps "¿", so the gold stays


# --- v1 datasets -------------------------------------------------------------------------------------------

V1_GOLDS = {
    "q1": ["Real Madrid"],
    "q2": ["1605", "en 1605"],
    "q3": ["Cervantes"],
    "q4": ["Miguel de Cervantes"],
}
V1_PREDS = {"q1": "el Real Madrid club", "q2": "1605", "q3": ""}  # q4 has no prediction


def test_v1_scores_and_missing_prediction(caplog: pytest.LogCaptureFixture) -> None:
    dataset = make_dataset(V1_GOLDS)
    with caplog.at_level(logging.WARNING, logger="tinyroberta_es.evaluation"):
        result = evaluate_predictions(dataset, V1_PREDS)
    # squad: EM (0 + 1 + 0 + 0) / 4; F1 (2/3 + 1 + 0 + 0) / 4 = 5/12; q4 counts in the total with 0
    assert result == {"exact_match": 25.0, "f1": pytest.approx(100 * 5 / 12)}
    assert "1 of 4 questions have no prediction" in caplog.text and "'q4'" in caplog.text
    # mlqa-es: q1 F1 becomes 4/5 -> (0.8 + 1) / 4 = 45%
    result = evaluate_predictions(dataset, V1_PREDS, normalization="mlqa-es")
    assert result == {"exact_match": 25.0, "f1": pytest.approx(45.0)}


def test_v1_ignores_predictions_outside_the_dataset(caplog: pytest.LogCaptureFixture) -> None:
    dataset = make_dataset(V1_GOLDS)
    with caplog.at_level(logging.DEBUG, logger="tinyroberta_es.evaluation"):
        result = evaluate_predictions(dataset, {**V1_PREDS, "zz": "x", "yy": "y"})
    assert result == evaluate_predictions(dataset, V1_PREDS)
    assert "ignoring 2 predictions" in caplog.text


def test_v1_rejects_no_answer_inputs_and_bad_arguments() -> None:
    dataset = make_dataset(V1_GOLDS)
    with pytest.raises(UserError, match=r"need a SQuAD v2\.0 dataset"):
        evaluate_predictions(dataset, V1_PREDS, na_probs={"q1": 0.5})
    with pytest.raises(UserError, match=r"need a SQuAD v2\.0 dataset"):
        evaluate_predictions(dataset, V1_PREDS, na_prob_thresh=0.5)
    with pytest.raises(
        UserError, match="unknown normalization 'mlqa-fr': choose one of squad, mlqa-es, mlqa-en"
    ):
        evaluate_predictions(dataset, V1_PREDS, normalization="mlqa-fr")
    with pytest.raises(UserError, match="no questions"):
        evaluate_predictions(make_dataset({}), {})
    with pytest.raises(UserError, match=r"1 questions of a v1 dataset have no gold answer \('q9'\)"):
        evaluate_predictions(make_dataset({**V1_GOLDS, "q9": []}), V1_PREDS)


# --- v2 datasets -------------------------------------------------------------------------------------------

V2_GOLDS = {"q1": ["Real Madrid"], "q2": ["Miguel de Cervantes"], "q3": [], "q4": []}
V2_PREDS = {"q1": "Real Madrid", "q2": "Cervantes", "q3": "", "q4": "Madrid"}
# raw scores (squad): q1 EM 1 F1 1; q2 EM 0, F1 P = 1, R = 1/3 -> 1/2; q3 (abstains) 1, 1; q4 (answers) 0, 0


def test_v2_without_na_probs() -> None:
    result = evaluate_predictions(make_dataset(V2_GOLDS, is_v2=True), V2_PREDS)
    assert result == {
        "exact": 50.0,
        "f1": 62.5,
        "total": 4,  # EM (1 + 0 + 1 + 0) / 4, F1 (1 + 0.5 + 1 + 0) / 4
        "HasAns_exact": 50.0,
        "HasAns_f1": 75.0,
        "HasAns_total": 2,
        "NoAns_exact": 50.0,
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    }
    assert list(result) == [
        "exact",
        "f1",
        "total",
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
        "NoAns_exact",
        "NoAns_f1",
        "NoAns_total",
    ]


def test_v2_threshold_and_best_threshold() -> None:
    na_probs = {"q1": 0.1, "q2": 0.6, "q3": 0.9, "q4": 0.8}
    result = evaluate_predictions(make_dataset(V2_GOLDS, is_v2=True), V2_PREDS, na_probs, na_prob_thresh=0.5)
    # above 0.5, q2 (answerable) scores 0 and q3, q4 (unanswerable) score 1: EM = F1 = (1 + 0 + 1 + 1) / 4
    # best: start at 2 (the unanswerable ones); by na_prob: q1 +1 -> 3 (0.1), q2 +0 / +0.5 -> 3 / 3.5 (0.6),
    # q4 answered wrongly -1, q3 abstained 0: best EM 3/4 at 0.1, best F1 3.5/4 at 0.6
    assert result == {
        "exact": 75.0,
        "f1": 75.0,
        "total": 4,
        "HasAns_exact": 50.0,
        "HasAns_f1": 50.0,
        "HasAns_total": 2,
        "NoAns_exact": 100.0,
        "NoAns_f1": 100.0,
        "NoAns_total": 2,
        "best_exact": 75.0,
        "best_exact_thresh": 0.1,
        "best_f1": 87.5,
        "best_f1_thresh": 0.6,
    }


def test_v2_threshold_is_strict() -> None:
    dataset = make_dataset(V2_GOLDS, is_v2=True)
    at = evaluate_predictions(
        dataset, V2_PREDS, {"q1": 0.5, "q2": 0.5, "q3": 0.5, "q4": 0.5}, na_prob_thresh=0.5
    )
    assert (at["exact"], at["f1"]) == (50.0, 62.5)  # 0.5 > 0.5 is false: the raw scores stand
    # a negative threshold with the default probabilities (0.0) makes every question abstain: 2 of 4 right
    assert evaluate_predictions(dataset, V2_PREDS, na_prob_thresh=-1.0)["exact"] == 50.0


def test_best_threshold_ties_follow_na_probs_order() -> None:
    dataset = make_dataset({"a": ["sí"], "b": []}, is_v2=True)
    preds = {"a": "sí", "b": "no"}  # a right (+1 when answered), b answered wrongly (-1 when answered)
    # start at 1 (b abstains). Order a, b: +1 -> 2 at 0.5 (best), then -1 -> 1. Best 2/2 at 0.5
    first = evaluate_predictions(dataset, preds, {"a": 0.5, "b": 0.5})
    assert (first["best_exact"], first["best_exact_thresh"]) == (100.0, 0.5)
    # order b, a: -1 -> 0, +1 -> 1, never above the start: best 1/2 at the initial 0.0
    second = evaluate_predictions(dataset, preds, {"b": 0.5, "a": 0.5})
    assert (second["best_exact"], second["best_exact_thresh"]) == (50.0, 0.0)
    assert first["exact"] == second["exact"] == 50.0


def test_find_best_threshold_skips_unscored_ids_and_counts_empty_as_abstaining() -> None:
    has_ans = {"a": True, "b": False}
    # "zz" is not scored: skipped. b's prediction is "": answering it costs nothing
    best = find_best_threshold(
        {"a": "x", "b": ""}, {"a": 0.5, "b": 1.0}, {"zz": 0.0, "b": 0.2, "a": 0.3}, has_ans
    )
    assert best == (75.0, 0.3)  # 1 -> 1 (b, +0) -> 1.5 (a, +0.5) at 0.3; 1.5 / 2


def test_v2_gold_answers_that_normalise_to_nothing() -> None:
    dataset = make_dataset({"q1": ["¿?"], "q2": ["la"]}, is_v2=True)  # answerable, but empty under mlqa-es
    result = evaluate_predictions(dataset, {"q1": "", "q2": "La"}, normalization="mlqa-es")
    # both golds become [""]: "" and "La" (-> "") are exact, F1 1 (both empty); they still count as HasAns
    assert (result["exact"], result["f1"], result["HasAns_total"]) == (100.0, 100.0, 2)
    assert "NoAns_total" not in result
    v1 = evaluate_predictions(
        make_dataset({"q1": ["¿?"], "q2": ["la"]}), {"q1": "", "q2": "La"}, normalization="mlqa-es"
    )
    assert v1 == {"exact_match": 100.0, "f1": 0.0}  # v1: exact, yet no token overlap


def test_v2_requires_every_prediction_and_probability() -> None:
    dataset = make_dataset(V2_GOLDS, is_v2=True)
    with pytest.raises(UserError, match=r"2 of 4 questions have no prediction \('q3', 'q4'\).*\"\" means no"):
        evaluate_predictions(dataset, {"q1": "x", "q2": "y"})
    with pytest.raises(UserError, match=r"1 of 4 questions have no no-answer probability \('q4'\)"):
        evaluate_predictions(dataset, V2_PREDS, {"q1": 0.0, "q2": 0.0, "q3": 0.0})
    with pytest.raises(UserError, match="NaN"):
        evaluate_predictions(dataset, V2_PREDS, na_prob_thresh=math.nan)


# --- The model's own null threshold, in logits ------------------------------------------------------------


def brute_force_null_threshold(
    dataset: QADataset, spans: dict[str, str], diffs: dict[str, float], key: str, normalization: str
) -> tuple[float, list[float]]:
    """The best score over every decision a threshold can make, and the thresholds that reach it.

    Independent of the sweep: each candidate is scored by `evaluate_predictions` on the answers a model
    gives at that threshold ("" where the difference exceeds it).
    """
    finite = sorted({d for d in diffs.values() if math.isfinite(d)})
    candidates = [finite[0] - 1.0, *finite] if finite else [0.0]
    scores = {}
    for t in candidates:
        answers = {qid: spans[qid] if diffs[qid] <= t else "" for qid in spans}
        scores[t] = evaluate_predictions(dataset, answers, normalization=normalization)[key]
    best = max(scores.values())
    return best, [t for t, score in scores.items() if score == pytest.approx(best)]


def score_at(dataset: QADataset, spans: dict, diffs: dict, threshold: float, key: str, norm: str) -> float:
    answers = {qid: spans[qid] if diffs[qid] <= threshold else "" for qid in spans}
    return evaluate_predictions(dataset, answers, normalization=norm)[key]


def test_best_null_threshold_hand_computed() -> None:
    dataset = make_dataset(
        {"a": ["Real Madrid"], "b": ["Miguel de Cervantes"], "c": [], "d": [], "e": ["x"]}, is_v2=True
    )
    spans = {"a": "Real Madrid", "b": "Cervantes", "c": "Liga", "d": "1605", "e": ""}
    diffs = {"a": -2.0, "b": 0.5, "c": 1.0, "d": 0.5, "e": math.inf}  # e: no span, "" at every threshold
    # abstaining everywhere: c, d right -> 2 of 5. Answering in order of difference (gains EM / F1, squad):
    # a (-2.0): +1 / +1; b and d tie at 0.5: b +0 / +0.5 (P 1, R 1/3), d -1 / -1; c (1.0): -1 / -1.
    # EM 2 -> 3 at -2.0 -> 2 at 0.5 -> 1: best 3 at -2.0, threshold halfway to 0.5 = -0.75.
    # F1 2 -> 3 -> 2.5 -> 1.5: best 3 at -2.0 as well
    best = find_best_null_threshold(dataset, spans, diffs)
    assert best == {
        "best_exact": 60.0,
        "best_exact_null_threshold": -0.75,
        "best_f1": 60.0,
        "best_f1_null_threshold": -0.75,
    }
    # d abstains instead (no span): the tie at 0.5 now adds +0 (EM), which keeps the lower threshold, and
    # +0.5 (F1): F1 3.5 when answering up to 0.5, threshold halfway to 1.0
    best = find_best_null_threshold(dataset, {**spans, "d": ""}, diffs)
    assert (best["best_exact"], best["best_exact_null_threshold"]) == (60.0, -0.75)
    assert (best["best_f1"], best["best_f1_null_threshold"]) == (70.0, 0.75)


def test_best_null_threshold_edges() -> None:
    # answering everything is best: 1 above the largest difference
    both = make_dataset({"a": ["sí"], "b": ["no"]}, is_v2=True)
    best = find_best_null_threshold(both, {"a": "sí", "b": "no"}, {"a": 2.0, "b": 3.0})
    assert (best["best_f1"], best["best_f1_null_threshold"]) == (100.0, 4.0)
    dataset = make_dataset({"a": ["sí"], "b": []}, is_v2=True)
    # abstaining everywhere is best: 1 below the smallest
    best = find_best_null_threshold(dataset, {"a": "no", "b": "no"}, {"a": 2.0, "b": 3.0})
    assert (best["best_exact"], best["best_exact_null_threshold"]) == (50.0, 1.0)
    # no span at all: nothing to search
    best = find_best_null_threshold(dataset, {"a": "", "b": ""}, {"a": math.inf, "b": math.inf})
    assert best == {
        "best_exact": 50.0,
        "best_exact_null_threshold": None,
        "best_f1": 50.0,
        "best_f1_null_threshold": None,
    }


@pytest.mark.parametrize("normalization", ["squad", "mlqa-es"])
def test_best_null_threshold_matches_a_brute_force_search(normalization: str) -> None:
    rng = random.Random(normalization)
    words = ["el", "Real", "Madrid", "ganó", "la", "Liga", "1605", "Cervantes", "."]
    for _ in range(30):
        golds, spans, diffs = {}, {}, {}
        for i in range(rng.randint(1, 12)):
            qid = f"q{i}"
            golds[qid] = [] if rng.random() < 0.3 else [" ".join(rng.sample(words, rng.randint(1, 3)))]
            has_span = rng.random() < 0.85
            spans[qid] = " ".join(rng.sample(words, rng.randint(1, 3))) if has_span else ""
            diffs[qid] = (
                rng.choice([-1.5, -0.5, 0.0, 0.25, 2.0, rng.uniform(-3, 3)]) if has_span else math.inf
            )
        dataset = make_dataset(golds, is_v2=True)
        found = find_best_null_threshold(dataset, spans, diffs, normalization)
        for key in ("exact", "f1"):
            best, _ = brute_force_null_threshold(dataset, spans, diffs, key, normalization)
            assert found[f"best_{key}"] == pytest.approx(best)
            threshold = found[f"best_{key}_null_threshold"]
            if any(math.isfinite(d) for d in diffs.values()):
                assert math.isfinite(threshold)
                # passed back as the model's --null-threshold, it gives the best score
                assert score_at(dataset, spans, diffs, threshold, key, normalization) == pytest.approx(best)
            else:
                assert threshold is None


def test_best_null_threshold_rejects_bad_input() -> None:
    v2 = make_dataset({"a": ["sí"], "b": []}, is_v2=True)
    with pytest.raises(
        UserError, match=r"1 of 2 questions have no span answer or null score difference \('b'\)"
    ):
        find_best_null_threshold(v2, {"a": "sí", "b": ""}, {"a": 0.0})
    with pytest.raises(UserError, match=r"need a SQuAD v2\.0 dataset"):
        find_best_null_threshold(make_dataset({"a": ["sí"]}), {"a": "sí"}, {"a": 0.0})
    with pytest.raises(ValueError, match=r"1 null score differences are NaN \('a'\)"):
        find_best_null_threshold(v2, {"a": "sí", "b": ""}, {"a": math.nan, "b": 1.0})


# --- Prediction files --------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_predictions_and_na_probs_keep_file_order(tmp_path: Path) -> None:
    preds = read_predictions(write(tmp_path / "p.json", '{"b": "Madrid", "a": "", "c": "¿sí?"}'))
    assert list(preds.items()) == [("b", "Madrid"), ("a", ""), ("c", "¿sí?")]
    probs = read_na_probs(write(tmp_path / "n.json", '{"b": 1, "a": -2.5, "c": 1e-3}'))
    assert list(probs.items()) == [("b", 1.0), ("a", -2.5), ("c", 0.001)]
    assert all(isinstance(v, float) for v in probs.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["Madrid"]', r"holds a JSON array, not an object"),
        ('{"a": "x",', r"is not valid JSON \(Expecting"),
        ("", r"is not valid JSON"),
        (
            '{"a": 1, "b": "x", "c": null, "d": ["x"], "e": {"t": "x"}}',
            r"4 ids have a value that is not a string \('a': number, 'c': null, 'd': array, 'e': object\)",
        ),
        (
            '{"a": "x", "a": "y", "b": true}',
            r"1 ids appear more than once \('a'\); 1 ids have a value that is not a "
            r"string \('b': boolean\)",
        ),
    ],
)
def test_read_predictions_rejects_bad_files(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "preds.json", text)
    with pytest.raises(UserError, match=expected) as err:
        read_predictions(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_read_predictions_reports_at_most_five_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "preds.json", json.dumps({f"q{i}": i for i in range(8)}))
    with pytest.raises(UserError, match=r"8 ids .*'q4': number and 3 more\)"):
        read_predictions(path)


def test_read_predictions_missing_or_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"predictions file .*nope\.json does not exist"):
        read_predictions(tmp_path / "nope.json")
    with pytest.raises(UserError, match=r"cannot be read \(Is a directory\)"):
        read_predictions(tmp_path)
    (tmp_path / "latin1.json").write_bytes('{"a": "año"}'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.json cannot be read .*UTF-8"):
        read_predictions(tmp_path / "latin1.json")


def test_read_na_probs_rejects_bad_values(tmp_path: Path) -> None:
    path = write(tmp_path / "na.json", '{"a": NaN, "b": "0.5", "c": true, "d": 0.5, "e": null, "f": [1]}')
    with pytest.raises(
        UserError,
        match=r"na\.json: 4 ids have a value that is not a number or null "
        r"\('a': NaN, 'b': string, 'c': boolean, 'f': array\)",
    ):
        read_na_probs(path)


def test_read_na_probs_reads_null_as_no_answer_at_every_threshold(tmp_path: Path) -> None:
    # null is what a standard JSON writer gives a question without any span (null score difference +inf)
    path = write(tmp_path / "na.json", '{"q1": 0.5, "q2": null, "q3": -2}')
    assert read_na_probs(path) == {"q1": 0.5, "q2": math.inf, "q3": -2.0}


# --- Real data ---------------------------------------------------------------------------------------------


def perturb(answer: str, other: str, rng: random.Random) -> str:
    """A plausible wrong, partly right or differently written version of `answer`."""
    words = answer.split()
    choice = rng.randrange(12)
    if choice == 0:
        return answer
    if choice == 1:
        return answer.upper()
    if choice == 2:
        return f"¿{answer}?, «{answer}»."
    if choice == 3:
        return " ".join(words[1:])
    if choice == 4:
        return " ".join(words[:-1])
    if choice == 5:
        return f"{rng.choice(['el', 'la', 'a', 'the', 'de'])} {answer} {rng.choice(['en', 'an', 'y', '—'])}"
    if choice == 6:
        return other
    if choice == 7:
        return rng.choice(["", " ", "¿?", "...", "the"])
    if choice == 8:
        return " ".join(rng.sample(words, len(words)) + rng.sample(words, min(2, len(words))))
    if choice == 9:
        return f"{answer} {other}"
    if choice == 10:
        return answer.replace(" ", "\u00a0\t")
    return "".join(ch for ch in answer if rng.random() > 0.1)


@needs_xquad
def test_squad_v1_equals_torchmetrics_on_perturbed_xquad() -> None:
    """Our squad-normalised v1 scores equal torchmetrics' reimplementation of the official v1.1 script."""
    torch = pytest.importorskip("torch")
    text_metrics = pytest.importorskip(
        "torchmetrics.text", reason="torchmetrics (the `test` extra) is needed"
    )
    from tinyroberta_es.data.loading import load_dataset

    examples = load_dataset(str(XQUAD_ES), bad_spans="keep").examples
    # torchmetrics' F1 uses the v2 rule when a side has no tokens (1 if both are empty); that differs from
    # v1.1 only for golds that normalise to nothing, and XQuAD has none
    assert all(normalize_squad(a.text) for ex in examples for a in ex.answers)
    rng = random.Random(1234)
    chosen = rng.sample(examples, 400)
    predictions = {
        ex.id: perturb(ex.answers[0].text, rng.choice(chosen).answers[0].text, rng) for ex in chosen
    }
    dataset = QADataset(source=str(XQUAD_ES), version="1.1", examples=chosen)
    ours = evaluate_predictions(dataset, predictions)
    assert (
        5 < ours["exact_match"] < 95 and 5 < ours["f1"] < 95
    )  # the perturbations are neither all right nor wrong

    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torchmetrics sums in float32 otherwise (about 1e-5 off)
    try:
        metric = text_metrics.SQuAD().set_dtype(torch.float64)
        metric.update(
            [{"prediction_text": predictions[ex.id], "id": ex.id} for ex in chosen],
            [
                {
                    "answers": {
                        "text": [a.text for a in ex.answers],
                        "answer_start": [a.start for a in ex.answers],
                    },
                    "id": ex.id,
                }
                for ex in chosen
            ],
        )
        theirs = {key: value.item() for key, value in metric.compute().items()}
    finally:
        torch.set_default_dtype(default_dtype)
    assert ours["exact_match"] == pytest.approx(theirs["exact_match"], abs=1e-6)
    assert ours["f1"] == pytest.approx(theirs["f1"], abs=1e-6)


@needs_xquad
@pytest.mark.parametrize("normalization", list(NORMALIZERS))
def test_gold_answers_score_100_on_xquad(normalization: str) -> None:
    from tinyroberta_es.data.loading import load_dataset

    dataset = load_dataset(str(XQUAD_ES), bad_spans="keep")
    assert len(dataset) == 1190 and not dataset.is_v2
    predictions = {ex.id: ex.answers[0].text for ex in dataset.examples}
    result = evaluate_predictions(dataset, predictions, normalization=normalization)
    assert result == {"exact_match": 100.0, "f1": 100.0}
