"""Short runs of the methods for very small students, side by side: recipes/ablation-3l-short.yaml.

    python benchmarks/ablation_3l_short.py [--skip-run]

Runs `tinyroberta-es run recipes/ablation-3l-short.yaml --stages teacher,distill,evaluate,report` (every stage
already finished is skipped), then reads the run's summary.json, stage records and metrics logs into
benchmarks/results/ablation-3l-short.{json,md}: per model its XQuAD-es EM/F1 (mlqa-es and squad), its share
of the teacher's F1, its gain over the gold-spans-only twin, its training time on this machine, and each loss
group's share of the gradient norm (first and last measure). The teacher is whatever
runs/ablation-3l-short/teacher-0.6ep holds: the JSON records its run_config.json and train_state.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "ablation-3l-short.yaml"
OUT = ROOT / "benchmarks" / "results" / "ablation-3l-short"
TEACHER_COMMAND = (
    "tinyroberta-es finetune --config recipes/reproduction-small.yaml --set train.epochs=0.6"
    " --output runs/ablation-3l-short/teacher-0.6ep"
)
COMMAND = f"tinyroberta-es run {RECIPE.relative_to(ROOT)} --stages teacher,distill,evaluate,report"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-run", action="store_true", help="only read what the run already wrote")
    args = parser.parse_args()
    if not args.skip_run:
        argv = [sys.executable, "-m", "tinyroberta_es.cli", "run", str(RECIPE)]
        subprocess.run([*argv, "--stages", "teacher,distill,evaluate,report"], cwd=ROOT, check=True)
    sys.path.insert(0, str(ROOT / "src"))
    from tinyroberta_es import atomic
    from tinyroberta_es.recipe import load_recipe
    from tinyroberta_es.report_plots import gradient_shares

    recipe = load_recipe(RECIPE)
    run = ROOT / recipe.output
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    scores = {r["model"]: r for r in summary["evaluation"]["rows"] if r["backend"] == "pytorch"}
    teacher_f1 = scores["teacher"]["scores"]["mlqa-es"]["f1"]
    gold_f1 = scores["3l-gold"]["scores"]["mlqa-es"]["f1"] if "3l-gold" in scores else None
    teacher_dir = ROOT / (recipe.teacher or "")
    rows = []
    for model in summary["models"]:
        name, row = model["name"], scores.get(model["name"])
        if row is None:
            continue
        s = row["scores"]
        entry = {
            "model": name,
            "params": model["params"],
            "questions": row["questions"],
            "f1": round(s["mlqa-es"]["f1"], 2),
            "em": round(s["mlqa-es"]["exact_match"], 2),
            "squad_f1": round(s["squad"]["f1"], 2),
            "squad_em": round(s["squad"]["exact_match"], 2),
            "f1_kept": round(100 * s["mlqa-es"]["f1"] / teacher_f1, 1),
        }
        if name != "teacher":
            state = json.loads((Path(model["folder"]) / "train_state.json").read_text(encoding="utf-8"))
            first = Path(f"{model['folder']}.stage1") / "train_state.json"
            steps = state["step"] + (json.loads(first.read_text())["step"] if first.is_file() else 0)
            entry |= {"steps": steps, "train_seconds": summary["stages"][f"distill-{name}"]["seconds"]}
            if gold_f1 is not None and name != "3l-gold":
                entry["gain_over_gold_twin"] = round(s["mlqa-es"]["f1"] - gold_f1, 2)
            shares = gradient_shares(Path(model["metrics_log"])) if model.get("metrics_log") else {}
            entry["gradient_shares"] = {  # per stage: each group's share at the first and the last measure
                stage: {g: [round(v[0], 3), round(v[-1], 3)] for g, v in groups.items()}
                for stage, groups in shares.items()
            }
        rows.append(entry)
    result = {
        "command": f"python benchmarks/ablation_3l_short.py  # = {COMMAND}, then this summary",
        "teacher": {
            "folder": recipe.teacher,
            "command": TEACHER_COMMAND,
            "run_config": _json(teacher_dir / "run_config.json"),
            "train_state": _json(teacher_dir / "train_state.json"),
        },
        "dataset": "xquad_es (1,190 questions, held out)",
        "normalization": "mlqa-es (f1, em); squad beside it",
        "machine": (summary.get("bench") or {}).get("device") or _cpu(),
        "versions": summary["versions"],
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(OUT.with_suffix(".json"), result)
    atomic.write_text(OUT.with_suffix(".md"), _markdown(result))
    print(_markdown(result))


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _markdown(result: dict) -> str:
    header = ["model", "params", "steps", "train s", "F1", "EM", "squad F1", "F1 kept", "vs gold twin"]
    lines = [
        f"Short ablation for a 3-layer student on XQuAD-es ({result['normalization']}).",
        f"Command: `{result['command']}`. Teacher: `{result['teacher']['command']}`.",
        "",
        "| " + " | ".join([*header, "gradient shares (first -> last)"]) + " |",
        "|---|" + "---:|" * (len(header) - 1) + "---|",
    ]
    for r in result["rows"]:
        shares = "; ".join(
            f"{stage}: " + ", ".join(f"{g} {a:.0%}->{b:.0%}" for g, (a, b) in groups.items())
            for stage, groups in (r.get("gradient_shares") or {}).items()
        )
        gain = r.get("gain_over_gold_twin")
        cells = [r["model"], f"{r['params']:,}", r.get("steps", ""), r.get("train_seconds", "")]
        cells += [f"{r['f1']:.2f}", f"{r['em']:.2f}", f"{r['squad_f1']:.2f}", f"{r['f1_kept']:.1f}%"]
        cells += ["" if gain is None else f"{gain:+.2f}", shares]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
