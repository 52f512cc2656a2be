"""`--backend auto`: measure the backends a model folder can run on this machine and keep the fastest.

A candidate must be loadable (its export is there) and must have passed the export's parity check: each
exported backend's row in `parity.json` loses at most the export's F1 budget against PyTorch fp32 (the
reference itself always passes). Each candidate runs one window of `length` tokens at batch 1: warm-up
calls, then timed calls, summarised by the median. `pytorch-bf16-compiled` is left out: compiling takes tens
of seconds at every load, which is not what a server or a prediction run should pay to choose.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tinyroberta_es.errors import UserError
from tinyroberta_es.model_folder import first_line
from tinyroberta_es.parity_rows import failure_reason
from tinyroberta_es.runtimes.ort import ONNX_DIR
from tinyroberta_es.runtimes.registry import BACKENDS, make_concrete_runner, missing_files
from tinyroberta_es.runtimes.runner import Runner
from tinyroberta_es.timing import time_calls

log = logging.getLogger(__name__)

CANDIDATES = [b for b in BACKENDS if b != "pytorch-bf16-compiled"]


def parity_verdict(model_dir: str | Path, backend: str) -> tuple[bool, str]:
    """Whether `backend` passed the parity check of `model_dir`'s export, and why (a short phrase)."""
    if backend == "pytorch":
        return True, "the reference"
    folder = Path(model_dir).expanduser()
    report_path = next(
        (p for p in (folder / ONNX_DIR / "parity.json", folder / "parity.json") if p.is_file()), None
    )
    if report_path is None:
        return False, "no parity report (run tinyroberta-es export)"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    row = report.get("variants", {}).get(backend)
    if row is None:
        return False, f"not in the parity report {report_path}"
    drop, budget = row["f1_drop"], report["max_f1_drop"]
    verdict = f"{0.0 - drop:+.2f} F1 on {report['questions']} {report['dev']} questions (budget {budget:g})"
    if failure_reason(row, budget) is None:
        return True, verdict
    return False, "; ".join(row.get("failed", [])) or verdict  # the budgets the row records, else the F1


def choose_runner(
    model_dir: str | Path,
    *,
    device: str | None = "cpu",
    threads: int | None = None,
    length: int = 384,
    calls: int = 10,
    candidates: list[str] | None = None,
) -> Runner:
    """Load every candidate that passed parity, time it, and return the fastest with `selection` filled in."""
    if device not in (None, "cpu"):
        raise UserError(f"--backend auto measures CPU backends; device {device} is not cpu: name a backend")
    if not Path(model_dir).expanduser().is_dir():
        raise UserError(f"--backend auto needs a local model folder; {model_dir} is not one")
    length = min(length, _positions(model_dir) or length)
    rows: list[dict[str, Any]] = []
    best: tuple[float, Runner] | None = None
    for backend in candidates or CANDIDATES:
        row: dict[str, Any] = {"backend": backend}
        rows.append(row)
        missing = missing_files(model_dir, backend)
        passed, verdict = parity_verdict(model_dir, backend)
        row["parity"] = verdict
        if missing or not passed:
            row["skipped"] = "no export" if missing else "failed or lacks the parity check"
            continue
        try:
            runner = make_concrete_runner(model_dir, backend, device="cpu", threads=threads)
        except UserError as err:  # e.g. bf16 on a CPU without it, a runtime not installed
            row["skipped"] = str(err)
            continue
        ms = _median_ms(runner, length, calls)
        row["ms"] = round(ms, 2)
        if best is None or ms < best[0]:
            best = (ms, runner)
    if best is None:
        raise UserError(f"--backend auto found no backend for {model_dir}: " + _why(rows))
    ms, runner = best
    reason = f"fastest at 1 x {length} tokens ({ms:.1f} ms, median of {calls}) of those that passed parity"
    log.info("backend auto chose %s: %s; measured %s", runner.name, reason, _measured(rows))
    return replace(runner, selection={"chosen": runner.name, "reason": reason, "candidates": rows})


def _median_ms(runner: Runner, length: int, calls: int) -> float:
    ones = np.ones((1, length), dtype=np.int64)
    inputs = {"input_ids": ones * 5, "attention_mask": ones, "token_type_ids": 0 * ones}
    inputs = {k: v for k, v in inputs.items() if k in runner.input_names}
    try:
        seconds = time_calls(lambda: runner(inputs), warmup=2, repeats=calls)
    except Exception as err:  # a runtime that loads but cannot run this length
        raise UserError(
            f"--backend auto: {runner.name} failed on 1 x {length} tokens ({first_line(err)})"
        ) from None
    return float(np.median(seconds)) * 1e3


def _positions(model_dir: str | Path) -> int | None:
    """How many tokens the model reads at once (a model with fewer than 384 positions is timed at that)."""
    from transformers import AutoConfig

    from tinyroberta_es.model_folder import max_tokens, tokenizer_folder

    try:
        return max_tokens(AutoConfig.from_pretrained(tokenizer_folder(model_dir)))
    except (OSError, ValueError):
        return None


def _measured(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['backend']} {r['ms']:.1f} ms" for r in rows if "ms" in r) or "none"


def _why(rows: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['backend']}: {r.get('skipped', '?')}" for r in rows)
