"""atomic.write_json writes standard JSON only: NaN and Infinity raise, naming the file and where they are."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cli_helpers import strict_loads
from tinyroberta_es import atomic


def test_write_json_is_standard_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.json"
    obj = {"año": 1.5, "n": [1, None, True], "t": (0.0, -2)}
    atomic.write_json(path, obj)
    assert strict_loads(path.read_text(encoding="utf-8")) == {
        "año": 1.5,
        "n": [1, None, True],
        "t": [0.0, -2],
    }
    assert "año" in path.read_text(encoding="utf-8")  # non-ASCII kept readable


@pytest.mark.parametrize(
    ("obj", "where", "shown"),
    [
        ({"q1": 0.5, "q2": math.inf}, '$["q2"]', "inf"),
        ({"rows": [{"f1": 1.0}, {"f1": math.nan}]}, '$["rows"][1]["f1"]', "nan"),
        ([0.0, (1.0, -math.inf)], "$[1][1]", "-inf"),
    ],
)
def test_write_json_refuses_non_finite_numbers(tmp_path: Path, obj: object, where: str, shown: str) -> None:
    path = tmp_path / "out.json"
    with pytest.raises(ValueError) as info:
        atomic.write_json(path, obj)
    message = str(info.value)
    assert str(path) in message and f"{where} is {shown}" in message and "finite_or_none" in message
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_finite_or_none() -> None:
    assert [atomic.finite_or_none(v) for v in (math.inf, -math.inf, math.nan, None)] == [None] * 4
    assert atomic.finite_or_none(2) == 2.0 and isinstance(atomic.finite_or_none(2), float)
    assert atomic.finite_or_none(-0.25) == -0.25
