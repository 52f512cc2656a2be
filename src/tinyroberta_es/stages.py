"""Stage records: what lets `tinyroberta-es run` skip finished work and resume interrupted work.

A stage that finishes writes `<run>/stages/<stage>.json` atomically: its settings, a key (a hash of those
settings and of the keys of the stages it used), when it finished and how long it took. On the next run:

- a stage whose record holds the same key is skipped;
- a stage without a record runs; an interrupted training stage resumes from its own checkpoint (`train`
  does that), the other stages start again (their outputs are written atomically, so nothing half-written
  is ever read);
- a stage whose settings (or whose inputs) changed runs again, except a training stage: its model was
  trained with the old settings, so `run` refuses and says which settings changed and what to delete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tinyroberta_es import atomic
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One step of a run: `work()` does it and returns what its record keeps."""

    name: str  # e.g. "teacher", "distill-student-6l"
    settings: dict[str, Any]  # everything that decides the outputs (JSON-serialisable)
    work: Callable[[], dict[str, Any] | None]
    after: Sequence[str] = ()  # stages whose outputs this one reads
    trains: bool = False  # a training stage never reruns over a model trained with other settings
    outputs: Sequence[str] = ()  # folders or files it writes, named in the refusal message
    always: bool = False  # cheap stages that run every time (the report)
    result: dict[str, Any] = field(default_factory=dict)


class StageRecords:
    """The records under `<run>/stages/`: read, compare, write."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "stages"

    def path(self, name: str) -> Path:
        """The record file of stage `name`."""
        return self.dir / f"{name}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        """The record of a finished stage, or None (absent or unreadable: the stage runs again)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("ignoring the unreadable stage record %s", path)
            return None

    def key(self, stage: Stage) -> str:
        """A hash of the stage's settings and of the keys of the finished stages it reads."""
        inputs = {name: (self.read(name) or {}).get("key") for name in stage.after}
        blob = json.dumps({"settings": stage.settings, "after": inputs}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def state(self, stage: Stage) -> str:
        """What `run` will do with `stage`: "done" (skip), "to run", "to run again" or "changed"."""
        record = self.read(stage.name)
        if record is None:
            return "to run"
        if stage.always or record.get("key") != self.key(stage):
            return "changed" if stage.trains else "to run again"
        return "done"

    def run(self, stage: Stage, write: bool = True) -> dict[str, Any]:
        """Skip `stage` when its record matches, else run it and record it (unless not `write`: the
        processes of a torchrun other than rank 0); returns its result."""
        key = self.key(stage)
        record = self.read(stage.name)
        if record is not None and record.get("key") == key and not stage.always:
            log.info("stage %s: finished at %s; skipping", stage.name, record.get("finished_at"))
            return record.get("result") or {}
        if record is not None and stage.trains:
            raise UserError(_refusal(stage, record, self.path(stage.name)))
        if record is not None and not stage.always:
            log.info("stage %s: its settings or inputs changed since it ran; running it again", stage.name)
        log.info("stage %s: running", stage.name)
        t0 = time.perf_counter()
        result = stage.work() or {}
        record = {
            "stage": stage.name,
            "key": key,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 2),
            "settings": stage.settings,
            "after": list(stage.after),
            "result": result,
        }
        if write:
            atomic.write_json(self.path(stage.name), record)
        return result


def _refusal(stage: Stage, record: dict[str, Any], record_path: Path) -> str:
    changed = changed_settings(record.get("settings") or {}, stage.settings)
    what = f"settings changed ({'; '.join(changed[:4])})" if changed else "a stage it reads ran again"
    delete = " and ".join([*stage.outputs, str(record_path)])
    return (
        f"stage {stage.name} already trained a model with other inputs: {what}; put the new run in new "
        f"output folders, or delete {delete} to train it again"
    )


def changed_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`key old -> new` for every leaf that differs between two nested settings."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in dict.fromkeys([*old, *new]):
            out += changed_settings(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')} {old!r} -> {new!r}"]
