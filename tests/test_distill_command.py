"""`tinyroberta-es distill` end to end: a tiny teacher into tiny students, on the embedded sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
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
        "--set", "student.trim_vocab=[sample_dev]", "--train", "sample_dev",
    )  # fmt: skip
    # (sample_dev, 120 questions: the whole 600-question sample uses every piece of the tiny vocabulary)
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
    shares = [row for row in parts if "share_kd" in row]  # each group's share of the gradient norm
    assert shares and {"share_ce", "share_hidden", "share_attention"} <= set(shares[0])
    assert sum(v for k, v in shares[0].items() if k.startswith("share_")) == pytest.approx(1.0, abs=1e-3)
    # the teacher runs online for the intermediate losses, and KD reads its logits: no cache pass
    assert not (cache / "teacher_logits").exists()
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["student"]["trim_vocab"] == ["sample_dev"]
    # a finished run is left as it is
    status, stdout, _ = distill(capsys, teacher, out)
    assert status == 0 and "finished" in stdout


def test_two_stage_distillation(teacher, tmp_path, cache, capsys):
    out = tmp_path / "student"
    status, _, err = distill(
        capsys, teacher, out, "--set", "student.layers=2", "--set", "student.init=teacher-layers",
        "--set", "schedule=two-stage", "--set", "intermediate.epochs=1", "--set", "intermediate.lr=0.003",
        "--set", "intermediate.warmup_ratio=0", "--set", "loss.attention_loss=kl",
    )  # fmt: skip
    assert status == 0, err
    assert any((cache / "teacher_logits").iterdir())  # the prediction stage reads the cached logits
    stage1 = [
        json.loads(line) for line in (tmp_path / "student.stage1" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all("kd" not in row and "ce" not in row for row in stage1)  # intermediate losses only
    # the first stage's own lr without warmup: 0.003, decayed linearly over 3 steps to 0.001 at the last
    assert stage1[-1]["lr"] == pytest.approx(0.001)
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


def test_frozen_word_embeddings_are_honoured(teacher, tmp_path, capsys):
    """Defect: distill ignored train.freeze_word_embeddings while run_config.json recorded it."""
    from safetensors.torch import load_file

    out = tmp_path / "student"
    status, _, err = distill(
        capsys, teacher, out, "--set", "student.layers=2", "--set", "student.init=teacher-layers",
        "--set", "train.freeze_word_embeddings=true", "--set", "train.lr=0.01",
    )  # fmt: skip
    assert status == 0, err
    student = load_file(out / "model.safetensors")
    taught = load_file(teacher / "model.safetensors")
    name = next(k for k in student if k.endswith("word_embeddings.weight"))
    torch.testing.assert_close(student[name], taught[name], rtol=0, atol=0)  # copied, never trained
    layer = next(k for k in student if k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.allclose(student[layer], taught[layer])  # the rest trained


def test_resuming_with_other_loss_weights_is_refused(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    args = ["--set", "student.layers=2", "--set", "student.init=teacher-layers"]
    status, _, err = distill(capsys, teacher, out, *args, "--set", "train.checkpoint_every=1")
    assert status == 0, err
    (out / "train_state.json").unlink()  # as if killed after its last checkpoint
    status, _, err = distill(
        capsys, teacher, out, *args, "--set", "train.checkpoint_every=1", "--set", "loss.kd=3"
    )
    assert_one_line_error(status, err, "objective.weight.kd 1.0 -> 3.0")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--set", "student.layers=3"], ["not a multiple", "loss.layer_map"]),
        (["--set", "student.layers=2", "--set", "student.heads=2"], ["heads", "loss.attention"]),
        (["--set", "student.layers=2", "--set", "loss.lossy=1"], ["lossy"]),
        (["--set", "loss.kd=0", "--set", "loss.ce=0", "--set", "loss.hidden=0", "--set", "loss.attention=0"],
         ["every loss weight is 0", "loss.kd=1"]),
        (["--set", "schedule=two-stage", "--set", "intermediate.epochs=1", "--set", "loss.hidden=0",
          "--set", "loss.attention=0"], ["first stage would have no loss"]),
        (["--set", "intermediate.epochs=1"], ["schedule is one-stage"]),
        (["--set", "student.layers=2", "--set", "loss.relations=1", "--set", "loss.relation_heads=5"],
         ["loss.relation_heads 5"]),
        (["--set", "student.layers=2", "--set", "loss.relations=1", "--set", "loss.relation_layer=9"],
         ["loss.relation_layer 9"]),
        (["--set", "loss.relation_heads=4"], ["loss.relation_heads is set but loss.relations is 0"]),
        (["--set", "loss.hidden=0", "--set", "loss.attention=0", "--set", "loss.normalize=initial"],
         ["loss.normalize is set"]),
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


@pytest.mark.slow
def test_two_stage_distillation_under_torchrun(teacher, tmp_path, cache):
    """Defects: in the prediction stage DDP raised on the projection that had no loss; every rank wrote
    run_config.json and metrics.json (others empty); every rank computed the whole teacher-logit cache."""
    import os
    import subprocess

    from cli_helpers import torchrun_cli

    out = tmp_path / "student"
    argv = [*torchrun_cli(2), "distill", "--teacher", str(teacher)]
    argv += ["--output", str(out), "--train", "sample", "--dev", "sample", "--set", "student.preset=null"]
    argv += [*SMOKE, "--set", "student.layers=2", "--set", "student.init=teacher-layers"]
    argv += [
        "--set",
        "schedule=two-stage",
        "--set",
        "intermediate.epochs=1",
        "--set",
        "loss.attention_loss=kl",
    ]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = os.environ | {"PYTHONPATH": src, "OMP_NUM_THREADS": "1", "TINYROBERTA_ES_CACHE": str(cache)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "train_state.json").read_text())["step"] == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert "f1" in metrics and metrics["params"] > 0  # rank 0's, not overwritten by an empty one
    assert done.stderr.count("teacher logits: cache miss") == 2  # each process computed its share...
    entries = list((cache / "teacher_logits").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp")  # ...into one entry
    assert json.loads((entries[0] / "meta.json").read_text())["n"] > 0
