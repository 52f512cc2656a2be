"""How fast QA models answer, per runtime backend, and how close each comes to this machine's peak.

A short sibling of the inference path, not a second one: end-to-end timings go through
`QuestionAnswerer.predict` (tokenisation + model + extraction) and fixed-length timings through the very
runner that `QuestionAnswerer` calls. Every measurement warms up first, is timed with `time.perf_counter`,
synchronises only on GPU and is summarised by its median and percentiles (p99 only from 100 samples on).

The matmul peaks are measured in the same run, at the models' own matmul shapes and with the same
statistic (the median), for every engine and dtype (`timing.measure_peaks`). A row's matmul FLOPs are split
by the dtype they run in (`Runner.matmul_dtypes`: constant-weight "linear" matmuls, computed-by-computed
"attention" ones), so its "fraction of peak" is the time those FLOPs would take at the peaks of their own
dtypes over the time the model took. Every speedup says what it compares (`labelled_speedups`): like for
like, best against best, or against the baseline model in eager fp32.
"""

from __future__ import annotations

import contextlib
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
from tinyroberta_es.speedups import add_speedups, labelled_speedups
from tinyroberta_es.timing import measure_peaks, percentiles, time_calls

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """What to benchmark and how long to spend on it."""

    models: list[str] = field(default_factory=list)  # model folders; the first one is the speedup baseline
    backends: list[str] = field(default_factory=lambda: ["pytorch"])  # runtimes.BACKENDS keys, or auto
    dataset: str = "sample"  # dataset name (xquad_es, sample) or SQuAD-format file: the real questions
    questions: int = 100  # first N questions of the dataset, for end-to-end latency and throughput
    batch_size: int = 32  # windows (end to end) and sequences (fixed length) per call for throughput
    seq_len: int = 384  # tokens of the fixed-length inputs
    threads: int | None = None  # CPU threads for every backend and for the peaks (None: torch's default)
    warmup: int = 2  # untimed calls before each timed series
    repeats: int = 100  # timed fixed-length calls at batch 1, at most (100 give a p99)
    min_samples: int = 100  # timed end-to-end batch-1 calls at least, cycling through the questions
    budget_s: float = 20.0  # stop a timed fixed-length series after this long, once it has `min_repeats`
    min_repeats: int = 3
    # (M, N, K) to measure the peaks at; None: the models' own, (T, H, H), (T, F, H), (T, H, F).
    peak_shapes: tuple[tuple[int, int, int], ...] | None = None
    device: str = "cpu"

    def validate(self) -> None:
        """Raise one `UserError` that names every bad field, its value and the fix."""
        from tinyroberta_es.runtimes import BACKENDS

        choices = ", ".join([*BACKENDS, "auto"])
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
            problems.append(f"no backends: pass --backends with one or more of {choices}")
        for backend in self.backends:
            if backend not in BACKENDS and backend != "auto":
                problems.append(f"unknown backend {backend!r}: choose from {choices}")
        for name in ("questions", "batch_size", "seq_len", "repeats", "min_repeats", "min_samples"):
            if getattr(self, name) < 1:
                problems.append(
                    f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive integer"
                )
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads {self.threads} must be a positive integer")
        if problems:
            raise UserError("; ".join(problems))


# --- counting -------------------------------------------------------------------------------------------


def matmul_flops_by_group(config: Any, seq_len: int) -> dict[str, int]:
    """Matmul FLOPs of one `seq_len`-token sequence through an encoder QA model, by the kind of matmul.

    "linear" (constant weights): per layer the Q, K, V and output projections (4 H x H) and the FFN (H x F
    and F x H) on every token, then the QA head (H x 2) on every token. "attention" (both inputs computed):
    per layer the scores (T x T x H) and the context (T x T x H). Multiply-add = 2 FLOPs. Embedding lookups,
    layer norms, softmax and GELU are left out: they are not matmuls.
    """
    t, h, f, layers = seq_len, config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return {
        "linear": layers * 2 * t * (4 * h * h + 2 * h * f) + 2 * t * h * 2,
        "attention": layers * 2 * 2 * t * t * h,
    }


