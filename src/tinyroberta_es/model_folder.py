"""A Hugging Face question-answering model folder (or Hub id): checked, and its model and tokenizer loaded.

What every runtime and command shares before anything runs: the folder is a QA model (a
`*ForQuestionAnswering` config), its tokenizer is fast (character offsets), and errors are one line that
names the folder and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from tinyroberta_es.errors import UserError

if TYPE_CHECKING:
    import torch

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def model_source(source: str | Path) -> str:
    """`source` as `from_pretrained` should see it: an existing model folder (`~` expanded) or a Hub id."""
    path = Path(source).expanduser()
    source = str(path) if path.exists() else str(source)
    if not path.exists() and not HUB_ID.match(source):
        raise UserError(f"model folder {source} does not exist; pass a local model folder or a Hub id")
    if path.exists() and not path.is_dir():
        raise UserError(f"model {source} is a file; pass the folder that holds config.json and the weights")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{source} is not a Hugging Face model folder (no config.json); pass a model folder")
    return source


def load_fast_tokenizer(source: str) -> object:
    """The fast tokenizer (character offsets) of a model folder or Hub id, else a one-line UserError."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(
            f"cannot load the tokenizer of {source}: {first_line(err)}; "
            "save the tokenizer files in the model folder"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            f"the tokenizer of {source} is not a fast tokenizer (no character offsets); "
            "save a tokenizer.json in the model folder"
        )
    return tokenizer


def load_qa_model(source: str | Path, **model_kwargs: object) -> tuple[torch.nn.Module, object]:
    """Load a question-answering model (eval mode) and its fast tokenizer from a local folder or a Hub id.

    `model_kwargs` go to `from_pretrained` (e.g. ``attn_implementation="eager"`` for ONNX export).
    """
    source = model_source(source)
    _check_qa_config(source)
    tokenizer = load_fast_tokenizer(source)
    return _load_module(source, model_kwargs), tokenizer


def load_qa_module(source: str | Path, **model_kwargs: object) -> torch.nn.Module:
    """Load only the question-answering model (eval mode) of a local folder or a Hub id."""
    source = model_source(source)
    _check_qa_config(source)
    return _load_module(source, model_kwargs)


def _load_module(source: str, model_kwargs: dict[str, object]) -> torch.nn.Module:
    from transformers import AutoModelForQuestionAnswering

    try:
        model = AutoModelForQuestionAnswering.from_pretrained(source, **model_kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the model weights of {source}: {first_line(err)}") from None
    model.eval()
    return model


def _check_qa_config(source: str) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the model config of {source}: {first_line(err)}") from None
    architectures = config.architectures or []
    if not any(a.endswith("ForQuestionAnswering") for a in architectures):
        raise UserError(
            f"{source} is not a question-answering model (architectures: {architectures or 'none'}); "
            "fine-tune it for extractive QA first, or pass a *ForQuestionAnswering folder"
        )


def tokenizer_folder(source: str | Path) -> str:
    """Where the tokenizer of a model or export folder lives: the folder, or for `<model>/onnx` its parent."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return str(source)  # a Hub id
    if not (path / "tokenizer_config.json").is_file() and (path.parent / "tokenizer_config.json").is_file():
        return str(path.parent)
    return str(path)


def max_tokens(config: object) -> int | None:
    """How many tokens a model with this config reads at once (None when its config does not say).

    RoBERTa-style models number positions from pad_token_id + 1, so they hold that many fewer tokens than
    they have position embeddings.
    """
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    roberta = getattr(config, "model_type", None) in ("roberta", "xlm-roberta", "camembert")
    return positions - (config.pad_token_id + 1 if roberta else 0)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
