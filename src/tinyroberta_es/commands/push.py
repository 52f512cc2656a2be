"""`tinyroberta-es push`: upload a model folder (weights, tokenizer, card, ONNX) to the Hugging Face Hub.

Everything the user can get wrong (token, folder, model card, repo id) is checked before the first network
call. Training state stays home: resume checkpoints, TensorBoard events, `train_state.json` and ONNX files
the parity check rejected are not part of the model.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from tinyroberta_es.errors import UserError

HELP = "upload a model folder (with its README.md model card) to the Hugging Face Hub"

IGNORE_PATTERNS = [
    "checkpoint/*",  # resume state: weights, optimizer, scheduler, random states (train.CHECKPOINT)
    "*.pt",
    "*.pth",
    "tensorboard/*",
    "*events.out.tfevents*",
    "train_state.json",
    "*.rejected.*",  # failed the export's F1 budget (ONNX, and the .xml/.bin of an OpenVINO IR)
    "*.tmp",  # a write that was interrupted
]
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `push` flags to `parser`."""
    parser.add_argument("--model", required=True, help="model folder written by `tinyroberta-es run`")
    parser.add_argument("--repo-id", required=True, help="Hub repository, OWNER/NAME (created if absent)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument(
        "--token", default=None, help="Hub token with write access (default: HF_TOKEN, login)"
    )
    parser.add_argument(
        "--revision", default=None, help="branch to push to (default main; created if absent)"
    )


def run(args: argparse.Namespace) -> None:
    """Check the folder, the repo id and the token, then create the repository and upload the folder."""
    import huggingface_hub

    folder = Path(args.model)
    problems = folder_problems(folder) + repo_id_problems(args.repo_id)
    token = args.token or os.environ.get("HF_TOKEN") or huggingface_hub.get_token()
    if not token:
        problems.append("no Hugging Face token: set HF_TOKEN, run `hf auth login` or pass --token")
    if problems:
        raise UserError("; ".join(problems))
    url = upload(folder, args.repo_id, token, private=args.private, revision=args.revision)
    print(f"pushed {folder} to {url}")


def folder_problems(folder: Path) -> list[str]:
    """What keeps `folder` from being a model worth uploading; [] when nothing does."""
    if not folder.is_dir():
        return [f"model folder {folder} does not exist; pass the folder of a trained model"]
    problems = []
    if not (folder / "config.json").is_file():
        problems.append(f"{folder} has no config.json; pass a model folder (config, weights, tokenizer)")
    if not any((folder / name).is_file() for name in WEIGHTS):
        problems.append(f"{folder} has no weights ({', '.join(WEIGHTS)}); pass a trained model folder")
    if not (folder / "README.md").is_file():
        problems.append(
            f"{folder} has no README.md model card; run `tinyroberta-es run RECIPE.yaml`, which writes it"
        )
    return problems


def repo_id_problems(repo_id: str) -> list[str]:
    """[] for a well-formed OWNER/NAME repository id, else the problem and the fix."""
    if _REPO_ID.match(repo_id) and ".." not in repo_id and "--" not in repo_id:
        return []
    return [
        f"--repo-id {repo_id!r} is not a Hub repository id: write OWNER/NAME (letters, digits, '-', '_', '.')"
    ]


def upload(folder: Path, repo_id: str, token: str, *, private: bool, revision: str | None) -> str:
    """Create `repo_id` (if absent) and upload `folder` to it; the repository's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    from tinyroberta_es import __version__

    network_errors = (OSError, ValueError, getattr(hub_errors, "HTTPError", OSError))
    api = HfApi()
    try:
        url = str(api.create_repo(repo_id, private=private, exist_ok=True, token=token))
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            token=token,
            revision=revision,
            commit_message=f"Upload {folder.name} with tinyroberta-es {__version__}",
            ignore_patterns=IGNORE_PATTERNS,
        )
    except network_errors as err:  # HfHubHTTPError is an OSError; httpx's connection errors are not
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"cannot push {folder} to {repo_id}: {first}; check the network and the token's write access"
        ) from None
    return f"{url}/tree/{revision}" if revision else url
