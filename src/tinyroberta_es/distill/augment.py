"""TinyBERT-style data augmentation for extractive QA: replace words outside the answer by near neighbours.

TinyBERT masks each single-piece word and takes a BERT MLM's candidates, and uses GloVe neighbours for
multi-piece words. No Spanish MLM (nor GloVe) is available offline, so every word here takes its candidates
from the nearest neighbours in the TEACHER's input word-embedding space:

- candidates are whole Spanish words: corpus words (the training contexts and questions, plus any extra text)
  that the tokenizer keeps as ONE word-initial piece ("Ġ" byte-level BPE, "▁" SentencePiece, not "##"
  WordPiece), alphabetic and at least two letters long;
- a word's query vector is its piece's embedding, or the mean of its pieces' embeddings when it has several;
  its neighbours are the `top_k` candidates of highest cosine similarity, never the word itself (ignoring
  case and accents) and no two differing only in case or accents.

`augment_examples` then makes new examples in which each word outside every answer span is replaced, with
probability `replace_prob`, by a random one of its neighbours (capitalised like the word it replaces), in the
context and in the question. Answers keep their text; their `start` moves with the text before them.
"""

from __future__ import annotations

import bisect
import logging
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from tinyroberta_es.data.schema import Answer, Example
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

# A maximal run of letters (accents, ñ, ü included), with any combining accents that follow a letter.
WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|[\u0300-\u036f])*")
_MARKERS = ("Ġ", "▁")  # word-initial marks of byte-level BPE and SentencePiece pieces
# Closed-class Spanish words, never replaced and never candidates: their nearest embedding neighbours are
# mostly other languages' function words ("de" -> "of", "des"), where an MLM would have kept the grammar.
_FUNCTION_WORDS = """
    a al ante bajo con contra de del desde durante e el en entre hacia hasta la las le les lo los mediante
    ni no o os para pero por porque pues que se según si sin sino sobre su sus tras u un una unas unos y ya
    me mi mis nos te tu tus yo tú él ella ello ellos ellas usted ustedes nosotros nosotras vosotros
    este esta esto estos estas ese esa eso esos esas aquel aquella aquello aquellos aquellas
    cual cuales quien quienes cuyo cuya cuyos cuyas como cuando donde mientras aunque sí más menos muy
    qué quién quiénes cuál cuáles cuándo cuánto cuánta cuántos cuántas dónde adónde cómo
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
_TOKENIZE_CHUNK = 10_000  # words per tokenizer call
_QUERY_CHUNK = 1024  # query words per similarity matmul: bounds memory at (1024, candidates) floats


@dataclass
class WordNeighbours:
    """Replacement candidates of each word: its nearest whole-word neighbours in an embedding space."""

    vocabulary: list[str]  # the candidate words
    table: dict[str, tuple[str, ...]]  # word -> its neighbours, nearest first

    @classmethod
    def build(
        cls,
        tokenizer: object,
        embeddings: Tensor,
        texts: Iterable[str],
        *,
        top_k: int = 15,
        keep: Iterable[str] = FUNCTION_WORDS,
    ) -> WordNeighbours:
        """Neighbours of every word of `texts` among the candidate words of `texts`.

        `embeddings` (V, H) are the model's input word embeddings (`model.get_input_embeddings().weight`),
        rows indexed by `tokenizer`'s ids. Pass every text that will be augmented: words absent from `texts`
        have no neighbours and are never replaced. Words of `keep` (any case) and words in capitals
        (acronyms; "CIUDAD" borrows the neighbours of "ciudad" when that is known) get no neighbours and are
        no candidates; a lowercase word only gets lowercase neighbours. Lists hold up to `top_k` words: the
        filters apply to the `4 * top_k + 8` nearest candidates.
        """
        if top_k < 1:
            raise UserError(f"augment.candidates is {top_k}; it must be positive")
        keep = {w.lower() for w in keep}
        counts = Counter(
            w
            for text in texts
            for w in WORD.findall(text)
            if len(w) >= 2 and w.lower() not in keep and not w.isupper()
        )
        unk = tokenizer.unk_token_id
        words, pieces = [], []  # words the tokenizer covers without an unknown piece, and their piece ids
        for word, ids in zip(counts, _tokenize_words(tokenizer, list(counts)), strict=True):
            if ids and unk not in ids:
                words.append(word)
                pieces.append(ids)
        special = set(tokenizer.all_special_ids)
        wordpiece = type(tokenizer.backend_tokenizer.model).__name__ == "WordPiece"
        used = sorted({i for ids in pieces for i in ids})
        name_of = dict(zip(used, tokenizer.convert_ids_to_tokens(used), strict=True))

        surface: dict[int, str] = {}  # candidate piece -> its most frequent spelling in the corpus
        for word, ids in zip(words, pieces, strict=True):
            if len(ids) != 1 or ids[0] in special or not word.isalpha():
                continue
            name = name_of[ids[0]]
            starts_word = not name.startswith("##") if wordpiece else name.startswith(_MARKERS)
            if starts_word and (ids[0] not in surface or counts[word] > counts[surface[ids[0]]]):
                surface[ids[0]] = word
        vocabulary = list(surface.values())
        if not vocabulary:
            log.warning("no candidate words: the texts share no whole-word piece with the tokenizer")
            return cls(vocabulary=[], table={})

        # Queries: the mean embedding of each word's pieces; a lone word-initial mark ("▁", "Ġ") is dropped.
        queries = [[i for i in ids if name_of[i] not in _MARKERS] or ids for ids in pieces]
        rows = sorted({i for ids in queries for i in ids} | set(surface))
        local = {piece: r for r, piece in enumerate(rows)}
        weight = embeddings.detach()[torch.tensor(rows)].float()  # (R, H): only the rows in use
        keys = _unit(weight[[local[p] for p in surface]])  # (C, H)
        flat = torch.tensor([local[i] for ids in queries for i in ids])
        offsets = torch.tensor([0, *[len(ids) for ids in queries]][:-1]).cumsum(0)
        query_vectors = _unit(torch.nn.functional.embedding_bag(flat, weight, offsets, mode="mean"))  # (Q, H)

        folded = [_fold(w) for w in vocabulary]
        lowercase = [w.islower() for w in vocabulary]
        k = min(len(vocabulary), 4 * top_k + 8)  # room for the word, its variants, capitalised candidates
        table: dict[str, tuple[str, ...]] = {}
        for lo in range(0, len(words), _QUERY_CHUNK):
            best = (query_vectors[lo : lo + _QUERY_CHUNK] @ keys.T).topk(k, dim=1).indices  # (q, k)
            for word, candidates in zip(words[lo : lo + _QUERY_CHUNK], best.tolist(), strict=True):
                seen = {_fold(word)}
                lower = word.islower()
                chosen = []
                for c in candidates:
                    if folded[c] not in seen and (not lower or lowercase[c]):
                        seen.add(folded[c])
                        chosen.append(vocabulary[c])
                        if len(chosen) == top_k:
                            break
                table[word] = tuple(chosen)
        log.info("neighbours of %d words among %d candidate words", len(table), len(vocabulary))
        return cls(vocabulary=vocabulary, table=table)

    def neighbours(self, word: str) -> list[str]:
        """The neighbours of `word`, nearest first; a capitalised word falls back on its lowercase form."""
        found = self.table.get(word) or (self.table.get(word.lower()) if word[:1].isupper() else None)
        return list(found or ())


def augment_examples(
    examples: Sequence[Example],
    neighbours: WordNeighbours,
    *,
    copies: int,
    replace_prob: float,
    seed: int = 0,
) -> list[Example]:
    """`copies` new examples per example (the originals are not included), ids ``f"{id}-aug{n}"``.

    Each word of the context that overlaps no answer, and each word of the question, is replaced with
    probability `replace_prob` by a random neighbour. The same seed gives the same examples; each example's
    copies depend only on the seed, its position and its id.
    """
    if copies < 0:
        raise UserError(f"augment.copies is {copies}; it must be zero or more")
    if not 0 <= replace_prob <= 1:
        raise UserError(f"augment.replace_prob is {replace_prob}; it must be between 0 and 1")
    out: list[Example] = []
    for i, ex in enumerate(examples):
        if copies == 0:
            break
        protected = [(a.start, max(a.end, a.start + 1)) for a in ex.answers]  # an empty answer keeps its word
        context_slots = _slots(ex.context, neighbours, protected)
        question_slots = _slots(ex.question, neighbours, [])
        rng = random.Random(f"{seed}:{i}:{ex.id}")
        for n in range(copies):
            context, shifts = _replace(ex.context, context_slots, replace_prob, rng)
            question, _ = _replace(ex.question, question_slots, replace_prob, rng)
            answers = tuple(Answer(a.text, a.start + _shift(shifts, a.start)) for a in ex.answers)
            out.append(replace(ex, id=f"{ex.id}-aug{n}", question=question, context=context, answers=answers))
    return out


_Slot = tuple[int, int, str, list[str]]  # (start, end, word, its neighbours)


def _slots(text: str, neighbours: WordNeighbours, protected: list[tuple[int, int]]) -> list[_Slot]:
    """The replaceable words of `text`: words with neighbours that overlap no protected span."""
    slots = []
    for m in WORD.finditer(text):
        a, b = m.span()
        if any(a < pe and ps < b for ps, pe in protected):
            continue
        candidates = neighbours.neighbours(m.group())
        if candidates:
            slots.append((a, b, m.group(), candidates))
    return slots


def _replace(
    text: str, slots: list[_Slot], prob: float, rng: random.Random
) -> tuple[str, tuple[list[int], list[int]]]:
    """`text` with some slots replaced, and its shifts: (ends of replaced words, cumulative changes)."""
    parts, ends, deltas = [], [], []
    last, delta = 0, 0
    for a, b, word, candidates in slots:
        if rng.random() >= prob:
            continue
        new = match_case(word, rng.choice(candidates))
        parts += [text[last:a], new]
        last = b
        delta += len(new) - (b - a)
        ends.append(b)
        deltas.append(delta)
    parts.append(text[last:])
    return "".join(parts), (ends, deltas)


def _shift(shifts: tuple[list[int], list[int]], position: int) -> int:
    """How far `position` moved: the length change of the replaced words that end at or before it."""
    ends, deltas = shifts
    k = bisect.bisect_right(ends, position)
    return deltas[k - 1] if k else 0


def match_case(original: str, replacement: str) -> str:
    """`replacement` in capitals if `original` is (and is longer than a letter), capitalised if it is."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _fold(word: str) -> str:
    """Lowercase without accents: "Río" and "rio" are the same word for the neighbour lists."""
    return "".join(c for c in unicodedata.normalize("NFD", word.lower()) if not unicodedata.combining(c))


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _tokenize_words(tokenizer: object, words: list[str]) -> list[list[int]]:
    """Piece ids of each word as it appears inside a text (after a space), without special tokens."""
    ids: list[list[int]] = []
    for lo in range(0, len(words), _TOKENIZE_CHUNK):
        batch = [" " + w for w in words[lo : lo + _TOKENIZE_CHUNK]]
        ids += tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return ids
