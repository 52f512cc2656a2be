"""The OpenVINO engine: the IR that `tinyroberta-es export --format openvino` writes, fp32 or NNCF int8.

Four backends over two files. `model.xml` is the fp32 graph; `model.int8.xml` the same graph with NNCF's
calibrated int8 quantisation. Each runs with the rest of its arithmetic in fp32 (`openvino`,
`openvino-int8`) or bf16 (`openvino-bf16`, `openvino-int8-bf16`, CPUs with BF16 only). OpenVINO's CPU plugin
runs bf16 by default on such CPUs, so the fp32 backends ask for f32 explicitly: a backend named fp32 is fp32.

Measured on the paper student (6x512, random weights), 1 x 384 tokens, 2 threads, AMD EPYC with AVX-512
VNNI/BF16, OpenVINO 2026.4: fp32 69.8 ms, bf16 39.4, int8 26.1, int8 + bf16 21.0 (ONNX Runtime int8: 44.4).
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tinyroberta_es.errors import UserError
from tinyroberta_es.model_folder import first_line
from tinyroberta_es.runtimes.ort import ONNX_DIR
from tinyroberta_es.runtimes.runner import Forward, Runner

IR_FILES = {
    "openvino": "model.xml",
    "openvino-bf16": "model.xml",
    "openvino-int8": "model.int8.xml",
    "openvino-int8-bf16": "model.int8.xml",
}
INSTALL_HINT = "pip install 'tinyroberta-es[openvino]'"
# OpenVINO's runtime precisions, as the dtype names the rest of the project uses.
PRECISIONS = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "u8": "int8", "i8": "int8"}


def import_openvino() -> Any:
    """`openvino`, or a UserError with the install hint."""
    try:
        import openvino
    except ImportError:
        raise UserError(
            f"the openvino backends need the openvino runtime, which is not installed: {INSTALL_HINT}"
        ) from None
    return openvino


def ir_path(source: str | Path, backend: str) -> Path:
    """The IR file `backend` loads: `<source>/onnx/<file>`, or `<source>/<file>` for an export folder."""
    folder = Path(source).expanduser()
    file = IR_FILES[backend]
    if not (folder / ONNX_DIR / file).is_file() and (folder / file).is_file():
        return folder / file
    return folder / ONNX_DIR / file


def ir_files(xml: Path) -> list[Path]:
    """The two files of an IR: the graph and its weights."""
    return [xml, xml.with_suffix(".bin")]


def has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 arithmetic on this CPU (AVX-512-BF16 or AMX)."""
    core = import_openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def ov_runner(path: str | Path, *, name: str, precision: str, threads: int | None = None) -> Runner:
    """A CPU-compiled OpenVINO model as a Runner; `precision` (f32, bf16) is what non-int8 ops run in.

    One infer request per thread: a request is not thread-safe, and the server calls from a worker thread.
    """
    ov = import_openvino()
    core = ov.Core()
    if precision == "bf16" and not has_bf16():
        raise UserError(
            f"the {name} backend needs a CPU with bf16 (AVX-512-BF16 or AMX); this one has none: "
            f"use --backend {name.replace('-bf16', '')}"
        )
    try:
        model = core.read_model(str(path))
        compiled = core.compile_model(
            model,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_NUM_THREADS": threads or 0,  # 0: OpenVINO's default, one per core
            },
        )
    except RuntimeError as err:
        raise UserError(f"openvino cannot load {path}: {first_line(err)}; export it again") from None
    forward = compiled_forward(compiled)
    path = Path(path)
    groups = matmul_precisions(compiled)
    return Runner(
        name=name,
        dtype="int8" if groups.get("linear") == "int8" else PRECISIONS[precision],
        device="cpu",
        threads=threads,
        input_names=tuple(i.get_any_name() for i in model.inputs),
        forward=forward,
        params=_params(model),
        weights_bytes=sum(file.stat().st_size for file in ir_files(path)),
        matmul_dtypes=groups,
    )


