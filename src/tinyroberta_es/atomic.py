"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Write to a temporary file in the destination's folder, flush it to disk, then `os.replace` it over the
destination, which is atomic on POSIX and Windows file systems.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
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
    """Write `obj` as UTF-8 JSON (non-ASCII kept readable) to `path` atomically."""
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def default_file_mode() -> int:
    """The mode `open()` would give a new file under the current umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
