"""`tinyroberta-es finetune` end to end with a tiny RoBERTa and the embedded sample, in seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from tinyroberta_es.cli import main
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.tiny import create_tiny_qa_model, train_tokenizer

SMALL = [
    "data.train_limit=8",
    "data.dev_limit=8",
    "data.max_length=128",
    "data.doc_stride=32",
    "train.precision=fp32",
    "train.batch_size=4",
    "train.max_steps=4",
    "train.eval_every=2",
    "train.log_every=1",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-finetune")
    sample = load_dataset("sample")
    texts = [ex.context for ex in sample.examples] + [ex.question for ex in sample.examples]
    tokenizer_dir = train_tokenizer("bpe", texts, root / "tokenizer", vocab_size=1000)
    return create_tiny_qa_model(root / "model", tokenizer_dir, max_length=256, seed=1)


def finetune(capsys, *argv: str, settings: list[str] = SMALL) -> tuple[int, str, str]:
    sets = [arg for s in settings for arg in ("--set", s)]
    status = main(["finetune", *argv, *sets])
    out, err = capsys.readouterr()
    return status, out, err


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_finetune_writes_a_qa_folder_its_records_and_leaves_a_finished_run_alone(model_dir, tmp_path, capsys):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    out = tmp_path / "teacher"
    args = ["--model", str(model_dir), "--train", "sample", "--dev", "sample", "--output", str(out)]
    status, stdout, _ = finetune(capsys, *args)
    assert status == 0
    assert f"model in {out}" in stdout

    model = AutoModelForQuestionAnswering.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert model.config.architectures == ["RobertaForQuestionAnswering"] and tokenizer.is_fast
    config = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    assert config["model"] == str(model_dir) and config["train"]["max_steps"] == 4
    assert config["data"]["train"] == "sample" and "tinyroberta_es_version" in config
    records = rows(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval" in r] == [2, 4]
    assert {"f1", "exact_match", "squad_f1", "squad_exact_match"} <= set(records[-1]["eval"])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    state = json.loads((out / "train_state.json").read_text(encoding="utf-8"))
    assert state["finished"] and state["step"] == 4
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["step"] == state["best_step"] and 0 <= metrics["f1"] <= 100

    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    started = time.perf_counter()
    status, stdout, _ = finetune(capsys, *args)
    assert status == 0 and "finished run" in stdout
    assert time.perf_counter() - started < 5
    assert weights.stat().st_mtime_ns == stamp


def test_the_loss_goes_down_when_overfitting_four_questions(model_dir, tmp_path, capsys):
    out = tmp_path / "overfit"
    settings = [
        "data.dev=null",
        "data.train_limit=4",
        "data.max_length=128",
        "data.doc_stride=32",
        "train.precision=fp32",
        "train.batch_size=16",  # every window of the four questions in each step
        "train.epochs=30",
        "train.lr=1e-3",
        "train.warmup_ratio=0",
        "train.log_every=1",
        "train.device=cpu",
        "train.tensorboard=false",
    ]
    status, stdout, _ = finetune(
        capsys, "--model", str(model_dir), "--train", "sample", "--output", str(out), settings=settings
    )
    assert status == 0 and "no dev set" in stdout
    losses = [r["loss"] for r in rows(out)]
    assert len(losses) == 30
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
    assert not (out / "metrics.json").exists()


def test_bf16_runs_on_cpu(model_dir, tmp_path, capsys):
    out = tmp_path / "bf16"
    settings = [*SMALL, "data.dev=null", "train.max_steps=2", "train.precision=bf16"]
    status, _, err = finetune(
        capsys, "--model", str(model_dir), "--train", "sample", "--output", str(out), settings=settings
    )
    assert status == 0, err
    assert json.loads((out / "train_state.json").read_text(encoding="utf-8"))["step"] == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows(out))


def test_a_recipe_is_the_start_and_set_overrides_it(model_dir, tmp_path, capsys):
    out = tmp_path / "from-recipe"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
finetune:
  model: {model_dir}
  output: {out}
  data: {{train: sample, dev: null, train_limit: 4, max_length: 128, doc_stride: 32}}
  train: {{max_steps: 2, lr: 1e-4, precision: fp32, batch_size: 4, device: cpu, tensorboard: false}}
""",
        encoding="utf-8",
    )
    status, _, err = finetune(capsys, "--config", str(recipe), settings=["train.lr=2e-4"])
    assert status == 0, err
    config = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    assert config["train"]["lr"] == 2e-4 and config["train"]["max_steps"] == 2
    assert config["data"]["train_limit"] == 4
    assert not (out / "tensorboard").exists()


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing model", "does not exist"),
        ("not a model folder", "no config.json"),
        ("unknown key", "unknown key 'lrr'"),
        ("fp16 on cpu", "fp16 needs a CUDA GPU"),
        ("indivisible batch", "not divisible by train.grad_accum 4"),
        ("recipe without finetune", "no finetune section"),
        ("unknown metric", "unknown train.metric 'f2'"),
        ("nothing left to train on", "no questions left"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, needle, model_dir, tmp_path, capsys):
    if case == "fp16 on cpu" and torch.cuda.is_available():
        pytest.skip("fp16 is allowed where there is a GPU")
    out = tmp_path / "out"
    model, settings, extra = str(model_dir), list(SMALL), []
    if case == "missing model":
        model = str(tmp_path / "nowhere")
    elif case == "not a model folder":
        model = str(tmp_path)
    elif case == "unknown key":
        settings.append("train.lrr=1")
    elif case == "fp16 on cpu":
        settings.append("train.precision=fp16")
    elif case == "indivisible batch":
        settings += ["train.batch_size=10", "train.grad_accum=4"]
    elif case == "unknown metric":
        settings.append("train.metric=f2")
    elif case == "nothing left to train on":
        settings.append("data.exclude=[sample]")  # every paragraph is held out
    else:
        (tmp_path / "recipe.yaml").write_text("distill: []\n", encoding="utf-8")
        extra = ["--config", str(tmp_path / "recipe.yaml")]
    status, _, err = finetune(
        capsys, "--model", model, "--train", "sample", "--output", str(out), *extra, settings=settings
    )
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("tinyroberta-es finetune: error:") and needle in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_finetune_on_a_gpu(model_dir, tmp_path, capsys, precision):
    from tinyroberta_es.inference import QuestionAnswerer

    out = tmp_path / precision
    settings = [*SMALL, "train.device=auto", f"train.precision={precision}"]
    args = ["--model", str(model_dir), "--train", "sample", "--dev", "sample", "--output", str(out)]
    status, _, err = finetune(capsys, *args, settings=settings)
    assert status == 0, err
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows(out) if "loss" in r)
    answerer = QuestionAnswerer.from_pretrained(out, device="cpu")
    assert answerer.answer("¿Dónde nació?", "Nació en Aracataca, Colombia, en 1927.").id == "q"
