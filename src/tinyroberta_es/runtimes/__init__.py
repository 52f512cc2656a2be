"""Runtime backends: one callable from padded model inputs to start/end logits, whatever engine runs it.

`make_runner(model, backend)` loads a model folder with a named backend (`BACKENDS`: PyTorch, ONNX Runtime,
OpenVINO; fp32, bf16, int8) or with `auto`, which measures the candidates that passed the export's parity
check and keeps the fastest. One module per engine: `pytorch.py`, `ort.py`, `ov.py`; the interface is
`runner.Runner`; the folder and tokenizer loading they share is `tinyroberta_es.model_folder`.
"""

from __future__ import annotations

from pathlib import Path

from tinyroberta_es.errors import UserError
from tinyroberta_es.model_folder import local_or_hub
from tinyroberta_es.runtimes.auto import choose_runner
from tinyroberta_es.runtimes.ort import (
    INSTALL_HINT,
    ONNX_DIR,
    ONNX_FILES,
    import_onnxruntime,
    onnx_path,
    onnx_runner,
)
from tinyroberta_es.runtimes.ov import IR_FILES, has_bf16, import_openvino, ir_path, ov_runner
from tinyroberta_es.runtimes.pytorch import torch_forward, torch_runner
from tinyroberta_es.runtimes.registry import (
    BACKENDS,
    check_backend,
    default_device,
    engine_of,
    export_command,
    make_concrete_runner,
    missing_files,
)
from tinyroberta_es.runtimes.runner import MODEL_INPUTS, Forward, Runner

CHOICES = (*BACKENDS, "auto")  # what --backend accepts

__all__ = [
    "BACKENDS",
    "CHOICES",
    "INSTALL_HINT",
    "IR_FILES",
    "MODEL_INPUTS",
    "ONNX_DIR",
    "ONNX_FILES",
    "Forward",
    "Runner",
    "check_backend",
    "choose_runner",
    "default_device",
    "engine_of",
    "export_command",
    "has_bf16",
    "import_onnxruntime",
    "import_openvino",
    "ir_path",
    "make_runner",
    "missing_files",
    "onnx_path",
    "onnx_runner",
    "ov_runner",
    "torch_forward",
    "torch_runner",
]


def make_runner(
    model_dir: str | Path,
    backend: str,
    *,
    device: str | None = "cpu",
    threads: int | None = None,
    revision: str | None = None,
) -> Runner:
    """Load `model_dir` with `backend`, a key of BACKENDS, or `auto` (the fastest that passed parity here).

    `revision` (a branch, tag or commit) pins a Hub id; for a local folder it is an error.
    """
    if backend not in CHOICES:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(CHOICES)}")
    if backend == "auto":  # choose_runner takes no revision: check the path here (make_concrete_runner does)
        local_or_hub(model_dir, revision)  # a missing local path or a revision of a local folder: UserError
        return choose_runner(model_dir, device=device, threads=threads)
    return make_concrete_runner(model_dir, backend, device=device, threads=threads, revision=revision)
