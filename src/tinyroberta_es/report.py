"""The report of a `tinyroberta-es run`: `report.md`, a self-contained `report.html` and two plots.

The input is the run's `summary.json` as a plain dict. Every table is built once as data (`accuracy_rows`,
`speed_rows`, `speedup_rows`, `export_rows`, ...) and the report once as a list of blocks (`blocks`), rendered
by `report_render` as markdown and as HTML; the plots are drawn by `report_plots`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from tinyroberta_es import atomic
from tinyroberta_es.config import to_yaml
from tinyroberta_es.report_plots import gradient_shares, plot_f1_latency, plot_training_curves
from tinyroberta_es.report_render import (
    Block,
    Code,
    Heading,
    Image,
    Para,
    Table,
    render_html,
    render_markdown,
)
from tinyroberta_es.summary import auto_choices

log = logging.getLogger(__name__)

ACCURACY_NOTE = (
    "EM and F1 under {primary} normalisation first; 95% CI: percentile bootstrap over the questions (1000 "
    "draws); % of teacher F1: this F1 over the F1 of the teacher's pytorch row on the same dataset; F1 - "
    "teacher: the difference with a paired bootstrap interval (the same questions drawn for both), so an "
    "interval that excludes 0 is a gap the sample of questions cannot explain."
)
NO_EVALUATION = "No evaluation rows: the evaluation stage was not run."
NO_CURVES = "No training curves: no model has a metrics log with rows."
NO_SCATTER = "No F1-latency plot: the benchmark was not run or no benchmarked row has an F1."
SPEEDUP_VIEWS = (  # key of the bench report's `speedups` -> its label
    ("best_vs_best", "best against best"),
    ("like_for_like", "like for like"),
    ("vs_baseline_eager_fp32", "against {base} eager fp32"),
)
SPEEDUP_NOTE = (
    "Every speedup is a ratio of medians measured in the same run, labelled by what it compares. Best "
    "against best (the headline): each model on its own fastest backend, named, against {base} on its "
    "fastest. Like for like: against {base} on the same backend. Against {base} eager fp32: against {base} "
    "on pytorch. {seq} tok b1: the model call on one {seq}-token window, batch 1; e2e b1: one question end "
    "to end (tokenise, model, extract), batch 1; questions/s @{batch}: end-to-end throughput. A backend "
    "marked (auto) is the one --backend auto chose."
)
UNEXPORTED_TEACHER = (
    "The teacher was not exported (export.teacher: false): its fastest backend is its fastest PyTorch one, "
    "so best against best also credits the students with their export; set export.teacher: true to compare "
    "each model on its own best engine."
)


def write_report(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write report.md, report.html (self-contained) and the plots into out_dir; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    curves, scatter = out_dir / "training_curves.png", out_dir / "f1_latency.png"
    scattered = plot_f1_latency(
        f1_latency_points(summary), summary.get("teacher"), first_dataset(summary), scatter
    )
    drawn = {curves: plot_training_curves(summary, curves), scatter: scattered}
    for path in (p for p, ok in drawn.items() if not ok):
        path.unlink(missing_ok=True)  # left by an earlier report in this folder: report.md would not use it
    doc = blocks(summary, *(p if ok else None for p, ok in drawn.items()))
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic.write_text(md, render_markdown(doc))
    atomic.write_text(page, render_html(doc, f"{summary.get('name', 'run')}: distillation report"))
    log.info("wrote the report of %s into %s", summary.get("name"), out_dir)
    return [md, page, *(p for p, ok in drawn.items() if ok)]


def blocks(summary: dict[str, Any], curves: Path | None, scatter: Path | None) -> list[Block]:
    """The whole report, in order; `curves`/`scatter` are the plots drawn (None: say why there is none)."""
    versions = ", ".join(f"{k} {v}" for k, v in (summary.get("versions") or {}).items()) or "unknown versions"
    acc, exports = accuracy_rows(summary), export_rows(summary)
    primary = (summary.get("evaluation") or {}).get("primary")
    doc: list[Block] = [
        Heading(f"{summary.get('name', 'run')}: distillation report", 1),
        Para(f"Created {summary.get('created', '?')} with {versions} by", summary["command"]),
        Heading("Accuracy"),
        *([Table(acc), Para(ACCURACY_NOTE.format(primary=primary))] if acc else [Para(NO_EVALUATION)]),
        *([Para(baseline_note(summary))] if baseline_note(summary) else []),
        *[
            Para(f"Limitation: {text}")
            for text in ((summary.get("recipe") or {}).get("card") or {}).get("limitations", [])
        ],
        Heading("Size and speed"),
        *speed_blocks(summary),
        Heading("Export"),
        *([Table(exports)] if exports else [Para("No model was exported to ONNX or OpenVINO.")]),
        *[Para(text) for text in int8_notes(summary)],
    ]
    seeds = seed_rows(summary)
    if seeds:
        doc += [Heading("Seeds"), Table(seeds), Para(SEEDS_NOTE)]
    balance = loss_balance_rows(summary)
    if balance:
        doc += [Heading("Loss balance"), Table(balance), Para(BALANCE_NOTE)]
    doc += [Heading("Plots")]
    doc.append(Image(curves, "training curves") if curves else Para(NO_CURVES))
    doc.append(Image(scatter, "F1 against latency") if scatter else Para(NO_SCATTER))
    recipe = summary.get("recipe")
    text = to_yaml(recipe) if recipe else "# no recipe recorded\n"
    times = [
        {"stage": name, "finished at": str(t.get("finished_at") or ""), "seconds": _num(t.get("seconds"), 1)}
        for name, t in (summary.get("stages") or {}).items()
    ]
    if times:
        doc += [Heading("Stages"), Table(times), Para("Stages skipped by a rerun keep their first times.")]
    doc += [Heading("Recipe"), Code(text), Heading("How to reproduce"), Para("Run", summary["command"])]
    return doc


def speed_blocks(summary: dict[str, Any]) -> list[Block]:
    """The speed table, the benchmark's protocol and every skipped row (bench and evaluation)."""
    bench = summary.get("bench")
    out: list[Block] = []
    skipped = [{"stage": "benchmark", **s} for s in (bench or {}).get("skipped") or []]
    skipped += [{"stage": "evaluation", **s} for s in summary.get("skipped") or []]
    if not bench:
        out.append(Para("The benchmark was not run (no bench stage in this run)."))
    else:
        cfg, machine = bench.get("config", {}), bench.get("machine", {})
        rows = speed_rows(summary)
        out.append(Table(rows) if rows else Para("The benchmark measured no row."))
        threads = machine.get("torch_threads", cfg.get("threads"))
        out.append(Para(
            f"Device: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {threads} threads. "
            f"Batch {cfg.get('batch_size')}, {cfg.get('seq_len')} tokens per fixed-length window, "
            f"{cfg.get('questions')} questions of {cfg.get('dataset')}; speedups below, each labelled."
        ))  # fmt: skip
        out += speedup_blocks(summary)
    choices = auto_choices(summary)
    if choices:
        out += [Para("Chosen by --backend auto (the fastest that passed the export's parity check):")]
        out.append(Table([{"model": c["model"], "where": c["where"], "chose": c["chose"], "why": c["reason"],
                           "candidates (batch 1)": c["candidates"]} for c in choices]))  # fmt: skip
    if skipped:
        cols = ("stage", "model", "backend", "reason")
        out += [Para("Skipped:"), Table([{c: str(s.get(c, "")) for c in cols} for s in skipped])]
    return out