def matmul_flops(config: Any, seq_len: int) -> int:
    """Matmul FLOPs of one `seq_len`-token sequence, every group together (`matmul_flops_by_group`)."""
    return sum(matmul_flops_by_group(config, seq_len).values())


def model_shapes(configs: Sequence[Any], seq_len: int) -> tuple[tuple[int, int, int], ...]:
    """The (M, N, K) of the linear matmuls of one `seq_len`-token sequence in each model, deduplicated.

    (T, H, H): the Q, K, V and output projections; (T, F, H): the FFN up; (T, H, F): the FFN down.
    """
    shapes: dict[tuple[int, int, int], None] = {}
    for c in configs:
        t, h, f = seq_len, c.hidden_size, c.intermediate_size
        shapes.update(dict.fromkeys([(t, h, h), (t, f, h), (t, h, f)]))
    return tuple(shapes)


@dataclass
class PeakBound:
    """The time one sequence's matmuls would take at the peaks of the engine and dtypes they run in."""

    ideal_ms: float | None  # sum over groups of FLOPs / peak; None when a dtype or a fitting peak is missing
    peaks_used: dict[str, dict[str, Any]]  # group -> {"peak": "ort-int8", "gflops": rate}
    note: str | None  # why `ideal_ms` is None


def peak_bound(
    flops_by_group: dict[str, int],
    matmul_dtypes: dict[str, str] | None,
    engine: str,
    device: str,
    peaks: dict[str, dict[str, Any]],
) -> PeakBound:
    """Each group's FLOPs over the peak of `engine` in that group's dtype, measured on `device`, summed."""
    used: dict[str, dict[str, Any]] = {}
    problems = []
    ms = 0.0
    for group, flops in flops_by_group.items():
        dtype = (matmul_dtypes or {}).get(group)
        key = f"{engine}-{dtype}"
        peak = peaks.get(key)
        if dtype is None:
            problems.append(f"the runtime does not say what dtype its {group} matmuls run in")
        elif peak is None:
            problems.append(f"no {key} peak was measured")
        elif _device_key(peak["device"]) != _device_key(device):
            gpu_run = " (no fraction of a CPU peak for a GPU run)" if device.startswith("cuda") else ""
            problems.append(
                f"the {key} peak was measured on {peak['device']}, this row ran on {device}{gpu_run}"
            )
        elif peak.get("verified_int8") is False:
            problems.append(f"the {key} peak did not compile to an int8 matmul")
        else:
            used[group] = {"peak": key, "gflops": peak["gflops"]}
            ms += flops / (peak["gflops"] * 1e9) * 1e3
    return PeakBound(None if problems else ms, used, "; ".join(problems) or None)


