"""One distillation step of recipes/paper.yaml at full size: peak memory and seconds per step, per loss setup.

    python benchmarks/paper_scale.py [--batch 32] [--seq-len 384] [--steps 3] [--device cpu|cuda]
        [--label after] [--output benchmarks/results/paper-scale.json]

The paper's teacher (roberta-large-bne: 24 layers x 1024, 16 heads, 355M parameters) and student (6 x 512, 16
heads, 51.2M) with RANDOM weights (memory and time do not depend on their values), the teacher's real
tokenizer from ../shared/tokenizers/roberta-large-bne, and full windows of real Spanish text (XQuAD-es
contexts, padded to --seq-len only when shorter). Each loss setup runs in a fresh process: build the models
as `distill` does (student from the teacher's config, then the frozen teacher in the training precision),
then --steps optimizer steps (AdamW, bf16 autocast, clip 1.0) of the recipe's `DistillModule`; the first
step warms up, the others are timed (median). Memory: on CUDA the peak allocated by PyTorch during the steps;
on a CPU the peak resident set size during the steps (VmHWM, reset after set-up) minus the resident size
before them; both divided by the batch for a per-window figure. "teacher pass" times one no-grad teacher
forward of the batch: what the logit cache costs per batch, once per run, on top of the steps (the code
before computed it even when the intermediate losses ran the teacher online at every step anyway).

The "before" column is the same script run on the code before the changes (commit 3ad1ecb), which kept
every teacher layer's attention scores (eager attention everywhere) and the teacher in fp32:

    git worktree add /tmp/before 3ad1ecb
    PYTHONPATH=/tmp/before/src python benchmarks/paper_scale.py --label before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "roberta-large-bne"
XQUAD = SHARED / "data" / "xquad_es" / "xquad.es.json"
# loss setups: name -> LossConfig fields (the recipe's is "all"; "kd+ce" is what a logit cache serves)
SETUPS = {
    "kd+ce": {"kd": 1.0, "ce": 1.0, "hidden": 0.0, "attention": 0.0},
    "kd+ce+hidden": {"kd": 1.0, "ce": 1.0, "hidden": 1.0, "attention": 0.0},
    "kd+ce+attention": {"kd": 1.0, "ce": 1.0, "hidden": 0.0, "attention": 1.0},
    "all (paper.yaml)": {"kd": 1.0, "ce": 1.0, "hidden": 1.0, "attention": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=384)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps; the first is a warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--setups", default=",".join(SETUPS), help="comma-separated, from: " + ", ".join(SETUPS)
    )
    parser.add_argument("--label", default="after", help="the column these rows fill (after, before)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "paper-scale.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setup in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args, args.one)))
        return
    rows = []
    for setup in args.setups.split(","):
        if setup not in SETUPS:
            sys.exit(f"unknown setup {setup!r}: choose from {', '.join(SETUPS)}")
        argv = [sys.executable, __file__, *sys.argv[1:], "--one", setup]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"setup": setup, "error": done.stderr.strip().splitlines()[-1][:300]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    write(args, rows)


def measure(args: argparse.Namespace, setup: str) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

    from tinyroberta_es.config import LossConfig, StudentConfig
    from tinyroberta_es.distill.mapping import layer_matches, make_projection
    from tinyroberta_es.distill.module import DistillModule
    from tinyroberta_es.distill.student import build_student

    try:  # the code after the changes keeps the frozen teacher in the training precision
        from tinyroberta_es.distill.pipeline import frozen_teacher
    except ImportError:  # the code before kept it in fp32
        frozen_teacher = None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(TOKENIZER / "teacher-config.json")
    teacher = AutoModelForQuestionAnswering.from_config(config)
    student = build_student(teacher, StudentConfig(preset="paper"), seed=0)
    loss = LossConfig(**SETUPS[setup], attention_loss="mse", layer_map="uniform")
    matches = layer_matches(24, 6, loss, teacher_heads=16, student_heads=16)
    projection = make_projection(512, 1024) if loss.hidden > 0 else None
    if frozen_teacher is not None:
        teacher = frozen_teacher(teacher, "bf16", device)
    module = DistillModule(student, teacher.to(device), loss, matches, projection).to(device).train()
    # kd+ce reads cached logits in the recipe; here the teacher runs online for it in both columns
    batch = windows(AutoTokenizer.from_pretrained(TOKENIZER), args.batch, args.seq_len, device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-5)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            total, _ = module(**batch)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()  # warm-up: optimizer state allocated, kernels chosen
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident size
    times = [step() for _ in range(max(1, args.steps - 1))]
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _hwm()
    # what one batch costs the logit cache's extra teacher pass (before: even when the teacher ran online)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        module.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    teacher_pass = time.perf_counter() - start
    return {
        "setup": setup,
        "label": args.label,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "device": _device_name(device),
        "threads": torch.get_num_threads(),
        "teacher_dtype": str(next(teacher.parameters()).dtype).removeprefix("torch."),
        "seconds_per_step": round(statistics.median(times), 2),
        "timed_steps": len(times),
        "teacher_pass_seconds": round(teacher_pass, 2),
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)",
        "resident_before_gb": round(base / 2**30, 2),
        "step_peak_gb": round((peak - base) / 2**30, 2),
        "per_window_mb": round((peak - base) / 2**20 / args.batch, 1),
        "total_peak_gb": round(peak / 2**30, 2),
        "torch": torch.__version__,
    }


def windows(tokenizer, batch: int, seq_len: int, device):
    """`batch` windows of `seq_len` tokens: an XQuAD-es question and its context, truncated (full windows)."""
    import torch

    data = json.loads(XQUAD.read_text(encoding="utf-8"))["data"]
    pairs = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    pairs = pairs[::7][:batch]
    enc = tokenizer(
        [q for q, _ in pairs],
        [c + " " + c for _, c in pairs],  # doubled: every window reaches seq_len
        truncation="only_second",
        max_length=seq_len,
        padding="max_length",
        return_tensors="pt",
    )
    n = len(pairs)
    return {
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": enc["attention_mask"].to(device),
        "start_positions": torch.full((n,), 40, device=device),
        "end_positions": torch.full((n,), 45, device=device),
        "feature_index": torch.arange(n, device=device),
    }


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor() or "cpu"


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    """Merge these rows into the JSON (keyed by label and setup) and rewrite the markdown table beside it."""
    sys.path.insert(0, str(ROOT / "src"))
    from tinyroberta_es import atomic

    path = Path(args.output)
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"rows": [], "commands": {}}
    replaced = {(args.label, r["setup"]) for r in rows}
    saved["rows"] = [r for r in saved["rows"] if (r.get("label"), r["setup"]) not in replaced]
    saved["rows"] += [{**r, "label": args.label} for r in rows]
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    saved["commands"][args.label] = env + " ".join(["python benchmarks/paper_scale.py", *sys.argv[1:]])
    atomic.write_json(path, saved)
    lines = [
        "| setup | column | device | batch x len | teacher | s/step | teacher pass s | step peak GB "
        "| MB/window |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(saved["rows"], key=lambda r: (list(SETUPS).index(r["setup"]), r["label"])):
        if "error" in r:
            lines.append(f"| {r['setup']} | {r['label']} | error: {r['error']} | | | | | | |")
            continue
        shape = f"{r['batch']} x {r['seq_len']}"
        lines.append(
            f"| {r['setup']} | {r['label']} | {r['device']} | {shape} | {r['teacher_dtype']} "
            f"| {r['seconds_per_step']} | {r.get('teacher_pass_seconds', '')} | {r['step_peak_gb']} "
            f"| {r['per_window_mb']} |"
        )
    atomic.write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