def headline(speedups: dict[str, Any], seq: Any, batch: Any) -> str:
    """The headline speedup in words: best against best, both backends named."""
    head, base = speedups.get("headline"), speedups.get("baseline_model") or "the teacher"
    if not head:
        return f"Headline (best against best): none; no other model was measured beside {base}."
    backend = backend_label(head["backend"], head.get("auto"))
    return (
        f"Headline (best against best): {head['model']} on {backend}, its fastest backend, is "
        f"{head['fixed_b1']:.1f}x faster than {head['baseline_model']} on {head['baseline_backend']}, "
        f"its fastest (one {seq}-token window, batch 1, median); end to end {head['latency_b1']:.1f}x at "
        f"batch 1 and {head['throughput']:.1f}x in questions/s @{batch}."
    )


def speedup_blocks(summary: dict[str, Any]) -> list[Block]:
    """The bench report's labelled speedups: the headline, then one table of the three views."""
    bench = summary.get("bench") or {}
    speedups, cfg = bench.get("speedups"), bench.get("config", {})
    seq, batch = cfg.get("seq_len", "?"), cfg.get("batch_size", "?")
    if not speedups:
        return [Para("No speedups: the benchmark report holds none; run the bench stage again.")]
    base = speedups.get("baseline_model") or "the teacher"
    out: list[Block] = [Para(headline(speedups, seq, batch))]
    rows = speedup_rows(speedups, seq, batch)
    out += [Table(rows)] if rows else []
    out.append(Para(SPEEDUP_NOTE.format(base=base, seq=seq, batch=batch)))
    export = (summary.get("recipe") or {}).get("export") or {}
    exported = any(not r["backend"].startswith("pytorch") for r in bench.get("rows") or [])
    if exported and not export.get("teacher"):
        out.append(Para(UNEXPORTED_TEACHER))
    return out


