"""Probe: can `torch.compile` take the paper student past 40x the teacher on this CPU?

    python benchmarks/compile_probe.py

The paper pair of `speed_paper.py` (random weights, batch 1 x 384 tokens, 2 threads): the teacher in PyTorch
fp32 eager is the reference; the student runs in bf16 eager (the `pytorch-bf16` backend), then compiled by
Inductor with frozen weights (prepacked for oneDNN), then with `max-autotune`, each compiled for the one shape
it runs. The `pytorch-bf16-compiled` backend grew out of it, with dynamic shapes so one compile serves every
length (`speed_paper.py` measures it). Writes benchmarks/results/compile-probe.json.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForQuestionAnswering

from tinyroberta_es import atomic
from tinyroberta_es.bench import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_paper import PAPER_STUDENT, build

SEQ, THREADS, REPEATS = 384, 2, 15
OUT = Path(__file__).resolve().parent / "results" / "compile-probe.json"


def median_ms(call, repeats: int = REPEATS) -> float:
    with torch.inference_mode():
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    import torch._inductor.config as inductor

    torch.set_num_threads(THREADS)
    ids = torch.randint(5, 50_000, (1, SEQ))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir, student_dir = Path(tmp) / "teacher", Path(tmp) / "student"
        build(teacher_dir)
        build(student_dir, **PAPER_STUDENT)
        teacher = AutoModelForQuestionAnswering.from_pretrained(teacher_dir, dtype=torch.float32).eval()
        rows["teacher fp32 eager"] = {"ms": median_ms(lambda: teacher(**inputs), repeats=5)}
        teacher = None  # free its 1.4 GB before the student runs
        student = AutoModelForQuestionAnswering.from_pretrained(
            student_dir, dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    rows["student bf16 eager"] = {"ms": median_ms(lambda: student(**inputs))}
    inductor.freezing = True  # constant-fold the weights and prepack them for oneDNN
    variants = (("student bf16 compiled, frozen", None), ("... + max-autotune", "max-autotune-no-cudagraphs"))
    for name, mode in variants:
        torch._dynamo.reset()
        compiled = torch.compile(student, mode=mode)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(**inputs)
        rows[name] = {"ms": median_ms(lambda c=compiled: c(**inputs)), "compile_s": time.perf_counter() - t0}
    base = rows["teacher fp32 eager"]["ms"]
    for row in rows.values():
        row["speedup_vs_teacher_fp32"] = round(base / row["ms"], 1)
        row["ms"] = round(row["ms"], 1)
    result = {
        "command": "python benchmarks/compile_probe.py",
        "protocol": f"random weights, batch 1 x {SEQ} tokens, {THREADS} threads, median of {REPEATS} calls "
        "after 3 warm-up calls (teacher: 5 calls)",
        "machine": {"cpu": cpu_name(), "torch": torch.__version__},
        "rows": rows,
    }
    atomic.write_json(OUT, result)
    for name, row in rows.items():
        print(f"{name:34s} {row['ms']:7.1f} ms  {row['speedup_vs_teacher_fp32']:5.1f}x")


if __name__ == "__main__":
    main()
