"""`tinyroberta-es demo`: the whole predict-and-evaluate path, offline, in seconds.

Trains a byte-level BPE tokenizer on the embedded Spanish sample, builds a tiny randomly initialised
RoBERTa QA model with it, answers every sample question and scores the answers under the `mlqa-es`
and `squad` normalisations. The model is untrained, so its scores are near zero: the demo shows the
machinery end to end, not accuracy (the distillation recipes do that).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "predict and evaluate the embedded Spanish sample with a tiny model built on the fly (offline)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="folder for the model, predictions, metrics")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model's weights")


def run(args: argparse.Namespace) -> None:
    from tinyroberta_es import atomic
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.evaluation import evaluate_predictions
    from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
    from tinyroberta_es.tiny import create_tiny_qa_model, train_tokenizer

    out = Path(args.output)
    t0 = time.perf_counter()
    dataset = load_dataset("sample")
    texts = sorted({ex.context for ex in dataset.examples}) + [ex.question for ex in dataset.examples]
    tokenizer_dir = train_tokenizer("bpe", texts, out / "tokenizer")
    model_dir = create_tiny_qa_model(out / "model", tokenizer_dir, seed=args.seed)
    answerer = QuestionAnswerer.from_pretrained(model_dir, InferenceConfig(null_threshold=0.0), device="cpu")
    predictions = answerer.predict(dataset.examples)
    preds = {p.id: p.text for p in predictions}
    na_probs = {p.id: p.null_probability for p in predictions}  # probabilities, as the official script reads
    atomic.write_json(out / "predictions.json", preds)
    atomic.write_json(out / "na_probs.json", na_probs)
    metrics = {
        norm: evaluate_predictions(dataset, preds, na_probs, normalization=norm)
        for norm in ("mlqa-es", "squad")
    }
    atomic.write_json(out / "metrics.json", {"dataset": "sample", "model": str(model_dir), **metrics})
    print(
        f"sample: {len(dataset)} questions, {sum(ex.is_impossible for ex in dataset.examples)} unanswerable; "
        f"tiny untrained model at {model_dir}"
    )
    for norm, m in metrics.items():
        print(f"  {norm:8s} exact {m['exact']:6.2f}  f1 {m['f1']:6.2f}  best_f1 {m['best_f1']:6.2f}")
    print(f"wrote {out / 'predictions.json'} and {out / 'metrics.json'} in {time.perf_counter() - t0:.1f} s")
