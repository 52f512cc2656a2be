"""`tinyroberta-es distill` end to end: a tiny teacher into tiny students, on the embedded sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from cli_helpers import assert_one_line_error
from tinyroberta_es.cli import main
from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer

SMOKE = [
    "--set", "data.train_limit=24", "--set", "data.dev_limit=8", "--set", "data.max_length=96",
    "--set", "data.doc_stride=32", "--set", "train.max_steps=3", "--set", "train.batch_size=4",
    "--set", "train.precision=fp32", "--set", "train.tensorboard=false", "--set", "train.epochs=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A 4-layer tiny QA teacher with a SentencePiece Unigram tokenizer (trimmable)."""
    root = tmp_path_factory.mktemp("teacher")
    tokenizer = train_tokenizer("unigram", spanish_texts(), root / "tokenizer", vocab_size=1500)
    return create_tiny_qa_model(root / "model", tokenizer, layers=4, hidden=32, heads=4, intermediate=64)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TINYROBERTA_ES_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def distill(capsys, teacher: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    argv = [
        "distill",
        "--teacher",
        str(teacher),
        "--output",
        str(out),
        "--train",
        "sample",
        "--dev",
        "sample",
    ]
    status = main([*argv, "--set", "student.preset=null", *SMOKE, *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_one_stage_distillation_writes_a_trimmed_student(teacher, tmp_path, cache, capsys):
    out = tmp_path / "student"
    status, stdout, err = distill(
        capsys, teacher, out, "--set", "student.layers=2", "--set", "student.init=teacher-layers",
        "--set", "student.trim_vocab=[sample]",
    )  # fmt: skip
    assert status == 0, err
    model = AutoModelForQuestionAnswering.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    big = AutoModelForQuestionAnswering.from_pretrained(teacher)
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size < big.config.vocab_size == 1500
    assert len(tokenizer) == model.config.vocab_size
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] < metrics["teacher_params"]
    assert {"f1", "exact_match"} <= set(metrics)
    parts = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*(row.keys() for row in parts))
    assert {"kd", "ce", "hidden_0", "hidden_2", "attention_1", "attention_2"} <= logged, logged
    assert any((cache / "teacher_logits").iterdir())  # the teacher's logits were cached
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["student"]["trim_vocab"] == ["sample"]
    # a finished run is left as it is
    status, stdout, _ = distill(capsys, teacher, out)
    assert status == 0 and "finished" in stdout


def test_two_stage_distillation(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    status, _, err = distill(
        capsys, teacher, out, "--set", "student.layers=2", "--set", "student.init=teacher-layers",
        "--set", "schedule=two-stage", "--set", "intermediate_epochs=1", "--set", "loss.attention_loss=kl",
    )  # fmt: skip
    assert status == 0, err
    stage1 = [
        json.loads(line) for line in (tmp_path / "student.stage1" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all("kd" not in row and "ce" not in row for row in stage1)  # intermediate losses only
    stage2 = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert all("hidden_1" not in row for row in stage2)  # then the prediction layer only
    AutoModelForQuestionAnswering.from_pretrained(out)


def test_undistilled_twin_and_augmentation(teacher, tmp_path, cache, capsys):
    status, _, err = distill(
        capsys, teacher, tmp_path / "twin", "--set", "student.layers=2", "--set", "student.init=random",
        "--set", "loss.kd=0", "--set", "loss.hidden=0", "--set", "loss.attention=0",
    )  # fmt: skip
    assert status == 0, err
    assert not (cache / "teacher_logits").exists()  # no teacher outputs needed
    status, _, err = distill(
        capsys, teacher, tmp_path / "augmented", "--set", "student.layers=2", "--set", "augment.copies=1",
        "--set", "loss.hidden=0", "--set", "loss.attention=0",
    )  # fmt: skip
    assert status == 0, err


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--set", "student.layers=3"], ["not a multiple", "loss.layer_map"]),
        (["--set", "student.layers=2", "--set", "student.heads=2"], ["heads", "loss.attention"]),
        (["--set", "student.layers=2", "--set", "loss.lossy=1"], ["lossy"]),
        (["--set", "student.layers=2", "--set", "student.init=teacher-layers",
          "--set", "student.hidden_size=16"], ["student.hidden_size"]),
    ],
)  # fmt: skip
def test_impossible_students_are_one_line_errors(extra, needles, teacher, tmp_path, capsys):
    status, _, err = distill(capsys, teacher, tmp_path / "s", *extra)
    assert_one_line_error(status, err, *needles)
    assert not (tmp_path / "s" / "model.safetensors").exists()


def test_missing_teacher_and_ambiguous_recipe(tmp_path, capsys):
    status, _, err = distill(capsys, tmp_path / "nope", tmp_path / "s")
    assert_one_line_error(status, err, "nope")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("distill:\n  - name: a\n  - name: b\n", encoding="utf-8")
    status = main(["distill", "--config", str(recipe)])
    assert_one_line_error(status, capsys.readouterr().err, "--name", "a, b")
