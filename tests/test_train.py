"""The training loop: schedule, accumulation, outputs, best-model choice, resume after SIGKILL, and DDP.

The model is the few-hundred-parameter `TinyQAModel` of `_train_worker.py` on synthetic windows, so every
in-process run takes a fraction of a second; the subprocess tests (a killed run, torchrun) take seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_worker import TinyQAModel, synthetic_features
from cli_helpers import free_port
from tinyroberta_es.checkpoint import trainable_state
from tinyroberta_es.config import TrainConfig
from tinyroberta_es.errors import UserError
from tinyroberta_es.qa_loss import QALoss, qa_cross_entropy, span_cross_entropy
from tinyroberta_es.train import (
    build_optimizer,
    epoch_order,
    linear_schedule,
    total_steps,
    train,
)

WORKER = Path(__file__).with_name("_train_worker.py")


def config(**overrides) -> TrainConfig:
    base = dict(
        epochs=100.0,
        batch_size=4,
        lr=1e-2,
        warmup_ratio=0.0,
        precision="fp32",
        max_steps=6,
        log_every=2,
        tensorboard=False,
        device="cpu",
    )
    return TrainConfig(**(base | overrides))


def save_weights(model: torch.nn.Module):
    return lambda folder: torch.save(model.state_dict(), Path(folder) / "weights.pt")


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "weights.pt", weights_only=True)


def worker_env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


# --- The pieces ---------------------------------------------------------------------------------------------


def test_no_weight_decay_for_biases_and_norms_and_no_frozen_parameters():
    module = QALoss(TinyQAModel())
    module.model.embed.weight.requires_grad_(False)
    optimizer = build_optimizer(module, config(weight_decay=0.1))
    names = {id(p): n for n, p in module.named_parameters()}
    groups = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups}
    assert groups == {
        0.1: ["model.head.weight", "model.proj.weight"],
        0.0: ["model.norm.weight", "model.proj.bias"],
    }


def test_linear_warmup_then_linear_decay_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_schedule(optimizer, total=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert scheduler.get_last_lr()[0] == 0.0


def test_total_steps_takes_fractional_epochs_and_max_steps():
    assert total_steps(config(epochs=0.1, max_steps=None), per_epoch=30) == 3  # not 4 from 3.0000000000000004
    assert total_steps(config(epochs=1.5, max_steps=None), per_epoch=7) == 11
    assert total_steps(config(epochs=2.0, max_steps=5), per_epoch=7) == 5


def test_epoch_order_is_seeded_and_gives_every_rank_the_same_share():
    assert np.array_equal(epoch_order(10, seed=3), epoch_order(10, seed=3))
    assert not np.array_equal(epoch_order(10, seed=3), epoch_order(10, seed=4))
    assert sorted(epoch_order(10, seed=3)) == list(range(10))
    shards = [epoch_order(10, seed=3, rank=r, world_size=4) for r in range(4)]
    assert {len(s) for s in shards} == {3}  # 10 windows padded to 12 by wrapping
    assert set(np.concatenate(shards)) == set(range(10))


def test_qa_cross_entropy_by_hand_and_with_padding_masked():
    start = torch.tensor([[0.0, 1.0, 2.0, 5.0]])  # (B=1, T=4); the last token is padding
    end = torch.tensor([[1.0, 1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    gold_start, gold_end = torch.tensor([2]), torch.tensor([0])
    by_hand_start = -(2.0 - np.log(np.exp(0.0) + np.exp(1.0) + np.exp(2.0)))
    by_hand_end = np.log(3.0)
    assert span_cross_entropy(start, gold_start, mask).item() == pytest.approx(by_hand_start, rel=1e-6)
    loss = qa_cross_entropy(start, end, gold_start, gold_end, mask)
    assert loss.item() == pytest.approx((by_hand_start + by_hand_end) / 2, rel=1e-6)
    reference = torch.nn.functional.cross_entropy(start[:, :3], gold_start)  # the unpadded window
    assert span_cross_entropy(start, gold_start, mask).item() == pytest.approx(reference.item(), rel=1e-6)
    assert span_cross_entropy(start, gold_start).item() > reference.item()  # padding would count


def test_bad_train_settings_are_user_errors():
    module = QALoss(TinyQAModel())
    with pytest.raises(UserError, match=r"train.batch_size 10 is not divisible by train.grad_accum 4"):
        train(module, synthetic_features(), config(batch_size=10, grad_accum=4), "unused", save_model=print)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"fp16 needs a CUDA GPU.*train.precision=bf16"):
            train(module, synthetic_features(), config(precision="fp16"), "unused", save_model=print)


# --- Whole runs ---------------------------------------------------------------------------------------------


def test_accumulated_micro_batches_equal_one_batch(tmp_path):
    weights = []
    for accum in (1, 4):
        model = TinyQAModel(dropout=0.0)
        train(
            QALoss(model),
            synthetic_features(),
            config(grad_accum=accum),
            tmp_path / str(accum),
            save_model=print,
        )
        weights.append(model.state_dict())
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-6, rtol=1e-5)


def test_a_run_writes_the_best_model_metrics_tensorboard_and_a_final_state(tmp_path):
    model = TinyQAModel()
    module = QALoss(model)
    scores = iter([10.0, 30.0, 20.0])
    snapshots = {}

    def evaluate():
        assert not module.training and not torch.is_grad_enabled()
        snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"f1": next(scores), "exact_match": 1.0}

    out = tmp_path / "run"
    result = train(
        module,
        synthetic_features(),
        config(max_steps=6, eval_every=2, tensorboard=True),
        out,
        save_model=save_weights(model),
        evaluate=evaluate,
    )
    assert module.training
    assert (result.step, result.best_step, result.metrics["f1"], result.last_metrics["f1"]) == (
        6,
        4,
        30.0,
        20.0,
    )
    for name, value in load_weights(out).items():  # the second evaluation's weights, not the last
        assert torch.equal(value, snapshots[2][name])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert {"epoch", "loss", "start_ce", "end_ce", "lr", "grad_norm", "examples_per_s", "elapsed"} <= set(
        train_rows[0]
    )
    assert [(r["step"], r["eval"]["f1"]) for r in rows if "eval" in r] == [(2, 10.0), (4, 30.0), (6, 20.0)]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    state = json.loads((out / "train_state.json").read_text())
    assert state["finished"] and state["best_step"] == 4 and state["metrics"]["f1"] == 30.0
    assert (out / "checkpoint" / "state.pt").is_file()
    assert not list(tmp_path.glob(".run.saving-*"))


def test_a_finished_run_reloads_its_final_state_and_trains_nothing(tmp_path):
    model = TinyQAModel()
    train(QALoss(model), synthetic_features(), config(), tmp_path, save_model=save_weights(model))
    final = {k: v.clone() for k, v in model.state_dict().items()}
    again = TinyQAModel(seed=1)
    result = train(QALoss(again), synthetic_features(), config(), tmp_path, save_model=pytest.fail)
    assert result.already_finished and result.step == 6
    for name, value in again.state_dict().items():
        assert torch.equal(value, final[name])


class Distiller(torch.nn.Module):
    """A frozen teacher next to the trained student, as distillation will have it."""

    frozen_submodules = ("teacher",)

    def __init__(self) -> None:
        super().__init__()
        self.teacher = TinyQAModel(seed=1).requires_grad_(False)
        self.student = QALoss(TinyQAModel(seed=2))

    def forward(self, **batch):
        assert not self.teacher.training and self.student.training
        return self.student(**batch)


def test_frozen_submodules_stay_out_of_the_checkpoint_and_in_eval_mode(tmp_path):
    module = Distiller()
    teacher = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    train(module, synthetic_features(), config(), tmp_path, save_model=print)
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
    assert (
        set(state["module"])
        == set(trainable_state(module))
        == {k for k in module.state_dict() if k.startswith("student.")}
    )
    for name, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher[name])
    fresh = Distiller()
    train(fresh, synthetic_features(), config(), tmp_path, save_model=print)  # finished: reloads strict=False
    assert torch.equal(fresh.student.model.head.weight, module.student.model.head.weight)


def test_resuming_with_another_batch_size_is_refused(tmp_path):
    model = TinyQAModel()
    train(QALoss(model), synthetic_features(), config(max_steps=2), tmp_path, save_model=print)
    (tmp_path / "train_state.json").unlink()  # as if killed after the last checkpoint
    with pytest.raises(UserError, match=r"batch_size 4 -> 8"):
        train(QALoss(model), synthetic_features(), config(batch_size=8), tmp_path, save_model=print)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"lr": 0.5}, r"lr 0\.01 -> 0\.5"),
        ({"epochs": 3.0}, r"epochs 100\.0 -> 3\.0"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_resuming_with_another_lr_or_length_is_refused(tmp_path, change, needle):
    """Defect: only the data layout was compared, so a rerun with another lr silently continued the run."""
    model = TinyQAModel()
    train(QALoss(model), synthetic_features(), config(max_steps=2), tmp_path, save_model=print)
    (tmp_path / "train_state.json").unlink()  # as if killed after the last checkpoint
    with pytest.raises(UserError, match=needle):
        train(QALoss(model), synthetic_features(), config(max_steps=2, **change), tmp_path, save_model=print)


def test_a_checkpoint_older_than_a_setting_resumes_with_that_settings_default(tmp_path):
    """A checkpoint written before `freeze_layers` existed ran with its default: it resumes with 0, not 1."""
    from tinyroberta_es.checkpoint import load_checkpoint, save_checkpoint

    model = TinyQAModel()
    train(QALoss(model), synthetic_features(), config(max_steps=2), tmp_path, save_model=print)
    (tmp_path / "train_state.json").unlink()
    path = tmp_path / "checkpoint" / "state.pt"
    state = load_checkpoint(path)
    del state["layout"]["freeze_layers"]
    save_checkpoint(path, state)
    with pytest.raises(UserError, match=r"freeze_layers 0 -> 1"):
        train(
            QALoss(model),
            synthetic_features(),
            config(max_steps=2, freeze_layers=1),
            tmp_path,
            save_model=print,
        )
    assert (
        train(QALoss(model), synthetic_features(), config(max_steps=2), tmp_path, save_model=print).step == 2
    )


def test_resuming_with_another_objective_is_refused(tmp_path):
    class Weighted(QALoss):
        def __init__(self, model, weight: float) -> None:
            super().__init__(model)
            self.weight = weight

        def settings(self) -> dict:
            return {"weight.ce": self.weight}

    model = TinyQAModel()
    train(Weighted(model, 1.0), synthetic_features(), config(max_steps=2), tmp_path, save_model=print)
    (tmp_path / "train_state.json").unlink()
    with pytest.raises(UserError, match=r"objective\.weight\.ce 1\.0 -> 2\.0"):
        train(Weighted(model, 2.0), synthetic_features(), config(max_steps=2), tmp_path, save_model=print)
    train(Weighted(model, 1.0), synthetic_features(), config(max_steps=2), tmp_path, save_model=print)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    model = TinyQAModel()
    before = model.head.weight.clone()
    result = train(
        QALoss(model), synthetic_features(), config(precision="bf16", max_steps=2), tmp_path, save_model=print
    )
    assert result.step == 2 and not torch.equal(before, model.head.weight)
    assert model.head.weight.dtype == torch.float32


# --- Subprocesses: SIGKILL and resume, torchrun ----------------------------------------------------------


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    steps = ["--max-steps", "60", "--checkpoint-every", "1"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    state = killed / "checkpoint" / "state.pt"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(killed), *steps, "--delay", "0.03"],
        env=worker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or seen[-1] < 12):
            if state.is_file():  # replaced atomically: whenever it exists, it loads
                seen.append(torch.load(state, weights_only=False)["progress"]["step"])
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert seen and 12 <= seen[-1] < 60, seen
    assert len(set(seen)) >= 3
    assert not (killed / "train_state.json").exists()

    for out in (killed, whole):
        done = subprocess.run(
            [sys.executable, str(WORKER), str(out), *steps],
            env=worker_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.splitlines()[-1]) == {"step": 60, "already_finished": False}
    resumed, uninterrupted = load_weights(killed), load_weights(whole)
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))  # rows after the checkpoint were not doubled
    assert not list(state.parent.glob(".*.tmp"))


@pytest.mark.slow
def test_two_processes_under_torchrun_keep_equal_weights(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command += [str(WORKER), str(out), "--max-steps", "4", "--batch-size", "2", "--grad-accum", "2"]
    command += ["--dropout", "0", "--digest-out", str(tmp_path)]
    done = subprocess.run(command, env=worker_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["final"] == ranks[1]["final"]
    assert ranks[0]["final"]["sha256"] != ranks[0]["initial"]["sha256"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # rank 0 alone logs

    # Two processes of 2 windows average their gradients: one process with batches of 4 windows (the same
    # windows: rank r takes every other one of the epoch's order) ends with the same weights.
    model = TinyQAModel(dropout=0.0)
    train(
        QALoss(model),
        synthetic_features(),
        config(max_steps=4, warmup_ratio=0.1),
        tmp_path / "one",
        save_model=print,
    )
    ddp = load_weights(out)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp[name], value, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_trains_and_resumes_on_a_gpu(tmp_path, precision):
    model = TinyQAModel(dropout=0.0)
    settings = dict(precision=precision, device="cuda", checkpoint_every=2)
    train(QALoss(model), synthetic_features(), config(max_steps=4, **settings), tmp_path, save_model=print)
    assert model.head.weight.is_cuda and model.head.weight.dtype == torch.float32
    assert torch.isfinite(model.head.weight).all()
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
    assert bool(state["scaler"]) == (precision == "fp16")  # the loss scale travels with the checkpoint
    (tmp_path / "train_state.json").unlink()  # go on: two more steps from the checkpoint
    again = TinyQAModel(dropout=0.0, seed=5)
    result = train(
        QALoss(again), synthetic_features(), config(max_steps=6, **settings), tmp_path, save_model=print
    )
    assert result.step == 6 and not result.already_finished
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        2,
        4,
        6,
    ]


def test_frozen_layers_are_the_embeddings_and_the_bottom_ones_and_no_more():
    from transformers import BertConfig, BertForQuestionAnswering

    from tinyroberta_es.train import freeze

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
    )
    model = BertForQuestionAnswering(config)
    freeze(model, TrainConfig(freeze_layers=2))
    trainable = {
        n.split(".")[1] if n.startswith("bert.") else n
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    layers = {n.split(".")[3] for n, p in model.named_parameters() if p.requires_grad and ".layer." in n}
    assert layers == {"2"} and "embeddings" not in trainable and "qa_outputs.weight" in trainable
    with pytest.raises(UserError, match=r"train\.freeze_layers 3 leaves none of the 3 layers to train"):
        freeze(BertForQuestionAnswering(config), TrainConfig(freeze_layers=3))
