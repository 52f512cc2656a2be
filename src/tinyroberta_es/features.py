"""From examples to model inputs: question/context windows with token offsets and span labels.

A context longer than one window is cut into overlapping windows (`doc_stride` tokens shared between
neighbours), each holding the whole (possibly truncated) question. Every window keeps, for its context tokens,
the character span in the ORIGINAL context (`offsets`), so predicted token spans map back to text.

Offset conventions differ between tokenizers, and the labelling below handles all of them without
special cases: a token's span may include the space before it (SentencePiece/Metaspace), may be empty (a lone
``Ġ`` of byte-level BPE), or several tokens may share one character (bytes of an emoji or a CJK character).
The start label is the first context token that ends after the answer's first character, the end label the
last one that starts before the answer's end; both ignore empty spans.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

MIN_CONTEXT_TOKENS = 8  # a window must have room for at least this many context tokens
_CHUNK = 1000  # examples tokenized per call: bounds the memory of the tokenizer's Python lists


@dataclass
class Features:
    """Tokenized windows ("features") of a list of examples, unpadded.

    Row `i` is one window: `input_ids[i]` (L_i,), `offsets[i]` (L_i, 2) character spans of context tokens in
    the original context and (-1, -1) for question, special and padding tokens, `example_index[i]` the
    example it comes from, and the labels `start_positions[i]`/`end_positions[i]` (0, the CLS/<s> position,
    when the answer is not wholly inside the window or the example is unanswerable).
    """

    input_ids: list[np.ndarray]  # N x (L_i,) int32
    offsets: list[np.ndarray]  # N x (L_i, 2) int32
    example_index: np.ndarray  # (N,) int64
    start_positions: np.ndarray  # (N,) int64
    end_positions: np.ndarray  # (N,) int64
    pad_token_id: int
    token_type_ids: list[np.ndarray] | None = None  # N x (L_i,) int8, only for tokenizers that make them

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per window, (N,): sort by it to batch windows of similar length."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def batch(
        self,
        indices: Sequence[int] | np.ndarray,
        pad_to_multiple_of: int | None = None,
        *,
        labels: bool = False,
    ) -> dict[str, np.ndarray]:
        """Padded model inputs of the windows `indices`, each (B, T) int64.

        `input_ids` (padded with the tokenizer's pad id), `attention_mask`, `token_type_ids` when the
        tokenizer makes them; with `labels`, also `start_positions` and `end_positions` (B,).
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        ids = [self.input_ids[i] for i in indices]
        lengths = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))  # (B,)
        width = int(lengths.max(initial=0))
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        out = {"input_ids": pad_rows(ids, self.pad_token_id, width=width, dtype=np.int64)}
        out["attention_mask"] = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, T)
        if self.token_type_ids is not None:
            out["token_type_ids"] = pad_rows(
                [self.token_type_ids[i] for i in indices], 0, width=width, dtype=np.int64
            )
        if labels:
            out["start_positions"] = self.start_positions[indices].astype(np.int64)
            out["end_positions"] = self.end_positions[indices].astype(np.int64)
        return out