def speedup_rows(speedups: dict[str, Any], seq: Any, batch: Any) -> list[dict[str, str]]:
    """One row per entry of each labelled view; the teacher against itself on one backend left out."""
    out = []
    for key, label in SPEEDUP_VIEWS:
        for e in speedups.get(key) or []:
            against = (e["baseline_model"], e["baseline_backend"])
            if (e["model"], e["backend"]) == against:  # the teacher against itself (or its own auto row)
                continue
            out.append({
                "speedup": label.format(base=e["baseline_model"]), "model": e["model"],
                "backend": backend_label(e["backend"], e.get("auto")), "against": " on ".join(against),
                f"{seq} tok b1": f"{e['fixed_b1']:.1f}x", "e2e b1": f"{e['latency_b1']:.1f}x",
                f"questions/s @{batch}": f"{e['throughput']:.1f}x",
            })  # fmt: skip
    return out


def backend_label(backend: str, auto: Any) -> str:
    """The backend, marked when `--backend auto` chose it."""
    return f"{backend} (auto)" if auto else backend


def int8_notes(summary: dict[str, Any]) -> list[str]:
    """How each model's OpenVINO int8 was made: the method and the calibration set."""
    notes = []
    for model in summary.get("models", []):
        for backend, how in ((model.get("export") or {}).get("int8") or {}).items():
            windows, data = how.get("calibration_windows", "?"), how.get("calibration_set", "?")
            own = ", the parity check's own" if how.get("calibration_overlaps_parity") else ""
            notes.append(
                f"{model['name']}, {backend}: {how.get('method', '?')}; {windows} calibration windows of "
                f"{data} ({how.get('calibration_questions', '?')} questions{own})."
            )
    return notes


