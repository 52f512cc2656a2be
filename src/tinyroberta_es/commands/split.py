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
    from tinyroberta_es.errors import UserError

    if not args.output.endswith((".json", ".json.gz")):
        raise UserError(f"--output {args.output}: must end in .json or .json.gz")
    report = write_split(args.train, args.held_out, args.output, args.bad_spans)
    print(f"{report.summary()}; wrote {args.output}")


def write_split(train: str, held_out: list[str], output: str, bad_spans: str = "repair") -> object:
    """Write `train` without the paragraphs that share a question id with `held_out` to `output`
    (atomically); return the `SplitReport` (what was dropped). The code of the `split` command and stage."""
    from pathlib import Path

    from tinyroberta_es.data.loading import load_dataset, save_squad
    from tinyroberta_es.data.split import remove_overlap
    from tinyroberta_es.errors import UserError

    dataset = load_dataset(train, bad_spans=bad_spans)
    held = [load_dataset(source, bad_spans="keep") for source in held_out]  # only their ids matter
    kept, report = remove_overlap(dataset, held)
    if not kept.examples:
        raise UserError(
            f"training set {train}: every paragraph shares a question id with the held-out "
            f"{', '.join(held_out)}; nothing left to write"
        )
    save_squad(kept, Path(output).expanduser())
    return report
