"""Timing: how long calls take (warm-up, then timed calls, summarised by percentiles) and how fast this
machine multiplies matrices right now (the matmul peak of each engine and dtype that `bench` compares
models with).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# (M, N, K): two squares and the FFN matmuls of a 384-token sequence in a 1024-wide model.
PEAK_SHAPES: tuple[tuple[int, int, int], ...] = ((2048, 2048, 2048), (384, 4096, 1024), (384, 1024, 4096))


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99 and mean of a series of durations, in milliseconds, and its length."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()), "n": len(ms)}


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int,
    repeats: int,
    budget_s: float = float("inf"),
    min_repeats: int = 1,
    sync: Callable[[], None] | None = None,
) -> list[float]:
    """Seconds per call of `fn` after `warmup` untimed calls: `repeats` calls, fewer once `budget_s` is spent.

    `sync` (e.g. `torch.cuda.synchronize`) runs before each clock read; on CPU pass None.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


# --- the machine's peaks ------------------------------------------------------------------------------


def measure_peaks(
    shapes: Sequence[tuple[int, int, int]] = PEAK_SHAPES,
    *,
    threads: int | None = None,
    repeats: int = 5,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Best matmul rate of each engine and dtype on this machine now, in GFLOP/s (GOP/s for int8).

    `2*M*N*K / seconds` for the fastest of `repeats` calls over every (M, N, K) of `shapes`. Keys are the
    values of `PEAK_OF_BACKEND`; each entry has `gflops`, the `shape` that reached it, the rate of every
    shape (`by_shape`, "MxNxK": GFLOP/s), `dtype` and `op`.
    ONNX Runtime peaks are measured on CPU only and left out when onnxruntime is not installed.
    """
    import torch

    threads = threads or torch.get_num_threads()
    peaks: dict[str, dict[str, Any]] = {}
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    for key, dtype in (("torch-fp32", torch.float32), ("torch-bf16", torch.bfloat16)):
        best = _best_over_shapes(
            shapes, lambda m, n, k, d=dtype: _torch_matmul(m, n, k, d, device), repeats, sync
        )
        peaks[key] = {"op": "torch.matmul", "dtype": str(dtype).removeprefix("torch."), **best}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("onnxruntime is not installed: no ONNX Runtime peaks (pip install onnxruntime)")
        return peaks
    for key, int8 in (("ort-fp32", False), ("ort-int8", True)):
        best = _best_over_shapes(
            shapes, lambda m, n, k, q=int8: _ort_matmul(m, n, k, q, threads), repeats, None
        )
        op = "MatMulInteger (u8 x s8, constant B)" if int8 else "MatMul (constant B)"
        peaks[key] = {"op": f"onnxruntime {op}", "dtype": "int8" if int8 else "float32", **best}
    return peaks


def _best_over_shapes(
    shapes: Sequence[tuple[int, int, int]],
    make: Callable[[int, int, int], Callable[[], object]],
    repeats: int,
    sync: Callable[[], None] | None,
) -> dict[str, Any]:
    rates = {}
    for m, n, k in shapes:
        seconds = min(time_calls(make(m, n, k), warmup=2, repeats=repeats, sync=sync))
        rates[f"{m}x{n}x{k}"] = 2 * m * n * k / seconds / 1e9
    best = max(rates, key=rates.__getitem__)
    return {"gflops": rates[best], "shape": [int(x) for x in best.split("x")], "by_shape": rates}


def _torch_matmul(m: int, n: int, k: int, dtype: Any, device: str) -> Callable[[], object]:
    import torch

    a = torch.randn(m, k, device=device).to(dtype)  # (M, K)
    b = torch.randn(k, n, device=device).to(dtype)  # (K, N)
    return lambda: torch.matmul(a, b)


def _ort_matmul(m: int, n: int, k: int, int8: bool, threads: int) -> Callable[[], object]:
    """One ONNX Runtime session computing A @ B with B a constant, as the MatMuls of an exported model."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:  # what dynamic quantisation leaves: uint8 activations times int8 weights, int32 out
        a = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
        b = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        node, a_type, y_type = (
            helper.make_node("MatMulInteger", ["A", "B"], ["Y"]),
            TensorProto.UINT8,
            TensorProto.INT32,
        )
    else:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        node, a_type, y_type = (
            helper.make_node("MatMul", ["A", "B"], ["Y"]),
            TensorProto.FLOAT,
            TensorProto.FLOAT,
        )
    graph = helper.make_graph(
        [node],
        "peak",
        [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("Y", y_type, [m, n])],
        initializer=[numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": a})
