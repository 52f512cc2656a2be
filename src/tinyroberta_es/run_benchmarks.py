"""The `bench` stage of `run`: every model timed on every backend it can run, in `bench/bench.{json,md,png}`.

`bench.run_bench` times every model on every backend it is given, so the models are timed in groups that share
their backends; the groups' reports are merged into one, rows in recipe order with the speedups against the
first row (the teacher). A backend whose files are there but that failed the export's parity check
(`run_backends.unavailable`) is not timed: it is listed as skipped, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyroberta_es.errors import UserError
from tinyroberta_es.recipe import Recipe
from tinyroberta_es.run_backends import backends_of, unavailable


def bench_models(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Time every model on every backend; bench.json/md/png in `out`; rows named as in the recipe.

    A backend whose files are there but that failed the export's parity check is not timed (skipped, with
    the reason): `run_bench` times every model on every backend it is given, so the models are timed in
    groups that share their backends (one group, one call, unless such a backend exists).
    """
    from tinyroberta_es.bench import missing_export
    from tinyroberta_es.commands.bench import write_report

    named = recipe.models()
    groups: dict[tuple[str, ...], list[str]] = {}  # backends -> the models timed on them
    left_out = []
    for name, folder in named.items():
        timed = []
        for backend in recipe.backends:
            reason = unavailable(folder, backend) if backend in backends_of(recipe, name) else None
            if reason and missing_export(folder, backend) is None:  # its files are there: it would run
                left_out.append({"model": name, "backend": backend, "reason": reason})
            else:
                timed.append(backend)
        groups.setdefault(tuple(timed), []).append(name)
    reports = [_bench_group(recipe, {n: named[n] for n in names}, list(b)) for b, names in groups.items()]
    measured = [r for r in reports if r is not None]
    if not measured:
        raise UserError("nothing was benchmarked: every backend of every model lacks its export")
    report = _merge(measured, recipe, left_out)
    skipped = [s for s in report["skipped"] if s["backend"] in backends_of(recipe, s["model"])]
    for s in skipped:
        s["reason"] = unavailable(named[s["model"]], s["backend"]) or s["reason"]
    report["skipped"] = skipped
    write_report(report, out)  # the labelled speedups, against the teacher (the first model)
    return {"file": str(out / "bench.json")}


def _bench_group(recipe: Recipe, named: dict[str, str], backends: list[str]) -> dict[str, Any] | None:
    """`run_bench` on these models and backends, rows renamed as in the recipe; None when none can run."""
    from tinyroberta_es.bench import BenchConfig, missing_export, model_names, run_bench

    runs = any(b == "auto" or missing_export(f, b) is None for f in named.values() for b in backends)
    if not runs:
        return None
    b = recipe.bench
    config = BenchConfig(
        models=list(named.values()),
        backends=backends,
        dataset=b.dataset,
        questions=b.questions,
        batch_size=b.batch_size,
        seq_len=b.seq_len,
        threads=b.threads,
        repeats=b.repeats,
        budget_s=b.budget_s,
    )
    report = run_bench(config, command=f"tinyroberta-es run {recipe.name} (stage bench)")
    by_label = dict(zip(model_names(config.models), named, strict=True))
    for row in [*report["rows"], *report["skipped"]]:
        row["model"] = by_label[row["model"]]
    for row in report["rows"]:
        row["backend_requested"] = "auto" if "auto" in row else row["backend"]
    return report


def _merge(reports: list[dict[str, Any]], recipe: Recipe, left_out: list[dict[str, Any]]) -> dict[str, Any]:
    """One bench report of the groups' reports: the first's machine and peaks, every row in recipe order
    (model, then backend), `speedup_vs_first` against the first row, the backends left out skipped."""
    from tinyroberta_es.speedups import add_speedups

    report = reports[0]
    models, backends = list(recipe.models()), list(recipe.backends)
    rows = [r for rep in reports for r in rep["rows"]]
    rows.sort(key=lambda r: (models.index(r["model"]), backends.index(r["backend_requested"])))
    add_speedups(rows, "speedup_vs_first")
    report["rows"] = rows
    report["skipped"] = [s for rep in reports for s in rep["skipped"]] + left_out
    report["baseline"] = {"model": rows[0]["model"], "backend": rows[0]["backend"]}
    report["config"] |= {"models": list(recipe.models().values()), "backends": backends}
    return report
