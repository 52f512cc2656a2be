"""Questions as JSON Lines: one `{"id", "question", "context"}` object per line ("title" optional).

The unlabeled input of `tinyroberta-es predict`: `loading.load_dataset` reads `.jsonl` and `.ndjson` files
(and their `.gz`) with `parse_jsonl`. Every line is checked and every problem collected before one
`UserError`; line numbers are 1-based, as editors show them. Blank lines are skipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tinyroberta_es.data.schema import Example, LoadReport, QADataset
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
FIELDS = ("id", "question", "context")  # non-empty strings on every line; "title" is an optional string
VERSION = "jsonl"  # `QADataset.version` of a JSON Lines file
MAX_SHOWN = 5  # problems quoted in the error message; all of them are logged at debug level


def is_jsonl(path: str | Path) -> bool:
    """Whether `path` names a JSON Lines file (by its extension, case-insensitive)."""
    return str(path).lower().endswith(JSONL_SUFFIXES)


def parse_jsonl(text: str, source: str) -> QADataset:
    """Validate JSON Lines text and build a `QADataset` of unlabeled questions (`answers` None).

    Each non-blank line must be an object with non-empty string `id`, `question` and `context` (and a string
    `title` if present); ids must be unique. Other keys are ignored, with a warning that names them.
    """
    problems: list[str] = []
    examples: list[Example] = []
    first_line: dict[str, int] = {}
    ignored: set[str] = set()
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        obj = _object(line, f"line {number}", problems)
        if obj is None:
            continue
        ignored.update(k for k in obj if k not in FIELDS and k != "title")
        values = _fields(obj, f"line {number}", problems)
        qid = values.get("id")
        if qid is not None:
            if qid in first_line:
                problems.append(f"line {number}: duplicate id {qid!r} (first on line {first_line[qid]})")
                continue
            first_line[qid] = number
        if len(values) == len(FIELDS) + 1:
            qid, question, context, title = (values[k] for k in (*FIELDS, "title"))
            # each line its own "article", so that `save_squad` keeps every line's title
            examples.append(Example(qid, question, context, None, title=title, article_index=number - 1))
    if problems:
        _raise_problems(source, problems)
    if not examples:
        raise UserError(f"{source}: no questions (every line is blank); write one JSON object per line")
    if ignored:
        log.warning(
            "%s: ignored the keys %s (JSON Lines input is read as questions without answers)",
            source,
            ", ".join(map(repr, sorted(ignored))),
        )
    report = LoadReport(
        articles=len({ex.title for ex in examples}),
        paragraphs=len({ex.context for ex in examples}),
        questions=len(examples),
        unlabeled=len(examples),
    )
    log.info("loaded %s: %s", source, report.summary())
    return QADataset(source=source, version=VERSION, examples=examples, report=report)


def _object(line: str, where: str, problems: list[str]) -> dict[str, Any] | None:
    """The line decoded as a JSON object, or None and a problem."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        problems.append(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{where}: must be a JSON object, got {_short(obj)}")
        return None
    if "data" in obj and "id" not in obj:
        problems.append(f"{where}: this is SQuAD JSON, not JSON Lines; name the file .json")
        return None
    return obj


def _fields(obj: dict[str, Any], where: str, problems: list[str]) -> dict[str, str]:
    """The valid `FIELDS` and `title` of a line's object; a problem for each invalid one."""
    values: dict[str, str] = {}
    for key in FIELDS:
        value = obj.get(key)
        if key not in obj:
            problems.append(f"{where}: missing key {key!r}")
        elif not isinstance(value, str):
            problems.append(f"{where}: {key!r} must be a string, got {_short(value)}")
        elif not value.strip():
            problems.append(f"{where}: {key!r} is empty")
        else:
            values[key] = value
    title = obj.get("title", "")
    if isinstance(title, str):
        values["title"] = title
    else:
        problems.append(f"{where}: 'title' must be a string, got {_short(title)}")
    return values


def _raise_problems(source: str, problems: list[str]) -> None:
    for problem in problems:
        log.debug("%s: %s", source, problem)
    n = len(problems)
    shown = "; ".join(problems[:MAX_SHOWN]) + ("; ..." if n > MAX_SHOWN else "")
    more = f" (all {n} are logged at debug level: -v)" if n > MAX_SHOWN else ""
    raise UserError(
        f"{source}: {n} problem{'s' if n > 1 else ''}; first: {shown}; fix the file: one JSON object per "
        f"line with non-empty strings 'id', 'question' and 'context' (and optionally 'title'){more}"
    )


def _short(value: Any, limit: int = 40) -> str:
    """A one-line, truncated JSON rendering of a decoded value, for messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
