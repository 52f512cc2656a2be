"""The `predict`, `answer` and `demo` commands end to end, with tiny random models built in tmp folders."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, read_strict_json, run_cli, strict_loads
from tinyroberta_es.cli import main
from tinyroberta_es.commands.predict import BACKEND_HELP
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.sources import resolve_source
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.runtimes import CHOICES
from tinyroberta_es.tiny import create_tiny_qa_model, train_tokenizer

CONTEXT = (
    "Gabriel García Márquez nació en Aracataca, Colombia, en 1927. En 1982 recibió el Premio Nobel "
    "de Literatura. «Cien años de soledad» se publicó en Buenos Aires en 1967."
)


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample")


@pytest.fixture(scope="module", params=["bpe", "wordpiece", "unigram"])
def model_dir(request, tmp_path_factory, sample) -> Path:
    root = tmp_path_factory.mktemp(f"tiny-{request.param}")
    texts = [ex.context for ex in sample.examples] + [ex.question for ex in sample.examples]
    tokenizer_dir = train_tokenizer(request.param, texts, root / "tokenizer", vocab_size=1000)
    return create_tiny_qa_model(root / "model", tokenizer_dir, seed=1)


def test_predict_writes_an_answer_from_the_context_for_every_question(model_dir, sample, tmp_path, capsys):
    preds_path, na_path, odds_path = tmp_path / "preds.json", tmp_path / "na.json", tmp_path / "odds.json"
    status, out, _ = run_cli(
        capsys,
        "predict",
        "--model",
        str(model_dir),
        "--dataset",
        "sample",
        "--output",
        str(preds_path),
        "--na-probs-output",
        str(na_path),
        "--null-odds-output",
        str(odds_path),
        "--max-length",
        "128",
        "--doc-stride",
        "32",
        "--null-threshold",
        "0",
    )
    assert status == 0
    assert "questions/s" in out
    preds = json.loads(preds_path.read_text(encoding="utf-8"))
    na_probs = json.loads(na_path.read_text(encoding="utf-8"))
    odds = json.loads(odds_path.read_text(encoding="utf-8"))
    by_id = sample.by_id()
    assert list(preds) == [ex.id for ex in sample.examples]
    assert set(na_probs) == set(preds) == set(odds)
    for qid, text in preds.items():
        assert text == text.strip()
        assert text in by_id[qid].context
        assert 0 < na_probs[qid] < 1  # a probability (the official script's na_probs), not logits
        assert np.isfinite(odds[qid])
        assert (text == "") == (odds[qid] > 0)  # null threshold 0: null exactly when null wins


def test_predict_limit(model_dir, tmp_path, capsys):
    preds_path = tmp_path / "preds.json"
    status, _, _ = run_cli(
        capsys,
        "predict",
        "--model",
        str(model_dir),
        "--dataset",
        "sample",
        "--output",
        str(preds_path),
        "--limit",
        "5",
    )
    assert status == 0
    assert len(json.loads(preds_path.read_text(encoding="utf-8"))) == 5


def test_dynamic_padding_does_not_change_logits(model_dir, sample):
    """Windows batched with padding give the logits they give alone (the attention mask works)."""
    examples = sample.examples[:12]
    alone = QuestionAnswerer.from_pretrained(
        model_dir, InferenceConfig(max_length=96, doc_stride=32, batch_size=1)
    )
    batched = QuestionAnswerer.from_pretrained(
        model_dir, InferenceConfig(max_length=96, doc_stride=32, batch_size=8)
    )
    features = alone.features(examples)
    assert len(set(features.lengths)) > 1  # padding really happens
    s1, e1 = alone.logits(features)
    s8, e8 = batched.logits(features)
    np.testing.assert_allclose(s1, s8, atol=1e-4)
    np.testing.assert_allclose(e1, e8, atol=1e-4)


def test_answer_prints_spans_of_the_context(model_dir, capsys):
    status, out, _ = run_cli(
        capsys,
        "answer",
        "--model",
        str(model_dir),
        "--question",
        "¿Dónde nació García Márquez?",
        "--context",
        CONTEXT,
        "--top-k",
        "3",
        "--json",
    )
    assert status == 0
    result = json.loads(out)
    assert 1 <= len(result["answers"]) <= 3
    scores = [a["score"] for a in result["answers"]]
    assert scores == sorted(scores, reverse=True)
    for a in result["answers"]:
        assert CONTEXT[a["start"] : a["end"]] == a["text"]
    assert result["answer"] == result["answers"][0]["text"]


def test_answer_reads_a_context_file(model_dir, tmp_path, capsys):
    path = tmp_path / "texto.txt"
    path.write_text(CONTEXT, encoding="utf-8")
    status, out, _ = run_cli(
        capsys, "answer", "--model", str(model_dir), "--question", "¿Cuándo?", "--context-file", str(path)
    )
    assert status == 0
    assert out.startswith("1. ")


def test_demo_writes_predictions_and_metrics(tmp_path, capsys):
    status, out, _ = run_cli(capsys, "demo", "--output", str(tmp_path / "demo"))
    assert status == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text(encoding="utf-8"))
    for norm in ("mlqa-es", "squad"):
        assert {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh"} <= set(metrics[norm])
        assert 0 <= metrics[norm]["f1"] <= 100
    assert "mlqa-es" in out


@pytest.mark.parametrize("kind", ["missing", "file", "no-config", "not-qa"])
def test_bad_model_folder_is_a_one_line_error(kind, tmp_path, capsys):
    folder = tmp_path / "model"
    if kind == "file":
        folder.write_text("x")
    elif kind == "no-config":
        folder.mkdir()
    elif kind == "not-qa":
        from transformers import BertConfig, BertModel

        BertModel(
            BertConfig(
                vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
            )
        ).save_pretrained(folder)
        capsys.readouterr()  # drop the progress bar that saving printed
    status, _, err = run_cli(
        capsys, "answer", "--model", str(folder), "--question", "¿Qué?", "--context", "Algo."
    )
    assert_one_line_error(status, err, str(folder))


def test_empty_question_and_context_are_errors(model_dir, capsys):
    status, _, err = run_cli(
        capsys, "answer", "--model", str(model_dir), "--question", "  ", "--context", "Algo."
    )
    assert_one_line_error(status, err, "question")
    status, _, err = run_cli(
        capsys, "answer", "--model", str(model_dir), "--question", "¿Qué?", "--context", ""
    )
    assert_one_line_error(status, err, "context")


def test_predict_on_a_missing_dataset_is_an_error(model_dir, tmp_path, capsys):
    missing = tmp_path / "nope.json"
    status, _, err = run_cli(
        capsys,
        "predict",
        "--model",
        str(model_dir),
        "--dataset",
        str(missing),
        "--output",
        str(tmp_path / "p.json"),
    )
    assert_one_line_error(status, err, "nope.json")
    assert not (tmp_path / "p.json").exists()


def test_bad_numeric_flags_are_errors(model_dir, tmp_path, capsys):
    status, _, err = run_cli(
        capsys,
        "predict",
        "--model",
        str(model_dir),
        "--dataset",
        "sample",
        "--output",
        str(tmp_path / "p.json"),
        "--batch-size",
        "0",
    )
    assert_one_line_error(status, err, "--batch-size")


# --- --backend: the same choices in every command that runs a model ----------------------------------------

MODEL_COMMANDS = ("predict", "answer", "evaluate", "serve")


def test_the_backend_help_names_every_choice(capsys, monkeypatch):
    assert set(CHOICES) <= set(re.findall(r"[a-z0-9-]+", BACKEND_HELP))
    assert "tinyroberta-es export --format openvino" in BACKEND_HELP and "parity check" in BACKEND_HELP
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help at the terminal width, hyphens included
    for command in MODEL_COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert BACKEND_HELP in capsys.readouterr().out, command


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_bad_inference_flags_are_one_line_naming_each_before_any_work(command, tmp_path, capsys):
    """Checked before the dataset and the model are read: neither exists here, and neither is named."""
    missing = str(tmp_path / "missing.json")
    rest = {
        "predict": ["--dataset", missing, "--output", str(tmp_path / "p.json")],
        "answer": ["--question", "¿Qué?", "--context", "Algo."],
        "evaluate": ["--dataset", missing],
        "serve": [],
    }[command]
    argv = [command, "--model", str(tmp_path / "no-model"), *rest, "--backend", "onnxx", "--batch-size", "0"]
    status, _, err = run_cli(capsys, *argv, "--null-threshold", "nan")
    choices = ", ".join(CHOICES)
    unknown = f"--backend 'onnxx' is unknown: choose one of {choices}"
    nan = "--null-threshold nan is not a finite number"  # with NaN no question would ever be unanswered
    assert_one_line_error(status, err, unknown, "--batch-size 0", nan)
    assert "missing.json" not in err and "no-model" not in err


# --- unlabeled data: SQuAD without answers, JSON Lines ---------------------------------------------------

BLIND = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "blind" / "mlqa_es_dev_questions.json"
)


@pytest.fixture(scope="module")
def three_forms(tmp_path_factory) -> dict[str, Path]:
    """The sample's first 3 articles as labeled SQuAD, as SQuAD without answers, and as JSON Lines."""
    root = tmp_path_factory.mktemp("forms")
    obj = json.loads(resolve_source("sample").read_text(encoding="utf-8"))
    labeled = {"version": obj["version"], "data": obj["data"][:3]}
    unlabeled = copy.deepcopy(labeled)
    lines = []
    for article in unlabeled["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                del qa["answers"]
                qa.pop("is_impossible", None)
                question = {"id": qa["id"], "question": qa["question"], "context": paragraph["context"]}
                lines.append(json.dumps({**question, "title": article["title"]}, ensure_ascii=False))
    forms = {
        "labeled": root / "labeled.json",
        "unlabeled": root / "unlabeled.json",
        "jsonl": root / "q.jsonl",
    }
    forms["labeled"].write_text(json.dumps(labeled, ensure_ascii=False), encoding="utf-8")
    forms["unlabeled"].write_text(json.dumps(unlabeled, ensure_ascii=False), encoding="utf-8")
    forms["jsonl"].write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # a trailing blank line
    return forms


def predict_file(capsys, model: Path, dataset: Path, out: Path) -> tuple[dict, dict]:
    """Run `predict` on `dataset`; return the predictions and the null odds (logit differences) it wrote."""
    preds_path, na_path = out / f"{dataset.name}.preds.json", out / f"{dataset.name}.odds.json"
    status, _, err = run_cli(
        capsys,
        "predict",
        "--model",
        str(model),
        "--dataset",
        str(dataset),
        "--output",
        str(preds_path),
        "--null-odds-output",
        str(na_path),
        "--max-length",
        "128",
        "--doc-stride",
        "32",
    )
    assert status == 0, err
    return json.loads(preds_path.read_text(encoding="utf-8")), json.loads(na_path.read_text(encoding="utf-8"))


def test_unlabeled_squad_and_jsonl_get_the_predictions_of_the_labeled_file(
    tiny_qa_model_dir, three_forms, tmp_path, capsys
):
    ids = [ex.id for ex in load_dataset(three_forms["labeled"]).examples]
    assert len(ids) > 20
    labeled, labeled_na = predict_file(capsys, tiny_qa_model_dir, three_forms["labeled"], tmp_path)
    assert list(labeled) == ids
    for form in ("unlabeled", "jsonl"):
        preds, na_probs = predict_file(capsys, tiny_qa_model_dir, three_forms[form], tmp_path)
        assert preds == labeled and list(preds) == ids, form
        assert list(na_probs) == ids
        assert na_probs == pytest.approx(labeled_na, abs=1e-5), form


def test_predict_answers_every_blind_mlqa_question(tiny_qa_model_dir, tmp_path, capsys):
    if not BLIND.is_file():
        pytest.skip(f"shared data absent: {BLIND} (see ../shared/data/blind/README.md)")
    preds, na_probs = predict_file(capsys, tiny_qa_model_dir, BLIND, tmp_path)
    questions = json.loads(BLIND.read_text(encoding="utf-8"))["data"]
    contexts = {qa["id"]: p["context"] for a in questions for p in a["paragraphs"] for qa in p["qas"]}
    assert len(preds) == 500 and set(preds) == set(contexts) == set(na_probs)
    assert all(text in contexts[qid] for qid, text in preds.items())


@pytest.mark.parametrize("form", ["unlabeled", "jsonl"])
def test_evaluate_and_finetune_refuse_unlabeled_data_in_one_line(
    form, three_forms, tiny_qa_model_dir, tmp_path, capsys
):
    dataset = str(three_forms[form])
    preds = tmp_path / "preds.json"
    preds.write_text('{"x": "y"}', encoding="utf-8")
    status, _, err = run_cli(capsys, "evaluate", "--dataset", dataset, "--predictions", str(preds))
    assert_one_line_error(status, err, dataset, "has no answers")
    status, _, err = run_cli(
        capsys, "evaluate", "--dataset", dataset, "--model", str(tiny_qa_model_dir), "--max-length", "128"
    )
    assert_one_line_error(status, err, dataset, "has no answers")
    out = tmp_path / "out"
    settings = ["train.device=cpu", "train.precision=fp32", "data.dev=null", "data.max_length=128"]
    sets = [arg for s in settings for arg in ("--set", s)]
    argv = ["finetune", "--model", str(tiny_qa_model_dir), "--train", dataset, "--output", str(out), *sets]
    status, _, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, dataset, "has no answers")
    assert not (out / "model.safetensors").exists()


