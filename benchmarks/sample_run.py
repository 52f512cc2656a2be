"""The README's first command, measured: `tinyroberta-es run recipes/sample.yaml` from nothing, timed.

    python benchmarks/sample_run.py [--output benchmarks/results/sample-run]

Runs the recipe in a fresh temporary folder (so no earlier run's models are reused), then keeps what the
run reported: summary.json, report.md and its two plots, the per-stage seconds of the stage records, the wall
time, the machine and its load. The models themselves are left behind in the temporary folder.
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
    args = parser.parse_args()
    out = Path(args.output)
    with tempfile.TemporaryDirectory(prefix="sample-run-") as tmp:
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "tinyroberta_es.cli", "run", str(RECIPE)]
        done = subprocess.run(cmd, cwd=tmp, env=os.environ | {"TINYROBERTA_ES_OFFLINE": "1"})
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
    result = {
        "command": "tinyroberta-es run recipes/sample.yaml (in a fresh folder)",
        "reproduce": "python benchmarks/sample_run.py",
        "wall_seconds": round(wall, 1),
        "stage_seconds": stages,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    atomic.write_json(out / "timing.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
