"""In-memory representation of extractive QA data: SQuAD v1.1 and v2.0, labeled or not."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Answer:
    """A gold answer: its text and the character offset where it starts in the context."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """Character offset one past the last character of the answer."""
        return self.start + len(self.text)


@dataclass(frozen=True)
class Example:
    """One question about one context, with its gold answers.

    `answers` is `()` for an unanswerable question (`is_impossible`, SQuAD v2) and None for an unlabeled one
    (a question to answer, with no gold answers given: only `predict` accepts those).
    """

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...] | None = ()
    is_impossible: bool = False
    title: str = ""
    article_index: int = 0  # position in the source file, for error messages
    paragraph_index: int = 0

    @property
    def is_labeled(self) -> bool:
        """Whether gold answers were given (an unanswerable question is labeled: its answer is none)."""
        return self.answers is not None

    @property
    def where(self) -> str:
        """Where this example sits in its source file, for messages."""
        return f"article {self.article_index}, paragraph {self.paragraph_index}, question id {self.id!r}"


@dataclass(frozen=True)
class LoadReport:
    """What loading a file kept, inferred and changed: the counts behind the one-line load summary."""

    articles: int = 0  # articles with at least one kept question
    paragraphs: int = 0  # paragraphs with at least one kept question
    questions: int = 0  # questions kept
    unanswerable: int = 0  # kept questions with `is_impossible` (v2)
    unlabeled: int = 0  # kept questions without an `answers` key (and not `is_impossible`)
    repaired_answers: int = 0  # answers whose `answer_start` was moved to the nearest occurrence of the text
    dropped_answers: int = 0  # answers dropped because their text is not at `answer_start` (bad_spans="drop")
    dropped_questions: int = 0  # answerable questions dropped because none of their answers was left
    empty_answers: int = 0  # answers with an empty text: kept with bad_spans="keep", else skipped
    version_inferred: bool = False  # the file had no `version` field; `QADataset.version` was inferred

    def summary(self) -> str:
        """One line for logs: counts with thousands separators (unlabeled questions only if there are any)."""
        unlabeled = f", {self.unlabeled:,} unlabeled" if self.unlabeled else ""
        return (
            f"{self.questions:,} questions in {self.paragraphs:,} paragraphs, {self.articles:,} articles; "
            f"{self.unanswerable:,} unanswerable{unlabeled}; "
            f"{self.repaired_answers:,} answer starts repaired, "
            f"{self.dropped_answers:,} answers and {self.dropped_questions:,} questions dropped, "
            f"{self.empty_answers:,} empty answers"
        )


@dataclass
class QADataset:
    """A loaded dataset (SQuAD JSON or JSON Lines): its examples in file order and what it came from."""

    source: str  # path, URL or dataset name the data was read from
    version: str  # the file's `version` field as a string ("1.1", "v2.0", "1.0", ...); "jsonl" for JSON Lines
    examples: list[Example] = field(default_factory=list)
    is_v2: bool = False  # SQuAD v2.0 semantics: unanswerable questions exist and are scored as such
    report: LoadReport | None = None  # set by the loader; None for datasets built in memory

    def __len__(self) -> int:
        return len(self.examples)

    def by_id(self) -> dict[str, Example]:
        """Examples keyed by question id."""
        return {ex.id: ex for ex in self.examples}