def test_bad_jsonl_line_is_a_one_line_predict_error(model_dir, tmp_path, capsys):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "¿Qué?", "context": "Algo."}\n{"id": "b"}\n', encoding="utf-8")
    status, _, err = run_cli(
        capsys,
        "predict",
        "--model",
        str(model_dir),
        "--dataset",
        str(path),
        "--output",
        str(tmp_path / "p.json"),
    )
    assert_one_line_error(status, err, str(path), "line 2: missing key 'question'")
    assert not (tmp_path / "p.json").exists()


# --- standard JSON out; --revision and missing model folders in every model command -------------------------


@pytest.fixture
def one_spanless_prediction(monkeypatch):
    """Make the first prediction of every run one for which the model found no span (null_score_diff +inf)."""
    import dataclasses
    import math

    real = QuestionAnswerer.predict

    def predict(self, examples, *args, **kwargs):
        predictions = real(self, examples, *args, **kwargs)
        first = dataclasses.replace(predictions[0], answers=[], null_score_diff=math.inf, is_null=True)
        return [first, *predictions[1:]]

    monkeypatch.setattr(QuestionAnswerer, "predict", predict)


def test_predict_writes_standard_json_when_a_question_has_no_span(
    tiny_qa_model_dir, three_forms, tmp_path, capsys, one_spanless_prediction
):
    dataset = three_forms["jsonl"]
    predict_file(capsys, tiny_qa_model_dir, dataset, tmp_path)
    preds = read_strict_json(tmp_path / f"{dataset.name}.preds.json")
    na_probs = read_strict_json(tmp_path / f"{dataset.name}.odds.json")
    first, *rest = list(na_probs)
    assert preds[first] == "" and na_probs[first] is None  # no span: null, not Infinity
    assert rest and all(isinstance(na_probs[qid], float) for qid in rest)


