"""The one training loop: teacher fine-tuning and student distillation differ only by the module they pass.

`train(module, features, config, output_dir, save_model=..., evaluate=...)` runs AdamW (linear warmup, then
linear decay to 0) over shuffled windows with gradient accumulation, mixed precision and gradient clipping.
The module's `forward(**batch)` returns `(loss, parts)`: the loss to minimise and a dict of named scalars to
log. The batch is `Features.batch(idx, labels=True)` as tensors plus `feature_index` (B,), the rows of
`features` it holds (distillation looks cached teacher logits up with it).

`output_dir` is the model folder (`save_model` writes it: the best evaluation, or the last weights without
`evaluate`) and also holds `metrics.jsonl`, `tensorboard/`, `checkpoint/state.pt` (everything needed to
resume: rerunning a killed run continues where it stopped, with the same data order) and, at the end,
`train_state.json`. Rerunning a finished run reloads its final weights and returns at once.

Under torchrun (WORLD_SIZE > 1) the same code runs data-parallel: each process takes its share of every
epoch's permutation, DistributedDataParallel averages the gradients, and rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from tinyroberta_es import atomic
from tinyroberta_es.checkpoint import (
    load_checkpoint,
    load_trainable_state,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    save_model_atomically,
    set_rng_state,
    trainable_state,
)
from tinyroberta_es.config import TrainConfig
from tinyroberta_es.distributed import barrier, gather, init_distributed, resolve_device
from tinyroberta_es.errors import UserError
from tinyroberta_es.features import Features
from tinyroberta_es.metrics_log import MetricsLog

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoint") / "state.pt"
# TrainConfig fields a checkpoint is resumed only with (eval/log/checkpoint intervals and device may change)
RESUME_SETTINGS = (
    "batch_size",
    "grad_accum",
    "precision",
    "epochs",
    "max_steps",
    "lr",
    "weight_decay",
    "warmup_ratio",
    "max_grad_norm",
    "freeze_word_embeddings",
    "freeze_layers",
)
TRAIN_STATE = "train_state.json"


def freeze(model: torch.nn.Module, config: TrainConfig) -> None:
    """Keep what `config` freezes as loaded: the word embeddings (`freeze_word_embeddings`), and the whole
    embedding block with the bottom `freeze_layers` encoder layers."""
    if config.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if not config.freeze_layers:
        return
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(base, "embeddings"):
        raise UserError(
            f"train.freeze_layers: {type(model).__name__} has no encoder.layer list; set freeze_layers to 0"
        )
    if config.freeze_layers >= len(layers):
        raise UserError(
            f"train.freeze_layers {config.freeze_layers} leaves none of the {len(layers)} layers to train: "
            f"use at most {len(layers) - 1}"
        )
    for module in [base.embeddings, *layers[: config.freeze_layers]]:
        module.requires_grad_(False)


@dataclass
class TrainResult:
    """How a run ended; the metrics are empty without `evaluate` and on ranks other than 0."""

    step: int  # optimizer steps done
    epoch: float  # epochs done, fractional
    metrics: dict[str, Any]  # dev metrics of the model saved in output_dir (the best evaluation)
    last_metrics: dict[str, Any]  # dev metrics of the last evaluation
    best_step: int | None
    already_finished: bool = False  # train_state.json said so: nothing was trained


@dataclass
class _Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of `epoch` already done
    elapsed: float = 0.0  # training seconds, over all the processes that worked on the run
    best: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)


def train(
    module: torch.nn.Module,
    features: Features,
    config: TrainConfig,
    output_dir: str | Path,
    *,
    save_model: Callable[[Path], Any],
    evaluate: Callable[[], dict[str, Any]] | None = None,
) -> TrainResult:
    """Train `module` on `features` into `output_dir`, resuming from its checkpoint when there is one.

    `module.forward(**batch)` returns `(loss, parts)`; its optional `frozen_submodules` (attribute names)
    stay in eval mode and out of checkpoints, and `find_unused_parameters = True` is passed on to DDP.
    `save_model(folder)` writes the model folder; `evaluate()` (rank 0 only, eval mode, no grad) returns
    metrics holding `config.metric`, higher is better. Raises `UserError` for settings that cannot run.
    """
    check_config(config)
    device = resolve_device(config.device, config.precision)
    rank, world_size = init_distributed(device)
    main = rank == 0
    output_dir = Path(output_dir)
    checkpoint = output_dir / CHECKPOINT
    done = read_train_state(output_dir)
    if done is not None:
        return _reload_finished(module, device, output_dir, done)
    if len(features) == 0:
        raise UserError("there are no training windows: check data.train and data.train_limit")
    if main:
        remove_stale_temporaries(output_dir, checkpoint)

    _seed(config.seed)
    module.to(device)
    _train_mode(module)
    optimizer = build_optimizer(module, config)
    per_epoch = math.ceil(math.ceil(len(features) / world_size) / config.batch_size)
    total = total_steps(config, per_epoch)
    scheduler = linear_schedule(optimizer, total, config.warmup_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    # What fixes the data order and the optimizer's state: a checkpoint only resumes a run that keeps them.
    layout = {"windows": len(features), "world_size": world_size, "seed": config.seed}
    layout |= {k: getattr(config, k) for k in RESUME_SETTINGS}
    # ... and what fixes the objective (a distillation's loss weights and stage): resuming a checkpoint with
    # another objective, lr or length would silently continue the old run as a different one
    layout |= {f"objective.{k}": v for k, v in getattr(module, "settings", dict)().items()}
    progress = _Progress()
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        _check_layout(checkpoint, state["layout"], layout)
        load_trainable_state(module, state["module"], checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][rank % len(state["rng"])])
        progress = _Progress(**state["progress"])
        log.info("resuming %s at step %d/%d", output_dir, progress.step, total)

    model = module
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            module,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=getattr(module, "find_unused_parameters", False),
        )
    params = [p for p in module.parameters() if p.requires_grad]
    micro = config.batch_size // config.grad_accum
    metrics_log = MetricsLog(output_dir, total, progress.step, config.tensorboard, enabled=main)
    start = time.perf_counter() - progress.elapsed
    log.info(
        "training %s parameters on %d windows: %d steps (%d per epoch) of %d windows x %d processes, %s, %s",
        f"{sum(p.numel() for p in params):,}",
        len(features),
        total,
        per_epoch,
        config.batch_size,
        world_size,
        config.precision,
        device,
    )

    bar = tqdm(total=total, initial=progress.step, desc="train", unit="step", disable=not main)
    with logging_redirect_tqdm(), bar:
        while progress.step < total:
            order = epoch_order(len(features), config.seed + progress.epoch, rank, world_size)
            batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            for batch in batches[progress.batch :]:
                chunks = [batch[i : i + micro] for i in range(0, len(batch), micro)]
                for j, idx in enumerate(chunks):
                    inputs = _to_device(features.batch(idx, labels=True), idx, device)
                    # Only the last micro-batch all-reduces the gradients that all of them accumulated.
                    last = j == len(chunks) - 1
                    with nullcontext() if last or world_size == 1 else model.no_sync():
                        with _autocast(config.precision, device):
                            loss, parts = model(**inputs)
                        weight = len(idx) / len(batch)  # the micro-batch losses add up to the batch mean
                        scaler.scale(loss * weight).backward()
                    metrics_log.add(loss, parts, weight)
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf)
                lr = scheduler.get_last_lr()[0]
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                progress.step += 1
                progress.batch += 1
                epoch_end = progress.batch == len(batches)
                if epoch_end:
                    progress.epoch, progress.batch = progress.epoch + 1, 0
                final = progress.step == total
                epoch = progress.epoch + progress.batch / len(batches)
                progress.elapsed = time.perf_counter() - start
                bar.update()
                metrics_log.end_step(len(batch) * world_size, grad_norm, lr)
                if progress.step % config.log_every == 0 or final:
                    metrics_log.write_train(progress.step, epoch, progress.elapsed)

                every = config.eval_every
                evaluated = evaluate is not None and (
                    (every and progress.step % every == 0) or (not every and epoch_end) or final
                )
                if evaluated and main:
                    metrics = _evaluate(module, evaluate, config.metric)
                    improved = progress.best is None or metrics[config.metric] > progress.best
                    if improved:
                        progress.best, progress.best_step = float(metrics[config.metric]), progress.step
                        progress.best_metrics = metrics
                        save_model_atomically(save_model, output_dir)
                    progress.last_metrics = metrics
                    metrics_log.write_eval(progress.step, epoch, progress.elapsed, metrics, improved)
                if evaluated:
                    barrier(world_size)

                every = config.checkpoint_every
                if (
                    (every and progress.step % every == 0)
                    or (not every and (evaluated or epoch_end))
                    or final
                ):
                    rngs = gather(rng_state(), world_size)
                    if main:
                        state = {"module": trainable_state(module), "optimizer": optimizer.state_dict()}
                        state |= {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
                        state |= {"progress": asdict(progress), "rng": rngs, "layout": layout}
                        save_checkpoint(checkpoint, state)
                    barrier(world_size)
                if final:
                    break

    metrics_log.close()
    result = TrainResult(
        step=progress.step,
        epoch=round(progress.epoch + progress.batch / per_epoch, 4),
        metrics=progress.best_metrics,
        last_metrics=progress.last_metrics,
        best_step=progress.best_step,
    )
    if main:
        if evaluate is None:
            save_model_atomically(save_model, output_dir)
        record = {
            "finished": True,
            **asdict(result),
            "metric": config.metric,
            "elapsed": round(progress.elapsed, 2),
        }
        del record["already_finished"]
        atomic.write_json(output_dir / TRAIN_STATE, record)
        log.info("finished after %d steps (%.0f s); model in %s", progress.step, progress.elapsed, output_dir)
    barrier(world_size)
    return result


def check_config(config: TrainConfig) -> None:
    """Checks of a `TrainConfig` that its own validation cannot make; run them before any slow work."""
    if config.batch_size % config.grad_accum:
        raise UserError(
            f"train.batch_size {config.batch_size} is not divisible by train.grad_accum {config.grad_accum}: "
            "make batch_size a multiple of grad_accum (a micro-batch holds batch_size / grad_accum windows)"
        )


def build_optimizer(module: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and normalisation weights get no weight decay."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            exempt = name.endswith("bias") or any(s in name for s in ("LayerNorm", "layer_norm", "norm."))
            (no_decay if exempt else decay).append(param)
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters: everything has requires_grad=False")
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, config.weight_decay), (no_decay, 0.0))
        if params
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def total_steps(config: TrainConfig, per_epoch: int) -> int:
    """Optimizer steps of the run: `epochs` (may be fractional) of `per_epoch` steps, at most `max_steps`."""
    steps = math.ceil(round(config.epochs * per_epoch, 6))  # round: 0.1 * 30 is 3.0000000000000004
    return max(1, min(steps, config.max_steps or steps))


def linear_schedule(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float) -> Any:
    """LambdaLR: linear warmup from 0 over `warmup_ratio` of the `total` steps, then linear decay to 0."""
    warmup = math.ceil(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_order(n: int, seed: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This process's windows for one epoch: a permutation drawn from `seed` (seed + epoch), padded by
    wrapping to a multiple of `world_size` (so every process gets the same number of batches), dealt out."""
    order = np.random.default_rng(seed).permutation(n)
    return np.resize(order, n + (-n % world_size))[rank::world_size]