def _device_key(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


# --- models ---------------------------------------------------------------------------------------------


def run_bench(cfg: BenchConfig, command: str = "") -> dict[str, Any]:
    """Benchmark every model of `cfg` on every backend; the report that `write_report` saves.

    Rows come in the order model x backend; backends whose export is missing are skipped and listed under
    `skipped`. `speedups` compares every row with the first model (`labelled_speedups`); each row also keeps
    `speedup_vs_first`, against the first row measured.
    """
    import torch
    from transformers import AutoConfig

    from tinyroberta_es.data.loading import load_dataset

    cfg.validate()
    examples = list(load_dataset(cfg.dataset, bad_spans="keep").examples[: cfg.questions])
    if not examples:
        raise UserError(f"dataset {cfg.dataset} has no questions; pass a dataset with at least one")
    shapes = cfg.peak_shapes or model_shapes([AutoConfig.from_pretrained(m) for m in cfg.models], cfg.seq_len)
    # One thread count for every backend and peak (ONNX Runtime's default, one per physical core, differs).
    threads = cfg.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        machine = machine_info()
        log.info("measuring the matmul peaks (load average %s)", machine["load_average_before"])
        peaks = measure_peaks(shapes, threads=threads, device=cfg.device)
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
        "peak_shapes": [list(s) for s in shapes],
        "peaks": peaks,
        "baseline": {"model": rows[0]["model"], "backend": rows[0]["backend"]},
        "speedups": labelled_speedups(rows, cfg.models[0]),
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
    from tinyroberta_es.runtimes import engine_of

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

    # End to end, batch 1: one question at a time through predict (tokenise, run, extract), cycling through
    # the questions until there are `min_samples` timings (a p99 needs 100).
    for ex in examples[: cfg.warmup]:
        answerer.predict([ex])
    e2e = []
    for i in range(max(len(examples), cfg.min_samples)):
        ex = examples[i % len(examples)]
        t0 = time.perf_counter()
        answerer.predict([ex])
        e2e.append(time.perf_counter() - t0)
    # End to end, batched: all the questions at once, windows in batches of `batch_size`; one untimed pass.
    passes = time_calls(
        lambda: answerer.predict(examples),
        warmup=1,
        repeats=max(3, cfg.min_repeats),
        budget_s=cfg.budget_s,
        min_repeats=1,
    )
    e2e_batch = percentiles(passes)
    questions_per_s = len(examples) / (e2e_batch["p50"] / 1e3)

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

    flops_by_group = matmul_flops_by_group(AutoConfig.from_pretrained(model), cfg.seq_len)
    flops = sum(flops_by_group.values())
    fixed_b1 = percentiles(fixed)
    sequences_per_s = cfg.batch_size / (percentiles(batched)["p50"] / 1e3)
    bound = peak_bound(
        flops_by_group, runner.matmul_dtypes, engine_of(runner.name), str(runner.device), peaks
    )
    row = {
        "model": name,
        "folder": str(model),
        "backend": runner.name,
        "device": str(runner.device),
        "dtype": str(runner.dtype),
        "matmul_dtypes": runner.matmul_dtypes,
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
        "e2e_batch": e2e_batch,  # ms per pass over every question
        "throughput": questions_per_s,
        "sequences_per_s": sequences_per_s,
        "flops_per_sequence": flops,
        "flops_by_group": flops_by_group,
        "gflops_b1": flops / (fixed_b1["p50"] / 1e3) / 1e9,
        "gflops_batch": flops * sequences_per_s / 1e9,
        "peaks_used": bound.peaks_used,
        "ideal_ms_b1": bound.ideal_ms,  # the matmuls alone at the peaks of their dtypes
        "fraction_of_peak": None if bound.ideal_ms is None else bound.ideal_ms / fixed_b1["p50"],
        "fraction_of_peak_batch": None if bound.ideal_ms is None else bound.ideal_ms * sequences_per_s / 1e3,
        "fraction_of_peak_note": bound.note,
        "load_average": _load_average(),  # 1, 5, 15 min, after this row: other jobs skew timings
    }
    if runner.selection is not None:
        row["auto"] = runner.selection
    log.info(
        "%s on %s: %.1f ms end to end, %.1f ms at %d tokens (%s of peak), %.1f questions/s",
        name,
        runner.name,
        row["latency_ms_b1"],
        row["fixed_ms_b1"],
        cfg.seq_len,
        "?" if row["fraction_of_peak"] is None else f"{100 * row['fraction_of_peak']:.0f}%",
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
    """Why `backend` cannot run `model` (its ONNX or OpenVINO export is missing), or None when it can."""
    from tinyroberta_es.runtimes import missing_files

    return None if backend == "auto" else missing_files(model, backend)


# --- names and the machine ------------------------------------------------------------------------------


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
    for library in ("onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            info[library] = __import__(library).__version__
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
