"""The teacher's start/end logits, computed once and memory-mapped from disk for every later epoch and run.

Distillation needs the teacher's prediction-layer outputs for every training window, every epoch. They do not
change (the teacher is frozen and dropout is off), so, as Haystack does, we compute them once.
`teacher_logits` looks for `<cache_dir>/<key>/` and computes it when missing; `TeacherLogits.lookup` hands
out the rows of a batch, padded to the batch's width with -inf like a masked, dynamically padded batch.

The key is a sha256 over everything the logits depend on:

- the teacher's config as sorted JSON, without the keys that start with "_" (`_name_or_path`, attention
  implementation, ...): the same model read from another folder gives the same key;
- a fingerprint of its weights: the name, shape and dtype of every parameter and buffer, plus the bytes of
  every tensor of up to `_SAMPLE` elements and of `_SAMPLE` evenly strided elements of each larger one. It
  costs milliseconds where hashing all of roberta-large's 1.4 GB would take seconds on every hit, and it
  changes with any retraining or fine-tuning (which moves every weight) and any change of architecture or
  dtype; a hand edit of a single element of a large matrix can go unnoticed;
- every window's input_ids (and token_type_ids), with the row lengths, so any change of data, tokenizer,
  max_length or stride is a new key;
- the precision the teacher ran in, and the layout version `FORMAT`.

Layout of one entry: `start.f32` and `end.f32` (raw float32, (N, max_len), -inf past each row's length),
`lengths.i32` ((N,) int32) and `meta.json` (the key's parts, N, max_len, creation time, teacher name). An
entry is written into a hidden `.tmp-*` folder beside it and renamed into place only when complete, so an
interrupted computation never leaves a half entry (a process killed outright leaves its `.tmp-*` folder,
which nothing reads and which can be deleted), and a second process that finds the folder uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tinyroberta_es.config import PRECISIONS, check_choice
from tinyroberta_es.distributed import barrier, gather
from tinyroberta_es.errors import UserError
from tinyroberta_es.features import Features

log = logging.getLogger(__name__)

FORMAT = 1  # layout version: part of the key, so a new layout never reads an old one
_SAMPLE = 65_536  # elements per tensor that enter the weight fingerprint
_FILES = ("start.f32", "end.f32", "lengths.i32", "meta.json")


class TeacherLogits:
    """Memory-mapped start/end logits of N windows (read-only), as written by `teacher_logits`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
            n, width = int(self.meta["n"]), int(self.meta["max_len"])
            self.lengths = np.fromfile(self.path / "lengths.i32", dtype=np.int32)  # (N,)
            self.start = np.memmap(self.path / "start.f32", dtype=np.float32, mode="r", shape=(n, width))
            self.end = np.memmap(self.path / "end.f32", dtype=np.float32, mode="r", shape=(n, width))
        except (OSError, ValueError, KeyError) as err:
            raise UserError(
                f"teacher-logit cache {self.path} is damaged ({err}); delete that folder and run again"
            ) from None
        if self.lengths.shape != (n,):
            raise UserError(
                f"teacher-logit cache {self.path} holds {self.lengths.size} lengths for {n} windows; "
                "delete that folder and run again"
            )

    @property
    def key(self) -> str:
        """The cache key: the name of the entry's folder."""
        return self.path.name

    def __len__(self) -> int:
        return len(self.lengths)

    def lookup(self, feature_index: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """Start and end logits of windows `feature_index` (B,), each (B, width) float32 on the CPU.

        Positions at or past a window's own length are -inf, as in a batch padded to `width` whose padding
        is masked. `width` must hold the longest of these windows.
        """
        idx = np.asarray(torch.as_tensor(feature_index).cpu(), dtype=np.int64).reshape(-1)  # (B,)
        longest = int(self.lengths[idx].max(initial=0))
        if width < longest:
            raise ValueError(
                f"width {width} is narrower than the longest window asked for ({longest} tokens)"
            )
        out = []
        for table in (self.start, self.end):
            rows = np.full((len(idx), width), -np.inf, dtype=np.float32)  # (B, width)
            w = min(width, table.shape[1])
            rows[:, :w] = table[idx, :w]
            out.append(torch.from_numpy(rows))
        return out[0], out[1]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the files instead of copying them
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


def teacher_logits(
    teacher: nn.Module,
    features: Features,
    cache_dir: Path,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    rank: int = 0,
    world_size: int = 1,
) -> TeacherLogits:
    """The teacher's start/end logits for every window of `features`, from `cache_dir` or computed into it.

    On a miss the teacher is moved to `device` and run in eval mode without gradients (autocast to
    `precision` unless fp32) over batches of windows of similar length; its previous train/eval mode is
    restored afterwards. Under torchrun (`world_size` > 1, every process calls this) each process computes
    its share of the windows, rank 0 gathers and writes the entry, and every process reads it. See the module
    docstring for the key and the layout.
    """
    check_choice("teacher precision", precision, PRECISIONS)
    if batch_size < 1:
        raise UserError(f"teacher batch_size is {batch_size}; it must be positive")
    if len(features) == 0:
        raise UserError("no windows to compute teacher logits for: the training data is empty")
    parts = {
        "format": FORMAT,
        "teacher_config": _sha256(_config_json(teacher).encode("utf-8")),
        "teacher_weights": weights_fingerprint(teacher),
        "features": features_fingerprint(features),
        "precision": precision,
    }
    key = _sha256(json.dumps(parts, sort_keys=True).encode("utf-8"))
    cache_dir = Path(cache_dir)
    path = cache_dir / key
    if path.is_dir():
        log.info("teacher logits: cache hit %s", path)
        return TeacherLogits(path)
    log.info("teacher logits: cache miss, computing %d windows into %s", len(features), path)
    order = np.argsort(
        -features.lengths, kind="stable"
    )  # longest first: an out-of-memory batch fails at once
    mine = order[rank::world_size]  # this process's share of the windows
    rows = _compute(teacher, features, mine, batch_size=batch_size, device=device, precision=precision)
    shards = gather((mine, *rows), world_size)
    if rank == 0:
        meta = {
            "key": key,
            "parts": parts,
            "n": len(features),
            "max_len": int(features.lengths.max(initial=0)),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "teacher": _teacher_name(teacher),
        }
        _write_entry(path, features.lengths, shards, meta)
    barrier(world_size)
    return TeacherLogits(path)


def _write_entry(path: Path, lengths: np.ndarray, shards: list[tuple], meta: dict[str, Any]) -> None:
    """Write the entry into a hidden folder beside `path`, then rename it into place (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name[:16]}-", dir=path.parent))
    try:
        n, width = len(lengths), int(lengths.max(initial=0))
        lengths.astype(np.int32).tofile(tmp / "lengths.i32")
        for i, name in enumerate(("start.f32", "end.f32"), start=1):
            table = np.memmap(tmp / name, dtype=np.float32, mode="w+", shape=(n, width))
            for shard in shards:
                table[shard[0]] = shard[i]  # rows of windows shard[0]: (n_shard, width)
            table.flush()
            del table
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _fsync_folder(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            log.info("teacher logits: another process wrote %s first; using it", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compute(
    teacher: nn.Module,
    features: Features,
    windows: np.ndarray,
    *,
    batch_size: int,
    device: str | torch.device,
    precision: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the teacher over `windows` (in that order): start and end rows, each (len(windows), max_len),
    -inf past each window's length."""
    from tqdm.auto import tqdm

    width = int(features.lengths.max(initial=0))
    start = np.full((len(windows), width), -np.inf, dtype=np.float32)
    end = np.full((len(windows), width), -np.inf, dtype=np.float32)
    device = torch.device(device)
    takes_types = _accepts(teacher, "token_type_ids")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    was_training = teacher.training
    teacher.to(device).eval()
    try:
        with (
            torch.no_grad(),
            tqdm(total=len(windows), desc="teacher logits", unit="window", disable=None) as bar,
        ):
            for lo in range(0, len(windows), batch_size):
                batch = features.batch(windows[lo : lo + batch_size])
                if not takes_types:
                    batch.pop("token_type_ids", None)
                inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}  # each (B, T)
                with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                    s, e = _start_end(teacher(**inputs))  # (B, T), (B, T)
                padded = batch["attention_mask"] == 0  # (B, T)
                T = padded.shape[1]
                for table, logits in ((start, s), (end, e)):
                    values = logits.float().cpu().numpy()
                    values[padded] = -np.inf
                    table[lo : lo + len(values), :T] = values
                bar.update(len(values))
    finally:
        teacher.train(was_training)
    return start, end


