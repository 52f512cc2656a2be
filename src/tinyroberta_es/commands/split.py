"""`tinyroberta-es split`: write a training set without the paragraphs of held-out evaluation sets."""

from __future__ import annotations

import argparse

from tinyroberta_es.data.loading import BAD_SPANS

HELP = "drop from a training set every paragraph that shares a question id with held-out sets; write the rest"


def configure(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    parser.add_argument(
        "--train", required=True, metavar="NAME|PATH", help="training set: dataset name, path or URL"
    )
    parser.add_argument(
        "--held-out",
        required=True,
        action="append",
        metavar="NAME|PATH",
        help="evaluation set to keep out of training (repeat for several), e.g. xquad_es",
    )
    parser.add_argument("--output", required=True, help="SQuAD JSON file to write (.json or .json.gz)")
    parser.add_argument(
        "--bad-spans",
        default="repair",
        choices=BAD_SPANS,
        help="training answers whose answer_start misses their text: repair (default), drop, keep",
    )


def run(args: argparse.Namespace) -> None:
    """Load, filter, write, print the counts."""
    from pathlib import Path

    from tinyroberta_es.data.loading import load_dataset, save_squad
    from tinyroberta_es.data.split import remove_overlap
    from tinyroberta_es.errors import UserError

    output = Path(args.output)
    if not output.name.endswith((".json", ".json.gz")):
        raise UserError(f"--output {args.output}: must end in .json or .json.gz")
    train = load_dataset(args.train, bad_spans=args.bad_spans)
    held_out = [load_dataset(source, bad_spans="keep") for source in args.held_out]  # only their ids matter
    kept, report = remove_overlap(train, held_out)
    if not kept.examples:
        raise UserError(
            f"--train {args.train}: every paragraph shares a question id with --held-out "
            f"{', '.join(args.held_out)}; nothing left to write"
        )
    save_squad(kept, output)
    print(f"{report.summary()}; wrote {output}")
