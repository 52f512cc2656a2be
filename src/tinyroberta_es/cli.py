"""The `tinyroberta-es` command line: a table from subcommand to the module that implements it.

Each command module defines `HELP` (one line), `configure(parser)` (its flags) and `run(args)`; command
modules import torch and transformers inside `run`, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

import tinyroberta_es
from tinyroberta_es import __version__
from tinyroberta_es.errors import UserError

COMMANDS = {
    "run": "tinyroberta_es.commands.run",
    "demo": "tinyroberta_es.commands.demo",
    "predict": "tinyroberta_es.commands.predict",
    "answer": "tinyroberta_es.commands.answer",
    "evaluate": "tinyroberta_es.commands.evaluate",
    "split": "tinyroberta_es.commands.split",
    "finetune": "tinyroberta_es.commands.finetune",
    "distill": "tinyroberta_es.commands.distill",
    "export": "tinyroberta_es.commands.export",
    "serve": "tinyroberta_es.commands.serve",
    "bench": "tinyroberta_es.commands.bench",
    "push": "tinyroberta_es.commands.push",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(prog="tinyroberta-es", description=tinyroberta_es.__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.configure(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    # Our own progress bars cover long work; the Hub's per-file bars (loading, saving weights) are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported before us (tests, notebooks): the variable came too late
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module = importlib.import_module(COMMANDS[args.command])
    try:
        module.run(args)
    except UserError as err:
        print(f"tinyroberta-es {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinyroberta-es {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