def _start_end(output: Any) -> tuple[Tensor, Tensor]:
    """(start, end) logits from a Hugging Face QA output (a mapping) or a plain (start, end, ...) tuple."""
    if isinstance(output, Mapping):
        return output["start_logits"], output["end_logits"]
    return output[0], output[1]


def _accepts(module: nn.Module, name: str) -> bool:
    """Whether `module.forward` takes argument `name` (directly or through **kwargs)."""
    params = inspect.signature(module.forward).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _teacher_name(teacher: nn.Module) -> str:
    """The folder or Hub id the teacher was loaded from, else its class name (for meta.json only)."""
    return str(getattr(getattr(teacher, "config", None), "name_or_path", "") or type(teacher).__name__)


def _config_json(teacher: nn.Module) -> str:
    """The teacher's config as sorted JSON without private keys; its class name when it has no config."""
    config = getattr(teacher, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return json.dumps({"class": type(teacher).__qualname__})
    data = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    data.pop("transformers_version", None)
    return json.dumps(data, sort_keys=True, default=str)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter's and buffer's name, shape and dtype, and of a strided sample of its values.

    Tensors of up to `_SAMPLE` elements (biases, LayerNorms, the QA head) enter whole; larger ones by
    `_SAMPLE` evenly strided elements. Deterministic across devices and runs.
    """
    h = hashlib.sha256()
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        flat = t.detach().reshape(-1)
        step = -(-flat.numel() // _SAMPLE) if flat.numel() else 1
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(flat[::step].contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def features_fingerprint(features: Features) -> str:
    """sha256 of every window's length, input_ids and (when present) token_type_ids."""
    h = hashlib.sha256()
    h.update(features.lengths.astype(np.int64).tobytes())
    for rows in (features.input_ids, features.token_type_ids or []):
        for row in rows:
            h.update(np.ascontiguousarray(row, dtype=np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_folder(folder: Path) -> None:
    """Flush the entry's files to disk before it becomes visible under its final name."""
    for name in _FILES:
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