def read_train_state(output_dir: str | Path) -> dict[str, Any] | None:
    """The `train_state.json` of a finished run in `output_dir`, or None."""
    path = Path(output_dir) / TRAIN_STATE
    if not path.is_file():
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    return state if state.get("finished") else None


def _reload_finished(
    module: torch.nn.Module, device: torch.device, output_dir: Path, done: dict[str, Any]
) -> TrainResult:
    checkpoint = output_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise UserError(
            f"{output_dir} holds a finished run but its {CHECKPOINT} is gone; "
            f"delete {output_dir / TRAIN_STATE} to train again"
        )
    load_trainable_state(module, load_checkpoint(checkpoint)["module"], checkpoint)
    module.to(device)
    log.info("%s: the run already finished at step %d; nothing to train", output_dir, done["step"])
    saved = {f.name: done[f.name] for f in fields(TrainResult) if f.name != "already_finished"}
    return TrainResult(**saved, already_finished=True)


def _check_layout(path: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    # a setting newer than the checkpoint (absent from its layout) had its default value in that run
    defaults = {k: f.default for f in fields(TrainConfig) if (k := f.name) in RESUME_SETTINGS}
    saved = {k: v for k, v in defaults.items() if k not in saved} | saved
    keys = list(now) + [k for k in saved if k not in now]  # a term dropped from the objective counts too
    changed = [f"{k} {saved.get(k)} -> {now.get(k)}" for k in keys if saved.get(k) != now.get(k)]
    if changed:
        raise UserError(
            f"checkpoint {path} belongs to a run with other data or settings ({'; '.join(changed)}): "
            "resume with the same ones, or pass a new output folder"
        )


def _train_mode(module: torch.nn.Module) -> None:
    """Train mode, except for frozen submodules (a teacher), which run as at inference (no dropout)."""
    module.train()
    for name in getattr(module, "frozen_submodules", ()):
        getattr(module, name).eval()


def _evaluate(module: torch.nn.Module, evaluate: Callable[[], dict[str, Any]], metric: str) -> dict[str, Any]:
    module.eval()
    with torch.no_grad():
        metrics = evaluate()
    _train_mode(module)
    if metric not in metrics:
        raise UserError(f"unknown train.metric {metric!r}: the evaluation gives {', '.join(metrics)}")
    return metrics


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every CUDA device too


def _autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _to_device(
    arrays: dict[str, np.ndarray], idx: np.ndarray, device: torch.device
) -> dict[str, torch.Tensor]:
    batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}  # each (B, T) or (B,)
    batch["feature_index"] = torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(device)  # (B,)
    return batch
