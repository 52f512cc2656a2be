"""`tinyroberta-es bench`: latency, throughput and fraction of peak of QA models on each runtime backend.

Measuring lives in `tinyroberta_es.bench`; this module holds the flags and the three files a run writes:
`bench.json` (everything), `bench.md` (a table) and `bench.png` (F1 against latency with `--scores`,
else latency bars).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path
from typing import Any

HELP = "time QA models on each backend (latency, throughput, fraction of the machine's peak)"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `bench` flags to `parser`."""
    # nargs="*": an empty list reaches BenchConfig.validate, which says so in one line
    parser.add_argument("--models", nargs="*", required=True, help="model folders; the first is the baseline")
    parser.add_argument(
        "--backends",
        default="pytorch",
        help="comma-separated: pytorch, pytorch-bf16, pytorch-bf16-compiled, onnx, onnx-int8, openvino, "
        "openvino-bf16, openvino-int8, openvino-int8-bf16, or auto (the fastest that passed the export's "
        "parity check; default: pytorch)",
    )
    parser.add_argument(
        "--dataset", default="sample", help="xquad_es, sample or a SQuAD file (default sample)"
    )
    parser.add_argument("--questions", type=int, default=100, help="first N questions (default 100)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch for throughput (default 32)")
    parser.add_argument("--seq-len", type=int, default=384, help="tokens per window (default 384)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--scores", default=None, help='JSON {model name or folder: F1 or {"f1": F1}}')
    parser.add_argument("--output", default="bench", help="folder for bench.json/md/png (default ./bench)")


def run(args: argparse.Namespace) -> None:
    """Validate the flags, benchmark, write the three files and print the table."""
    from tinyroberta_es.bench import BenchConfig, run_bench

    cfg = BenchConfig(
        models=list(args.models),
        backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        dataset=args.dataset,
        questions=args.questions,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        threads=args.threads,
    )
    cfg.validate()
    scores = read_scores(args.scores) if args.scores else None
    command = command_line(args)
    report = run_bench(cfg, command=command)
    written = write_report(report, Path(args.output), scores)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in written))


def command_line(args: argparse.Namespace) -> str:
    """The `tinyroberta-es bench` command that reproduces this run (every flag spelled out)."""
    words = ["tinyroberta-es", "bench", "--models", *args.models, "--backends", args.backends]
    for flag in ("dataset", "questions", "batch_size", "seq_len", "threads", "scores", "output"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(w) for w in words)


def read_scores(path: str) -> dict[str, float]:
    """F1 per model name or folder from a JSON file: `{name: 81.2}` or `{name: {"f1": 81.2, ...}}`."""
    from tinyroberta_es.errors import UserError

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"--scores {path}: cannot read it as JSON ({err}); pass a JSON file") from None
    scores, bad = {}, []
    for name, value in raw.items() if isinstance(raw, dict) else ():
        f1 = value.get("f1") if isinstance(value, dict) else value
        if isinstance(f1, int | float) and not isinstance(f1, bool):
            scores[name] = float(f1)
        else:
            bad.append(name)
    if not isinstance(raw, dict) or bad:
        raise UserError(
            f"--scores {path}: expected {{model: F1}} or {{model: {{'f1': F1}}}}; "
            f"no number for {', '.join(bad) or 'the top level'}"
        )
    return scores


def write_report(report: dict[str, Any], out_dir: Path, scores: dict[str, float] | None = None) -> list[Path]:
    """Write `bench.json`, `bench.md` and `bench.png` into `out_dir`; return their paths."""
    from tinyroberta_es import atomic
    from tinyroberta_es.speedups import labelled_speedups

    out_dir.mkdir(parents=True, exist_ok=True)
    if scores:
        for row in report["rows"]:
            row["f1"] = score_of(row, scores)
    # Again, from the rows as they are now: a caller may have renamed the models (the `run` command does).
    report["speedups"] = labelled_speedups(report["rows"], report["config"]["models"][0])
    paths = [out_dir / "bench.json", out_dir / "bench.md", out_dir / "bench.png"]
    atomic.write_json(paths[0], report)
    atomic.write_text(paths[1], markdown(report) + "\n")
    plot(report, paths[2])
    return paths


