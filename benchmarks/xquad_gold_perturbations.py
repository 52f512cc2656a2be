"""Score XQuAD-es gold answers, and gold answers with Spanish-specific noise, under each normalisation.

Shows why Spanish QA needs the `mlqa-es` normalisation: the official SQuAD script keeps Spanish
articles and `¿ ¡`, and deletes the Spanish preposition "a". Runs the real `tinyroberta-es evaluate`
command on prediction files written to a temporary folder.

    python benchmarks/xquad_gold_perturbations.py [--output FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from tinyroberta_es import atomic
from tinyroberta_es.cli import main as cli
from tinyroberta_es.data.loading import load_dataset

XQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "xquad_es" / "xquad.es.json"
ARTICLES = ("el", "la", "los", "las", "un", "una")

PERTURBATIONS = {
    "gold": lambda text, rng: text,
    "article prepended": lambda text, rng: f"{rng.choice(ARTICLES)} {text}",
    "inside ¿?": lambda text, rng: f"¿{text}?",
    "inside «» with final period": lambda text, rng: f"«{text}».",
    "preposition 'a' prepended": lambda text, rng: f"a {text}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(XQUAD), help="XQuAD-es file (default: ../shared copy)")
    parser.add_argument("--output", default="benchmarks/results/xquad-es-gold-perturbations.json")
    args = parser.parse_args()
    dataset = load_dataset(args.dataset, bad_spans="keep")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, perturb in PERTURBATIONS.items():
            rng = random.Random(0)
            preds = {ex.id: perturb(ex.answers[0].text, rng) for ex in dataset.examples}
            preds_path = Path(tmp) / "preds.json"
            preds_path.write_text(json.dumps(preds, ensure_ascii=False), encoding="utf-8")
            row = {"predictions": name}
            for norm in ("mlqa-es", "squad"):
                out = Path(tmp) / f"{norm}.json"
                status = cli(
                    [
                        "evaluate",
                        "--dataset",
                        args.dataset,
                        "--predictions",
                        str(preds_path),
                        "--normalization",
                        norm,
                        "--output",
                        str(out),
                    ]
                )
                if status != 0:
                    raise SystemExit(status)
                scores = json.loads(out.read_text(encoding="utf-8"))
                row[norm] = {"exact_match": scores["exact_match"], "f1": scores["f1"]}
            results.append(row)
    report = {
        "dataset": "xquad_es",
        "questions": len(dataset),
        "command": "python benchmarks/xquad_gold_perturbations.py",
        "results": results,
    }
    atomic.write_json(args.output, report)
    print(f"{'predictions':32s} {'mlqa-es EM':>10s} {'mlqa-es F1':>10s} {'squad EM':>9s} {'squad F1':>9s}")
    for row in results:
        m, s = row["mlqa-es"], row["squad"]
        print(
            f"{row['predictions']:32s} {m['exact_match']:10.2f} {m['f1']:10.2f} "
            f"{s['exact_match']:9.2f} {s['f1']:9.2f}"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
