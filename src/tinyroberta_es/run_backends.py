"""Which backends each model of a run runs on, and why a backend cannot: the `evaluate` and `bench` stages
skip it with that reason.

A teacher that is not exported runs on the PyTorch backends (and `auto`) only (`backends_of`). A backend is
unavailable when its export is missing, or when it failed the export's parity check (`onnx/parity.json`):
rejected (its files renamed *.rejected.*), over the F1 budget, or never checked (a bf16 backend on a CPU
without bf16); `parity_rows.failure_reason` is that rule and puts a failed row in words.
"""

from __future__ import annotations

from pathlib import Path

from tinyroberta_es.parity_rows import failure_reason
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
    reason = failure_reason(row, budget, rejected)
    if reason is not None:
        what = "rejected by" if rejected else "failed"
        return f"{what} the export's parity check on {report['dev']} ({reason}); see {parity}"
    return missing_export(folder, backend)
