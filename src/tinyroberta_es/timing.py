"""Timing: how long calls take (warm-up, then timed calls, summarised by percentiles) and how fast this
machine multiplies matrices right now (the matmul peak of each engine and dtype that `bench` compares
models with).

A peak is measured the way the models are: at the shapes the models multiply, warm-up calls first, then
timed calls summarised by their median. The peak of an engine and dtype is the best median rate over
those shapes; the rate of every shape is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

P99_MIN_SAMPLES = 100  # fewer samples than this and the p99 is a guess: reported as None


def percentiles(seconds: Sequence[float]) -> dict[str, float | None]:
    """Median, p90, p99 and mean of a series of durations, in milliseconds, and its length.

    p99 is None below `P99_MIN_SAMPLES` samples: the 99th percentile of 20 calls is their maximum.
    """
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99) if len(ms) >= P99_MIN_SAMPLES else None,
        "mean": float(ms.mean()),
        "n": len(ms),
    }


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
    shapes: Sequence[tuple[int, int, int]],
    *,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Matmul rate of each engine and dtype on this machine now, in GFLOP/s (GOP/s for int8).

    Each (M, N, K) of `shapes` is timed with `warmup` untimed calls, then `repeats` timed calls; its rate is
    `2*M*N*K / median seconds`. Keys are f"{engine}-{dtype}": torch-float32 and torch-bfloat16 (on
    `device`), ort-float32 and ort-int8 (ONNX Runtime, CPU), ov-float32, ov-bfloat16 (CPUs with bf16) and
    ov-int8 (OpenVINO, CPU). Each entry has `gflops` (the best shape's rate), its `shape`, `by_shape`
    ("MxNxK": GFLOP/s), `engine`, `dtype`, `op`, `device` and `statistic`; ov-int8 also `verified_int8`
    (the compiled graph runs an int8 FullyConnected at every shape). Engines not installed are left out.
    """
    import torch

    threads = threads or torch.get_num_threads()
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    timing = {"warmup": warmup, "repeats": repeats, "statistic": f"median of {repeats} calls"}
    peaks: dict[str, dict[str, Any]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        peaks[f"torch-{name}"] = {
            "engine": "torch",
            "dtype": name,
            "op": "torch.matmul",
            "device": device,
            **_peak_over_shapes(
                shapes, lambda m, n, k, d=dtype: _torch_matmul(m, n, k, d, device), sync, timing
            ),
        }
    _ort_peaks(peaks, shapes, threads, timing)
    _ov_peaks(peaks, shapes, threads, timing)
    return peaks


def _peak_over_shapes(
    shapes: Sequence[tuple[int, int, int]],
    make: Callable[[int, int, int], Callable[[], object]],
    sync: Callable[[], None] | None,
    timing: dict[str, Any],
) -> dict[str, Any]:
    rates = {}
    for m, n, k in shapes:
        seconds = time_calls(make(m, n, k), warmup=timing["warmup"], repeats=timing["repeats"], sync=sync)
        rates[f"{m}x{n}x{k}"] = 2 * m * n * k / float(np.median(seconds)) / 1e9
    best = max(rates, key=rates.__getitem__)
    shape = [int(x) for x in best.split("x")]
    return {"gflops": rates[best], "shape": shape, "by_shape": rates, **timing}


def _torch_matmul(m: int, n: int, k: int, dtype: Any, device: str) -> Callable[[], object]:
    import torch

    a = torch.randn(m, k, device=device).to(dtype)  # (M, K)
    b = torch.randn(k, n, device=device).to(dtype)  # (K, N)
    return lambda: torch.matmul(a, b)  # (M, N)


def _ort_peaks(
    peaks: dict[str, dict[str, Any]], shapes: Sequence[tuple[int, int, int]], threads: int, timing: dict
) -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("onnxruntime is not installed: no ONNX Runtime peaks (pip install onnxruntime)")
        return
    for dtype, int8 in (("float32", False), ("int8", True)):
        op = "MatMulInteger (u8 x s8, constant B)" if int8 else "MatMul (constant B)"
        peaks[f"ort-{dtype}"] = {
            "engine": "ort",
            "dtype": dtype,
            "op": f"onnxruntime {op}",
            "device": "cpu",
            **_peak_over_shapes(
                shapes, lambda m, n, k, q=int8: _ort_matmul(m, n, k, q, threads), None, timing
            ),
        }


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


def _ov_peaks(
    peaks: dict[str, dict[str, Any]], shapes: Sequence[tuple[int, int, int]], threads: int, timing: dict
) -> None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        log.warning("openvino is not installed: no OpenVINO peaks (pip install 'tinyroberta-es[openvino]')")
        return
    from tinyroberta_es.runtimes import has_bf16

    variants = [("float32", "f32", False), ("int8", "f32", True)]
    if has_bf16():
        variants.insert(1, ("bfloat16", "bf16", False))
    for dtype, precision, int8 in variants:
        verified: list[bool] = []

        def make(
            m: int, n: int, k: int, p: str = precision, q: bool = int8, seen: list[bool] = verified
        ) -> Callable[[], object]:
            fn, is_int8 = ov_matmul(m, n, k, precision=p, int8=q, threads=threads)
            seen.append(is_int8)
            return fn

        op = "MatMul (FakeQuantize int8 A x int8 constant B)" if int8 else "MatMul (constant B)"
        peak = {
            "engine": "ov",
            "dtype": dtype,
            "op": f"openvino {op}, {precision}",
            "device": "cpu",
            **_peak_over_shapes(shapes, make, None, timing),
        }
        if int8:
            peak["verified_int8"] = all(verified)
            if not all(verified):
                log.warning(
                    "the ov-int8 peak did not compile to an int8 FullyConnected: it is not an int8 peak"
                )
        peaks[f"ov-{dtype}"] = peak


def ov_matmul(
    m: int, n: int, k: int, *, precision: str = "f32", int8: bool = False, threads: int = 1
) -> tuple[Callable[[], object], bool]:
    """A one-MatMul OpenVINO model A (M, K) @ B (K, N), B constant, compiled as the model backends compile.

    `int8`: FakeQuantize A (256 levels) and B (255 levels, symmetric per output channel), as NNCF leaves a
    model, so OpenVINO's low-precision transformations make it an int8 FullyConnected. Returns the call and
    whether the compiled graph runs a FullyConnected in u8 or i8.
    """
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([m, k], ov.Type.f32, name="A")
    w = rng.standard_normal((n, k)).astype(np.float32)  # (N, K): transpose_b, as a Linear layer's weight
    x, b = a.output(0), ops.constant(w).output(0)
    if int8:
        lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0 * 127 / 128))
        x = ops.fake_quantize(a, lo, hi, lo, hi, 256).output(0)
        scale = np.abs(w).max(axis=1, keepdims=True)  # (N, 1)
        wlo, whi = ops.constant(-scale), ops.constant(scale)
        b = ops.fake_quantize(b, wlo, whi, wlo, whi, 255).output(0)
    y = ops.matmul(x, b, transpose_a=False, transpose_b=True)  # (M, N)
    model = ov.Model([y.output(0)], [a], "peak")
    compiled = ov.Core().compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads,
        },
    )
    request = compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(rng.uniform(-4, 4, size=(m, k)).astype(np.float32)))
    return request.infer, _runs_int8_fully_connected(compiled)


def _runs_int8_fully_connected(compiled: Any) -> bool:
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = str(info["layerType"].astype(str)) if "layerType" in info else ""
        precision = str(info["runtimePrecision"].astype(str)).lower() if "runtimePrecision" in info else ""
        if layer == "FullyConnected" and precision in ("u8", "i8"):
            return True
    return False
