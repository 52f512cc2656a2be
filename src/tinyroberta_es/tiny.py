"""Tiny tokenizers and tiny randomly initialised QA models, built offline in seconds.

Tests and the offline demo need real Hugging Face folders (`AutoTokenizer` / `AutoModelForQuestionAnswering`
load them) without any download. Three tokenizer families cover the offset conventions of the models this
project distils between:

- ``bpe``: byte-level BPE like RoBERTa (the paper's teacher, roberta-large-bne). Offsets are trimmed: a
  ``Ġword`` token's span excludes the space; a lone ``Ġ`` (extra space) has an empty span; the bytes of one
  multi-byte character may be split over several tokens that share (or overlap on) that character's span.
- ``wordpiece``: BERT-like (lowercase, accents stripped, ``[CLS] q [SEP] c [SEP]`` with token types). Offsets
  point into the original text; a word with an unknown character becomes one ``[UNK]`` over the whole word.
- ``unigram``: XLM-R-like SentencePiece Unigram with a Metaspace pre-tokenizer. As in the multilingual-e5
  tokenizer this project uses, a ``▁word`` token's span INCLUDES the leading space.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram")

# A few dozen varied Spanish sentences: enough for a tokenizer that splits Spanish sensibly.
SPANISH_TEXTS: tuple[str, ...] = (
    "Gabriel García Márquez nació en Aracataca, Colombia, el 6 de marzo de 1927.",
    "«Cien años de soledad» se publicó en Buenos Aires en 1967 y vendió millones de ejemplares.",
    "¿Quién escribió «El amor en los tiempos del cólera»?",
    "¡Qué alegría verte de nuevo, Begoña! ¿Cómo está tu familia?",
    "El río Ebro desemboca en el mar Mediterráneo, cerca de Tortosa.",
    "La Sagrada Familia, obra de Antoni Gaudí, sigue en construcción desde 1882.",
    "El pingüino emperador vive en la Antártida y mide hasta 1,2 metros de altura.",
    "Según el censo de 2021, Madrid tenía 3.305.408 habitantes.",
    "Miguel de Cervantes publicó la primera parte del Quijote en 1605.",
    "El niño comió una piña, dos plátanos y un cuenco de cerezas.",
    "La Constitución española fue aprobada por referéndum el 6 de diciembre de 1978.",
    "En el año 711 los musulmanes cruzaron el estrecho de Gibraltar.",
    "¿Cuál es la montaña más alta de España? El Teide, en Tenerife, con 3.715 metros.",
    "El ñandú es un ave corredora que vive en Sudamérica.",
    "Frida Kahlo pintó más de cincuenta autorretratos a lo largo de su vida.",
    "La velocidad de la luz es de unos 299.792 kilómetros por segundo.",
    "Pablo Neruda recibió el Premio Nobel de Literatura en 1971.",
    "El Amazonas atraviesa Perú, Colombia y Brasil antes de llegar al océano Atlántico.",
    "Los aztecas fundaron Tenochtitlan en 1325, en un islote del lago de Texcoco.",
    "¿Dónde está la estación de autobuses? Está a dos calles, junto a la farmacia.",
    "El café de Colombia es famoso en todo el mundo por su aroma suave.",
    "Simón Bolívar murió en Santa Marta el 17 de diciembre de 1830.",
    "La tortilla de patatas lleva huevos, patatas, aceite de oliva y, a veces, cebolla.",
    "El Museo del Prado abrió sus puertas al público en 1819.",
    "La fotosíntesis transforma la energía de la luz en energía química.",
    "Argentina ganó la Copa del Mundo de fútbol en 1978, 1986 y 2022.",
    "El volcán Popocatépetl, a 70 km de la Ciudad de México, sigue activo.",
    "Don Quijote confundió los molinos de viento con gigantes.",
    "Mañana lloverá en el norte; en el sur, el cielo estará despejado 😀.",
    "Tokio (東京) es la capital de Japón y su área metropolitana supera los 37 millones de personas.",
    "Rosalía de Castro escribió «Cantares gallegos» en 1863.",
    "El euro sustituyó a la peseta el 1 de enero de 2002.",
    "La Alhambra de Granada fue declarada Patrimonio de la Humanidad en 1984.",
    "Un año bisiesto tiene 366 días; febrero, entonces, tiene 29.",
    "Jorge Luis Borges dirigió la Biblioteca Nacional de Argentina desde 1955.",
    "¿Por qué el cielo es azul? Porque el aire dispersa más la luz de onda corta.",
    "Xavier y Wendy viajaron a Kioto; allí probaron ramen, sushi y té verde 🍵.",
    "El Atlético, el Barça y el Madrid jugaron 38 partidos cada uno en la temporada 2023-24.",
)

_SPECIALS = {
    # RoBERTa and XLM-R order: <s>=0, <pad>=1, </s>=2, <unk>=3 (pad id 1 shifts RoBERTa's positions).
    "bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "unigram": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}
_ROLES_ROBERTA = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_ROLES_BERT = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
# Characters every tiny tokenizer knows even when the training texts lack them.
_ALPHABET = list(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "áéíóúüñÁÉÍÓÚÜÑàèìòùçÀÈÌÒÙÇ0123456789.,;:¿?¡!«»()\"'-–—%€$/&@#*+=<>[]{}_"
)


def spanish_texts(include_sample: bool = True) -> list[str]:
    """The built-in sentences, plus the questions and contexts of the embedded sample when it exists."""
    texts = list(SPANISH_TEXTS)
    if include_sample:
        texts += _sample_texts()
    return texts


def _sample_texts() -> list[str]:
    """Contexts and questions of `resources/sample_es.json` (SQuAD format), or [] when it is absent."""
    try:
        raw = resources.files("tinyroberta_es").joinpath("resources/sample_es.json").read_text("utf-8")
    except (FileNotFoundError, OSError):
        return []
    texts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("context", "question") and isinstance(value, str):
                    texts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(raw))
    return list(dict.fromkeys(texts))  # contexts repeat once per question in flat layouts


def train_tokenizer(kind: str, texts: Iterable[str], out_dir: Path, vocab_size: int = 2000) -> Path:
    """Train a tokenizer of family `kind` on `texts` and save a Hugging Face folder at `out_dir`.

    The folder loads with `transformers.AutoTokenizer.from_pretrained(out_dir)` as a fast tokenizer with
    offsets. Returns `out_dir`.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if kind not in TOKENIZER_KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}: choose one of {', '.join(TOKENIZER_KINDS)}")
    if vocab_size < 100:
        raise UserError(f"vocab_size {vocab_size} is too small for a tokenizer: use at least 100")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise UserError("no training texts for the tokenizer: pass at least one non-empty text")
    specials = _SPECIALS[kind]
    ids = {tok: i for i, tok in enumerate(specials)}

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, trim_offsets=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", ids["</s>"]), ("<s>", ids["<s>"]), trim_offsets=True, add_prefix_space=True
        )
        config = {
            "tokenizer_class": "RobertaTokenizer",
            **_ROLES_ROBERTA,
            "add_prefix_space": True,
            "trim_offsets": True,
        }
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=sorted({c.lower() for c in _ALPHABET}),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
        config = {
            "tokenizer_class": "BertTokenizer",
            **_ROLES_BERT,
            "do_lower_case": True,
            "strip_accents": True,
            "tokenize_chinese_chars": True,
        }
    else:
        tok = Tokenizer(models.Unigram())
        # XLM-R's SentencePiece normalisation, approximately: NFKC, any whitespace to a space, runs collapsed.
        tok.normalizer = normalizers.Sequence(
            [
                normalizers.NFKC(),
                normalizers.Replace(Regex(r"\s"), " "),
                normalizers.Replace(Regex(" {2,}"), " "),
            ]
        )
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            unk_token="<unk>",
            initial_alphabet=_ALPHABET,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])],
        )
        # Not "XLMRobertaTokenizer": transformers 5 rebuilds that class's pipeline from the vocabulary
        # (WhitespaceSplit + Metaspace, no normaliser), which trims the leading space from offsets. The
        # generic class loads tokenizer.json as saved, exactly like the multilingual-e5 folder this imitates.
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **_ROLES_ROBERTA}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config |= {"model_max_length": 512, "padding_side": "right", "truncation_side": "right"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    roles = {k: v for k, v in config.items() if k.endswith("_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(roles, indent=2) + "\n", encoding="utf-8")
    log.info("trained a %s tokenizer of %d pieces into %s", kind, tok.get_vocab_size(), out_dir)
    return out_dir


def create_tiny_qa_model(
    out_dir: Path,
    tokenizer_dir: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    intermediate: int = 128,
    max_length: int = 512,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised `*ForQuestionAnswering` sized for `tokenizer_dir` at `out_dir`.

    RoBERTa when the tokenizer uses ``<s>``/``</s>`` (bpe, unigram), BERT otherwise (wordpiece). The weights
    depend only on `seed` and the sizes. The folder holds the model (safetensors) and the tokenizer, so
    `AutoModelForQuestionAnswering` and `AutoTokenizer` both load it. Returns `out_dir`.
    """
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForQuestionAnswering,
        RobertaConfig,
        RobertaForQuestionAnswering,
    )

    for name, value in (
        ("layers", layers),
        ("hidden", hidden),
        ("heads", heads),
        ("intermediate", intermediate),
        ("max_length", max_length),
    ):
        if value < 1:
            raise UserError(f"tiny model {name}={value} must be at least 1")
    if hidden % heads:
        raise UserError(f"tiny model hidden={hidden} is not divisible by heads={heads}: pick a multiple")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer.pad_token_id is None:
        raise UserError(f"tokenizer {tokenizer_dir} has no pad token; give it one (e.g. <pad>)")
    sizes = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if "<s>" in (tokenizer.cls_token, tokenizer.bos_token):
        # RoBERTa numbers positions from pad_id + 1, so it needs pad_id + 1 extra position rows.
        config = RobertaConfig(
            **sizes,
            max_position_embeddings=max_length + tokenizer.pad_token_id + 1,
            type_vocab_size=1,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model_class = RobertaForQuestionAnswering
    else:
        config = BertConfig(**sizes, max_position_embeddings=max_length, type_vocab_size=2)
        model_class = BertForQuestionAnswering
    with torch.random.fork_rng(devices=[]):  # seed locally: leave the caller's random state alone
        torch.manual_seed(seed)
        model = model_class(config)
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(out_dir))
    _portable_tokenizer_class(out_dir / "tokenizer_config.json")
    log.info(
        "saved a tiny %s (%d parameters) into %s",
        model_class.__name__,
        sum(p.numel() for p in model.parameters()),
        out_dir,
    )
    return out_dir


def _portable_tokenizer_class(config_path: Path) -> None:
    """Name the generic fast class the way every transformers version knows it.

    transformers 5 saves a tokenizer loaded from a plain tokenizer.json as ``TokenizersBackend``, a class
    transformers 4 lacks; ``PreTrainedTokenizerFast`` means the same thing to both.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
