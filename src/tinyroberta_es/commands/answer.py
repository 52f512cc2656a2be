"""`tinyroberta-es answer`: ask one question about one text.

`--json` prints standard JSON: a null score difference is `null` when the model found no span at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinyroberta_es.atomic import finite_or_none
from tinyroberta_es.commands.predict import add_inference_arguments, answerer_from_args, check_inference_flags

HELP = "answer one question about one context with a QA model folder"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="QA model folder (config, weights, tokenizer) or Hub id"
    )
    parser.add_argument("--question", required=True, help="the question, e.g. '¿Dónde nació Frida Kahlo?'")
    context = parser.add_mutually_exclusive_group(required=True)
    context.add_argument("--context", help="the text that holds the answer")
    context.add_argument("--context-file", help="read the context from this UTF-8 text file")
    parser.add_argument("--top-k", type=int, default=1, help="how many answers to show (default 1)")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> None:
    from tinyroberta_es.errors import UserError

    problems = [f"--top-k {args.top_k} must be a positive integer"] if args.top_k < 1 else []
    check_inference_flags(args, *problems)  # before the model loads: a --backend typo fails at once
    context = args.context
    if args.context_file is not None:
        path = Path(args.context_file)
        if not path.is_file():
            raise UserError(f"context file {path} does not exist; pass a UTF-8 text file")
        try:
            context = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"context file {path} is not UTF-8 text; convert it to UTF-8") from None
    if not args.question.strip():
        raise UserError("--question is empty; ask a question")
    if not context.strip():
        raise UserError("the context is empty; pass the text that holds the answer with --context")
    prediction = answerer_from_args(args).answer(args.question, context, top_k=args.top_k)
    answers = [
        {"text": s.text, "start": s.start, "end": s.end, "score": s.score, "probability": s.probability}
        for s in prediction.answers
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "answer": prediction.text,
                    "is_null": prediction.is_null,
                    "answers": answers,
                    "null_score_diff": finite_or_none(prediction.null_score_diff),
                },
                ensure_ascii=False,
                indent=2,
                allow_nan=False,
            )
        )
        return
    if not prediction.answers:
        print("(no answer: the model found no span in the context)")
    elif prediction.is_null:
        print(f"(no answer; null score - best span score = {prediction.null_score_diff:.3f})")
    for rank, a in enumerate(answers, 1):
        print(
            f"{rank}. {a['text']}  [chars {a['start']}-{a['end']}, score {a['score']:.3f}, "
            f"p {a['probability']:.3f}]"
        )
