"""The small-scale reproduction: teacher, distilled and undistilled 6- and 3-layer students, on XQuAD-es.

    python benchmarks/reproduction_small.py [--stages split,teacher,students,accuracy,speed,report]

Stages (each skips what is already done; every model folder is written by the real commands' code):
  split     `tinyroberta-es split`: SQuAD-es v1.1 dev-small minus XQuAD-es paragraphs -> train.json
  teacher   `finetune` of multilingual-e5-small (recipe's `finetune` section)
  students  `distill` for every student of the recipe
  accuracy  predict XQuAD-es with every model; EM/F1 under mlqa-es and squad -> accuracy.json
  speed     parameters, batch-1 latency (p50/p90 over real questions, tokenisation and extraction included)
            and batch-32 throughput on this machine -> speed.json. `--random-weights` times models of the
            same architecture and tokenizer with random weights (cost does not depend on weight values): how
            models trained on a lent GPU, too large to bring back, are timed on this CPU.
  report    benchmarks/results/reproduction-small.json and .md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from tinyroberta_es import atomic
from tinyroberta_es.data.loading import load_dataset, save_squad
from tinyroberta_es.data.split import remove_overlap
from tinyroberta_es.evaluation import evaluate_predictions
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.recipe import load_recipe

SHARED = Path(__file__).resolve().parents[2] / "shared"
SQUAD_ES_SMALL = SHARED / "data" / "squad_es_v1.1_small" / "dev-v1.1-es_small.json"
XQUAD_ES = SHARED / "data" / "xquad_es" / "xquad.es.json"
STAGES = ("split", "teacher", "students", "accuracy", "speed", "report")
log = logging.getLogger("reproduction")


def stage_split(recipe) -> None:
    out = Path(recipe.finetune.data.train)
    if out.is_file():
        return
    train, report = remove_overlap(load_dataset(SQUAD_ES_SMALL), load_dataset(XQUAD_ES, bad_spans="keep"))
    save_squad(train, out)
    log.info("split: %s", report)


def stage_teacher(recipe) -> None:
    from tinyroberta_es.commands.finetune import finetune

    finetune(recipe.finetune)


def stage_students(recipe, names: list[str] | None) -> None:
    from tinyroberta_es.distill.pipeline import distill

    for config in recipe.distill:
        if names is None or config.name in names:
            distill(config)


def models(recipe) -> dict[str, Path]:
    """Every model of the recipe by name, the teacher first."""
    return {"teacher": Path(recipe.finetune.output)} | {d.name: Path(d.output) for d in recipe.distill}


def stage_accuracy(recipe, workdir: Path, names: list[str] | None = None) -> None:
    """Answer XQuAD-es with the named models (default all) and merge their scores into accuracy.json."""
    xquad = load_dataset(XQUAD_ES, bad_spans="keep")
    path = workdir / "accuracy.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name, folder in models(recipe).items():
        if names is not None and name not in names:
            continue
        max_length = recipe.finetune.data.max_length
        answerer = QuestionAnswerer.from_pretrained(
            folder, InferenceConfig(max_length=max_length, batch_size=64)
        )
        preds = {p.id: p.text for p in answerer.predict(xquad.examples)}
        atomic.write_json(workdir / f"xquad-es-predictions-{name}.json", preds)
        results[name] = {
            norm: evaluate_predictions(xquad, preds, normalization=norm) for norm in ("mlqa-es", "squad")
        }
        log.info("%s: %s", name, results[name])
        atomic.write_json(path, results)


def random_copy(folder: Path, dest: Path) -> Path:
    """A model with `folder`'s architecture and tokenizer and random weights."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(AutoConfig.from_pretrained(folder))
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(folder).save_pretrained(dest)
    return dest


def stage_speed(recipe, workdir: Path, random_weights: bool, n_latency: int) -> None:
    import tempfile

    xquad = load_dataset(XQUAD_ES, bad_spans="keep")
    max_length = recipe.finetune.data.max_length
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in models(recipe).items():
            if not (folder / "config.json").is_file():
                log.warning("%s: no model at %s; not timed", name, folder)
                continue
            source = random_copy(folder, Path(tmp) / name) if random_weights else folder
            one = QuestionAnswerer.from_pretrained(
                source, InferenceConfig(max_length=max_length, batch_size=1), device="cpu"
            )
            params = sum(p.numel() for p in one.model.parameters())
            for ex in xquad.examples[:5]:  # warm-up
                one.predict([ex])
            times = []
            for ex in xquad.examples[:n_latency]:
                t0 = time.perf_counter()
                one.predict([ex])
                times.append(1000 * (time.perf_counter() - t0))
            batched = QuestionAnswerer(
                one.model, one.tokenizer, InferenceConfig(max_length=max_length, batch_size=32)
            )
            t0 = time.perf_counter()
            batched.predict(xquad.examples)
            seconds = time.perf_counter() - t0
            q = statistics.quantiles(times, n=10)
            results[name] = {
                "params": params,
                "latency_ms_b1": statistics.median(times),
                "latency_ms_b1_p90": q[8],
                "throughput_b32": len(xquad) / seconds,
            }
            log.info("%s: %s", name, results[name])
    results["_protocol"] = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "backend": "pytorch fp32 eager",
        "max_length": max_length,
        "latency": f"batch 1, median of the first {n_latency} XQuAD-es questions, "
        "tokenisation + model + extraction",
        "throughput": "batch 32, all 1,190 XQuAD-es questions, questions/s",
        "random_weights": random_weights,
    }
    atomic.write_json(workdir / "speed.json", results)


