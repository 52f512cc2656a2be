"""Keep evaluation data out of training data.

XQuAD's paragraphs are SQuAD v1.1 dev paragraphs, and so are SQuAD-es dev-small's, so a model trained on the
latter has seen part of XQuAD-es. Titles are translated in SQuAD-es, so paragraphs are matched through their
question ids (which every translation keeps): a training paragraph goes if any of its questions is held out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tinyroberta_es.data.schema import QADataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitReport:
    """What `remove_overlap` kept and removed."""

    paragraphs_kept: int
    questions_kept: int
    paragraphs_removed: int
    questions_removed: int
    shared_ids: int  # held-out question ids that also occur in the training set

    def summary(self) -> str:
        """One line: the counts with thousands separators."""
        return (
            f"kept {self.paragraphs_kept:,} paragraphs / {self.questions_kept:,} questions; removed "
            f"{self.paragraphs_removed:,} paragraphs / {self.questions_removed:,} questions "
            f"({self.shared_ids:,} question ids shared with the held-out data)"
        )


def remove_overlap(
    train: QADataset, held_out: QADataset | Sequence[QADataset]
) -> tuple[QADataset, SplitReport]:
    """Drop from `train` every paragraph that holds a question id found in `held_out` (one or several sets).

    Paragraphs are identified by their (article, paragraph) position in the training file. Returns a new
    dataset (the examples kept, in order) and the counts.
    """
    held = [held_out] if isinstance(held_out, QADataset) else list(held_out)
    held_ids = {ex.id for dataset in held for ex in dataset.examples}
    shared = {ex.id for ex in train.examples} & held_ids
    tainted = {(ex.article_index, ex.paragraph_index) for ex in train.examples if ex.id in shared}
    kept = [ex for ex in train.examples if (ex.article_index, ex.paragraph_index) not in tainted]
    all_paragraphs = {(ex.article_index, ex.paragraph_index) for ex in train.examples}
    report = SplitReport(
        paragraphs_kept=len(all_paragraphs) - len(tainted),
        questions_kept=len(kept),
        paragraphs_removed=len(tainted),
        questions_removed=len(train.examples) - len(kept),
        shared_ids=len(shared),
    )
    names = ", ".join(dataset.source for dataset in held)
    log.info("%s minus %s: %s", train.source, names, report.summary())
    dataset = QADataset(
        source=f"{train.source} without paragraphs shared with {names}",
        version=train.version,
        examples=kept,
        is_v2=train.is_v2,
    )
    return dataset, report
