"""A Hugging Face question-answering model folder (or Hub id): checked, and its model and tokenizer loaded.

What every runtime and command shares before anything runs: the folder is a QA model (a
`*ForQuestionAnswering` config), its tokenizer is fast (character offsets), and errors are one line that
names the folder and the fix. Loading is safe: a local path that does not exist is an error, never a Hub
download; a `revision` pins a Hub id; only safetensors weights load (a pickled `pytorch_model.bin` never is).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from tinyroberta_es.errors import UserError

if TYPE_CHECKING:
    import torch

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def model_source(source: str | Path, revision: str | None = None) -> str:
    """`source` as `from_pretrained` should see it: an existing model folder (`~` expanded) or a Hub id.

    Anything that looks like a local path (absolute, `./`, `../`, `~`, a backslash, more than one slash, or
    a first component that is a local folder, as `runs/teacher` where `runs/` exists) must exist: a typo in
    a path is an error, never a silent download of a Hub model. `revision` (a branch, tag or commit) pins a
    Hub id and is an error for a local folder.
    """
    source = local_or_hub(source, revision)
    path = Path(source)
    if not path.exists():
        return source  # a Hub id
    if not path.is_dir():
        raise UserError(f"model {source} is a file; pass the folder that holds config.json and the weights")
    if not (path / "config.json").is_file():
        raise UserError(f"{source} is not a Hugging Face model folder (no config.json); pass a model folder")
    return source


def local_or_hub(source: str | Path, revision: str | None = None) -> str:
    """An existing local path (`~` expanded) or a Hub id `org/name`, else a UserError; see `model_source`."""
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists():
        if _looks_local(text) or not HUB_ID.match(text):
            raise UserError(
                f"model folder {text} does not exist; pass an existing model folder, or a Hub id as org/name"
            )
        return text
    if revision is not None:
        raise UserError(
            f"--revision {revision} given for the local model folder {text}: a revision applies to Hub ids; "
            "drop --revision or pass a Hub id"
        )
    return str(path)


def _looks_local(text: str) -> bool:
    """Whether `text` reads as a file-system path rather than a Hub id `org/name`."""
    if "\\" in text or text.count("/") > 1 or text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        return True
    first = text.split("/")[0]
    return "/" in text and Path(first).is_dir()


def check_safetensors(source: str) -> None:
    """UserError if a local model folder has pickled `.bin` weights and no safetensors: pickle never loads."""
    folder = Path(source)
    if not folder.is_dir() or any(folder.glob("*.safetensors*")):  # model.safetensors or a sharded index
        return
    if any(folder.glob("pytorch_model*.bin")):
        raise UserError(
            f"{source} holds only pytorch_model.bin (pickle), which is never loaded here; convert it once in "
            "trusted Python: AutoModelForQuestionAnswering.from_pretrained(folder, use_safetensors=False)"
            ".save_pretrained(folder)"
        )


def load_fast_tokenizer(source: str, revision: str | None = None) -> object:
    """The fast tokenizer (character offsets) of a model folder or Hub id, else a one-line UserError.

    `revision` pins a Hub id (a branch, tag or commit); it is an error for a local folder.
    """
    from transformers import AutoTokenizer

    source = local_or_hub(source, revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
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

    Only safetensors weights load. `model_kwargs` go to `from_pretrained`
    (e.g. ``attn_implementation="eager"`` for ONNX export).
    """
    source = model_source(source)
    _check_qa_config(source)
    tokenizer = load_fast_tokenizer(source)
    return _load_module(source, None, model_kwargs), tokenizer


def load_qa_module(
    source: str | Path, *, revision: str | None = None, **model_kwargs: object
) -> torch.nn.Module:
    """Load only the question-answering model (eval mode, safetensors only) of a local folder or a Hub id."""
    source = model_source(source, revision)
    _check_qa_config(source, revision)
    return _load_module(source, revision, model_kwargs)


def _load_module(source: str, revision: str | None, model_kwargs: dict[str, object]) -> torch.nn.Module:
    from transformers import AutoModelForQuestionAnswering

    check_safetensors(source)
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(
            source, revision=revision, use_safetensors=True, **model_kwargs
        )
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the model weights of {source}: {first_line(err)}") from None
    model.eval()
    return model


def _check_qa_config(source: str, revision: str | None = None) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
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
