"""Which backends each model of a run runs on, and why a backend cannot: the `evaluate` and `bench` stages
skip it with that reason.

A teacher that is not exported runs on the PyTorch backends (and `auto`) only (`backends_of`). A backend is
unavailable when its export is missing, or when it failed the export's parity check (`onnx/parity.json`):
rejected (its files renamed *.rejected.*), over the F1 budget, or never checked (a bf16 backend on a CPU
without bf16). `parity_failures` puts a failed parity row in words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyroberta_es.recipe import Recipe


def backends_of(recipe: Recipe, name: str) -> list[str]:
    """The backends a model runs on: all of the recipe's, but only the PyTorch ones and auto for a teacher
    that is not exported (`export.teacher`)."""
    from tinyroberta_es.runtimes import engine_of

    if name == "teacher" and not recipe.export.teacher:
        return [b for b in recipe.backends if b == "auto" or engine_of(b) == "torch"]
    return list(recipe.backends)


def unavailable(folder: str, backend: str) -> str | None:
    """Why `backend` cannot run the model in `folder`: no export, or one whose parity check it failed
    (rejected: its files renamed *.rejected.*; or a bf16 run of kept files over budget, or never checked)."""
    import json

    from tinyroberta_es.bench import missing_export
    from tinyroberta_es.runtimes import ONNX_DIR, engine_of, export_command

    parity = Path(folder).expanduser() / ONNX_DIR / "parity.json"
    if backend == "auto" or engine_of(backend) == "torch" or not parity.is_file():
        return missing_export(folder, backend)
    report = json.loads(parity.read_text(encoding="utf-8"))
    row, budget = report.get("variants", {}).get(backend), report["max_f1_drop"]
    if row is None:
        return missing_export(folder, backend) or (
            f"not in the export's parity check {parity} (a bf16 backend needs a CPU with bf16): run "
            f"{export_command(folder, backend)}"
        )
    rejected = backend in report.get("rejected", [])
    if rejected or row.get("passed") is False or row.get("f1_drop", 0.0) > budget:
        what = "rejected by" if rejected else "failed"
        return (
            f"{what} the export's parity check on {report['dev']} ({parity_failures(row, budget)}); "
            f"see {parity}"
        )
    return missing_export(folder, backend)


def parity_failures(row: dict[str, Any], budget: float) -> str:
    """Why a parity row failed, in words: its recorded reasons, else the F1 it loses against the budget."""
    if row.get("failed"):
        return "; ".join(row["failed"])
    return f"loses {row.get('f1_drop', 0.0):.2f} F1, budget {budget:.2f}"