def compiled_forward(compiled: Any) -> Forward:
    """numpy inputs -> a compiled OpenVINO model -> float32 logits, one infer request per calling thread."""
    local = threading.local()
    start_port, end_port = compiled.output("start_logits"), compiled.output("end_logits")

    def forward(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        out = request.infer({k: np.ascontiguousarray(v, dtype=np.int64) for k, v in inputs.items()})
        # Copies: the request reuses its output buffers on the next call.
        return np.array(out[start_port], dtype=np.float32), np.array(out[end_port], dtype=np.float32)

    return forward


def compiled_runner(compiled: Any, name: str) -> Runner:
    """A Runner around a model compiled elsewhere (NNCF's accuracy control hands these to its validation)."""
    return Runner(
        name=name,
        dtype="int8",
        device="cpu",
        threads=None,
        input_names=tuple(i.get_any_name() for i in compiled.inputs),
        forward=compiled_forward(compiled),
    )


def matmul_precisions(compiled: Any) -> dict[str, str]:
    """The dtype OpenVINO runs each group of the model's matmuls in, read from the compiled runtime graph.

    Matmuls with a constant weight become `FullyConnected` nodes: the "linear" group. The attention matmuls
    (scores and context, both inputs computed) become `MatMul` or `ScaledDotProductAttention` nodes, or one
    fused `Subgraph` with the softmax between them: the "attention" group. A group takes the commonest
    `runtimePrecision` of its nodes (u8/i8: int8).
    """
    seen: dict[str, Counter] = {"linear": Counter(), "attention": Counter()}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = str(info["layerType"].astype(str)) if "layerType" in info else ""
        names = str(info["originalLayersNames"].astype(str)) if "originalLayersNames" in info else ""
        precision = str(info["runtimePrecision"].astype(str)).lower() if "runtimePrecision" in info else ""
        if kind == "FullyConnected":
            group = "linear"
        elif kind in ("MatMul", "ScaledDotProductAttention") or (kind == "Subgraph" and "Softmax" in names):
            group = "attention"
        else:
            continue
        seen[group][PRECISIONS.get(precision, precision)] += 1
    return {group: counts.most_common(1)[0][0] for group, counts in seen.items() if counts}


def _params(model: Any) -> int | None:
    try:
        return int(model.get_rt_info(["tinyroberta_es", "params"]).astype(str))
    except RuntimeError:  # an IR written by something else
        return None


def _existing_ir_path(source: str, backend: str) -> Path:
    path = ir_path(source, backend)
    if not path.is_file():
        quantize = " --quantize int8" if "int8" in backend else ""
        raise UserError(
            f"no OpenVINO export at {path}: run tinyroberta-es export --model {source} --format openvino"
            f"{quantize} first"
        )
    return path


def load_openvino(source: str, device: str, threads: int | None) -> Runner:
    """The fp32 IR, every op in fp32."""
    return ov_runner(_existing_ir_path(source, "openvino"), name="openvino", precision="f32", threads=threads)


def load_openvino_bf16(source: str, device: str, threads: int | None) -> Runner:
    """The fp32 IR run in bf16 (weights and activations), where the CPU has it."""
    path = _existing_ir_path(source, "openvino-bf16")
    return ov_runner(path, name="openvino-bf16", precision="bf16", threads=threads)


def load_openvino_int8(source: str, device: str, threads: int | None) -> Runner:
    """The NNCF int8 IR: int8 matmuls, the rest in fp32."""
    path = _existing_ir_path(source, "openvino-int8")
    return ov_runner(path, name="openvino-int8", precision="f32", threads=threads)


def load_openvino_int8_bf16(source: str, device: str, threads: int | None) -> Runner:
    """The NNCF int8 IR with the rest in bf16: the fastest CPU backend measured here."""
    path = _existing_ir_path(source, "openvino-int8-bf16")
    return ov_runner(path, name="openvino-int8-bf16", precision="bf16", threads=threads)
