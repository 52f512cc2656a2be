"""What the training loop writes so that a killed run loses nothing: resume state and model folders.

Both are replaced atomically. The resume state (`checkpoint/state.pt`) is written to a temporary file and
`os.replace`d over the old one, so it is always loadable. A model folder is saved whole into a temporary
folder next to its destination and its files are then moved in one by one, each with an atomic rename, so
the destination only ever holds complete files.

Modules may name frozen submodules (a teacher) in a `frozen_submodules` tuple of attribute names: their
weights never change, so they stay out of the resume state.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyroberta_es.atomic import atomic_path, default_file_mode
from tinyroberta_es.errors import UserError


def frozen_prefixes(module: torch.nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the submodules `module.frozen_submodules` names (e.g. ``("teacher.",)``)."""
    return tuple(f"{name}." for name in getattr(module, "frozen_submodules", ()))


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` without the keys of its frozen submodules."""
    prefixes = frozen_prefixes(module)
    return {k: v for k, v in module.state_dict().items() if not k.startswith(prefixes)}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a `trainable_state` into `module`; only keys of frozen submodules may be missing."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    prefixes = frozen_prefixes(module)
    missing = [k for k in missing if not k.startswith(prefixes)]  # str.startswith(()) is False
    if missing or unexpected:
        keys = (missing or unexpected)[:3]
        raise UserError(
            f"checkpoint {source} does not fit this model ({'missing' if missing else 'unexpected'} weights "
            f"{', '.join(keys)}); it was written by another configuration: pass a new output folder"
        )


def rng_state() -> dict[str, Any]:
    """The random states of python, numpy, torch and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`torch.save` `state` to `path` atomically (a reader sees the old file or the new one, never half)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` into CPU memory.

    On the CPU because random states must stay CPU tensors; `load_state_dict` of modules and optimizers
    copies the rest onto their parameters' device.
    """
    try:
        # Not weights_only: the state holds python and numpy random states; we wrote the file ourselves.
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise UserError(
            f"cannot read the resume checkpoint {path} ({err}); delete it to start the run over"
        ) from None


def save_model_atomically(save_model: Callable[[Path], Any], output_dir: Path) -> None:
    """Run `save_model(folder)` on a temporary folder beside `output_dir`; move its files in atomically."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.saving-", dir=output_dir.parent))
    try:
        save_model(tmp)
        mode = default_file_mode()
        for src in sorted(tmp.iterdir()):
            dest = output_dir / src.name
            if src.is_dir():
                shutil.rmtree(dest, ignore_errors=True)
            else:
                with open(src, "rb") as f:
                    os.fsync(f.fileno())
                src.chmod(mode)  # writers that go through mkstemp (safetensors) leave files private
            os.replace(src, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(output_dir: Path, checkpoint: Path) -> None:
    """Delete what a killed run may have left: half-saved model folders and half-written checkpoints."""
    for path in output_dir.parent.glob(f".{output_dir.name}.saving-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):
        path.unlink(missing_ok=True)
