"""Where a training process runs: its device and, under torchrun, its rank in the process group.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 the process joins the default process group
(NCCL between GPUs, Gloo on CPU) and leaves it initialised for later calls in the same process.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tinyroberta_es.errors import UserError


def resolve_device(device: str, precision: str = "fp32") -> torch.device:
    """`train.device` as a device ("auto": CUDA when there is one; under torchrun, cuda:LOCAL_RANK).

    Also checks that `precision` runs there: fp16 needs a GPU, bf16 a GPU that has it (or the CPU).
    """
    name = "cuda" if device == "auto" and torch.cuda.is_available() else device
    name = "cpu" if name == "auto" else name
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown train.device {device!r}: choose auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.device is {device!r} but there is no CUDA GPU: use auto or cpu")
        if resolved.index is None:
            resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if precision == "fp16" and resolved.type != "cuda":
        raise UserError(
            f"train.precision fp16 needs a CUDA GPU (loss scaling) but the device is {resolved}: "
            "use --set train.precision=bf16 (or fp32) on CPU"
        )
    if precision == "bf16" and resolved.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"train.precision bf16 is not supported by {resolved}: use --set train.precision=fp16"
        )
    return resolved


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); under torchrun, join the process group first (NCCL on CUDA, Gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Rank 0 evaluates alone while the others wait at a barrier: allow long evaluations.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size()


def leave_process_group() -> None:
    """Leave the process group at the end of a command (under torchrun; a no-op otherwise).

    Only at the end: a group destroyed and created again in one process can hang in its rendezvous under
    torchrun (seen when `run` fine-tuned the teacher and then distilled), so the training stages of one
    process share one group.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather(obj: Any, world_size: int) -> list[Any]:
    """`obj` of every process, by rank (a collective: every process must call it)."""
    if world_size == 1:
        return [obj]
    objs: list[Any] = [None] * world_size
    dist.all_gather_object(objs, obj)
    return objs


def barrier(world_size: int) -> None:
    """Wait for every process (a no-op in a single process)."""
    if world_size > 1:
        dist.barrier()
