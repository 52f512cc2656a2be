"""Read and write SQuAD-format JSON (v1.1 and v2.0), validating everything at the boundary.

`load_dataset` takes a path, a URL or a dataset name (see `sources.py`), `parse_squad` checks a decoded JSON
object and turns it into a `QADataset`, collecting every problem before it fails, and `save_squad` writes a
dataset back as SQuAD JSON. Positions in messages are 0-based, like `data[3].paragraphs[2]` in the file.
JSON Lines files of questions without answers are read by `jsonl.parse_jsonl`.

Labels: a question without an `answers` key (and not `is_impossible`) is unlabeled (`Example.answers` None).
Training and evaluation need answers (`labels="required"`, the default, refuses such questions); `predict`
answers them (`labels="optional"`).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyroberta_es.atomic import atomic_path
from tinyroberta_es.data.jsonl import VERSION as JSONL_VERSION
from tinyroberta_es.data.jsonl import is_jsonl, parse_jsonl
from tinyroberta_es.data.schema import Answer, Example, LoadReport, QADataset
from tinyroberta_es.data.sources import DatasetSource, named_source, resolve_source
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

BAD_SPANS = ("repair", "drop", "keep")
"""What to do with an answer whose `answer_start` does not point at its text: see `parse_squad`."""

LABELS = ("required", "optional")
"""Whether every question must have gold answers (training, evaluation) or may have none (`predict`)."""

MAX_SHOWN = 5  # problems quoted in the error message; all of them are logged at debug level


def load_dataset(
    source: str | Path,
    *,
    bad_spans: str = "repair",
    labels: str = "required",
    registry: Mapping[str, DatasetSource] | None = None,
) -> QADataset:
    """Load a dataset from a SQuAD `.json`/`.json.gz` file, a JSON Lines `.jsonl`/`.ndjson` (`.gz`) file of
    questions, an http(s) URL or a dataset name.

    Names and URLs are downloaded into the cache first (`sources.resolve_source`); `registry` replaces the
    built-in table of named datasets. See `parse_squad` for `bad_spans`, `labels` and what is checked; a JSON
    Lines file holds unlabeled questions only (`jsonl.parse_jsonl`), so it needs `labels="optional"`.
    """
    check_bad_spans(bad_spans)
    check_labels(labels)
    path = resolve_source(source, registry=registry)
    label = str(path) if str(source) == str(path) else f"{source} ({path})"
    if is_jsonl(path):
        dataset = parse_jsonl(read_text(path, label), label)
        if labels == "required":
            require_labels(dataset)
    else:
        dataset = parse_squad(read_json(path, label), label, bad_spans=bad_spans, labels=labels)
    entry = named_source(source, registry)
    if entry is not None and entry.articles is not None:
        start, stop = entry.articles
        kept = [ex for ex in dataset.examples if start <= ex.article_index < stop]
        dataset = dataclasses.replace(dataset, examples=kept)
        log.info("%s: articles %d to %d of that file, %d questions", entry.name, start, stop - 1, len(kept))
    return dataset


def check_bad_spans(bad_spans: str) -> None:
    """Raise `UserError` unless `bad_spans` is one of `BAD_SPANS`."""
    if bad_spans not in BAD_SPANS:
        raise UserError(f"unknown bad_spans {bad_spans!r}: choose one of {', '.join(BAD_SPANS)}")


def check_labels(labels: str) -> None:
    """Raise `UserError` unless `labels` is one of `LABELS`."""
    if labels not in LABELS:
        raise UserError(f"unknown labels {labels!r}: choose one of {', '.join(LABELS)}")


def require_labels(dataset: QADataset) -> None:
    """Raise a one-line `UserError` naming the file if any question of `dataset` has no answers."""
    unlabeled = [ex for ex in dataset.examples if not ex.is_labeled]
    if not unlabeled:
        return
    need = "training and evaluation need gold answers (`tinyroberta-es predict` answers unlabeled questions)"
    if dataset.version == JSONL_VERSION:
        raise UserError(f"{dataset.source}: has no answers (a JSON Lines file holds questions only); {need}")
    if len(unlabeled) == len(dataset.examples):
        raise UserError(f"{dataset.source}: has no answers (no question has an 'answers' key); {need}")
    raise UserError(
        f"{dataset.source}: {len(unlabeled):,} of {len(dataset.examples):,} questions have no answers "
        f"(no 'answers' key; first: {unlabeled[0].where}); {need}: add their answers or remove them"
    )


def read_text(path: Path, label: str) -> str:
    """Read a UTF-8 text file, plain or gzip-compressed (recognised by its first bytes, not its name)."""
    if path.is_dir():
        raise UserError(f"{label}: is a folder; pass a SQuAD .json(.gz) or a JSON Lines .jsonl(.gz) file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK\x03\x04"):
            raise UserError(f"{label}: is a zip archive; extract the SQuAD .json file from it and pass that")
        opener = gzip.open if head.startswith(b"\x1f\x8b") else open
        with opener(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{label}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    except (OSError, EOFError) as err:
        raise UserError(f"{label}: cannot read the file ({err}); check it is complete and readable") from None


def read_json(path: Path, label: str) -> Any:
    """Decode a JSON file, plain or gzip-compressed."""
    text = read_text(path, label)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        lines = "; if it holds one JSON object per line, name it .jsonl" if err.msg == "Extra data" else ""
        raise UserError(
            f"{label}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            f"fix the file or download it again{lines}"
        ) from None


def parse_squad(obj: Any, source: str, *, bad_spans: str = "repair", labels: str = "required") -> QADataset:
    """Validate a decoded SQuAD JSON object and build a `QADataset`.

    The data is v2 when its version says 2 ("v2.0", "2.0") or any question has an `is_impossible` key.

    Every problem in the file is collected first, then reported in one `UserError` (the first few quoted,
    all of them logged at debug level). `bad_spans` decides what happens to an answer whose `answer_start`
    does not point at its text: "repair" moves it to the nearest occurrence of the text in the context (an
    answer found nowhere is a problem), "drop" drops the answer (and an answerable question left with none),
    "keep" skips the check (what evaluation wants: the official scripts ignore `answer_start`).
    Answers with an empty text are counted (`LoadReport.empty_answers`) and skipped, except under "keep",
    which keeps them because the official v1.1 and MLQA scripts score them. In v2 data a question with no
    `is_impossible` key and no answers is unanswerable, as the official v2 script scores it.

    A question without an `answers` key is unlabeled (`answers` None) unless `is_impossible` is true (then it
    is unanswerable). `labels="required"` refuses unlabeled questions after the other checks, in one line
    naming the first; `labels="optional"` keeps them.
    """
    check_bad_spans(bad_spans)
    check_labels(labels)
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        if isinstance(obj, dict):
            got = f"an object without a 'data' list (keys: {', '.join(map(str, obj)) or 'none'})"
        else:
            got = f"a JSON {_kind(obj)}"
        raise UserError(
            f'{source}: not a SQuAD file: got {got}; expected {{"version": ..., "data": [articles]}}'
        )
    parser = _Parser(bad_spans=bad_spans)
    version, inferred = parser.version(obj, obj["data"])
    examples = parser.articles(obj["data"])
    if parser.problems:
        _raise_problems(source, parser.problems, parser.drop_hint)
    if inferred:
        log.info("%s: no 'version' field; read as SQuAD %s", source, version)
    paragraphs = {(ex.article_index, ex.paragraph_index) for ex in examples}
    report = LoadReport(
        articles=len({a for a, _ in paragraphs}),
        paragraphs=len(paragraphs),
        questions=len(examples),
        unanswerable=sum(ex.is_impossible for ex in examples),
        unlabeled=sum(not ex.is_labeled for ex in examples),
        repaired_answers=parser.repaired,
        dropped_answers=parser.dropped_answers,
        dropped_questions=parser.dropped_questions,
        empty_answers=parser.empty_answers,
        version_inferred=inferred,
    )
    dataset = QADataset(source=source, version=version, examples=examples, is_v2=parser.is_v2, report=report)
    if labels == "required":
        require_labels(dataset)
    log.info("loaded %s: %s", source, report.summary())
    return dataset


def save_squad(dataset: QADataset, path: str | Path) -> Path:
    """Write `dataset` as SQuAD JSON (gzip-compressed if `path` ends in .gz), atomically; return the path.

    Questions are regrouped into paragraphs and articles by their indices, in index order; answer starts
    are written as they are, and `is_impossible` on every labeled question of a v2 dataset. Unlabeled
    questions are written without `answers` (and `is_impossible`).
    """
    path = Path(path)
    articles: dict[int, dict[str, Any]] = {}
    paragraphs: dict[tuple[int, int], dict[str, Any]] = {}
    for ex in dataset.examples:
        article = articles.setdefault(ex.article_index, {"title": ex.title, "paragraphs": {}})
        paragraph = paragraphs.setdefault(
            (ex.article_index, ex.paragraph_index), {"context": ex.context, "qas": []}
        )
        article["paragraphs"][ex.paragraph_index] = paragraph
        if paragraph["context"] != ex.context:
            raise ValueError(
                f"{ex.where}: its context differs from that of another question of the same paragraph"
            )
        qa: dict[str, Any] = {"id": ex.id, "question": ex.question}
        if ex.answers is not None:
            qa["answers"] = [{"text": a.text, "answer_start": a.start} for a in ex.answers]
            if dataset.is_v2:
                qa["is_impossible"] = ex.is_impossible
        paragraph["qas"].append(qa)
    data = [
        {
            "title": article["title"],
            "paragraphs": [article["paragraphs"][p] for p in sorted(article["paragraphs"])],
        }
        for _, article in sorted(articles.items())
    ]
    payload = json.dumps({"version": dataset.version, "data": data}, ensure_ascii=False).encode("utf-8")
    try:
        with atomic_path(path) as tmp, (gzip.open if path.suffix == ".gz" else open)(tmp, "wb") as f:
            f.write(payload)
    except OSError as err:
        raise UserError(
            f"cannot write {path}: {err.strerror or err}; choose a writable output path"
        ) from None
    log.info("wrote %s: %d questions in %d paragraphs", path, len(dataset.examples), len(paragraphs))
    return path


@dataclass
class _Parser:
    """Walks the article/paragraph/question tree once, collecting problems and counts."""

    bad_spans: str
    is_v2: bool = False
    problems: list[str] = field(default_factory=list)
    drop_hint: bool = False  # some problem would go away with bad_spans="drop"
    repaired: int = 0
    dropped_answers: int = 0
    dropped_questions: int = 0
    empty_answers: int = 0
    seen_ids: dict[str, str] = field(default_factory=dict)

    def version(self, obj: dict[str, Any], articles: list[Any]) -> tuple[str, bool]:
        """The version string, whether it was inferred, and (as a side effect) `is_v2`."""
        has_impossible_key = any("is_impossible" in qa for qa in _raw_qas(articles))
        raw = obj.get("version")
        inferred = "version" not in obj
        if inferred:
            version = "v2.0" if has_impossible_key else "1.1"
        elif isinstance(raw, str):
            version = raw
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            version = str(raw)  # MLQA writes "version": 1.0
        else:
            self.problems.append(
                f"top level: 'version' must be a string or a number, got {_kind(raw)} {_short(raw)}"
            )
            version = ""
        self.is_v2 = has_impossible_key or version.lower().lstrip("v").startswith("2")
        return version, inferred

    def articles(self, articles: list[Any]) -> list[Example]:
        examples: list[Example] = []
        for a, article in enumerate(articles):
            where = f"article {a}"
            if not isinstance(article, dict):
                self.problems.append(f"{where}: must be an object, got {_kind(article)} {_short(article)}")
                continue
            title = article.get("title", "")
            if not isinstance(title, str):
                self.problems.append(f"{where}: 'title' must be a string, got {_kind(title)} {_short(title)}")
            paragraphs = self._get(article, "paragraphs", list, where)
            for p, paragraph in enumerate(paragraphs or ()):
                examples.extend(self.paragraph(paragraph, a, p, title if isinstance(title, str) else ""))
        return examples

    def paragraph(self, paragraph: Any, a: int, p: int, title: str) -> list[Example]:
        where = f"article {a}, paragraph {p}"
        if not isinstance(paragraph, dict):
            self.problems.append(f"{where}: must be an object, got {_kind(paragraph)} {_short(paragraph)}")
            return []
        context = self._get(paragraph, "context", str, where)
        if context is not None and not context.strip():
            self.problems.append(f"{where}: 'context' is empty")
            context = None
        qas = self._get(paragraph, "qas", list, where)
        examples = []
        for q, qa in enumerate(qas or ()):
            fields = self.question(qa, where, q, context)
            if fields is not None:
                qid, question, answers, impossible = fields
                examples.append(Example(qid, question, context or "", answers, impossible, title, a, p))
        return examples

    def question(
        self, qa: Any, paragraph_where: str, q: int, context: str | None
    ) -> tuple[str, str, tuple[Answer, ...] | None, bool] | None:
        """(id, question, answers or None if unlabeled, is_impossible), or None when invalid or dropped."""
        where = f"{paragraph_where}, question {q}"
        if not isinstance(qa, dict):
            self.problems.append(f"{where}: must be an object, got {_kind(qa)} {_short(qa)}")
            return None
        qid = self._get(qa, "id", str, where)
        if qid is not None:
            where = f"{paragraph_where}, question id {qid!r}"
            if qid in self.seen_ids:
                self.problems.append(f"{where}: duplicate question id (first at {self.seen_ids[qid]})")
            else:
                self.seen_ids[qid] = paragraph_where
        question = self._get(qa, "question", str, where)
        if question is not None and not question.strip():
            self.problems.append(f"{where}: 'question' is empty")
        impossible = qa.get("is_impossible", False)
        if not isinstance(impossible, bool):
            self.problems.append(f"{where}: 'is_impossible' must be true or false, got {_short(impossible)}")
            impossible = False
        if "answers" not in qa and not impossible:  # unlabeled: a question to answer, not to learn from
            if qid is None or question is None or context is None:
                return None
            return qid, question, None, False
        raw_answers = self._get(qa, "answers", list, where) if "answers" in qa else []
        answers, removed = self.answers(raw_answers or [], where, context)
        if impossible and raw_answers:
            self.problems.append(
                f"{where}: 'is_impossible' is true but it has {len(raw_answers)} answer(s); "
                "empty 'answers' or set 'is_impossible' to false"
            )
        elif not impossible and raw_answers == []:
            if self.is_v2 and "is_impossible" not in qa:
                impossible = True  # as the official v2 script scores it: no answers means unanswerable
            elif self.is_v2:
                self.problems.append(
                    f"{where}: no answers but 'is_impossible' is false; add one or set it true"
                )
            else:
                self.problems.append(
                    f"{where}: no answers, and SQuAD v1 questions are all answerable; add an answer, "
                    'or mark it unanswerable with "is_impossible": true (SQuAD v2)'
                )
        if raw_answers and not impossible and removed == len(raw_answers):  # none invalid, none left
            if self.bad_spans == "drop":
                self.dropped_questions += 1
                return None
            self.drop_hint = True
            self.problems.append(f"{where}: all {len(raw_answers)} answer(s) have an empty 'text'")
        if qid is None or question is None or context is None:
            return None
        return qid, question, tuple(answers), impossible

    def answers(self, raw: list[Any], where: str, context: str | None) -> tuple[list[Answer], int]:
        """The valid answers (spans checked per `bad_spans`), and how many were dropped or empty.

        Answers with an empty text are counted; the SQuAD-es "small" files hold thousands of them beside a
        non-empty reference. "keep" keeps them, because the official v1.1 and MLQA scripts score an empty
        gold answer (the v2.0 script drops it itself); "repair" and "drop" skip them (nothing to train on).
        """
        answers: list[Answer] = []
        removed = 0
        for k, answer in enumerate(raw):
            at = f"{where}, answer {k}"
            if not isinstance(answer, dict):
                self.problems.append(f"{at}: must be an object, got {_kind(answer)} {_short(answer)}")
                continue
            text = self._get(answer, "text", str, at)
            start = self._get(answer, "answer_start", int, at)
            if text is None or start is None:
                continue
            if not text.strip():
                self.empty_answers += 1
                if self.bad_spans == "keep":  # the v1.1 and MLQA scripts score "" as a gold answer
                    answers.append(Answer(text, start))
                else:
                    removed += 1
                continue
            if context is None:
                continue
            if self.bad_spans == "keep" or (start >= 0 and context[start : start + len(text)] == text):
                answers.append(Answer(text, start))
            elif self.bad_spans == "drop":
                removed += 1
                self.dropped_answers += 1
            elif (nearest := _nearest_occurrence(context, text, start)) is not None:
                self.repaired += 1
                answers.append(Answer(text, nearest))
            else:
                self.drop_hint = True
                self.problems.append(f"{at}: text {_short(text)} occurs nowhere in the context")
        return answers, removed

    def _get(self, obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
        """`obj[key]` if present and of type `kind` (never bool for int), else None and a problem."""
        if key not in obj:
            self.problems.append(f"{where}: missing key {key!r}")
            return None
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.problems.append(
                f"{where}: {key!r} must be {_JSON_NAMES[kind]}, got {_kind(value)} {_short(value)}"
            )
            return None
        return value


_JSON_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "an object"}


def _raw_qas(articles: list[Any]) -> Any:
    """Every question object in the tree, skipping malformed levels (they are reported elsewhere)."""
    for article in articles:
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        for paragraph in paragraphs if isinstance(paragraphs, list) else ():
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            yield from (qa for qa in (qas if isinstance(qas, list) else ()) if isinstance(qa, dict))


def _nearest_occurrence(context: str, text: str, start: int) -> int | None:
    """Start of the occurrence of `text` in `context` closest to `start` (the earlier on a tie), or None."""
    best = None
    i = context.find(text)
    while i != -1:
        if best is None or abs(i - start) < abs(best - start):
            best = i
        i = context.find(text, i + 1)
    return best


def _raise_problems(source: str, problems: list[str], drop_hint: bool) -> None:
    for problem in problems:
        log.debug("%s: %s", source, problem)
    n = len(problems)
    shown = "; ".join(problems[:MAX_SHOWN]) + ("; ..." if n > MAX_SHOWN else "")
    fix = "fix the file"
    if drop_hint:
        fix += (
            ", or load it with bad_spans='drop' (--bad-spans drop) to drop answers not found in their context"
            " (and questions left without one)"
        )
    more = f" (all {n} are logged at debug level: -v)" if n > MAX_SHOWN else ""
    raise UserError(f"{source}: {n} problem{'s' if n > 1 else ''}; first: {shown}; {fix}{more}")


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 40) -> str:
    """A one-line, truncated repr for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
