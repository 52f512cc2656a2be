"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Write to a temporary file in the destination's folder, flush it to disk, then `os.replace` it over the
destination, which is atomic on POSIX and Windows file systems.

`write_json` writes standard JSON only: NaN and Infinity, which Python's `json` writes by default but strict
parsers (JavaScript's `JSON.parse`, `jq`, most other languages) reject, raise instead. Convert them where a
value can be non-finite, deliberately (`finite_or_none` where JSON null has a documented meaning).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it over `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, default_file_mode())  # mkstemp makes owner-only files; others read ours too
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` as standard UTF-8 JSON (non-ASCII kept readable) to `path` atomically.

    A NaN or infinite number raises ValueError naming the file and where in `obj` it is, before anything is
    written: convert it first (`finite_or_none`).
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False)
    except ValueError:
        where = _non_finite(obj, "$")
        if where is None:
            raise
        raise ValueError(
            f"cannot write {path}: {where[0]} is {where[1]}, which standard JSON cannot hold; "
            "convert it before writing (e.g. atomic.finite_or_none)"
        ) from None
    write_text(path, text + "\n")


def finite_or_none(value: float | None) -> float | None:
    """`value` as a float, or None (JSON null) when it is None, NaN or infinite.

    For numbers whose non-finite values have a meaning that the writer's documentation gives to null (for
    example a null score difference of +inf: the model found no span).
    """
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _non_finite(obj: Any, where: str) -> tuple[str, float] | None:
    """(JSON path, value) of the first NaN or infinite float in `obj`, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where, obj)
    if isinstance(obj, Mapping):
        items = ((f"{where}[{json.dumps(str(key), ensure_ascii=False)}]", v) for key, v in obj.items())
    elif isinstance(obj, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for path, value in items:
        found = _non_finite(value, path)
        if found is not None:
            return found
    return None


def default_file_mode() -> int:
    """The mode `open()` would give a new file under the current umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