def pad_rows(
    rows: Sequence[np.ndarray],
    value: float,
    *,
    width: int | None = None,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Stack rows of shape (L_i, *rest) into one (B, width, *rest) array, filling the tail with `value`."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))  # (B,)
    width = int(lengths.max(initial=0)) if width is None else width
    if len(rows) == 0:
        return np.full((0, width), value, dtype=dtype or np.float32)
    rest = np.shape(rows[0])[1:]
    dtype = dtype or np.result_type(*rows)
    out = np.full((len(rows), width, *rest), value, dtype=dtype)  # (B, T, *rest)
    filled = np.arange(width)[None, :] < lengths[:, None]  # (B, T)
    out[filled] = np.concatenate(rows) if lengths.sum() else np.empty((0, *rest), dtype)
    return out


def prepare_features(
    examples: Sequence[Example],
    tokenizer: object,
    *,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> Features:
    """Tokenize `examples` into overlapping question/context windows with offsets and span labels.

    The question comes first and is never cut by the windowing (``truncation="only_second"``); questions
    longer than `max_query_length` tokens are shortened beforehand at a token boundary, and their leading
    whitespace is dropped. Labels point at the first gold answer; 0 (the CLS/<s> position) marks a window
    without the whole answer and unanswerable examples.
    """
    _check_tokenizer(tokenizer)
    for name, value, least in (
        ("max_length", max_length, 1),
        ("doc_stride", doc_stride, 0),
        ("max_query_length", max_query_length, 1),
    ):
        if value < least:
            raise UserError(f"{name} must be at least {least}, got {value}")
    questions, question_lengths = _prepare_questions(examples, tokenizer, max_query_length)
    longest = max(question_lengths, default=0)
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - longest  # context tokens per window
    if room < MIN_CONTEXT_TOKENS:
        raise UserError(
            f"max_length {max_length} leaves {room} context tokens next to questions of up to {longest} "
            f"tokens; raise max_length or lower max_query_length ({max_query_length})"
        )
    if doc_stride >= room:
        raise UserError(
            f"doc_stride {doc_stride} must be smaller than the {room} context tokens a window holds "
            f"(max_length {max_length} minus question and special tokens); lower doc_stride"
        )

    with_types = "token_type_ids" in tokenizer.model_input_names
    ids_rows: list[np.ndarray] = []
    offset_rows: list[np.ndarray] = []
    type_rows: list[np.ndarray] | None = [] if with_types else None
    example_index: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    for lo in range(0, len(examples), _CHUNK):
        chunk = examples[lo : lo + _CHUNK]
        enc = tokenizer(
            questions[lo : lo + _CHUNK],
            [ex.context for ex in chunk],
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
            return_token_type_ids=with_types,
            return_attention_mask=False,
        )
        for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
            offsets = np.asarray(enc["offset_mapping"][w], dtype=np.int32).reshape(-1, 2)  # (L, 2)
            sequence = np.array(enc.sequence_ids(w), dtype=np.float64)  # (L,) None -> nan
            offsets[sequence != 1] = -1
            ids_rows.append(np.asarray(enc["input_ids"][w], dtype=np.int32))
            offset_rows.append(offsets)
            if type_rows is not None:
                type_rows.append(np.asarray(enc["token_type_ids"][w], dtype=np.int8))
            start, end = label_window(offsets, answer_span(chunk[sample]))
            example_index.append(lo + sample)
            starts.append(start)
            ends.append(end)
    log.debug("%d examples -> %d windows", len(examples), len(ids_rows))
    return Features(
        input_ids=ids_rows,
        offsets=offset_rows,
        example_index=np.asarray(example_index, dtype=np.int64),
        start_positions=np.asarray(starts, dtype=np.int64),
        end_positions=np.asarray(ends, dtype=np.int64),
        pad_token_id=int(tokenizer.pad_token_id),
        token_type_ids=type_rows,
    )


def answer_span(example: Example) -> tuple[int, int] | None:
    """Character span [start, end) of the first gold answer without surrounding whitespace, or None."""
    if example.is_impossible or not example.answers:
        return None
    answer = example.answers[0]
    text = example.context[answer.start : answer.end]
    stripped = text.lstrip()
    start = answer.start + len(text) - len(stripped)
    end = start + len(stripped.rstrip())
    return (start, end) if end > start else None


def label_window(offsets: np.ndarray, span: tuple[int, int] | None) -> tuple[int, int]:
    """Token labels (start, end) of a character span in one window; (0, 0) unless the span lies wholly inside.

    `offsets` is (L, 2) with (-1, -1) outside the context. Tokens with empty spans never get a label.
    """
    if span is None:
        return 0, 0
    start_char, end_char = span
    a, b = offsets[:, 0], offsets[:, 1]  # (L,)
    real = (a >= 0) & (b > a)
    if not real.any() or a[real].min() > start_char or b[real].max() < end_char:
        return 0, 0
    start = int(np.argmax(real & (b > start_char)))  # first context token ending after the answer starts
    end = len(a) - 1 - int(np.argmax((real & (a < end_char))[::-1]))  # last one starting before it ends
    return (start, end) if start <= end else (0, 0)


def _check_tokenizer(tokenizer: object) -> None:
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            f"tokenizer {name} is a slow (Python) tokenizer without character offsets; load a fast one with "
            "AutoTokenizer.from_pretrained(..., use_fast=True) from a folder with tokenizer.json"
        )
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise UserError(f"tokenizer {name} pads on the {tokenizer.padding_side}; set padding_side='right'")
    if tokenizer.pad_token_id is None:
        raise UserError(
            f"tokenizer {name} has no pad token; set tokenizer.pad_token before preparing features"
        )


def _prepare_questions(
    examples: Sequence[Example], tokenizer: object, max_query_length: int
) -> tuple[list[str], list[int]]:
    """Questions without leading whitespace, cut to at most `max_query_length` tokens, and their lengths."""
    questions = [ex.question.lstrip() for ex in examples]
    lengths: list[int] = []
    for lo in range(0, len(questions), _CHUNK):
        enc = tokenizer(
            questions[lo : lo + _CHUNK],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
            if len(ids) > max_query_length:
                questions[lo + i], n = _cut_question(questions[lo + i], offsets, tokenizer, max_query_length)
                lengths.append(n)
            else:
                lengths.append(len(ids))
    return questions, lengths


def _cut_question(
    question: str, offsets: list[tuple[int, int]], tokenizer: object, limit: int
) -> tuple[str, int]:
    """Cut `question` where its token `limit` starts; step back while re-tokenizing still gives too many."""
    for keep in range(limit, 0, -1):
        cut = question[: offsets[keep][0]].rstrip()
        n = len(tokenizer(cut, add_special_tokens=False)["input_ids"])
        if n <= limit:
            return cut, n
    return "", 0
