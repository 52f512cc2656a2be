"""What the training loop writes so that a killed run loses nothing: resume state and model folders.

Both are replaced atomically. The resume state (`checkpoint/state.pt`) is written to a temporary file and
`os.replace`d over the old one, so it is always loadable. A model folder is saved whole into a temporary
folder next to its destination and its files are then moved in one by one, each with an atomic rename, so
the destination only ever holds complete files.

Modules may name frozen submodules (a teacher) in a `frozen_submodules` tuple of attribute names: their
weights never change, so they stay out of the resume state.

The resume state holds only tensors and plain Python values (dicts, lists, tuples, strings, numbers, None):
numpy's random state and numpy numbers are converted on saving, so `load_checkpoint` reads it with
`torch.load(weights_only=True)`, which never runs code from the file.
"""

from __future__ import annotations

import os
import pickle
import random
import re
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
    """The random states of python, numpy, torch and every CUDA device, as tensors and plain values."""
    numpy_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, ...}
    key, pos = numpy_state["state"]["key"], numpy_state["state"]["pos"]  # key: (624,) uint32
    numpy_state["state"] = {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos)}
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    numpy_state["state"] = {"key": key, "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`torch.save` `state` to `path` atomically (a reader sees the old file or the new one, never half).

    numpy arrays become tensors and numpy numbers Python numbers, so that `load_checkpoint` can read the file
    without unpickling anything else; any other object is refused here rather than at resume time.
    """
    state = plain(state)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def plain(value: Any) -> Any:
    """`value` with numpy arrays as tensors and numpy numbers as Python numbers, in nested dicts/lists/tuples.

    Raises TypeError naming the first value that `torch.load(weights_only=True)` would refuse.
    """
    if isinstance(value, np.generic):  # before float: numpy.float64 is a float subclass
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if type(value) in (str, bytes, bool, int, float, complex) or value is None:
        return value
    if isinstance(value, torch.Tensor | torch.Size):
        return value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # not subclasses: a namedtuple is a class of its own
        return type(value)(plain(v) for v in value)
    raise TypeError(f"a checkpoint holds only tensors and plain Python values, not {type(value).__name__}")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` into CPU memory, tensors and plain values only.

    `weights_only=True`: a file that holds other objects (an older version's numpy random state, or
    something not written by this project) is refused, never unpickled. On the CPU because random states
    must stay CPU tensors; `load_state_dict` of modules and optimizers copies the rest onto their
    parameters' device.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" (it pickles {found.group(1)})" if found else ""
        raise UserError(
            f"the resume checkpoint {path} holds objects other than tensors and plain values{what}, so it is "
            "not loaded (an older version or another program wrote it); delete it to start the run over"
        ) from None
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
