"""The ONNX Runtime engine: the graphs `tinyroberta-es export` writes (fp32 fused, int8 dynamic quantisation).

Padding windows to a multiple of 8 did not help ONNX Runtime (376 to 384 tokens within noise of one another),
so its runners do not pad.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tinyroberta_es.errors import UserError
from tinyroberta_es.runtimes.runner import Runner

ONNX_DIR = "onnx"  # `export` writes into <model>/onnx/ unless told otherwise
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
INSTALL_HINT = "pip install 'tinyroberta-es[onnx]'"


def onnx_path(source: str | Path, backend: str) -> Path:
    """The ONNX file `backend` loads for `source`, whether or not it exists yet.

    `<dir>/onnx/<file>` for a model folder (where `export` writes by default), or `<dir>/<file>` when `source`
    is itself an export folder (`export --output`).
    """
    folder = Path(source).expanduser()
    file = ONNX_FILES[backend]
    if not (folder / ONNX_DIR / file).is_file() and (folder / file).is_file():
        return folder / file
    return folder / ONNX_DIR / file


def data_file(graph: Path) -> Path:
    """Where `export` keeps the external weights of an ONNX graph, and ONNX Runtime finds them: `<file>.data`
    beside it."""
    return graph.with_name(f"{graph.name}.data")


def _existing_onnx_path(source: str, backend: str) -> Path:
    path = onnx_path(source, backend)
    if not path.is_file():
        quantize = " --quantize int8" if backend == "onnx-int8" else ""
        raise UserError(
            f"no ONNX export at {path}: run tinyroberta-es export --model {source}{quantize} first"
        )
    return path


def import_onnxruntime() -> Any:
    """`onnxruntime`, or a UserError with the install hint."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            f"the onnx backends need onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from None
    return onnxruntime


def onnx_runner(
    path: str | Path, *, name: str, dtype: str, device: str = "cpu", threads: int | None = None
) -> Runner:
    """An ONNX Runtime session on `path` (all graph optimisations on) as a Runner."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0  # 0: one thread per physical core
    options.log_severity_level = 3  # errors only: ORT warns about every node it keeps on the CPU
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(
                f"device {device} requested but this onnxruntime has no CUDA provider: "
                "pip install onnxruntime-gpu, or run on cpu"
            )
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # ORT raises its own exception types, one per failure kind
        raise UserError(f"onnxruntime cannot load {path}: {str(err).strip().splitlines()[0]}") from None
    input_names = tuple(i.name for i in session.get_inputs())
    metadata = session.get_modelmeta().custom_metadata_map
    path = Path(path)
    external = data_file(path).stat().st_size if data_file(path).is_file() else 0

    def forward(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feed = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in inputs.items()}
        start, end = session.run(["start_logits", "end_logits"], feed)
        return start.astype(np.float32, copy=False), end.astype(np.float32, copy=False)

    return Runner(
        name=name,
        dtype=dtype,
        device=device,
        threads=threads,
        input_names=input_names,
        forward=forward,
        params=int(metadata["params"]) if "params" in metadata else None,
        weights_bytes=path.stat().st_size + external,
        module=None,
        # Dynamic quantisation makes the weight matmuls int8; attention scores stay float32 in every variant.
        matmul_dtypes={"linear": dtype, "attention": "float32"},
    )


def load_onnx(source: str, device: str, threads: int | None) -> Runner:
    path = _existing_onnx_path(source, "onnx")
    return onnx_runner(path, name="onnx", dtype="float32", device=device, threads=threads)


def load_onnx_int8(source: str, device: str, threads: int | None) -> Runner:
    path = _existing_onnx_path(source, "onnx-int8")
    return onnx_runner(path, name="onnx-int8", dtype="int8", device=device, threads=threads)
