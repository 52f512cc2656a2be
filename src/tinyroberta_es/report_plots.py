"""The report's two plots and the metrics logs behind them.

`read_metrics_log` reads a model's `metrics.jsonl`; from it come `training_curves` (loss and dev F1 against
step) and `gradient_shares` (each loss group's share of the gradient norm, for the loss balance table).
`plot_training_curves` and `plot_f1_latency` draw the two PNGs; matplotlib is imported only when a plot is
drawn, with an install hint when it is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinyroberta_es import atomic


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, skipping lines that do not parse (a killed run can cut the last one)."""
    rows = []
    # errors="replace": a kill can also cut a UTF-8 character in two; that line then fails to parse
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int | float):
            rows.append(row)
    return rows


def training_curves(summary: dict[str, Any]) -> dict[str, tuple[list[tuple[float, float]], ...]]:
    """Per model with a metrics log on disk: ([(step, train loss)], [(step, dev F1)]), empty logs left out."""
    curves = {}
    for m in summary.get("models", []):
        path = Path(m["metrics_log"]) if m.get("metrics_log") else None
        if path is None or not path.is_file():
            continue
        rows = read_metrics_log(path)
        # null marks a non-finite value (a diverged run): no point to plot
        loss = [(r["step"], r["loss"]) for r in rows if "eval" not in r and r.get("loss") is not None]
        evals = [r for r in rows if isinstance(r.get("eval"), dict) and r["eval"].get("f1") is not None]
        f1 = [(r["step"], r["eval"]["f1"]) for r in evals]
        if loss or f1:
            curves[m["name"]] = (loss, f1)
    return curves


def gradient_shares(log_file: Path) -> dict[str, dict[str, list[float]]]:
    """Stage -> loss group -> its share of the gradient norm at each measure, from a student's metrics log
    and, for a two-stage schedule, the first stage's beside it (`<folder>.stage1/metrics.jsonl`). Stages:
    `intermediate` and `prediction` (two-stage) or `all` (one-stage); stages without measures left out."""
    first = log_file.parent.with_name(f"{log_file.parent.name}.stage1") / log_file.name
    stages = [("intermediate", first), ("prediction" if first.is_file() else "all", log_file)]
    out = {}
    for stage, path in stages:
        measured = [r for r in (read_metrics_log(path) if path.is_file() else []) if _has_shares(r)]
        groups = dict.fromkeys(k for r in measured for k in r if k.startswith("share_"))
        if groups:
            out[stage] = {k.removeprefix("share_"): [r[k] for r in measured if k in r] for k in groups}
    return out


def _has_shares(row: dict[str, Any]) -> bool:
    return any(k.startswith("share_") for k in row)


def plot_training_curves(summary: dict[str, Any], path: Path) -> bool:
    """Training loss and dev F1 against step, one line per model; False (nothing written) without curves."""
    curves = training_curves(summary)
    if not curves:
        return False
    plt = _pyplot()
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, (loss, f1) in curves.items():
        if loss:
            ax_loss.plot(*zip(*loss, strict=True), label=_label(name))
        if f1:
            ax_f1.plot(*zip(*f1, strict=True), marker="o", label=_label(name))
    for ax, what in ((ax_loss, "training loss"), (ax_f1, "dev F1")):
        ax.set_xlabel("step")
        ax.set_ylabel(what)
        ax.set_title(f"{what} against step")
        if ax.has_data():
            ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_f1_latency(
    points: list[tuple[float, float, str, str]], teacher: str | None, dataset: str | None, path: Path
) -> bool:
    """F1 on `dataset` against batch-1 latency, one point per (latency ms, F1, model, backend), `teacher`'s
    points starred; False (nothing written) without points."""
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for x, y, model, backend in points:
        star = model == teacher  # the teacher stands out: a big red star
        ax.scatter(
            x, y, s=160 if star else 40, marker="*" if star else "o", c="crimson" if star else "tab:blue"
        )
        label = _label(f"{model} {backend}" + (" (teacher)" if star else ""))
        ax.annotate(label, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.LogFormatter())  # 1, 10 ms rather than 10^0, 10^1
    ax.xaxis.set_minor_formatter(plt.LogFormatter())  # 2, 3 ... labelled when the span is short
    ax.set_xlabel("latency, batch 1, end to end (ms, median, log scale)")
    ax.set_ylabel(f"F1 on {dataset}")
    ax.set_title("F1 against latency")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)
    return True


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        from tinyroberta_es.errors import UserError

        raise UserError("the report's plots need matplotlib: pip install 'tinyroberta-es[bench]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _label(text: str) -> str:
    return text.replace("$", r"\$")  # a name with two $ would otherwise be parsed as mathtext


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # "tight": labels past the axes too
    plt.close(fig)
