"""In-memory representation of SQuAD-format extractive QA data (v1.1 and v2.0)."""

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
    """One question about one context, with its gold answers (empty when unanswerable)."""

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...] = ()
    is_impossible: bool = False
    title: str = ""
    article_index: int = 0  # position in the source file, for error messages
    paragraph_index: int = 0

    @property
    def where(self) -> str:
        """Where this example sits in its source file, for messages."""
        return f"article {self.article_index}, paragraph {self.paragraph_index}, question id {self.id!r}"


@dataclass
class QADataset:
    """A loaded SQuAD-format dataset: its examples in file order and what it came from."""

    source: str  # path, URL or dataset name the data was read from
    version: str  # the file's `version` field as a string ("1.1", "v2.0", "1.0", ...)
    examples: list[Example] = field(default_factory=list)
    is_v2: bool = False  # SQuAD v2.0 semantics: unanswerable questions exist and are scored as such

    def __len__(self) -> int:
        return len(self.examples)

    def by_id(self) -> dict[str, Example]:
        """Examples keyed by question id."""
        return {ex.id: ex for ex in self.examples}
