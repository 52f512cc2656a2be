"""Prediction files as the official scripts read them: `{question id: answer}` and `{question id: no-answer
probability}`, in file order (it breaks ties in the best-threshold search), every bad entry named at once.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from tinyroberta_es.errors import UserError


def first_ids(ids: Iterable[object], n: int = 5) -> str:
    """The first `n` ids (question ids, or item indices), as repr, and how many more: for error messages."""
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


class _Pairs(list):
    """A JSON object as its (key, value) pairs in file order, so that repeated keys can be reported."""


def _json_type(value: object) -> str:
    if isinstance(value, _Pairs):
        return "object"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    names = {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _read_pairs(path: str | Path, kind: str, expected: str) -> list[tuple[str, object]]:
    """The top-level (key, value) pairs of the JSON object in `path`; UserError naming the file and fix."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f, object_pairs_hook=_Pairs)
    except FileNotFoundError:
        raise UserError(f"{kind} file {path} does not exist: check the path") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{kind} file {path} is not valid JSON ({err}): write {expected}") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(
            f"{kind} file {path} cannot be read ({reason}): give a readable UTF-8 JSON file"
        ) from None
    if not isinstance(data, _Pairs):
        raise UserError(
            f"{kind} file {path} holds a JSON {_json_type(data)}, not an object: write {expected}"
        )
    return list(data)


def _check_pairs(pairs: list[tuple[str, object]], is_bad: Callable[[object], bool], want: str) -> list[str]:
    """Problems with the pairs: repeated ids, and values for which `is_bad` is true (`want`: the fix)."""
    problems = []
    counts = Counter(key for key, _ in pairs)
    repeated = [key for key, n in counts.items() if n > 1]
    if repeated:
        problems.append(f"{len(repeated)} ids appear more than once ({first_ids(repeated)})")
    bad = [(key, value) for key, value in pairs if is_bad(value)]
    if bad:
        shown = ", ".join(f"{key!r}: {_json_type(value)}" for key, value in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        problems.append(f"{len(bad)} ids have a value that is not {want} ({shown}{more})")
    return problems


def read_predictions(path: str | Path) -> dict[str, str]:
    """Read an official predictions file: a JSON object from question id to answer text, in file order."""
    expected = '{"question id": "answer text", ...} with "" for no answer'
    pairs = _read_pairs(path, "predictions", expected)
    problems = _check_pairs(pairs, lambda value: not isinstance(value, str), "a string")
    if problems:
        raise UserError(f"predictions file {path}: {'; '.join(problems)}: write {expected}")
    return dict(pairs)  # type: ignore[arg-type]


def _is_bad_probability(value: object) -> bool:
    if value is None:
        return False  # read as +inf
    return isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)


def read_na_probs(path: str | Path) -> dict[str, float]:
    """Read a no-answer probability file: a JSON object from question id to a number, in file order.

    The order is kept because it breaks ties in the best-threshold search, as in the official v2.0 script.
    JSON null reads as +inf: no answer at every threshold. Standard JSON writers give null for an infinite
    score, as `predict --null-odds-output` does for a question whose model found no span at all
    (`--na-probs-output` holds probabilities, always finite).
    """
    expected = '{"question id": number or null, ...} (higher means more likely unanswerable)'
    pairs = _read_pairs(path, "no-answer probabilities", expected)
    problems = _check_pairs(pairs, _is_bad_probability, "a number or null")
    if problems:
        raise UserError(f"no-answer probabilities file {path}: {'; '.join(problems)}: write {expected}")
    return {key: math.inf if value is None else float(value) for key, value in pairs}  # type: ignore[arg-type]