def score_of(row: dict[str, Any], scores: dict[str, float]) -> float | None:
    """The F1 that `scores` gives the row's model, by name, by folder as given, or by resolved folder."""
    for key in (row["model"], row["folder"], str(Path(row["folder"]).expanduser().resolve())):
        if key in scores:
            return scores[key]
    return None


def markdown(report: dict[str, Any]) -> str:
    """The headline speedup, the labelled speedup tables, the rows, the peaks, then how it was measured."""
    cfg, machine, rows = report["config"], report["machine"], report["rows"]
    seq, batch = cfg["seq_len"], cfg["batch_size"]
    lines = speedup_lines(report["speedups"], seq, batch)
    header = [
        "model", "backend", "dtype", "matmuls linear / attention", "threads", "params", "MB",
        "e2e b1 p50 / p90 / p99 ms", f"{seq} tok b1 p50 / p99 ms", f"questions/s @{batch}",
        f"seq/s @{batch}", "GFLOP/s b1", "% of peak b1", f"% of peak @{batch}",
    ]  # fmt: skip
    lines += ["", "Measurements:", "", "| " + " | ".join(header) + " |", "|---|---|---|---|" + "---:|" * 10]
    for r in rows:
        e2e, fixed, dtypes = r["latency_b1"], r["fixed_b1"], r.get("matmul_dtypes") or {}
        backend = f"{r['backend']} (auto)" if "auto" in r else r["backend"]
        lines.append(
            f"| {r['model']} | {backend} | {r['dtype']} "
            f"| {dtypes.get('linear', '?')} / {dtypes.get('attention', '?')} | {r['threads']} "
            f"| {_millions(r['params'])}M | {_millions(r['weights_bytes'], 0)} "
            f"| {_ms(e2e['p50'])} / {_ms(e2e['p90'])} / {_ms(e2e['p99'])} "
            f"| {_ms(fixed['p50'])} / {_ms(fixed['p99'])} "
            f"| {r['throughput']:.1f} | {r['sequences_per_s']:.2f} | {r['gflops_b1']:.0f} "
            f"| {_percent(r['fraction_of_peak'])} | {_percent(r['fraction_of_peak_batch'])} |"
        )
    notes = [
        f"- {r['model']} on {r['backend']}: {r['fraction_of_peak_note']}"
        for r in rows
        if r["fraction_of_peak_note"]
    ]
    if notes:
        lines += ["", "No fraction of peak:", *notes]
    chosen = [f"- {r['model']}: {r['backend']}, {r['auto']['reason']}" for r in rows if "auto" in r]
    if chosen:
        lines += ["", "Chosen by auto:", *chosen]
    if report["skipped"]:
        lines += [
            "",
            "Skipped:",
            *(f"- {s['model']} on {s['backend']}: {s['reason']}" for s in report["skipped"]),
        ]
    lines += [
        "",
        "| peak | op | device | GFLOP/s | best (M, N, K) | every M x N x K: GFLOP/s | int8 verified |",
    ]
    lines.append("|---|---|---|---:|---|---|---|")
    for key, p in report["peaks"].items():
        shapes = ", ".join(f"{shape}: {rate:.0f}" for shape, rate in p.get("by_shape", {}).items())
        verified = {True: "yes", False: "no"}.get(p.get("verified_int8"), "")
        cells = [key, p["op"], p["device"], f"{p['gflops']:.0f}", str(p["shape"]), shapes, verified]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"End to end (e2e): one question at a time through `QuestionAnswerer.predict` (tokenise, model, "
        f"extract), cycling through {rows[0]['questions']} questions of {cfg['dataset']} for at least "
        f"{cfg['min_samples']} timed calls, windows of at most {seq} tokens; questions/s: every question "
        f"at once in batches of {batch}, after one untimed pass. Fixed length: the model call alone on one "
        f"{seq}-token window (seq/s: {batch} of them). Medians; a p99 needs 100 samples, else '-'. "
        f"Peaks: torch.matmul, ONNX Runtime and OpenVINO one-MatMul graphs at the models' own shapes "
        f"(T, H, H), (T, F, H), (T, H, F) for T = {seq}, median of timed calls after warm-up, best shape. "
        f"Fraction of peak: the time the row's matmul FLOPs would take at the peak of its engine in the "
        "dtype each group runs in (linear: projections, FFN, QA head; attention: scores and context), "
        "over the measured median.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), onnxruntime {machine.get('onnxruntime', '-')}, openvino "
        f"{machine.get('openvino', '-')}; load average {machine['load_average_before']} before, "
        f"{machine.get('load_average_after')} after.",
    ]
    if report.get("command"):
        lines += ["", f"Reproduce: `{report['command']}`"]
    return "\n".join(lines)


