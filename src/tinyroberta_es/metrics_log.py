"""Training metrics: JSON lines (`metrics.jsonl`), TensorBoard scalars and one dense log line per interval.

Losses are summed as tensors between log lines, so logging costs no GPU synchronisation on other steps.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from tinyroberta_es import atomic

log = logging.getLogger(__name__)


class MetricsLog:
    """Running sums between log lines; each line goes to metrics.jsonl, TensorBoard and the log.

    Only the process with `enabled` writes. Starting at `start_step` (a resumed run) drops the rows logged
    after that step, which the run will log again, and purges them from TensorBoard.
    """

    def __init__(self, output_dir: Path, total: int, start_step: int, tensorboard: bool, enabled: bool):
        self.path = output_dir / "metrics.jsonl"
        self.total = total
        self.enabled = enabled
        self.writer = None
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            _keep_rows_through(self.path, start_step)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                purge = start_step + 1 if start_step else None
                self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge)
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, float] = {}  # batch shares each name was seen in (gradient shares: some steps)
        self.steps = self.examples = 0
        self.lr = 0.0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, parts: dict[str, Any], weight: float) -> None:
        """One micro-batch's loss and parts, `weight` its share of the batch (no GPU sync here)."""
        for name, value in {"loss": loss, **parts}.items():
            value = torch.as_tensor(value).detach().float() * weight
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0.0) + weight

    def end_step(self, examples: int, grad_norm: torch.Tensor, lr: float) -> None:
        """One optimizer step of `examples` windows (all processes)."""
        self.steps += 1
        self.examples += examples
        self.lr = lr
        norm = grad_norm.detach().float()
        self.sums["grad_norm"] = self.sums["grad_norm"] + norm if "grad_norm" in self.sums else norm
        self.counts["grad_norm"] = self.counts.get("grad_norm", 0.0) + 1.0

    def write_train(self, step: int, epoch: float, elapsed: float) -> None:
        """Means since the last line, then one row, scalars and one log line."""
        if self.enabled and self.steps:
            seconds = time.perf_counter() - self.t0
            # a mean over the steps that logged each name (weights of one step's micro-batches add up to 1)
            means = {name: float(total) / self.counts[name] for name, total in self.sums.items()}
            row = {"step": step, "epoch": round(epoch, 4), **means, "lr": self.lr}
            row |= {"examples_per_s": round(self.examples / seconds, 2), "elapsed": round(elapsed, 2)}
            self._write(row, "train")
            eta = (self.total - step) * seconds / self.steps
            parts = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k not in ("loss", "grad_norm"))
            log.info(
                "step %d/%d | epoch %.2f | loss %.4f%s | lr %.2e | grad %.3f | %.1f ex/s | %s, ETA %s",
                step,
                self.total,
                epoch,
                means["loss"],
                f" ({parts})" if parts else "",
                self.lr,
                means["grad_norm"],
                row["examples_per_s"],
                timedelta(seconds=round(elapsed)),
                timedelta(seconds=round(eta)),
            )
        self._reset()

    def write_eval(
        self, step: int, epoch: float, elapsed: float, metrics: dict[str, Any], best: bool
    ) -> None:
        """One evaluation: a row, scalars and one log line."""
        self._write(
            {"step": step, "epoch": round(epoch, 4), "elapsed": round(elapsed, 2), "eval": metrics}, "eval"
        )
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
        log.info("eval at step %d: %s%s", step, shown, " (best so far: saved)" if best else "")

    def _write(self, row: dict[str, Any], section: str) -> None:
        # Standard JSON: a diverged loss (NaN or inf) is written as null, the log line above shows its value.
        line = json.dumps(_finite(row), ensure_ascii=False, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.writer is not None:
            flat = row.get("eval", row)
            for name, value in flat.items():
                if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{section}/{name}", value, row["step"])
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def _keep_rows_through(path: Path, step: int) -> None:
    """Drop the rows of metrics.jsonl after `step` (and a line cut short by a kill)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    atomic.write_text(path, "".join(kept))


def _finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None."""
    if isinstance(obj, float):
        return atomic.finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
