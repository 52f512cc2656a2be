"""Helpers for tests that run the CLI in-process: run a command, check a one-line error, read strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tinyroberta_es.cli import main


def strict_loads(text: str, source: str = "the text") -> object:
    """json.loads that refuses NaN, Infinity and -Infinity, as JavaScript's JSON.parse and jq do."""

    def refuse(name: str) -> None:
        raise ValueError(f"{source} holds {name}, which is not standard JSON")

    return json.loads(text, parse_constant=refuse)


def read_strict_json(path: Path) -> object:
    """The file at `path` parsed by strict_loads: NaN and Infinity raise, naming the file."""
    return strict_loads(path.read_text(encoding="utf-8"), source=str(path))


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


def free_port() -> int:
    """A TCP port free on the loopback interface now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cli(processes: int = 2) -> list[str]:
    """The argv prefix of `tinyroberta-es ...` under torchrun with `processes` local processes."""
    import sys

    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    argv += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return [*argv, "-m", "tinyroberta_es.cli"]
