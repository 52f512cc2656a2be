"""`predict` throughput over XQuAD-es for a paper-sized student with random weights, on this machine.

The student is the paper's architecture (RoBERTa, 6 layers, hidden 512, 16 heads, ffn 3072, the
teacher's 50,262-piece byte-level BPE from ../shared/tokenizers/roberta-large-bne). Weights are random:
accuracy is meaningless here, the cost of every stage (tokenisation, model, extraction) is not.
Runs the same `QuestionAnswerer` that `tinyroberta-es predict` runs, timing each stage.

    python benchmarks/predict_throughput.py [--batch-size 32] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering

from tinyroberta_es import __version__, atomic
from tinyroberta_es.bench import cpu_name
from tinyroberta_es.config import STUDENT_PRESETS
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.extraction import extract_answers
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER = SHARED / "tokenizers" / "roberta-large-bne"


def build_student(folder: Path) -> int:
    """Save a randomly initialised paper student with the teacher's tokenizer; return its parameter count."""
    config = AutoConfig.from_pretrained(TOKENIZER / "teacher-config.json", **STUDENT_PRESETS["paper"])
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(config)
    model.save_pretrained(folder)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ):
        shutil.copy(TOKENIZER / name, folder / name)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED / "data" / "xquad_es" / "xquad.es.json"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--output", default="benchmarks/results/predict-throughput.json")
    args = parser.parse_args()
    dataset = load_dataset(args.dataset, bad_spans="keep")
    with tempfile.TemporaryDirectory() as tmp:
        params = build_student(Path(tmp))
        config = InferenceConfig(max_length=args.max_length, batch_size=args.batch_size)
        answerer = QuestionAnswerer.from_pretrained(tmp, config, device="cpu")
        answerer.predict(dataset.examples[:32])  # warm-up: first-call allocations and lazy imports
        t0 = time.perf_counter()
        features = answerer.features(dataset.examples)
        t1 = time.perf_counter()
        start, end = answerer.logits(features)
        t2 = time.perf_counter()
        predictions = extract_answers(
            dataset.examples,
            features,
            start,
            end,
            n_best=config.n_best,
            max_answer_length=config.max_answer_length,
        )
        t3 = time.perf_counter()
    total = t3 - t0
    report = {
        "command": f"python benchmarks/predict_throughput.py --batch-size {args.batch_size}",
        "dataset": "xquad_es",
        "questions": len(predictions),
        "windows": len(features),
        "mean_window_tokens": float(sum(features.lengths) / len(features)),
        "model": "paper student, random weights (RoBERTa 6x512, 16 heads, ffn 3072, vocab 50262)",
        "params": params,
        "backend": "pytorch fp32 eager",
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seconds": {"tokenize": t1 - t0, "model": t2 - t1, "extract": t3 - t2, "total": total},
        "questions_per_second": len(predictions) / total,
        "machine": {
            "cpu": cpu_name(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "tinyroberta_es": __version__,
        },
    }
    atomic.write_json(args.output, report)
    s = report["seconds"]
    print(
        f"{len(predictions)} questions, {len(features)} windows "
        f"(mean {report['mean_window_tokens']:.0f} tokens), "
        f"{params / 1e6:.1f}M params, {torch.get_num_threads()} threads"
    )
    print(
        f"tokenize {s['tokenize']:.2f} s, model {s['model']:.2f} s, extract {s['extract']:.2f} s: "
        f"{report['questions_per_second']:.1f} questions/s; wrote {args.output}"
    )


if __name__ == "__main__":
    main()
