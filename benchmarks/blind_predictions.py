"""Answer the blind MLQA-es set (500 questions, no answers) with QA models; write what gets committed.

    python benchmarks/blind_predictions.py NAME=FOLDER [NAME=FOLDER ...] [--scores NAME=RESULTS_JSON ...]
        [--max-length 384] [--doc-stride 128] [--batch-size 32]

For each model runs `tinyroberta-es predict --model FOLDER --dataset <blind file>
--output benchmarks/results/blind/NAME.json ...` (timed), then merges the model's entry into
benchmarks/results/blind/index.json: its predictions file, the command that made it, what the model is
(config.json, parameters from the safetensors headers), how it was trained (run_config.json,
train_state.json), how many questions it answered and how many with "", and, with --scores, where its
XQuAD-es scores are.
The blind file lives beside the repository, in ../shared/data/blind/ (see its README). There are no answers
here: the predictions are scored elsewhere with the official MLQA script (language es).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BLIND = ROOT.parent / "shared" / "data" / "blind" / "mlqa_es_dev_questions.json"
OUT = ROOT / "benchmarks" / "results" / "blind"
NOTE = "scored elsewhere with the official MLQA script (language es); no answers here"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", metavar="NAME=FOLDER", help="a model's name and its QA folder")
    parser.add_argument(
        "--scores",
        nargs="+",
        default=[],
        metavar="NAME=RESULTS_JSON",
        help="where a model's XQuAD-es scores are",
    )
    parser.add_argument("--max-length", type=int, default=384, help="tokens per window (default 384)")
    parser.add_argument("--doc-stride", type=int, default=128, help="tokens shared by windows (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    args = parser.parse_args()
    models, scores = _check(args)

    dataset = _rel(BLIND)
    for name, folder in models.items():
        output = OUT / f"{name}.json"
        flags = ["--model", _rel(folder), "--dataset", dataset, "--output", _rel(output)]
        flags += ["--max-length", str(args.max_length), "--doc-stride", str(args.doc_stride)]
        flags += ["--batch-size", str(args.batch_size)]
        print(f"{name}: predicting with {_rel(folder)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tinyroberta_es.cli", "predict", *flags], cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(
                f"error: predict failed for {name} (exit {done.returncode}); index.json not updated for it"
            )
        predictions = json.loads(output.read_text(encoding="utf-8"))
        empty = sum(answer == "" for answer in predictions.values())
        entry = {
            "predictions": _rel(output),
            "command": shlex.join(["tinyroberta-es", "predict", *flags]),
            "folder": _rel(folder),
            "model": _model(folder),
            "training": _training(folder),
            "questions": len(predictions),
            "no_answer_share": round(empty / max(len(predictions), 1), 4),
            "seconds": round(seconds, 1),  # the whole subprocess: load, tokenize, predict
            "machine": _machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _git_head(),
        }
        if name in scores:
            entry["xquad_es_scores"] = _rel(scores[name])
        _update_index(name, entry)
        share = entry["no_answer_share"]
        print(f"{name}: {entry['questions']} questions, {share:.1%} answered with '', {seconds:.0f} s")
    print(f"wrote {_rel(OUT / 'index.json')}")


def _check(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Path]]:
    """Parse NAME=PATH pairs; collect every problem and exit with them, one line each."""
    problems: list[str] = []

    def pairs(values: list[str], what: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for value in values:
            name, sep, path = value.partition("=")
            if not sep or not name or not path:
                problems.append(f"{value!r}: expected {what}")
            elif not NAME_RE.fullmatch(name):
                problems.append(f"{value!r}: the name may hold letters, digits, '.', '_' and '-' only")
            elif name in out:
                problems.append(f"{value!r}: name {name!r} given twice in {what} pairs")
            else:
                out[name] = (Path.cwd() / path).resolve()
        return out

    models = pairs(args.models, "NAME=FOLDER")
    scores = pairs(args.scores, "NAME=RESULTS_JSON")
    for name, folder in models.items():
        if not folder.is_dir():
            problems.append(f"model {name}: folder {folder} does not exist")
        elif not (folder / "config.json").is_file():
            problems.append(f"model {name}: {folder} has no config.json (not a QA model folder)")
    for name, path in scores.items():
        if name not in models:
            problems.append(f"--scores {name}: no model named {name} (models: {', '.join(models) or 'none'})")
        if not path.is_file():
            problems.append(f"--scores {name}: {path} does not exist")
    for flag in ("max_length", "doc_stride", "batch_size"):
        if getattr(args, flag) <= 0:
            problems.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be positive")
    if not BLIND.is_file():
        problems.append(
            f"blind file not found: expected {BLIND} (../shared/data/blind/ beside the repository)"
        )
    if problems:
        sys.exit("\n".join(f"error: {p}" for p in problems))
    return models, scores


def _model(folder: Path) -> dict[str, Any]:
    """What the model is: its config's size fields and its parameter count."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")
    return {k: config.get(k) for k in keys} | {"params": _params(folder)}


def _params(folder: Path) -> int | None:
    """Parameters counted from the safetensors headers (8-byte length, then JSON; no weights read)."""
    files = sorted(folder.glob("*.safetensors"))
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for key, tensor in header.items():
            if key != "__metadata__":
                n = 1
                for dim in tensor["shape"]:
                    n *= dim
                total += n
    return total if files else None


def _training(folder: Path) -> dict[str, Any] | None:
    """How the model was trained, in short: the run_config.json fields that tell runs apart, and the step."""
    run = _json(folder / "run_config.json")
    state = _json(folder / "train_state.json")
    if run is None and state is None:
        return None
    out: dict[str, Any] = {}
    if run is not None:
        train, loss = run.get("train") or {}, run.get("loss") or {}
        out["command"] = run.get("command")
        if run.get("teacher"):
            out["teacher"] = run["teacher"]
        out["data"] = (run.get("data") or {}).get("train")
        out |= {k: train.get(k) for k in ("epochs", "max_steps")}
        if loss:
            keys = ("kd", "temperature", "ce", "hidden", "attention", "relations")
            out["loss"] = {k: loss[k] for k in keys if k in loss}
    if state is not None:
        out["step"] = state.get("step")
    return out


def _update_index(name: str, entry: dict[str, Any]) -> None:
    """Merge `entry` under `name` into index.json, written whole to a temp file, then moved over it."""
    path = OUT / "index.json"
    index = _json(path) or {}
    models = index.get("models") or {}
    models[name] = entry
    index = {"note": NOTE, "dataset": _dataset(), "models": models}
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _dataset() -> dict[str, Any]:
    data = json.loads(BLIND.read_text(encoding="utf-8"))["data"]
    questions = sum(len(p["qas"]) for article in data for p in article["paragraphs"])
    sha256 = hashlib.sha256(BLIND.read_bytes()).hexdigest()
    return {"path": _rel(BLIND), "questions": questions, "sha256": sha256}


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _rel(path: Path) -> str:
    """`path` as a user types it from the repository root."""
    return os.path.relpath(path, ROOT)


def _git_head() -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _machine() -> str:
    """Where predict ran: the GPU when torch sees one (predict picks it then), else the CPU's name."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return "unknown CPU"


if __name__ == "__main__":
    main()
