"""ONNX files on disk: metadata, external weights (`model.onnx.data` beside graphs over 2 GiB), copies and
atomic publishing that keep a graph and its weights together, and the tokenizer files of an export folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from tinyroberta_es import atomic
from tinyroberta_es.runtimes.ort import data_file

log = logging.getLogger(__name__)

# What a self-contained export folder needs besides the ONNX files: the config and the tokenizer.
TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spm.model",
)


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Store `metadata` in the model file (ONNX Runtime exposes it as the custom metadata map).

    Only the graph is rewritten: external weights stay where they are.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def copy_onnx(src: Path, dst: Path) -> None:
    """Copy the graph `src` to `dst`, and its weights file if it has one (`<src>.data` to `<dst>.data`)."""
    shutil.copyfile(src, dst)
    remove_data_file(dst)
    if data_file(src).is_file():
        shutil.copyfile(data_file(src), data_file(dst))
        _relocate(dst, data_file(dst).name)


def gather_external_data(graph: Path) -> None:
    """Move the initializers of `graph` (inline ones of 1 KiB or more, and external ones wherever they lie)
    into `<graph>.data`, one tensor at a time: memory holds one tensor, not the model."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    model = onnx.load(str(graph), load_external_data=False)
    target = data_file(graph)
    with open(target, "wb") as out:
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = ExternalDataInfo(tensor)
                with open(graph.parent / info.location, "rb") as f:
                    f.seek(info.offset or 0)
                    raw = f.read(info.length) if info.length else f.read()
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                raw = tensor.raw_data
                tensor.ClearField("raw_data")
            else:
                continue
            del tensor.external_data[:]
            for key, value in (("location", target.name), ("offset", out.tell()), ("length", len(raw))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            out.write(raw)
    onnx.save(model, str(graph))


def remove_data_file(graph: Path) -> None:
    data_file(graph).unlink(missing_ok=True)


def publish_onnx(src: Path, dst: Path) -> None:
    """Move an ONNX graph into place with its external data, which follows a new name (weights first, so
    the graph never points at missing weights); an earlier export's external data at `dst` goes."""
    if data_file(src).is_file():
        if dst.name != src.name:
            _relocate(src, data_file(dst).name)
        publish(data_file(src), data_file(dst))
    else:
        remove_data_file(dst)
    publish(src, dst)


def _relocate(graph: Path, location: str) -> None:
    """Point every external tensor of `graph` at the file `location` (same offsets), graph rewritten only."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    onnx.save(model, str(graph))


def _tensors(graph: Any) -> Any:
    """Every tensor of an ONNX graph: initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                yield from _tensors(sub)


def publish(src: Path, dst: Path) -> None:
    """Move a finished file into place atomically (flushed to disk first)."""
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)


def copy_tokenizer_files(model_dir: Path, out: Path) -> None:
    """Copy the config and tokenizer files so that `out` loads on its own (`make_runner`, `--model out`)."""
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            with atomic.atomic_path(out / name) as tmp:
                shutil.copyfile(model_dir / name, tmp)