def test_answer_json_is_standard_when_there_is_no_span(model_dir, capsys, one_spanless_prediction):
    argv = ["--model", str(model_dir), "--question", "¿Dónde?", "--context", CONTEXT]
    status, out, err = run_cli(capsys, "answer", *argv, "--json")
    assert status == 0, err
    result = strict_loads(out)
    assert (result["answer"], result["answers"], result["null_score_diff"]) == ("", [], None)
    status, out, _ = run_cli(capsys, "answer", *argv)
    assert status == 0 and "found no span" in out


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_revision_of_a_local_folder_is_one_line_naming_it(command, model_dir, tmp_path, capsys):
    rest = {
        "predict": ["--dataset", "sample", "--output", str(tmp_path / "p.json")],
        "answer": ["--question", "¿Qué?", "--context", "Algo."],
        "evaluate": ["--dataset", "sample"],
        "serve": ["--port", "0"],
    }[command]
    status, _, err = run_cli(capsys, command, "--model", str(model_dir), *rest, "--revision", "v1.0")
    assert_one_line_error(status, err, str(model_dir), "a revision applies to Hub ids")
    assert not (tmp_path / "p.json").exists()


def test_revision_reaches_the_answerer_of_a_hub_id(model_dir, monkeypatch, capsys, tmp_path):
    """`--model org/name --revision v1.0` asks for that revision; served here from the local tiny model."""
    monkeypatch.chdir(tmp_path)
    asked = []
    real = QuestionAnswerer.from_pretrained.__func__

    def from_pretrained(cls, source, *args, revision=None, **kwargs):
        asked.append((str(source), revision))
        return real(cls, model_dir, *args, **kwargs)

    monkeypatch.setattr(QuestionAnswerer, "from_pretrained", classmethod(from_pretrained))
    argv = ["--model", "org/name", "--question", "¿Dónde?", "--context", CONTEXT, "--revision", "v1.0"]
    status, _, err = run_cli(capsys, "answer", *argv)
    assert status == 0, err
    assert asked == [("org/name", "v1.0")]


@pytest.mark.parametrize("model", ["runs/teacher", "./teacher", "/no/such/teacher"])
def test_a_missing_local_model_path_is_an_error_not_a_hub_download(model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # so "runs/teacher" is a local path, not the Hub id of an org "runs"
    status, _, err = run_cli(capsys, "answer", "--model", model, "--question", "¿Qué?", "--context", "Algo.")
    assert_one_line_error(status, err, f"model folder {model} does not exist")


@pytest.mark.parametrize(("flags", "aligned"), [((), True), (("--no-align-to-words",), False)])
def test_word_alignment_flag_reaches_the_answerer(tiny_qa_model_dir, flags, aligned):
    import argparse

    from tinyroberta_es.commands.predict import add_inference_arguments, answerer_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    add_inference_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_qa_model_dir), "--max-length", "128", *flags])
    assert answerer_from_args(args).config.align_to_words is aligned
