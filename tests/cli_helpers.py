"""Helpers for tests that run the CLI in-process: run a command, check a one-line error."""

from __future__ import annotations

from tinyroberta_es.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `tinyroberta-es ARGV` in this process; return (status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, *needles: str) -> None:
    """Exit status 2, stderr one line without a traceback, containing every needle."""
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
