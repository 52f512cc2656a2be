"""The concrete backends by name, and how one is loaded: validation, device choice, a log line of what ran.

Each backend is a factory `(source, device, threads) -> Runner` in `BACKENDS`, one engine per module:
`pytorch.py`, `ort.py` (ONNX Runtime), `ov.py` (OpenVINO); the PyTorch factories also take a `revision`
keyword for Hub ids. `auto.py` picks one of them by measuring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tinyroberta_es.errors import UserError
from tinyroberta_es.model_folder import local_or_hub
from tinyroberta_es.runtimes import ort, ov, pytorch
from tinyroberta_es.runtimes.runner import Runner

log = logging.getLogger(__name__)

BACKENDS: dict[str, Callable[..., Runner]] = {
    "pytorch": pytorch.load_pytorch,
    "pytorch-bf16": pytorch.load_pytorch_bf16,
    "pytorch-bf16-compiled": pytorch.load_pytorch_bf16_compiled,
    "onnx": ort.load_onnx,
    "onnx-int8": ort.load_onnx_int8,
    "openvino": ov.load_openvino,
    "openvino-bf16": ov.load_openvino_bf16,
    "openvino-int8": ov.load_openvino_int8,
    "openvino-int8-bf16": ov.load_openvino_int8_bf16,
}
# The engine of each backend: what measures its matmul peak and what an export must have written for it.
ENGINES = {"pytorch": "torch", "onnx": "ort", "openvino": "ov"}


def engine_of(backend: str) -> str:
    """torch, ort or ov: the library that runs `backend`."""
    return ENGINES[backend.split("-")[0]]


def check_backend(backend: str) -> None:
    """UserError naming the choices unless `backend` is a key of BACKENDS."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}, or auto")


def default_device(backend: str) -> str:
    """cuda when the backend's library sees a GPU, else cpu (OpenVINO runs on the CPU here)."""
    if backend.startswith("openvino"):
        return "cpu"
    if backend.startswith("onnx"):
        try:
            import onnxruntime
        except ImportError:
            return "cpu"
        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def missing_files(model_dir: str | Path, backend: str) -> str | None:
    """Why `backend` cannot load `model_dir` (its export is missing), or None when it can."""
    if backend.startswith("onnx"):
        path = ort.onnx_path(model_dir, backend)
    elif backend.startswith("openvino"):
        path = ov.ir_path(model_dir, backend)
    else:
        return None
    if path.is_file():
        return None
    return f"no export at {path}; run: {export_command(model_dir, backend)}"


def export_command(model_dir: str | Path, backend: str) -> str:
    """The `tinyroberta-es export` command that writes what `backend` loads."""
    words = ["tinyroberta-es export --model", str(model_dir)]
    if backend.startswith("openvino"):
        words.append("--format openvino")
    if "int8" in backend:
        words.append("--quantize int8")
    return " ".join(words)


def make_concrete_runner(
    model_dir: str | Path,
    backend: str,
    *,
    device: str | None = "cpu",
    threads: int | None = None,
    revision: str | None = None,
) -> Runner:
    """Load the model of `model_dir` (a folder, or a Hub id for the PyTorch backends) with `backend`.

    `device` None picks cuda when the backend can use a GPU. The ONNX and OpenVINO backends read the files
    that `tinyroberta-es export` wrote into `<model_dir>/onnx/` (or into `model_dir`, an export folder).
    `revision` pins a Hub id (PyTorch backends); for a local folder it is an error.
    """
    check_backend(backend)
    source = local_or_hub(model_dir, revision)  # a missing local path is an error, never a Hub download
    if threads is not None and threads < 1:
        raise UserError(f"threads {threads} must be a positive integer")
    device = device or default_device(backend)
    if device.partition(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not cpu or cuda[:N]")
    exported = engine_of(backend) != "torch"
    if exported and not Path(model_dir).expanduser().is_dir():
        raise UserError(f"the {backend} backend needs a local model folder; {model_dir} is not one")
    if backend.startswith("openvino") and device != "cpu":
        raise UserError(f"the {backend} backend runs on cpu here, not {device}: pass --device cpu")
    pinned = {"revision": revision} if revision is not None else {}  # only Hub ids get here with one
    runner = BACKENDS[backend](source, device, threads, **pinned)
    log.info(
        "backend %s (%s on %s, %s threads): %s parameters, %.1f MB of weights",
        runner.name,
        runner.dtype,
        runner.device,
        runner.threads or "default",
        f"{runner.params:,}" if runner.params else "?",
        (runner.weights_bytes or 0) / 1e6,
    )
    return runner
