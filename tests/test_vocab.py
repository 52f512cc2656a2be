"""Vocabulary trimming: the corpus readers, the plan, the trimmed tokenizer (same pieces, same offsets) and
the trimmed model (same logits)."""

from __future__ import annotations

import gzip
import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

from tinyroberta_es.distill.vocab import VocabTrim, corpus_texts, plan_trim, trim_model, trim_tokenizer
from tinyroberta_es.errors import UserError
from tinyroberta_es.tiny import SPANISH_TEXTS, create_tiny_qa_model, spanish_texts

SAMPLE_WORDS = sorted({w for text in spanish_texts() for w in text.split()})
TRIM_WORDS = sorted({w for text in SPANISH_TEXTS[::2] for w in text.split()})


def same_tokens(tokenizer, trimmed, trim: VocabTrim, text: str) -> bool:
    """Whether the trimmed tokenizer gives old_to_new[old ids], the same offsets and the same type ids."""
    old, new = tokenizer(text, return_offsets_mapping=True), trimmed(text, return_offsets_mapping=True)
    return (
        trim.map_ids(old["input_ids"]).tolist() == new["input_ids"]
        and old["offset_mapping"] == new["offset_mapping"]
        and old.get("token_type_ids") == new.get("token_type_ids")
    )


def all_kept(tokenizer, trim: VocabTrim, text: str) -> bool:
    ids = np.asarray(tokenizer(text)["input_ids"])
    return bool((trim.kept[trim.old_to_new[ids]] == ids).all())


# --- corpus -------------------------------------------------------------------------------------------


def test_corpus_texts_reads_every_kind(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("uno dos\n\n  tres  \n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("cuatro\n")
    (tmp_path / "c.md").write_text("# Capítulo\n\nEn un lugar de la Mancha\n", encoding="utf-8")
    conllu = "# sent_id = 1\n# text = Lo hizo ayer.\n1\tLo\tél\tPRON\n\n# text = Otra frase.\n1\tOtra\n"
    (tmp_path / "d.conllu").write_text(conllu, encoding="utf-8")
    with gzip.open(tmp_path / "e.conllu.gz", "wt", encoding="utf-8") as f:
        f.write(conllu)
    with tarfile.open(tmp_path / "f.tar.gz", "w:gz") as tar:
        for name, text in (("dir/x.txt", "soneto\n"), ("dir/y.md", "quijote\n"), ("dir/z.json", "{}")):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    names = ["a.txt", "b.txt.gz", "c.md", "d.conllu", "e.conllu.gz", "f.tar.gz"]
    assert list(corpus_texts([str(tmp_path / n) for n in names])) == [
        "uno dos",
        "tres",
        "cuatro",
        "# Capítulo",
        "En un lugar de la Mancha",
        "Lo hizo ayer.",
        "Otra frase.",
        "Lo hizo ayer.",
        "Otra frase.",
        "soneto",
        "quijote",
    ]


def test_corpus_texts_squad_contexts_once() -> None:
    texts = list(corpus_texts(["sample"]))
    contexts = [t for t in texts if len(t) > 200]
    assert contexts and len(contexts) == len(set(contexts))
    assert any(t.startswith("¿") for t in texts)  # the questions


def test_corpus_texts_bad_sources_all_named(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("año\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt.*UTF-8"):
        list(corpus_texts([str(tmp_path / "latin1.txt")]))
    (tmp_path / "news.xlsx").write_bytes(b"PK")
    with pytest.raises(UserError) as err:
        corpus_texts([str(tmp_path / "news.xlsx"), str(tmp_path / "missing.txt"), "sample"])
    message = str(err.value)
    assert "news.xlsx" in message and "unknown kind" in message and "missing.txt" in message
    assert ".conllu.gz" in message and ".tar.gz" in message


# --- plan ---------------------------------------------------------------------------------------------


def test_plan_keeps_specials_seen_and_single_chars(unigram_tokenizer) -> None:
    texts = ["La Alhambra de Granada."]
    trim = plan_trim(unigram_tokenizer, texts)
    assert np.all(np.diff(trim.kept) > 0)
    assert trim.kept[:5].tolist() == [0, 1, 2, 3, 4]  # <s> <pad> </s> <unk> <mask>
    assert (trim.old_to_new[trim.kept] == np.arange(trim.size)).all()
    dropped = np.setdiff1d(np.arange(len(unigram_tokenizer)), trim.kept)
    assert len(dropped) and (trim.old_to_new[dropped] == unigram_tokenizer.unk_token_id).all()
    assert all_kept(unigram_tokenizer, trim, texts[0])
    vocab = unigram_tokenizer.get_vocab()
    assert all(vocab[c] in trim.kept for c in "xyzñ¿" if c in vocab)
    bare = plan_trim(unigram_tokenizer, texts, keep_single_chars=False)
    assert bare.size < trim.size


def test_bpe_is_refused(teacher_tokenizer) -> None:
    with pytest.raises(UserError, match=r"Unigram and WordPiece.*leave student\.trim_vocab empty"):
        plan_trim(teacher_tokenizer, ["hola"])


# --- tokenizer ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["unigram_tokenizer", "wordpiece_tokenizer"])
def trimmed(request: pytest.FixtureRequest):
    """(tokenizer, plan on half the built-in sentences, trimmed tokenizer)."""
    tokenizer = request.getfixturevalue(request.param)
    trim = plan_trim(tokenizer, SPANISH_TEXTS[::2])
    return tokenizer, trim, trim_tokenizer(tokenizer, trim)


def test_trimmed_tokenizer_same_tokens_on_the_corpus(trimmed) -> None:
    tokenizer, trim, new = trimmed
    assert len(new) == trim.size < len(tokenizer)
    for text in SPANISH_TEXTS[::2]:
        assert same_tokens(tokenizer, new, trim, text), text
    pair_old = tokenizer(SPANISH_TEXTS[0], SPANISH_TEXTS[2])
    pair_new = new(SPANISH_TEXTS[0], SPANISH_TEXTS[2])
    assert trim.map_ids(pair_old["input_ids"]).tolist() == pair_new["input_ids"]
    assert new.pad_token_id == tokenizer.pad_token_id and new.unk_token_id == tokenizer.unk_token_id


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(TRIM_WORDS), min_size=1, max_size=12))
def test_trimmed_tokenizer_same_tokens_on_new_texts_of_seen_words(trimmed, words: list[str]) -> None:
    # Both pre-tokenizers split at spaces, so a text of corpus words only needs pieces the plan kept.
    tokenizer, trim, new = trimmed
    text = " ".join(words)
    assert all_kept(tokenizer, trim, text)
    assert same_tokens(tokenizer, new, trim, text)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(SAMPLE_WORDS), min_size=1, max_size=12))
