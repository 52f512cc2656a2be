"""`tinyroberta-es predict`: answer every question of a dataset with a QA model folder.

The dataset need not have answers: SQuAD JSON whose questions lack `answers` and JSON Lines files of
`{"id", "question", "context"}` objects are read as unlabeled questions (`load_dataset(labels="optional")`).
`--na-probs-output` writes each question's no-answer probability (the null answer's share of the start and
end softmaxes; 0 without --null-threshold), which the official v2 script's `--na-prob-file` and
`evaluate --na-probs` read against their threshold of 1.0. `--null-odds-output` writes the model's own
score, null score minus best span score in logits (what --null-threshold is compared with), as the Hugging
Face SQuAD v2 scripts do. The files are standard JSON: a question for which the model found no span at all
(its score difference is infinite) gets `null` in the null-odds file.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tinyroberta_es.data.schema import Example
    from tinyroberta_es.extraction import Prediction
    from tinyroberta_es.inference import QuestionAnswerer
    from tinyroberta_es.runtimes import Runner

HELP = (
    "answer every question of a dataset, answers given or not (SQuAD JSON or JSON Lines); write predictions"
)

log = logging.getLogger(__name__)

# Written out, not built from runtimes.CHOICES: importing the runtimes imports torch, and `--help` must stay
# fast. tests/test_predict_command.py checks that every choice is named here.
BACKEND_HELP = (
    "what runs the model (default pytorch): pytorch, pytorch-bf16, pytorch-bf16-compiled (compiles at "
    "load); onnx, onnx-int8 (need `tinyroberta-es export`, int8 with --quantize int8); openvino, "
    "openvino-bf16, openvino-int8, openvino-int8-bf16 (need `tinyroberta-es export --format openvino`, "
    "int8 with --quantize int8; bf16 needs a CPU with bf16); or auto: at load, measure the backends that "
    "passed the export's parity check and keep the fastest"
)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that run a model: windows, batching, threads, null threshold, revision."""
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
        "--no-align-to-words",
        dest="align_to_words",
        action="store_false",
        help="keep answers exactly as the model's tokens cut them (default: widened to whole words)",
    )
    parser.add_argument("--backend", default="pytorch", help=BACKEND_HELP)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's)")
    parser.add_argument(
        "--revision",
        default=None,
        help="pin the Hub model to this branch, tag or commit hash (Hub ids only, not local folders)",
    )


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
        help="also write {question id: no-answer probability} for v2 evaluation (evaluate --na-probs)",
    )
    parser.add_argument(
        "--null-odds-output",
        default=None,
        help="also write {question id: null score - best span score} in logits (null: no span found)",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    add_inference_arguments(parser)


def inference_flag_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the shared inference flags: a size below 1, a null threshold that is not a finite
    number, a --backend that does not exist."""
    from tinyroberta_es.runtimes import CHOICES

    problems = [
        f"--{flag.replace('_', '-')} {value} must be a positive integer"
        for flag in ("max_length", "doc_stride", "batch_size", "threads")
        if (value := getattr(args, flag)) is not None and value < 1
    ]
    if args.null_threshold is not None and not math.isfinite(args.null_threshold):
        problems.append(
            f"--null-threshold {args.null_threshold} is not a finite number: give one "
            "(a large one answers every question that has a span)"
        )
    if args.backend not in CHOICES:
        problems.append(f"--backend {args.backend!r} is unknown: choose one of {', '.join(CHOICES)}")
    return problems


def check_inference_flags(args: argparse.Namespace, *problems: str) -> None:
    """One UserError naming every bad inference flag and every problem the caller found already."""
    from tinyroberta_es.errors import UserError

    found = [*problems, *inference_flag_problems(args)]
    if found:
        raise UserError("; ".join(found))


def answerer_from_args(args: argparse.Namespace) -> QuestionAnswerer:
    """Build a `QuestionAnswerer` from the shared inference flags, validating them.

    With `--backend auto` its runner says what it chose (`runner.selection`), and runtimes.auto logs why.
    """
    from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer

    check_inference_flags(args)
    config = InferenceConfig(
        max_length=args.max_length,
        doc_stride=args.doc_stride,
        batch_size=args.batch_size,
        null_threshold=args.null_threshold,
        align_to_words=args.align_to_words,
        backend=args.backend,
        threads=args.threads,
    )
    return QuestionAnswerer.from_pretrained(args.model, config, revision=args.revision)


def backend_record(requested: str, runner: Runner) -> dict[str, Any]:
    """What ran, for a report: the concrete backend, and with `auto` what was asked and how it chose."""
    record: dict[str, Any] = {"backend": runner.name}
    if runner.selection is not None:
        record.update(backend_requested=requested, selection=runner.selection)
    return record


def describe_backend(runner: Runner) -> str:
    """The backend that ran, with the reason when `--backend auto` chose it."""
    if runner.selection is None:
        return runner.name
    return f"{runner.name} (chosen by --backend auto: {runner.selection['reason']})"


def predict_examples(
    args: argparse.Namespace, examples: Sequence[Example]
) -> tuple[list[Prediction], Runner]:
    """Answer `examples` with the model and backend the inference flags name; print the speed.

    Returns the predictions and the runner that made them (with `auto`, the backend it chose).
    """
    answerer = answerer_from_args(args)
    t0 = time.perf_counter()
    predictions = answerer.predict(examples, progress=True)
    seconds = time.perf_counter() - t0
    print(
        f"answered {len(predictions)} questions in {seconds:.1f} s "
        f"({len(predictions) / max(seconds, 1e-9):.1f} questions/s) with {describe_backend(answerer.runner)}"
    )
    return predictions, answerer.runner


def run(args: argparse.Namespace) -> None:
    from tinyroberta_es import atomic
    from tinyroberta_es.atomic import finite_or_none
    from tinyroberta_es.data.loading import load_dataset

    problems = []
    if args.limit is not None and args.limit < 1:
        problems.append(f"--limit {args.limit} must be a positive integer")
    check_inference_flags(args, *problems)  # before the dataset is read: a typo fails at once
    dataset = load_dataset(args.dataset, bad_spans="keep", labels="optional")  # answers are not needed
    # The predictions files keep their plain {id: answer} form; the backend that ran (and with auto, why)
    # is printed by predict_examples and logged by runtimes.auto.
    predictions, _ = predict_examples(args, dataset.examples[: args.limit])
    atomic.write_json(args.output, {p.id: p.text for p in predictions})
    if args.na_probs_output:
        atomic.write_json(args.na_probs_output, {p.id: p.null_probability for p in predictions})
    if args.null_odds_output:
        odds = {p.id: finite_or_none(p.null_score_diff) for p in predictions}  # +inf (no span): null
        atomic.write_json(args.null_odds_output, odds)
    print(f"wrote {args.output}")
