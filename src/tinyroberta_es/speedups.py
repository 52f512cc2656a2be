"""Speedups of benchmarked rows against a baseline model, stated so that nobody is misled.

Three labelled views, each a ratio of medians measured in the same run: like for like (the same backend),
best against best (each model on its fastest backend; the headline), and against the baseline's eager
PyTorch fp32. A student's best backend against the teacher's slowest is never the only figure.
"""

from __future__ import annotations

from typing import Any


def speedup(row: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """How many times faster `row` is than `base`: fixed-length and end-to-end b1 medians, and throughput."""
    return {
        "fixed_b1": base["fixed_ms_b1"] / row["fixed_ms_b1"],
        "latency_b1": base["latency_ms_b1"] / row["latency_ms_b1"],
        "throughput": row["throughput"] / base["throughput"],
    }


def labelled_speedups(rows: list[dict[str, Any]], baseline_folder: str) -> dict[str, Any]:
    """Every row against the baseline model (the one in `baseline_folder`), in three labelled views.

    `like_for_like`: each row against the baseline on the same backend. `best_vs_best`: each model's
    fastest backend (by fixed-length b1 median) against the baseline's fastest. `vs_baseline_eager_fp32`:
    each row against the baseline on `pytorch`. The headline is the best-against-best entry of the fastest
    other model. Sets `speedup_like_for_like` and `speedup_vs_baseline_eager_fp32` on each row (None
    where the baseline lacks that backend).
    """
    ours = [r for r in rows if r["folder"] == baseline_folder]
    by_backend: dict[str, dict[str, Any]] = {}
    for r in sorted(ours, key=lambda r: "auto" in r):  # a concrete row before an auto row that chose it
        by_backend.setdefault(r["backend"], r)
    eager = by_backend.get("pytorch")
    fastest: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["folder"] not in fastest or r["fixed_ms_b1"] < fastest[r["folder"]]["fixed_ms_b1"]:
            fastest[r["folder"]] = r
    like, vs_eager = [], []
    for r in rows:
        same = by_backend.get(r["backend"])
        r["speedup_like_for_like"] = speedup(r, same) if same else None
        r["speedup_vs_baseline_eager_fp32"] = speedup(r, eager) if eager else None
        if same:
            like.append(_entry(r, same))
        if eager:
            vs_eager.append(_entry(r, eager))
    base_best = fastest.get(baseline_folder)
    best = [_entry(r, base_best) for r in fastest.values()] if base_best else []
    others = [e for e, r in zip(best, fastest.values(), strict=True) if r["folder"] != baseline_folder]
    return {
        "baseline_model": base_best["model"] if base_best else None,
        "metrics": {
            "fixed_b1": "baseline's fixed-length batch-1 median latency / the row's",
            "latency_b1": "baseline's end-to-end batch-1 median latency / the row's",
            "throughput": "the row's end-to-end questions/s / the baseline's",
        },
        "headline": max(others, key=lambda e: e["fixed_b1"]) if others else None,
        "best_vs_best": best,
        "like_for_like": like,
        "vs_baseline_eager_fp32": vs_eager,
    }


def _entry(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    names = {"model": row["model"], "backend": row["backend"], "auto": "auto" in row}  # auto: chosen by auto
    return names | {"baseline_model": base["model"], "baseline_backend": base["backend"]} | speedup(row, base)


def add_speedups(rows: list[dict[str, Any]], key: str) -> None:
    """Set `row[key]` to each row's speedup over `rows[0]`: latency ratios and throughput ratios."""
    base = rows[0]
    for row in rows:
        row[key] = speedup(row, base) | {"sequences_per_s": row["sequences_per_s"] / base["sequences_per_s"]}