def accuracy_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per evaluation row: scores under every normalisation (primary first) and teacher retention."""
    evaluation = summary.get("evaluation") or {}
    primary = evaluation.get("primary")
    norms = [primary, *(n for n in evaluation.get("normalizations", []) if n != primary)]
    roles = {m["name"]: m.get("role", "") for m in summary.get("models", [])}
    teacher = summary.get("teacher")
    out = []
    for r in evaluation.get("rows") or []:
        backend = backend_label(r["backend"], r.get("auto"))
        row = {"model": r["model"], "role": roles.get(r["model"], ""), "backend": backend,
               "dataset": r["dataset"], "questions": str(r.get("questions", ""))}  # fmt: skip
        for norm in norms:
            scores = r.get("scores", {}).get(norm, {})
            row[f"EM {norm}"] = _num(scores.get("exact_match"), 2)
            row[f"F1 {norm}"] = _num(scores.get("f1"), 2)
        ci = r.get("scores", {}).get(primary, {}).get("f1_ci")
        row[f"F1 {primary} 95% CI"] = f"{ci[0]:.1f}-{ci[1]:.1f}" if ci else ""
        f1, base = _f1(r, primary), f1_of(summary, teacher, "pytorch", r["dataset"])
        keep = r["model"] != teacher and f1 is not None and base
        row["% of teacher F1"] = f"{100 * f1 / base:.1f}" if keep else ""
        gap = (r.get("vs_teacher") or {}).get(primary)
        row["F1 - teacher (paired 95% CI)"] = (
            f"{gap['difference']:+.2f} ({gap['ci_low']:+.1f} to {gap['ci_high']:+.1f})" if gap else ""
        )
        out.append(row)
    return out


SEED = re.compile(r"^(?P<base>.+)-seed\d+$")
SEEDS_NOTE = (
    "Students named NAME and NAME-seedK (the same recipe with another seed) grouped: the F1 of their pytorch "
    "rows on each dataset (primary normalisation), its mean and its sample standard deviation."
)


def seed_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per student trained with several seeds (NAME, NAME-seed1, ...) and dataset: mean and spread."""
    import statistics

    evaluation = summary.get("evaluation") or {}
    primary = evaluation.get("primary")
    groups: dict[tuple[str, str], list[float]] = {}
    for r in evaluation.get("rows") or []:
        f1 = _f1(r, primary)
        if r["backend"] != "pytorch" or f1 is None:
            continue
        match = SEED.match(r["model"])
        groups.setdefault((match["base"] if match else r["model"], r["dataset"]), []).append(f1)
    return [
        {"student": base, "dataset": dataset, "seeds": str(len(f1s)),
         "F1 per seed": ", ".join(f"{v:.2f}" for v in f1s),
         "mean F1": f"{statistics.mean(f1s):.2f}", "sd": f"{statistics.stdev(f1s):.2f}"}
        for (base, dataset), f1s in groups.items() if len(f1s) > 1
    ]  # fmt: skip


def baseline_note(summary: dict[str, Any]) -> str:
    """What answering "no answer" everywhere scores on each v2 set: the floor the F1 above must clear."""
    parts = [
        f"{b['f1']:.2f} F1 on {b['dataset']} ({b['unanswerable']} of {b['questions']} questions unanswerable)"
        for b in (summary.get("evaluation") or {}).get("baselines") or []
    ]
    return f'Answering "no answer" to every question scores {"; ".join(parts)}.' if parts else ""


def speed_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per benchmark row: size, latency, throughput, labelled end-to-end speedups, the row's F1."""
    bench = summary.get("bench") or {}
    cfg = bench.get("config", {})
    batch = cfg.get("batch_size", "?")
    dataset = first_dataset(summary)
    out = []
    for r in bench.get("rows") or []:
        e2e, params, size = r["latency_b1"], r.get("params"), r.get("weights_bytes")
        same, eager = r.get("speedup_like_for_like"), r.get("speedup_vs_baseline_eager_fp32")
        seq = r.get("seq_len", cfg.get("seq_len", "?"))
        f1 = f1_of(summary, r["model"], r["backend"], dataset)
        out.append({
            "model": r["model"], "backend": backend_label(r["backend"], r.get("auto")),
            "dtype": r.get("dtype", ""),
            "params (M)": _num(params and params / 1e6, 2), "size MB": _num(size and size / 1e6, 1),
            "e2e b1 p50 / p90 / p99 ms": f"{e2e['p50']:.1f} / {e2e['p90']:.1f} / {e2e['p99']:.1f}",
            f"{seq} tok b1 ms": _num(r.get("fixed_ms_b1"), 1),
            f"questions/s @{batch}": _num(r.get("throughput"), 1),
            "e2e speedup like for like": _num(same and same["latency_b1"], 1, "x"),
            "e2e speedup against teacher eager fp32": _num(eager and eager["latency_b1"], 1, "x"),
            f"F1 {dataset or ''}".strip(): _num(f1, 2),
        })  # fmt: skip
    return out


