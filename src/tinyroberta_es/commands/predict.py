"""`tinyroberta-es predict`: answer every question of a dataset with a QA model folder.

The dataset need not have answers: SQuAD JSON whose questions lack `answers` and JSON Lines files of
`{"id", "question", "context"}` objects are read as unlabeled questions (`load_dataset(labels="optional")`).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tinyroberta_es.data.schema import Example
    from tinyroberta_es.extraction import Prediction
    from tinyroberta_es.inference import QuestionAnswerer

HELP = (
    "answer every question of a dataset, answers given or not (SQuAD JSON or JSON Lines); write predictions"
)

log = logging.getLogger(__name__)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that run a model: windows, batching, threads, null threshold."""
    parser.add_argument("--max-length", type=int, default=384, help="tokens per window (default 384)")
    parser.add_argument("--doc-stride", type=int, default=128, help="tokens shared by windows (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    parser.add_argument(
        "--null-threshold",
        type=float,
        default=None,
        help="answer '' when null score - best span score exceeds this (SQuAD v2 models)",
    )
    parser.add_argument(
        "--backend",
        default="pytorch",
        help="pytorch, pytorch-bf16, pytorch-bf16-compiled (compiles at load), onnx or onnx-int8 "
        "(the onnx ones need `tinyroberta-es export` first)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="QA model folder (config, weights, tokenizer) or Hub id"
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="dataset name (e.g. xquad_es, sample) or path/URL: SQuAD .json(.gz), answers optional, or "
        "JSON Lines .jsonl/.ndjson(.gz) of {id, question, context}",
    )
    parser.add_argument("--output", required=True, help="predictions JSON to write: {question id: answer}")
    parser.add_argument(
        "--na-probs-output",
        default=None,
        help="also write {question id: null score - best span score} for v2 evaluation",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    add_inference_arguments(parser)


def answerer_from_args(args: argparse.Namespace) -> QuestionAnswerer:
    """Build a `QuestionAnswerer` from the shared inference flags, validating them."""
    from tinyroberta_es.errors import UserError
    from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer

    for flag in ("max_length", "doc_stride", "batch_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value} must be a positive integer")
    config = InferenceConfig(
        max_length=args.max_length,
        doc_stride=args.doc_stride,
        batch_size=args.batch_size,
        null_threshold=args.null_threshold,
        backend=args.backend,
        threads=args.threads,
    )
    return QuestionAnswerer.from_pretrained(args.model, config)


def predict_examples(args: argparse.Namespace, examples: Sequence[Example]) -> list[Prediction]:
    """Answer `examples` with the model and backend the inference flags name; print the speed."""
    answerer = answerer_from_args(args)
    t0 = time.perf_counter()
    predictions = answerer.predict(examples, progress=True)
    seconds = time.perf_counter() - t0
    print(
        f"answered {len(predictions)} questions in {seconds:.1f} s "
        f"({len(predictions) / max(seconds, 1e-9):.1f} questions/s) with {answerer.runner.name}"
    )
    return predictions


def run(args: argparse.Namespace) -> None:
    from tinyroberta_es import atomic
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.errors import UserError

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit} must be a positive integer")
    dataset = load_dataset(args.dataset, bad_spans="keep", labels="optional")  # answers are not needed
    predictions = predict_examples(args, dataset.examples[: args.limit])
    atomic.write_json(args.output, {p.id: p.text for p in predictions})
    if args.na_probs_output:
        atomic.write_json(args.na_probs_output, {p.id: p.null_score_diff for p in predictions})
    print(f"wrote {args.output}")