def stage_report(recipe, workdir: Path, command: str) -> None:
    accuracy = json.loads((workdir / "accuracy.json").read_text())
    speed = json.loads((workdir / "speed.json").read_text())
    teacher = accuracy["teacher"]["mlqa-es"]["f1"]
    t_speed = speed["teacher"]["latency_ms_b1"]
    entries = []
    for name, folder in models(recipe).items():
        config = next((d for d in recipe.distill if d.name == name), None)
        distilled = None if config is None else config.loss.kd > 0 or config.loss.hidden > 0
        if name not in accuracy or name not in speed:  # not trained (a run cut short)
            layers = config.student.layers if config else None
            entries.append({"name": name, "layers": layers, "distilled": distilled, "params": None,
                            "xquad_es": None, "xquad_es_squad": None, "latency_ms_b1": None,
                            "throughput_b32": None, "trained": False})  # fmt: skip
            continue
        layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
        acc, sp = accuracy[name], speed[name]
        entries.append({
            "name": name,
            "layers": layers,
            "distilled": distilled,
            "params": sp["params"],
            "xquad_es": {"f1": acc["mlqa-es"]["f1"], "exact_match": acc["mlqa-es"]["exact_match"]},
            "xquad_es_squad": {"f1": acc["squad"]["f1"], "exact_match": acc["squad"]["exact_match"]},
            "latency_ms_b1": sp["latency_ms_b1"],
            "latency_ms_b1_p90": sp["latency_ms_b1_p90"],
            "throughput_b32": sp["throughput_b32"],
            "f1_retention": acc["mlqa-es"]["f1"] / teacher,
            "speedup_b1": t_speed / sp["latency_ms_b1"],
            "trained": True,
        })  # fmt: skip
    report = {
        "command": command,
        "git_commit": _git_commit(),
        "recipe": "recipes/reproduction-small.yaml",
        "speed_protocol": speed["_protocol"],
        "models": entries,
    }
    results = Path("benchmarks/results")
    atomic.write_json(results / "reproduction-small.json", report)
    lines = [
        "# Small-scale reproduction: me5-small teacher and students on XQuAD-es (held out)",
        "",
        f"Produced by: {command} (recipe `recipes/reproduction-small.yaml`).",
        "",
        "| model | layers | distilled | params | F1 (mlqa-es) | EM (mlqa-es) | F1 (squad) | EM (squad) "
        "| F1 kept | latency b1 ms | speedup b1 | throughput b32 q/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        if not e["trained"]:
            lines.append(f"| {e['name']} | {e['layers']} | {e['distilled']} | not trained |" + " |" * 8)
            continue
        lines.append(
            f"| {e['name']} | {e['layers']} | {'-' if e['distilled'] is None else e['distilled']} "
            f"| {e['params'] / 1e6:.1f}M | {e['xquad_es']['f1']:.2f} | {e['xquad_es']['exact_match']:.2f} "
            f"| {e['xquad_es_squad']['f1']:.2f} | {e['xquad_es_squad']['exact_match']:.2f} "
            f"| {100 * e['f1_retention']:.1f}% | {e['latency_ms_b1']:.1f} | {e['speedup_b1']:.2f}x "
            f"| {e['throughput_b32']:.1f} |"
        )
    p = speed["_protocol"]
    lines += [
        "",
        f"Speed: {p['backend']} on {p['device']} ({p['torch_threads']} threads), max length "
        f"{p['max_length']}; latency: {p['latency']}; throughput: {p['throughput']}"
        + (
            "; timed with random weights of the same architecture and tokenizer."
            if p["random_weights"]
            else "."
        ),
    ]
    atomic.write_text(results / "reproduction-small.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/reproduction-small.yaml")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument("--students", default=None, help="comma-separated student names (default: all)")
    parser.add_argument("--teacher-model", default=None, help="encoder to fine-tune (default: the recipe's)")
    parser.add_argument("--random-weights", action="store_true", help="time random-weight copies (see above)")
    parser.add_argument("--latency-questions", type=int, default=100)
    parser.add_argument("--provenance", default="", help="how the models were produced, for the report")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override every run's config, e.g. --set train.max_steps=3 (smoke runs)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from tinyroberta_es.config import apply_overrides

    recipe = load_recipe(args.recipe)
    if args.teacher_model:
        recipe.finetune.model = args.teacher_model
    recipe.finetune.model = str(Path(recipe.finetune.model).expanduser())
    recipe.finetune = apply_overrides(recipe.finetune, args.set)
    recipe.distill = [apply_overrides(d, args.set) for d in recipe.distill]
    workdir = Path(recipe.finetune.output).parent
    workdir.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        sys.exit(f"unknown stage {unknown[0]!r}: choose from {', '.join(STAGES)}")
    if "split" in stages:
        stage_split(recipe)
    accuracy = "accuracy" in stages  # scored right after training, so a cut-short run keeps what it has
    if "teacher" in stages:
        stage_teacher(recipe)
        if accuracy:
            stage_accuracy(recipe, workdir, ["teacher"])
    if "students" in stages:
        for name in args.students.split(",") if args.students else [d.name for d in recipe.distill]:
            stage_students(recipe, [name])
            if accuracy:
                stage_accuracy(recipe, workdir, [name])
    elif accuracy:
        stage_accuracy(recipe, workdir)
    if "speed" in stages:
        stage_speed(recipe, workdir, args.random_weights, args.latency_questions)
    if "report" in stages:
        command = "python benchmarks/reproduction_small.py " + " ".join(sys.argv[1:])
        stage_report(recipe, workdir, args.provenance or command)


if __name__ == "__main__":
    main()
