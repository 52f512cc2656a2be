"""Vocabulary trimming: keep only the pieces a Spanish corpus uses.

A multilingual teacher spends most of its parameters on its embedding matrix (multilingual-e5-small: 96M of
118M in 250k word embeddings), and a Spanish QA model uses a small share of those rows. `plan_trim` finds
the pieces a corpus produces (plus every special token and every single-character piece, so unseen words
still split into characters), `trim_tokenizer` rebuilds the tokenizer with only those pieces and
`trim_model` keeps only their embedding rows.

Kept pieces stay in their old order, so the special tokens at the front keep their ids (RoBERTa and XLM-R
derive position ids from the pad id). For Unigram (SentencePiece) tokenizers, Viterbi over a subset of the
pieces that still contains the best path finds the same path, so on any text whose pieces were all kept the
trimmed tokenizer gives exactly `old_to_new[old ids]` with the same offsets; WordPiece's greedy longest
match has the same property. Byte-level BPE is refused: its merges assume the whole vocabulary.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.sources import DATASETS, normalize_name
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

TEXT_KINDS = (".txt", ".txt.gz", ".md", ".conllu", ".conllu.gz", ".tar.gz", ".tgz")
SQUAD_KINDS = (".json", ".json.gz")
TRIMMABLE = ("Unigram", "WordPiece")
BATCH = 1000  # texts per call to the fast tokenizer
_CONFIG_TOKEN_IDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "unk_token_id",
    "sep_token_id",
    "cls_token_id",
)


# --- the corpus ---------------------------------------------------------------------------------------


def corpus_texts(sources: list[str]) -> Iterator[str]:
    """The texts of `sources`, one paragraph or sentence at a time.

    A source is a SQuAD dataset (a name, URL or .json/.json.gz path, read with `load_dataset`: each context
    once, and every question) or a text file: .txt, .txt.gz and .md (non-empty lines), .conllu and
    .conllu.gz (the ``# text = ...`` sentences), .tar.gz/.tgz (the .txt and .md files inside). All sources are
    checked before the first text is produced; a problem is a `UserError` naming every bad source.
    """
    readers, problems = [], []
    for source in sources:
        try:
            readers.append(_reader(str(source)))
        except UserError as err:
            problems.append(str(err))
    if problems:
        raise UserError("; ".join(problems))
    return (text for reader in readers for text in reader())


def _reader(source: str) -> Any:
    """A function yielding the texts of one source; raises UserError for a missing file or unknown kind."""
    name = source.lower()
    path = Path(source).expanduser()
    kinds = f"a SQuAD dataset (name, URL, {', '.join(SQUAD_KINDS)}) or a text file ({', '.join(TEXT_KINDS)})"
    if (
        name.startswith(("http://", "https://"))
        or normalize_name(source) in DATASETS
        or name.endswith(SQUAD_KINDS)
    ):
        dataset = load_dataset(source, bad_spans="keep")  # only the texts matter here
        return lambda: _squad_texts(dataset.examples)
    if not path.is_file():
        raise UserError(f"corpus source {source!r}: no such file or dataset name; pass {kinds}")
    if name.endswith((".tar.gz", ".tgz")):
        return lambda: _tar_texts(path)
    if name.endswith((".conllu", ".conllu.gz")):
        return lambda: _conllu_texts(_file_lines(path))
    if name.endswith((".txt", ".txt.gz", ".md")):
        return lambda: _line_texts(_file_lines(path))
    raise UserError(f"corpus source {source!r}: unknown kind of file; pass {kinds}")


def _squad_texts(examples: Iterable[Any]) -> Iterator[str]:
    seen: set[str] = set()
    for ex in examples:
        if ex.context not in seen:
            seen.add(ex.context)
            yield ex.context
        yield ex.question


def _file_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            yield from f
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise UserError(f"corpus source {str(path)!r}: cannot read it as UTF-8 text ({err})") from None


def _line_texts(lines: Iterable[str]) -> Iterator[str]:
    return (line.strip() for line in lines if line.strip())


def _conllu_texts(lines: Iterable[str]) -> Iterator[str]:
    return (line.removeprefix("# text =").strip() for line in lines if line.startswith("# text ="))


def _tar_texts(path: Path) -> Iterator[str]:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith((".txt", ".md")):
                    raw = tar.extractfile(member)
                    if raw is not None:
                        yield from _line_texts(io.TextIOWrapper(raw, encoding="utf-8"))
    except (UnicodeDecodeError, OSError, EOFError, tarfile.TarError) as err:
        raise UserError(
            f"corpus source {str(path)!r}: cannot read it as a tar.gz of UTF-8 text ({err})"
        ) from None


# --- planning -----------------------------------------------------------------------------------------


@dataclass
class VocabTrim:
    """Which pieces a trimmed vocabulary keeps."""

    kept: np.ndarray  # (V_new,) new id -> old id, ascending (special tokens at the front keep their ids)
    old_to_new: np.ndarray  # (V_old,) old id -> new id; dropped pieces map to the new unk id

    @property
    def size(self) -> int:
        """Pieces in the trimmed vocabulary."""
        return len(self.kept)

    def map_ids(self, ids: Any) -> Any:
        """Old token ids as new ids: a tensor (on the same device) for a tensor, else a numpy array."""
        if isinstance(ids, torch.Tensor):
            return torch.as_tensor(self.old_to_new, device=ids.device)[ids]
        return self.old_to_new[np.asarray(ids)]


def plan_trim(
    tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], *, keep_single_chars: bool = True
) -> VocabTrim:
    """Keep every special token, every piece `tokenizer` produces on `texts`, and (option) every piece of a
    single character (ignoring the word marker ``▁`` or ``##``), so unseen words still split into characters.

    For Unigram tokenizers the lowest-scoring piece is kept too: the score of an unknown character is
    derived from it, so keeping it keeps every path score of the original tokenizer.
    """
    spec = _tokenizer_json(tokenizer)
    model = spec["model"]
    size = len(tokenizer)
    from tokenizers import Tokenizer

    # a copy without the truncation/padding state that earlier calls (windowing) left on the tokenizer
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    counts = np.zeros(size, dtype=np.int64)
    n_texts = 0
    for batch in _batches(texts, BATCH):
        n_texts += len(batch)
        encodings = backend.encode_batch(batch, add_special_tokens=False)
        flat = np.fromiter((i for enc in encodings for i in enc.ids), dtype=np.int64)
        counts += np.bincount(flat, minlength=size)[:size]
    keep = counts > 0
    specials = {t["id"] for t in spec.get("added_tokens", [])} | set(tokenizer.all_special_ids)
    keep[sorted(i for i in specials if i < size)] = True
    pieces = _model_pieces(model)
    if keep_single_chars:
        prefix = model.get("continuing_subword_prefix") or "▁"
        for i, piece in enumerate(pieces):
            if len(piece.removeprefix(prefix)) == 1 or len(piece) == 1:
                keep[i] = True
    if model["type"] == "Unigram":
        keep[int(np.argmin([score for _, score in model["vocab"]]))] = True
        if model.get("byte_fallback"):
            keep[
                [i for i, p in enumerate(pieces) if len(p) == 6 and p.startswith("<0x") and p.endswith(">")]
            ] = True
    kept = np.flatnonzero(keep)
    unk = tokenizer.unk_token_id
    old_to_new = np.full(size, -1, dtype=np.int64)
    old_to_new[kept] = np.arange(len(kept))
    old_to_new[~keep] = old_to_new[unk]
    log.info(
        "vocabulary trim: keeping %s of %s pieces (%.1f%%; %s seen in %s texts)",
        f"{len(kept):,}",
        f"{size:,}",
        100 * len(kept) / size,
        f"{int((counts > 0).sum()):,}",
        f"{n_texts:,}",
    )
    return VocabTrim(kept=kept, old_to_new=old_to_new)


def _batches(texts: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The tokenizers-library description of a fast Unigram or WordPiece tokenizer, else a UserError."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(
            f"vocabulary trimming needs a fast tokenizer (tokenizer.json); {type(tokenizer).__name__} "
            "is not one"
        )
    spec = json.loads(backend.to_str())
    spec["truncation"] = None  # state left by earlier calls, not part of the vocabulary
    kind = spec["model"]["type"]
    if kind not in TRIMMABLE:
        raise UserError(
            f"vocabulary trimming supports Unigram and WordPiece tokenizers, not {kind}; byte-level BPE "
            "merges make trimming unsafe; leave student.trim_vocab empty"
        )
    if tokenizer.unk_token_id is None:
        raise UserError(
            "vocabulary trimming maps dropped pieces to the unknown token, but the tokenizer has none"
        )
    return spec


def _model_pieces(model: dict[str, Any]) -> list[str]:
    """The model's pieces in id order."""
    if model["type"] == "Unigram":
        return [piece for piece, _ in model["vocab"]]
    pieces = [""] * len(model["vocab"])
    for piece, i in model["vocab"].items():
        pieces[i] = piece
    return pieces


# --- applying a plan ----------------------------------------------------------------------------------


def trim_tokenizer(tokenizer: PreTrainedTokenizerBase, trim: VocabTrim) -> PreTrainedTokenizerFast:
    """A fast tokenizer with only the kept pieces, in new-id order, and otherwise the same pipeline.

    Unigram pieces keep their scores; normalizer, pre-tokenizer and decoder are unchanged; special-token ids
    in the post-processor, the padding settings and the added tokens follow `trim.old_to_new`.
    """
    spec = _tokenizer_json(tokenizer)
    if len(trim.old_to_new) != len(tokenizer):
        raise ValueError(
            f"the plan is for {len(trim.old_to_new):,} pieces, the tokenizer has {len(tokenizer):,}"
        )
    new = trim.old_to_new
    model = spec["model"]
    pieces = _model_pieces(model)
    in_model = trim.kept[trim.kept < len(pieces)]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in in_model]
        model["unk_id"] = int(new[model["unk_id"]])
    else:
        model["vocab"] = {pieces[i]: int(new[i]) for i in in_model}
    for token in spec.get("added_tokens", []):
        token["id"] = int(new[token["id"]])
    if spec.get("padding"):
        spec["padding"]["pad_id"] = int(new[spec["padding"]["pad_id"]])
    _remap_post_processor(spec.get("post_processor"), new)

    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(json.dumps(spec))
    roles = {
        name: getattr(tokenizer, name)
        for name in (
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        )
        if getattr(tokenizer, name, None) is not None
    }
    trimmed = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
        model_input_names=list(tokenizer.model_input_names),
        **roles,
    )
    if len(trimmed) != trim.size:
        raise RuntimeError(f"trimmed tokenizer has {len(trimmed):,} pieces, the plan {trim.size:,}")
    return trimmed