def test_trimmed_tokenizer_unseen_words_split_into_characters(trimmed, words: list[str]) -> None:
    # The tiny tokenizers were trained on these words, so each of their characters is a piece: with the
    # single characters kept, a word the plan never saw splits into smaller pieces instead of <unk>.
    tokenizer, trim, new = trimmed
    text = " ".join(words)
    if all_kept(tokenizer, trim, text):
        assert same_tokens(tokenizer, new, trim, text)
    else:
        assert new.unk_token_id not in new(text)["input_ids"]


def test_trimmed_tokenizer_round_trip(trimmed, tmp_path: Path) -> None:
    tokenizer, trim, new = trimmed
    new.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.is_fast and len(loaded) == trim.size
    for text in SPANISH_TEXTS[:6]:
        assert loaded(text, return_offsets_mapping=True) == new(text, return_offsets_mapping=True)
    assert loaded.model_input_names == tokenizer.model_input_names


@pytest.mark.slow
def test_me5_trim_keeps_tokens_and_offsets(me5_tokenizer, shared_dir: Path) -> None:
    ud = shared_dir / "data" / "text_es" / "ud_spanish_gsd" / "es_gsd-ud-test.conllu.gz"
    if not ud.is_file():
        pytest.skip(f"{ud} is absent")
    texts = list(itertools.islice(corpus_texts([str(ud)]), 300)) + list(corpus_texts(["sample"]))
    trim = plan_trim(me5_tokenizer, texts)
    new = trim_tokenizer(me5_tokenizer, trim)
    assert 10_000 < trim.size < 40_000  # ~15k single characters plus a few thousand seen pieces
    assert trim.kept[:4].tolist() == [0, 1, 2, 3]
    assert [text for text in texts if not same_tokens(me5_tokenizer, new, trim, text)] == []


# --- model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unigram", "wordpiece"])
def test_trimmed_model_same_logits(kind: str, tokenizer_dirs: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForQuestionAnswering

    folder = create_tiny_qa_model(tmp_path / "model", tokenizer_dirs[kind], layers=1, hidden=32, heads=2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    texts = list(SPANISH_TEXTS[:4])
    trim = plan_trim(tokenizer, texts)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**batch)
    pad, old_vocab = model.config.pad_token_id, model.config.vocab_size
    trim_model(model, trim)
    assert model.config.vocab_size == trim.size < old_vocab
    assert model.get_input_embeddings().weight.shape[0] == trim.size
    assert model.config.pad_token_id == pad
    mapped = {**batch, "input_ids": trim.map_ids(batch["input_ids"])}
    with torch.no_grad():
        got = model(**mapped)
    torch.testing.assert_close(got.start_logits, want.start_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.end_logits, want.end_logits, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "trimmed")  # a saved-and-reloaded trimmed model is the same model
    reloaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "trimmed").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**mapped).start_logits, want.start_logits, rtol=1e-5, atol=1e-5)


def test_trimmed_model_with_tied_output_embeddings() -> None:
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    model = RobertaForMaskedLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias.normal_()
    keep = np.zeros(50, dtype=bool)
    keep[[0, 1, 2, 3, 7, 9, 20, 41]] = True
    kept = np.flatnonzero(keep)
    old_to_new = np.full(50, 3)
    old_to_new[kept] = np.arange(len(kept))
    trim = VocabTrim(kept=kept, old_to_new=old_to_new)
    ids = torch.tensor([[0, 7, 9, 41, 20, 2, 1]])
    with torch.no_grad():
        want = model(input_ids=ids).logits[..., kept]
    trim_model(model, trim)
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    assert model.lm_head.decoder.bias is model.lm_head.bias
    with torch.no_grad():
        got = model(input_ids=trim.map_ids(ids)).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id, config.vocab_size) == (0, 2, 1, 8)


def test_trimming_ignores_truncation_left_by_windowing(tokenizer_dirs: dict[str, Path]) -> None:
    """A tokenizer that windowed question/context pairs keeps `only_second` truncation in its backend (and
    in the tokenizer.json it saves); planning and trimming must not inherit it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs["unigram"]))
    tokenizer(["¿Qué?"], ["Un contexto largo " * 20], truncation="only_second", max_length=16, stride=4,
              return_overflowing_tokens=True)  # fmt: skip
    trim = plan_trim(tokenizer, ["Un contexto largo sin pareja."])
    trimmed = trim_tokenizer(tokenizer, trim)
    assert trimmed("Un contexto largo sin pareja.")["input_ids"]
