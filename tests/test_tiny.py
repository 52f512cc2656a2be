"""Tiny tokenizers and tiny QA models: they load with the Auto classes, keep offsets and are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tinyroberta_es.errors import UserError
from tinyroberta_es.tiny import SPANISH_TEXTS, create_tiny_qa_model, spanish_texts, train_tokenizer

QUESTION = "¿Quién escribió el libro?"
CONTEXT = "Lo escribió  Gabriel García\u00a0Márquez en 1967."

EXPECTED = {  # kind: (tokenizer_class, pair template tokens around the question and the context)
    "bpe": ("RobertaTokenizer", ("<s>", "</s>", "</s>", "</s>")),
    "wordpiece": ("BertTokenizer", ("[CLS]", "[SEP]", None, "[SEP]")),
    "unigram": ("PreTrainedTokenizerFast", ("<s>", "</s>", "</s>", "</s>")),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_kind_round_trips_through_auto_tokenizer_with_offsets(kind, tokenizer_dirs):
    from transformers import AutoTokenizer

    folder = tokenizer_dirs[kind]
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_class, (cls, sep, sep2, end) = EXPECTED[kind]
    assert config["tokenizer_class"] == tokenizer_class and config["model_max_length"] == 512
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.is_fast and tok.padding_side == "right" and tok.pad_token_id is not None
    enc = tok(QUESTION, CONTEXT, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    sequence = enc.sequence_ids()
    question_end = sequence.index(1) - (2 if sep2 else 1)
    assert tokens[0] == cls and tokens[question_end] == sep and tokens[-1] == end
    if sep2:
        assert tokens[question_end + 1] == sep2
    assert ("token_type_ids" in enc) == (kind == "wordpiece")
    if kind == "wordpiece":
        assert set(enc["token_type_ids"][sequence.index(1) :]) == {1}
    context_spans = [o for o, s in zip(enc["offset_mapping"], sequence, strict=True) if s == 1]
    texts = [CONTEXT[a:b] for a, b in context_spans]
    if kind == "unigram":  # Metaspace: a word's first token includes the space before it
        assert any(t.startswith(" ") for t in texts)
    elif kind == "bpe":  # trimmed offsets: no leading space; the extra space of "  " is a lone, empty "Ġ"
        assert not any(t.startswith(" ") for t in texts) and "" in texts
    else:  # BERT drops whitespace altogether
        assert all(t and t == t.strip() for t in texts)
    assert "".join(t.strip() for t in texts) == "".join(CONTEXT.split())


def test_wordpiece_lowercases_and_strips_accents_but_offsets_point_at_the_original(tokenizer_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dirs["wordpiece"]))
    enc = tok("MÁRQUEZ", add_special_tokens=False, return_offsets_mapping=True)
    assert tok.decode(enc["input_ids"]) == "marquez"
    assert enc["offset_mapping"][0][0] == 0 and enc["offset_mapping"][-1][1] == len("MÁRQUEZ")


def test_tiny_model_loads_with_auto_classes_and_gives_start_end_logits(tiny_qa_model_dir: Path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    assert (tiny_qa_model_dir / "model.safetensors").is_file()
    model = AutoModelForQuestionAnswering.from_pretrained(str(tiny_qa_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_qa_model_dir))
    assert tok.model_max_length == 128
    batch = tok([QUESTION, "¿Cuándo?"], [CONTEXT, CONTEXT], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert out.start_logits.shape == out.end_logits.shape == batch["input_ids"].shape  # (B, T)
    assert torch.isfinite(out.start_logits).all()
    # The longest window the model was sized for runs (RoBERTa needs max_length + pad_id + 1 positions).
    ids = torch.full((1, 128), tok.convert_tokens_to_ids(tok.tokenize("libro"))[0])
    ids[0, 0], ids[0, -1] = tok.cls_token_id, tok.sep_token_id
    with torch.no_grad():
        assert model(input_ids=ids).start_logits.shape == (1, 128)
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.model_type == ("bert" if tok.cls_token == "[CLS]" else "roberta")


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tokenizer_dirs, tmp_path):
    from safetensors.torch import load_file

    def weights(name: str, seed: int) -> dict[str, torch.Tensor]:
        folder = create_tiny_qa_model(tmp_path / name, tokenizer_dirs["bpe"], layers=1, seed=seed)
        return load_file(str(folder / "model.safetensors"))

    before = torch.random.get_rng_state()
    a, b, c = weights("a", 3), weights("b", 3), weights("c", 4)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's random state is left alone
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_bad_arguments_raise_user_errors(tokenizer_dirs, tmp_path):
    with pytest.raises(UserError, match="unknown tokenizer kind 'sentencepiece': choose one of bpe"):
        train_tokenizer("sentencepiece", SPANISH_TEXTS, tmp_path / "t")
    with pytest.raises(UserError, match="no training texts"):
        train_tokenizer("bpe", ["", "  "], tmp_path / "t")
    with pytest.raises(UserError, match="hidden=30 is not divisible by heads=4"):
        create_tiny_qa_model(tmp_path / "m", tokenizer_dirs["bpe"], hidden=30)


def test_spanish_texts_add_the_embedded_sample_when_it_exists():
    assert len(SPANISH_TEXTS) >= 30 and len(set(SPANISH_TEXTS)) == len(SPANISH_TEXTS)
    texts = spanish_texts()
    assert texts[: len(SPANISH_TEXTS)] == list(SPANISH_TEXTS)
    assert spanish_texts(include_sample=False) == list(SPANISH_TEXTS)
