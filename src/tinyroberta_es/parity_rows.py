"""Whether a backend's row of an export's `parity.json` passed, and why not: the one rule that the run
(`run_backends`, `workflow`), `--backend auto` and the model card apply. Light on purpose (no imports):
`runtimes.auto` reads it, and `parity.py` itself imports the runtimes.

A row fails when the export rejected its backend (its files renamed *.rejected.*), when `parity.judge` marked
it not passed, or when it loses more F1 than the report's budget (a row judged before that field existed).
"""

from __future__ import annotations

from typing import Any


def failure_reason(row: dict[str, Any], budget: float | None, rejected: bool = False) -> str | None:
    """Why `row` failed the parity check, in words (None when it passed): its recorded reasons, else the F1
    it loses against `budget` (None: no F1 budget to hold the row to)."""
    over = budget is not None and row.get("f1_drop", 0.0) > budget
    if not (rejected or row.get("passed") is False or over):
        return None
    if row.get("failed"):
        return "; ".join(row["failed"])
    return f"loses {row.get('f1_drop', 0.0):.2f} F1" + (
        f", budget {budget:.2f}" if budget is not None else ""
    )
