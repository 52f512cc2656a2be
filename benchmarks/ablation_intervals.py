"""How sure the short ablation's numbers are: 95% intervals and paired differences on XQuAD-es, from the
predictions the run already wrote (no model runs).

    python benchmarks/ablation_intervals.py [--run runs/ablation-3l-short/run]

Reads each model's XQuAD-es predictions from `RUN/evaluation/*.json` (written by `tinyroberta-es run
recipes/ablation-3l-short.yaml`), scores them under mlqa-es normalisation with per-question scores, and writes
`benchmarks/results/ablation-3l-short-intervals.{json,md}`: each model's F1 with its percentile bootstrap
interval, and each student's paired difference from the gold-only twin (3l-gold) and from 3l-baseline, the
same as `tinyroberta-es evaluate --predictions A --compare B`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinyroberta_es import atomic
from tinyroberta_es.bootstrap import confidence_interval, paired_difference
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.evaluation import evaluate_with_question_scores

ROOT = Path(__file__).resolve().parents[1]
XQUAD_ES = ROOT.parent / "shared" / "data" / "xquad_es" / "xquad.es.json"
OUT = ROOT / "benchmarks" / "results" / "ablation-3l-short-intervals"
BASELINES = ("3l-gold", "3l-baseline")  # what every other student is compared with


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "ablation-3l-short" / "run"))
    args = parser.parse_args()
    if not XQUAD_ES.is_file():
        raise SystemExit(
            f"XQuAD-es is missing at {XQUAD_ES}: it lives in ../shared/data beside the repository"
        )
    files = sorted((Path(args.run) / "evaluation").glob("*.pytorch.xquad.es.json.json"))
    if not files:
        raise SystemExit(f"no XQuAD-es evaluations in {args.run}/evaluation: run the ablation recipe first")
    data = load_dataset(XQUAD_ES, bad_spans="keep")
    scores = {}
    for path in files:
        predictions = json.loads(path.read_text(encoding="utf-8"))["predictions"]
        totals, per_question = evaluate_with_question_scores(data, predictions, normalization="mlqa-es")
        scores[path.name.split(".")[0]] = (totals, per_question.f1)
    models = {}
    for name, (totals, f1) in scores.items():
        low, high = confidence_interval(f1)
        entry = {"f1": round(totals["f1"], 2), "f1_ci": [round(low, 2), round(high, 2)]}
        for base in BASELINES:
            if name not in (base, "teacher") and base in scores:
                gap = paired_difference(f1, scores[base][1])
                entry[f"minus_{base}"] = {k: round(v, 3) for k, v in gap.items()}
        models[name] = entry
    result = {
        "command": "python benchmarks/ablation_intervals.py",
        "reads": "predictions of tinyroberta-es run recipes/ablation-3l-short.yaml (RUN/evaluation)",
        "dataset": "XQuAD-es (../shared/data/xquad_es/xquad.es.json)",
        "questions": len(data.examples),
        "normalization": "mlqa-es",
        "bootstrap": {"resamples": 1000, "seed": 0, "level": 0.95, "kind": "percentile, over questions"},
        "models": models,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(OUT.with_suffix(".json"), result)
    atomic.write_text(OUT.with_suffix(".md"), markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The table: F1, its interval, and the paired differences with their intervals and p-values."""

    def gap(entry: dict, base: str) -> str:
        g = entry.get(f"minus_{base}")
        if not g:
            return ""
        return f"{g['difference']:+.2f} ({g['ci_low']:+.2f} to {g['ci_high']:+.2f}, p {g['p_value']:.3f})"

    lines = [
        f"Short ablation on {result['dataset']}, {result['questions']} questions, mlqa-es F1; 95% percentile "
        f"bootstrap intervals (1000 draws), paired for the differences. Command: `{result['command']}`.",
        "",
        "| model | F1 | 95% CI | minus 3l-gold (paired 95% CI, p) | minus 3l-baseline (paired 95% CI, p) |",
        "|---|---:|---|---|---|",
    ]
    for name, e in result["models"].items():
        ci = f"{e['f1_ci'][0]:.2f}-{e['f1_ci'][1]:.2f}"
        lines.append(f"| {name} | {e['f1']:.2f} | {ci} | {gap(e, '3l-gold')} | {gap(e, '3l-baseline')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
