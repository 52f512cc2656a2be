"""How fast QA models answer, per runtime backend, and how close each comes to this machine's peak.

A short sibling of the inference path, not a second one: end-to-end timings go through
`QuestionAnswerer.predict` (tokenisation + model + extraction) and fixed-length timings through the very
runner that `QuestionAnswerer` calls. Every measurement warms up first, is timed with `time.perf_counter`,
synchronises only on GPU and is summarised by its median and percentiles.

The matmul peak of each dtype is measured in the same run (torch fp32 and bf16 matmul, ONNX Runtime fp32
MatMul and int8 MatMulInteger), so "fraction of peak" compares a model with what this machine, loaded as it
is right now, can do: the model's analytic matmul FLOPs per fixed-length sequence over its measured latency.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyroberta_es.errors import UserError
from tinyroberta_es.timing import PEAK_SHAPES, measure_peaks, percentiles, time_calls

log = logging.getLogger(__name__)

# The peak that bounds each backend: its engine and the dtype of its matmuls.
PEAK_OF_BACKEND = {
    "pytorch": "torch-fp32",
    "pytorch-bf16": "torch-bf16",
    "pytorch-bf16-compiled": "torch-bf16",
    "onnx": "ort-fp32",
    "onnx-int8": "ort-int8",
}


@dataclass
class BenchConfig:
    """What to benchmark and how long to spend on it."""

    models: list[str] = field(default_factory=list)  # model folders; the first one is the speedup baseline
    backends: list[str] = field(default_factory=lambda: ["pytorch"])  # each model runs on each of these
    dataset: str = "sample"  # dataset name (xquad_es, sample) or SQuAD-format file: the real questions
    questions: int = 100  # first N questions of the dataset, for end-to-end latency and throughput
    batch_size: int = 32  # windows (end to end) and sequences (fixed length) per call for throughput
    seq_len: int = 384  # tokens of the fixed-length inputs
    threads: int | None = None  # CPU threads for every backend and for the peaks (None: torch's default)
    warmup: int = 2  # untimed calls before each timed series
    repeats: int = 20  # timed fixed-length calls at batch 1, at most
    budget_s: float = 20.0  # stop a timed series after this long, once it has `min_repeats` calls
    min_repeats: int = 3
    peak_shapes: tuple[tuple[int, int, int], ...] | None = None  # (M, N, K) to time; None: PEAK_SHAPES
    device: str = "cpu"

    def validate(self) -> None:
        """Raise one `UserError` that names every bad field, its value and the fix."""
        problems = []
        if not self.models:
            problems.append("no models: pass at least one model folder to --models")
        for model in self.models:
            path = Path(model).expanduser()
            if not path.is_dir():
                problems.append(f"model folder {model} does not exist")
            elif not (path / "config.json").is_file():
                problems.append(f"{model} is not a model folder (no config.json)")
        if not self.backends:
            problems.append("no backends: pass --backends with one or more of " + ", ".join(PEAK_OF_BACKEND))
        for backend in self.backends:
            if backend not in PEAK_OF_BACKEND:
                problems.append(f"unknown backend {backend!r}: choose from {', '.join(PEAK_OF_BACKEND)}")
        for name in ("questions", "batch_size", "seq_len", "repeats", "min_repeats"):
            if getattr(self, name) < 1:
                problems.append(
                    f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive integer"
                )
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads {self.threads} must be a positive integer")
        if problems:
            raise UserError("; ".join(problems))


# --- counting and timing ------------------------------------------------------------------------------


def matmul_flops(config: Any, seq_len: int) -> int:
    """Matmul FLOPs of one `seq_len`-token sequence through an encoder QA model (multiply-add = 2 FLOPs).

    Per layer: Q, K, V and output projections (4 H x H) and the FFN (H x F and F x H) on every token,
    plus attention scores (T x T x H) and context (T x T x H); then the QA head (H x 2) on every token.
    Embedding lookups, layer norms, softmax and GELU are left out: they are not matmuls.
    """
    t, h, f = seq_len, config.hidden_size, config.intermediate_size
    per_layer = 2 * t * (4 * h * h + 2 * h * f) + 2 * 2 * t * t * h
    return config.num_hidden_layers * per_layer + 2 * t * h * 2


# --- models ---------------------------------------------------------------------------------------------


def run_bench(cfg: BenchConfig, command: str = "") -> dict[str, Any]:
    """Benchmark every model of `cfg` on every backend; the report that `write_report` saves.

    Rows come in the order model x backend; ONNX backends whose export is missing are skipped and listed
    under `skipped`. Speedups compare each row with the first row measured (the first model's first
    backend, unless that export was missing): `speedup_vs_first`.
    """
    import torch

    from tinyroberta_es.data.loading import load_dataset

    cfg.validate()
    examples = list(load_dataset(cfg.dataset, bad_spans="keep").examples[: cfg.questions])
    if not examples:
        raise UserError(f"dataset {cfg.dataset} has no questions; pass a dataset with at least one")
    # One thread count for every backend and peak (ONNX Runtime's default, one per physical core, differs).
    threads = cfg.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        machine = machine_info()
        log.info("measuring the matmul peaks (load average %s)", machine["load_average_before"])
        peaks = measure_peaks(cfg.peak_shapes or PEAK_SHAPES, threads=threads, device=cfg.device)
        rows, skipped = [], []
        for model, name in zip(cfg.models, model_names(cfg.models), strict=True):
            for backend in cfg.backends:
                missing = missing_export(model, backend)
                if missing:
                    log.warning("skipping %s on %s: %s", name, backend, missing)
                    skipped.append({"model": name, "backend": backend, "reason": missing})
                    continue
                rows.append(bench_one(model, name, backend, examples, cfg, peaks, threads))
    finally:
        torch.set_num_threads(previous)  # the runners set it process-wide; leave the caller's as it was
    if not rows:
        raise UserError(
            "nothing was measured: every backend asked for lacks its export; run tinyroberta-es export"
        )
    add_speedups(rows, "speedup_vs_first")
    machine["load_average_after"] = _load_average()
    return {
        "command": command,
        "config": asdict(cfg),
        "machine": machine,
        "peaks": peaks,
        "baseline": {"model": rows[0]["model"], "backend": rows[0]["backend"]},
        "rows": rows,
        "skipped": skipped,
    }


def bench_one(
    model: str,
    name: str,
    backend: str,
    examples: Sequence[Any],
    cfg: BenchConfig,
    peaks: dict[str, dict[str, Any]],
    threads: int,
) -> dict[str, Any]:
    """One row: size, batch-1 latency (end to end and fixed length), throughput and fraction of peak."""
    import torch
    from transformers import AutoConfig

    from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer

    config = InferenceConfig(
        max_length=cfg.seq_len,
        doc_stride=min(128, cfg.seq_len // 3),
        batch_size=cfg.batch_size,
        backend=backend,
        threads=threads,
    )
    log.info("%s on %s: loading", name, backend)
    answerer = QuestionAnswerer.from_pretrained(model, config, device=cfg.device)
    runner = answerer.runner
    sync = torch.cuda.synchronize if str(runner.device).startswith("cuda") else None

    # End to end, batch 1: one question at a time through predict (tokenise, run, extract).
    for ex in examples[: cfg.warmup]:
        answerer.predict([ex])
    e2e = []
    for ex in examples:
        t0 = time.perf_counter()
        answerer.predict([ex])
        e2e.append(time.perf_counter() - t0)
    # End to end, batched: all the questions at once, windows in batches of `batch_size`.
    t0 = time.perf_counter()
    answerer.predict(examples)
    questions_per_s = len(examples) / (time.perf_counter() - t0)

    # Fixed length: the model call alone on `seq_len`-token windows, at batch 1 and at `batch_size`.
    one = fixed_length_inputs(answerer, examples, cfg.seq_len, batch=1)
    fixed = time_calls(
        lambda: runner(one),
        warmup=cfg.warmup,
        repeats=cfg.repeats,
        budget_s=cfg.budget_s,
        min_repeats=cfg.min_repeats,
        sync=sync,
    )
    many = fixed_length_inputs(answerer, examples, cfg.seq_len, batch=cfg.batch_size)
    batched = time_calls(
        lambda: runner(many), warmup=1, repeats=cfg.repeats, budget_s=cfg.budget_s, min_repeats=1, sync=sync
    )

    flops = matmul_flops(AutoConfig.from_pretrained(model), cfg.seq_len)
    fixed_b1 = percentiles(fixed)
    sequences_per_s = cfg.batch_size / (percentiles(batched)["p50"] / 1e3)
    peak_key = PEAK_OF_BACKEND[backend]
    peak = peaks.get(peak_key, {}).get("gflops")
    gflops_b1 = flops / (fixed_b1["p50"] / 1e3) / 1e9
    gflops_batch = flops * sequences_per_s / 1e9
    row = {
        "model": name,
        "folder": str(model),
        "backend": runner.name,
        "device": str(runner.device),
        "dtype": str(runner.dtype),
        "threads": runner.threads,
        "params": answerer.params,
        "weights_bytes": answerer.weights_bytes,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "questions": len(examples),
        "latency_ms_b1": percentiles(e2e)["p50"],
        "latency_b1": percentiles(e2e),
        "fixed_ms_b1": fixed_b1["p50"],
        "fixed_b1": fixed_b1,
        "fixed_batch": percentiles(batched),
        "throughput": questions_per_s,
        "sequences_per_s": sequences_per_s,
        "flops_per_sequence": flops,
        "gflops_b1": gflops_b1,
        "gflops_batch": gflops_batch,
        "peak": peak_key,
        "peak_gflops": peak,
        "fraction_of_peak": gflops_b1 / peak if peak else None,
        "fraction_of_peak_batch": gflops_batch / peak if peak else None,
        "load_average": _load_average(),  # 1, 5, 15 min, after this row: other jobs skew timings
    }
    log.info(
        "%s on %s: %.1f ms end to end, %.1f ms at %d tokens (%.0f%% of %s peak), %.1f questions/s",
        name,
        backend,
        row["latency_ms_b1"],
        row["fixed_ms_b1"],
        cfg.seq_len,
        100 * (row["fraction_of_peak"] or 0),
        peak_key,
        questions_per_s,
    )
    return row


def fixed_length_inputs(
    answerer: Any, examples: Sequence[Any], seq_len: int, batch: int
) -> dict[str, np.ndarray]:
    """`batch` copies of one full `seq_len`-token window, made by the answerer's own feature builder.

    The context is the dataset's contexts joined, so the tokens are real text and the window is full.
    """
    from tinyroberta_es.data.schema import Example

    contexts = " ".join(dict.fromkeys(ex.context for ex in examples))
    context = contexts
    while len(context) < 8 * seq_len:  # a token spans at least one character: 8x is plenty for a full window
        context += " " + contexts
    features = answerer.features([Example(id="fixed", question=examples[0].question, context=context)])
    full = [i for i, n in enumerate(features.lengths) if n == seq_len]
    if not full:
        raise UserError(f"could not build a {seq_len}-token window from the dataset; lower --seq-len")
    return features.batch([full[0]] * batch)


def missing_export(model: str, backend: str) -> str | None:
    """Why `backend` cannot run `model` (its ONNX export is missing), or None when it can."""
    from tinyroberta_es.backends import onnx_path

    if not backend.startswith("onnx"):
        return None
    path = onnx_path(model, backend)
    if path.is_file():
        return None
    quantize = " --quantize int8" if backend == "onnx-int8" else ""
    return f"no export at {path}; run: tinyroberta-es export --model {model}{quantize}"


def add_speedups(rows: list[dict[str, Any]], key: str) -> None:
    """Set `row[key]` to each row's speedup over `rows[0]`: latency ratios and throughput ratios."""
    base = rows[0]
    for row in rows:
        row[key] = {
            "latency_b1": base["latency_ms_b1"] / row["latency_ms_b1"],
            "fixed_b1": base["fixed_ms_b1"] / row["fixed_ms_b1"],
            "throughput": row["throughput"] / base["throughput"],
            "sequences_per_s": row["sequences_per_s"] / base["sequences_per_s"],
        }


def model_names(models: Sequence[str]) -> list[str]:
    """Short names for the rows: each folder's name, or the path as given where two folders share a name."""
    names = [Path(m).expanduser().resolve().name for m in models]
    return [name if names.count(name) == 1 else str(m) for name, m in zip(names, models, strict=True)]


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, library versions, and how loaded the machine is."""
    import torch
    import transformers

    from tinyroberta_es import __version__

    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tinyroberta_es": __version__,
        "load_average_before": _load_average(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