def export_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per export variant of every exported model; over the F1 budget: rejected (files renamed) or
    failed (a bf16 run of files its fp32-rest sibling keeps); either way left out of the run."""
    out = []
    for model in summary.get("models", []):
        export = model.get("export")
        for variant, v in ((export or {}).get("variants") or {}).items():
            failed = v.get("passed") is False  # a bf16 run over budget: its files kept for their sibling
            status = "rejected" if variant in export.get("rejected", []) else "failed" if failed else "kept"
            out.append({
                "model": model["name"], "variant": variant, "file": v.get("file", ""),
                "F1": _num(v.get("f1"), 2), "F1 drop": _num(v.get("f1_drop"), 2),
                "dev": export.get("dev", ""), "F1 drop budget": _num(export.get("max_f1_drop"), 2),
                "max |Δ| start": _num(v.get("max_abs_diff_start"), "e"),
                "max |Δ| end": _num(v.get("max_abs_diff_end"), "e"),
                "same answers": _num(v.get("same_answers") and 100 * v["same_answers"], 1, "%"),
                "status": "reference" if variant == "pytorch" else status,
            })  # fmt: skip
    return out


def f1_of(summary: dict[str, Any], model: str | None, backend: str, dataset: str | None) -> float | None:
    """The primary-normalisation F1 of (model, backend) on `dataset`, None when there is no such row."""
    evaluation = summary.get("evaluation") or {}
    for r in evaluation.get("rows") or []:
        if (r["model"], r["backend"], r["dataset"]) == (model, backend, dataset):
            return _f1(r, evaluation.get("primary"))
    return None


def first_dataset(summary: dict[str, Any]) -> str | None:
    """The first evaluation dataset: the one the speed table and the F1-latency plot take F1 from."""
    return ((summary.get("evaluation") or {}).get("datasets") or [None])[0]


def f1_latency_points(summary: dict[str, Any]) -> list[tuple[float, float, str, str]]:
    """(batch-1 latency ms, F1, model, backend) per benchmark row with an F1 (first dataset, primary
    normalisation): the points of the F1-latency plot."""
    dataset = first_dataset(summary)
    rows = (summary.get("bench") or {}).get("rows") or []
    scored = [(r, f1_of(summary, r["model"], r["backend"], dataset)) for r in rows]
    return [(r["latency_ms_b1"], f1, r["model"], r["backend"]) for r, f1 in scored if f1 is not None]


def _f1(row: dict[str, Any], norm: str | None) -> float | None:
    return row.get("scores", {}).get(norm, {}).get("f1")


def _num(value: float | None, digits: int | str, suffix: str = "") -> str:
    """`value` with `digits` decimals ("e": scientific); "-" for a missing value."""
    if value is None:
        return "-"
    return f"{value:.2e}" if digits == "e" else f"{value:.{digits}f}{suffix}"


BALANCE_NOTE = (
    "Each group's share of the gradient norm (the norm of the gradient of its weighted terms, over the sum "
    "of the groups' norms), measured every `gradient_shares_every` training passes and logged as share_* in "
    "metrics.jsonl: first and last measure, and the mean over the run. A group near 100% drives training "
    "alone; `loss.normalize: initial` or other weights rebalance it."
)


def loss_balance_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """Per model and stage with share_* rows in its metrics log: each group's share, first/last/mean."""
    rows = []
    for m in summary.get("models", []):
        if not m.get("metrics_log"):
            continue
        for stage, groups in gradient_shares(Path(m["metrics_log"])).items():
            for group, values in groups.items():
                rows.append(
                    {
                        "model": m["name"],
                        "stage": stage,
                        "group": group,
                        "first": _num(100 * values[0], 1, "%"),
                        "last": _num(100 * values[-1], 1, "%"),
                        "mean": _num(100 * sum(values) / len(values), 1, "%"),
                    }
                )
    return rows
