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
        help="comma-separated: pytorch, pytorch-bf16, pytorch-bf16-compiled, onnx, onnx-int8 "
        "(default: pytorch)",
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

    out_dir.mkdir(parents=True, exist_ok=True)
    if scores:
        for row in report["rows"]:
            row["f1"] = score_of(row, scores)
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
    """The rows as a markdown table, then the peaks, then how it was measured."""
    cfg, machine = report["config"], report["machine"]
    seq, batch = cfg["seq_len"], cfg["batch_size"]
    header = [
        "model", "backend", "dtype", "threads", "params", "MB", "e2e b1 p50 / p90 / p99 ms",
        f"{seq} tok b1 p50 ms", f"questions/s @{batch}", f"seq/s @{batch}", "GFLOP/s b1", "% of peak",
        f"speedup b1 {seq} tok", "speedup e2e",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    for r in report["rows"]:
        e2e, s = r["latency_b1"], r["speedup_vs_first"]
        fraction = f"{100 * r['fraction_of_peak']:.0f}% {r['peak']}" if r["fraction_of_peak"] else "-"
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['dtype']} | {r['threads']} | {_millions(r['params'])}M "
            f"| {_millions(r['weights_bytes'], 0)} | {e2e['p50']:.1f} / {e2e['p90']:.1f} / {e2e['p99']:.1f} "
            f"| {r['fixed_ms_b1']:.1f} | {r['throughput']:.1f} | {r['sequences_per_s']:.2f} "
            f"| {r['gflops_b1']:.0f} | {fraction} | {s['fixed_b1']:.1f}x | {s['latency_b1']:.1f}x |"
        )
    if report["skipped"]:
        lines += [
            "",
            "Skipped:",
            *(f"- {s['model']} on {s['backend']}: {s['reason']}" for s in report["skipped"]),
        ]
    lines += ["", "| peak | op | dtype | GFLOP/s | best (M, N, K) | every M x N x K: GFLOP/s |"]
    lines.append("|---|---|---|---:|---|---|")
    for key, p in report["peaks"].items():
        shapes = ", ".join(f"{shape}: {rate:.0f}" for shape, rate in p.get("by_shape", {}).items())
        lines.append(f"| {key} | {p['op']} | {p['dtype']} | {p['gflops']:.0f} | {p['shape']} | {shapes} |")
    base = report["baseline"]
    lines += [
        "",
        f"Speedups are against {base['model']} on {base['backend']}. End to end (e2e): one question at a "
        f"time through `QuestionAnswerer.predict` (tokenise, model, extract), "
        f"{report['rows'][0]['questions']} questions of {cfg['dataset']}, windows of at most {seq} tokens. "
        f"Fixed length: the model call alone on one {seq}-token window. Throughput: batches of {batch}. "
        f"Fraction of peak: analytic matmul FLOPs per {seq}-token sequence / fixed-length b1 latency, over "
        "the best matmul rate of the same engine and dtype measured in this run.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), onnxruntime {machine.get('onnxruntime', '-')}; load average "
        f"{machine['load_average_before']} before, {machine.get('load_average_after')} after.",
    ]
    if report.get("command"):
        lines += ["", f"Reproduce: `{report['command']}`"]
    return "\n".join(lines)


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