def _remap_post_processor(node: dict[str, Any] | None, new: np.ndarray) -> None:
    """Update the special-token ids of a tokenizers post-processor description in place."""
    if not node:
        return
    kind = node.get("type")
    if kind == "Sequence":
        for child in node["processors"]:
            _remap_post_processor(child, new)
    elif kind == "TemplateProcessing":
        for special in node["special_tokens"].values():
            special["ids"] = [int(new[i]) for i in special["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            node[key] = [node[key][0], int(new[node[key][1]])]
    elif kind != "ByteLevel":
        raise UserError(
            f"vocabulary trimming does not know the {kind} post-processor; leave student.trim_vocab empty"
        )


def trim_model(model: PreTrainedModel, trim: VocabTrim) -> None:
    """Keep only the kept rows of `model`'s word embeddings (and of its output embeddings), in place.

    Tied weights stay tied. `config.vocab_size` and the config's special-token ids follow the plan; the pad
    id must not move, because RoBERTa-style position ids are counted from it.
    """
    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.shape[0]
    if trim.kept[-1] >= rows:
        raise UserError(
            f"the tokenizer has piece id {int(trim.kept[-1]):,} but the model only {rows:,} word embeddings: "
            "trim a model with the tokenizer it was trained with"
        )
    config = model.config
    for name in _CONFIG_TOKEN_IDS:
        old = getattr(config, name, None)
        if isinstance(old, int) and old >= 0:
            if old >= len(trim.old_to_new) or trim.kept[trim.old_to_new[old]] != old:
                raise UserError(f"config {name}={old} is not among the kept pieces: the tokenizer lacks it")
            setattr(config, name, int(trim.old_to_new[old]))
    pad = getattr(embeddings, "padding_idx", None)
    if pad is not None and int(trim.old_to_new[pad]) != pad:
        raise ValueError(f"trimming would move the pad id {pad} to {int(trim.old_to_new[pad])}")

    index = torch.as_tensor(trim.kept, device=embeddings.weight.device)
    output = model.get_output_embeddings()
    replaced = {id(embeddings.weight): _rows(embeddings.weight, index)}
    if output is not None:
        if id(output.weight) not in replaced:  # untied output embeddings
            replaced[id(output.weight)] = _rows(output.weight, index)
        if getattr(output, "bias", None) is not None:
            replaced[id(output.bias)] = _rows(output.bias, index)
        output.out_features = trim.size
    _replace_parameters(model, replaced)
    embeddings.num_embeddings = trim.size
    config.vocab_size = trim.size
    log.info("trimmed the word embeddings from %s to %s rows", f"{rows:,}", f"{trim.size:,}")


def _rows(weight: nn.Parameter, index: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(weight.detach().index_select(0, index).clone(), requires_grad=weight.requires_grad)


def _replace_parameters(model: nn.Module, replaced: dict[int, nn.Parameter]) -> None:
    """Point every module attribute holding an old parameter (by id) at its replacement: ties stay tied."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) in replaced:
                module._parameters[name] = replaced[id(param)]