def speedup_lines(speedups: dict[str, Any], seq: int, batch: int) -> list[str]:
    """The headline (best against best), then like-for-like, against-eager-fp32 and best-vs-best tables."""
    base = speedups["baseline_model"] or "the first model"
    head = speedups["headline"]
    if head:
        lines = [
            f"Headline (best against best): {head['model']} on {head['backend']} is {head['fixed_b1']:.1f}x "
            f"faster than {head['baseline_model']} on {head['baseline_backend']} (one {seq}-token window, "
            f"batch 1, median; end to end {head['latency_b1']:.1f}x at batch 1, {head['throughput']:.1f}x in "
            f"questions/s @{batch})."
        ]
    else:
        why = f"only {base} was measured" if speedups["baseline_model"] else f"{base} was not measured"
        lines = [f"Headline (best against best): none, {why}."]
    columns = f"| model | backend | against | {seq} tok b1 | e2e b1 | questions/s @{batch} |"
    tables = [
        ("like_for_like", f"Like for like: each row against {base} on the same backend:"),
        ("vs_baseline_eager_fp32", f"Against {base} in eager fp32 (backend pytorch):"),
        ("best_vs_best", f"Best against best: each model's fastest backend against {base}'s fastest:"),
    ]
    for key, title in tables:
        entries = speedups[key]
        lines += ["", title]
        if not entries:
            lines.append(f"(none: {base} was not measured on the backend this needs)")
            continue
        lines += ["", columns, "|---|---|---|---:|---:|---:|"]
        lines += [
            f"| {e['model']} | {e['backend']}{' (auto)' if e.get('auto') else ''} "
            f"| {e['baseline_model']} on {e['baseline_backend']} "
            f"| {e['fixed_b1']:.1f}x | {e['latency_b1']:.1f}x | {e['throughput']:.1f}x |"
            for e in entries
        ]
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def _millions(n: int | None, digits: int = 1) -> str:
    return "?" if n is None else f"{n / 1e6:.{digits}f}"


def plot(report: dict[str, Any], path: Path) -> None:
    """F1 against end-to-end latency when the rows carry F1, else bars of latency per model and backend."""
    try:
        import matplotlib
    except ImportError:
        from tinyroberta_es.errors import UserError

        raise UserError("bench.png needs matplotlib: pip install 'tinyroberta-es[bench]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from tinyroberta_es import atomic

    rows = report["rows"]
    labels = [f"{r['model']}\n{r['backend']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows)), 4.5))
    scored = [r for r in rows if r.get("f1") is not None]
    if scored:
        for r in scored:
            ax.scatter(r["latency_ms_b1"], r["f1"])
            ax.annotate(f"{r['model']} {r['backend']}", (r["latency_ms_b1"], r["f1"]), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("latency, batch 1, end to end (ms, median, log scale)")
        ax.set_ylabel("F1")
        ax.set_title("F1 against latency")
    else:
        x = range(len(rows))
        ax.bar(
            [i - 0.2 for i in x], [r["latency_ms_b1"] for r in rows], 0.4, label="end to end (real questions)"
        )
        ax.bar(
            [i + 0.2 for i in x], [r["fixed_ms_b1"] for r in rows], 0.4, label=f"{rows[0]['seq_len']} tokens"
        )
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel("latency, batch 1 (ms, median)")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("Latency per model and backend")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
