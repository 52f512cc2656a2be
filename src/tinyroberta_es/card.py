"""The model card of a distilled student: Hugging Face metadata (YAML front matter), then markdown.

`model_card(summary, student)` reads the run's `summary.json` record and nothing else but the student's own
`config.json` (for its shape): every number on the card is one the run measured, and what the run did not
measure is said to be missing, never filled in. `write_card` saves the card as the student folder's
README.md, which `tinyroberta-es push` uploads as the Hub model page.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from tinyroberta_es.atomic import write_text
from tinyroberta_es.card_usage import exported_backends, usage
from tinyroberta_es.config import to_yaml
from tinyroberta_es.data.sources import DATASETS, normalize_name
from tinyroberta_es.errors import UserError
from tinyroberta_es.summary import auto_choices

NOT_MEASURED = "not measured in this run"
SPEEDUP_VIEWS = ("best_vs_best", "like_for_like", "vs_baseline_eager_fp32")  # the bench's labelled views
HUB_DATASETS = {  # name prefix of a named dataset -> its Hub id
    "squad_es_": "ccasimiro/squad_es",
    "xquad_es": "google/xquad",
    "mlqa_es_": "facebook/mlqa",
    "sqac_": "PlanTL-GOB-ES/SQAC",
}
NORMALISATIONS = {
    "mlqa-es": "MLQA's official evaluation with Spanish articles (el, la, los, las, un, una, unos, unas) "
    "removed and Unicode punctuation stripped",
    "squad": "SQuAD v1.1's official normalisation (English articles)",
}
CITATION = r"""@article{bazaga2023language,
  title={Language Model Knowledge Distillation for Efficient Question Answering in Spanish},
  author={Bazaga, Adri{\'a}n and Li{\`o}, Pietro and Micklem, Gos},
  journal={arXiv preprint arXiv:2312.04193},
  year={2023}
}"""
_SHAPE = (  # config.json key -> how the card says it
    ("num_hidden_layers", "{} layers"),
    ("hidden_size", "hidden size {}"),
    ("num_attention_heads", "{} attention heads"),
    ("intermediate_size", "feed-forward size {}"),
    ("vocab_size", "a vocabulary of {:,} pieces"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def model_card(summary: dict[str, Any], student: str) -> str:
    """The Hugging Face model card (README.md text) of the student named `student`."""
    model = find_model(summary, student)
    front = to_yaml(metadata(summary, model))
    sections = [
        f"# {student}\n\n{intro(summary, model)}",
        f"## Teacher\n\n{teacher_section(summary, model)}",
        f"## Training data\n\n{training_data(model)}",
        f"## Distillation\n\n{distillation(model)}",
        f"## Evaluation\n\n{evaluation(summary, student)}",
        f"## Speed\n\n{speed(summary, student)}",
        f"## How to use\n\n{usage(summary, model)}",
        f"## Limitations\n\n{limitations(summary, model)}",
        f"## Citation\n\n```bibtex\n{CITATION}\n```",
    ]
    return f"---\n{front}---\n\n" + "\n\n".join(sections) + "\n"


def write_card(summary: dict[str, Any], student: str) -> Path:
    """Write the card to <student folder>/README.md atomically; return its path."""
    path = Path(find_model(summary, student)["folder"]) / "README.md"
    write_text(path, model_card(summary, student))
    return path


def find_model(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """The `models` entry named `name`."""
    for model in summary.get("models", []):
        if model["name"] == name:
            return model
    names = ", ".join(m["name"] for m in summary.get("models", []))
    raise UserError(f"the run summary has no model {name!r}: choose one of {names or '(none)'}")


def hub_dataset(name: str) -> str | None:
    """The Hub id of a named dataset (squad_es_v1.1_train -> ccasimiro/squad_es); None for files, samples."""
    key = normalize_name(name)
    if key not in DATASETS:
        return None
    return next((hub for prefix, hub in HUB_DATASETS.items() if key.startswith(prefix)), None)


def describe_dataset(name: str) -> str:
    """A dataset name with its description (version, size), or the file it is."""
    key = normalize_name(name)
    return f"`{key}`: {DATASETS[key].description}" if key in DATASETS else f"`{name}` (a local file)"


def is_hub_model(source: str | None) -> bool:
    """Whether `source` looks like a Hub id (owner/name) rather than a local folder."""
    return bool(source) and bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


def metadata(summary: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML front matter."""
    card = summary["recipe"].get("card") or {}
    teacher = find_model(summary, summary["teacher"])
    names = [distill_config(model).get("data", {}).get("train"), *summary["evaluation"]["datasets"]]
    datasets = list(card.get("datasets", [])) + [hub_dataset(n) for n in names if n]
    meta: dict[str, Any] = {
        "language": ["es"],
        "license": card.get("license") or "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "question-answering",
        "tags": ["question-answering", "knowledge-distillation", "spanish", "tinyroberta-es"]
        + [f for f in ("onnx", "openvino") if any(b.startswith(f) for b in exported_backends(model))],
    }
    if any(datasets):
        meta["datasets"] = list(dict.fromkeys(d for d in datasets if d))
    if is_hub_model(teacher.get("source")):
        meta["base_model"] = teacher["source"]
    results = model_index_results(summary, model["name"])
    if results:
        meta["metrics"] = ["exact_match", "f1"]
        meta["model-index"] = [{"name": model["name"], "results": results}]
    return meta


def model_index_results(summary: dict[str, Any], student: str) -> list[dict[str, Any]]:
    """One model-index result per evaluation dataset of the student's PyTorch rows."""
    evaluation = summary["evaluation"]
    norms = [evaluation["primary"]] + [n for n in evaluation["normalizations"] if n != evaluation["primary"]]
    results = []
    for row in eval_rows(summary, student, backend="pytorch"):
        metrics = [
            {"type": kind, "value": row["scores"][norm][kind], "name": f"{label} ({norm} normalisation)"}
            for norm in norms
            if norm in row["scores"]
            for kind, label in (("exact_match", "EM"), ("f1", "F1"))
        ]
        dataset = {"name": row["dataset"], "type": hub_dataset(row["dataset"]) or row["dataset"]}
        task = {"type": "question-answering", "name": "Question Answering"}
        results.append({"task": task, "dataset": dataset, "metrics": metrics})
    return results


def eval_rows(summary: dict[str, Any], model: str, backend: str | None = None) -> list[dict[str, Any]]:
    """The evaluation rows of `model` (on `backend` only, when given)."""
    rows = summary["evaluation"].get("rows", [])
    return [r for r in rows if r["model"] == model and backend in (None, r["backend"])]


def distill_config(model: dict[str, Any]) -> dict[str, Any]:
    """The student's DistillConfig as plain data ({} when the summary lacks it)."""
    return model.get("config") or {}


def student_shape(folder: str) -> str:
    """Layers, width, heads and vocabulary from the model's config.json; '' when it is absent."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return ", ".join(text.format(config[key]) for key, text in _SHAPE if key in config)


def intro(summary: dict[str, Any], model: dict[str, Any]) -> str:
    """What the model is, who taught it (through teaching assistants), its size against the teacher's."""
    teacher = find_model(summary, summary["teacher"])
    version = summary.get("versions", {}).get("tinyroberta_es", "")
    taught = ", itself distilled from ".join(f"**{name}**" for name in teachers(summary, model))
    text = (
        f"An extractive question-answering model for Spanish: a student distilled from {taught} "
        f"with tinyroberta-es {version}, following *Language Model Knowledge Distillation for Efficient "
        f"Question Answering in Spanish* (SpanishTinyRoBERTa, arXiv 2312.04193)."
    )
    params, teacher_params = model.get("params"), teacher.get("params")
    if params and teacher_params:
        text += (
            f" It has {params:,} parameters, {params / teacher_params:.1%} of the teacher's "
            f"{teacher_params:,}."
        )
    shape = student_shape(model["folder"])
    return text + (f" Architecture: {shape}." if shape else "")


def teachers(summary: dict[str, Any], model: dict[str, Any]) -> list[str]:
    """Who taught the student, nearest first, back to the run's teacher: [assistant, ..., teacher]."""
    return (model.get("chain") or [model["name"], summary["teacher"]])[1:]


def teacher_section(summary: dict[str, Any], model: dict[str, Any]) -> str:
    """The teacher's name, source, size and how the run obtained it; a teaching assistant comes first."""
    recipe, teacher = summary["recipe"], find_model(summary, summary["teacher"])
    assistants, chain = [], teachers(summary, model)
    for name, its_teacher in itertools.pairwise(chain):
        assistant = find_model(summary, name)
        params = f"{assistant['params']:,} parameters" if assistant.get("params") else NOT_MEASURED
        assistants.append(
            f"- Teaching assistant: **{name}** (`{assistant['folder']}`, {params}), a student of this run "
            f"distilled from **{its_teacher}**"
        )
    license_ = (recipe.get("card") or {}).get("teacher_license")
    params = f"{teacher['params']:,}" if teacher.get("params") else NOT_MEASURED
    lines = [
        *assistants,
        f"- Name: {teacher['name']}" + (f" (license: {license_})" if license_ else ""),
        f"- Source: `{teacher.get('source')}`",
        f"- Parameters: {params}",
    ]
    if recipe.get("finetune"):
        data = recipe["finetune"]["data"]
        lines.append(
            f"- Fine-tuned from `{recipe['finetune']['model']}` on {describe_dataset(data['train'])}"
        )
        copy = teacher.get("pretrained_copy")
        if copy:
            lines.append(
                f"- Its pretrained weights were a local copy of `{copy['model']}` (the Hub was not reached): "
                f"`{copy['from']}`, {copy['weights']}"
            )
    elif recipe.get("teacher"):
        lines.append(f"- An already fine-tuned QA model, `{recipe['teacher']}`")
    if recipe.get("build"):
        b = recipe["build"]
        lines.append(
            f"- Its encoder was built offline, randomly initialised: {b['layers']} layers, hidden size "
            f"{b['hidden_size']}, a {b['tokenizer']} tokenizer of {b['vocab_size']} pieces"
        )
    return "\n".join(lines)


def training_data(model: dict[str, Any]) -> str:
    """The student's training set, its limits and exclusions."""
    cfg = distill_config(model)
    data = cfg.get("data")
    if not data:
        return "The training configuration is not recorded in this run's summary."
    lines = [f"- Questions: {describe_dataset(data['train'])}"]
    if data.get("train_limit"):
        lines.append(f"- Only its first {data['train_limit']:,} questions")
    if data.get("exclude"):
        lines.append(f"- Removed: every paragraph shared with {', '.join(f'`{x}`' for x in data['exclude'])}")
    copies = (cfg.get("augment") or {}).get("copies", 0)
    if copies:
        lines.append(f"- Augmented with {copies} word-replaced copies per question, labelled by the teacher")
    lines.append(f"- Windows of {data['max_length']} tokens, {data['doc_stride']} shared between windows")
    return "\n".join(lines)


def distillation(model: dict[str, Any]) -> str:
    """Losses, layer map, schedule, optimisation, initialisation and vocabulary of the student."""
    cfg = distill_config(model)
    if not cfg:
        return "The distillation configuration is not recorded in this run's summary."
    loss, train, student = cfg["loss"], cfg["train"], cfg["student"]
    schedule = cfg["schedule"]
    if schedule == "two-stage":
        first = cfg["intermediate"]
        lr = first["lr"] if first["lr"] is not None else cfg["train"]["lr"]
        schedule += f" ({first['epochs']:g} epochs of intermediate losses first, at lr {lr:g})"
    trim = student.get("trim_vocab") or []
    lines = [
        f"- Loss weights: KD {loss['kd']:g} (KL on start/end logits, temperature {loss['temperature']:g}), "
        f"gold-span cross-entropy {loss['ce']:g}, hidden-state MSE {loss['hidden']:g}, "
        f"attention {loss['attention_loss']} {loss['attention']:g}"
        + (
            f", MiniLM v2 relations {loss['relations']:g} (teacher layer {loss['relation_layer']})"
            if loss.get("relations")
            else ""
        )
        + (
            ", each intermediate term normalised by its first value"
            if loss.get("normalize") == "initial"
            else ""
        ),
        f"- Layer map: {loss['layer_map']}",
        f"- Schedule: {schedule}",
        f"- Training: {train['epochs']:g} epochs, learning rate {train['lr']:g}, batch size "
        f"{train['batch_size']}, warmup {train['warmup_ratio']:g}, precision {train['precision']}",
        f"- Initialisation: {student['init']}"
        + (f" ({student['init_layers']} layers)" if student.get("init", "").endswith("layers") else "")
        + (f" from `{student['folder']}`" if student.get("folder") else ""),
        "- Vocabulary: "
        + (f"trimmed to the pieces used by {', '.join(f'`{t}`' for t in trim)}" if trim else "the teacher's"),
    ]
    return "\n".join(lines)


def evaluation(summary: dict[str, Any], student: str) -> str:
    """The table of EM/F1 per dataset and backend, against the teacher's F1, and the normalisations."""
    ev, teacher = summary["evaluation"], summary["teacher"]
    rows = eval_rows(summary, student)
    if not rows:
        return f"Evaluation: {NOT_MEASURED}."
    norms, primary = ev["normalizations"], ev["primary"]
    reference = {r["dataset"]: r["scores"][primary]["f1"] for r in eval_rows(summary, teacher, "pytorch")}
    header = ["Model", "Dataset", "Backend", "Questions", *(f"{k} {n}" for n in norms for k in ("EM", "F1"))]
    table = []
    for row in eval_rows(summary, teacher, "pytorch") + rows:
        f1, ref_f1 = row["scores"].get(primary, {}).get("f1"), reference.get(row["dataset"])
        cells = [row["model"], row["dataset"], row["backend"], str(row.get("questions", "-"))]
        cells += [_num(row["scores"].get(n, {}).get(k)) for n in norms for k in ("exact_match", "f1")]
        table.append([*cells, _num(100 * f1 / ref_f1 if f1 is not None and ref_f1 else None, ".1f")])
    notes = "\n".join(f"- {n}: {NORMALISATIONS.get(n, n)}" for n in norms)
    table_text = markdown_table([*header, f"% of teacher F1 ({primary})"], table)
    return f"{table_text}\n\nScores (0-100) under each normalisation of the answers:\n{notes}"


def speed(summary: dict[str, Any], student: str) -> str:
    """The bench rows of the student and the teacher, the three labelled speedups, what auto chose, and the
    protocol that produced them."""
    bench, teacher = summary.get("bench"), summary["teacher"]
    rows = [r for r in (bench or {}).get("rows", []) if r["model"] in (student, teacher)]
    if not rows:
        return f"Speed: {NOT_MEASURED}."
    header = ["Model", "Backend", "Dtype", "Latency p50 (ms)", "Throughput (questions/s)"]
    header += ["Speedup, like for like", "Speedup against the teacher's eager fp32"]
    table = [[r["model"], _backend(r), str(r.get("dtype", "-")), *_speed_cells(r)] for r in rows]
    cfg, machine = bench.get("config", {}), bench.get("machine", {})
    threads = cfg.get("threads") or machine.get("torch_threads")
    protocol = (
        f"Protocol: {cfg.get('device', 'cpu')} ({machine.get('cpu', 'unknown CPU')}, "
        f"{machine.get('cores', '?')} cores), {threads} threads; {cfg.get('questions')} questions of "
        f"{cfg.get('dataset')}; throughput at batch size {cfg.get('batch_size')}, windows of up to "
        f"{cfg.get('seq_len')} tokens. Latency is end to end: tokenisation, model, answer extraction "
        "(one question at a time, median). Like for like: the teacher's latency on the same backend over the "
        "row's; against the teacher's eager fp32: the teacher's PyTorch fp32 latency over the row's"
        + (
            " ('-': the teacher has no row on that backend)."
            if any("-" in row[-2:] for row in table)
            else "."
        )
    )
    lines = labelled_speedups(summary, student)
    lines += [
        f"- `--backend auto` chose {c['chose']} ({c['where']}): {c['reason']}; measured: {c['candidates']}"
        for c in auto_choices(summary, student)
    ]
    return "\n\n".join(p for p in (markdown_table(header, table), "\n".join(lines), protocol) if p)


def labelled_speedups(summary: dict[str, Any], student: str) -> list[str]:
    """The student against the teacher three ways, each labelled, from the bench's `speedups`."""
    speedups = (summary.get("bench") or {}).get("speedups") or {}
    seq = (summary.get("bench") or {}).get("config", {}).get("seq_len", "?")
    mine = {key: [e for e in speedups.get(key) or [] if e["model"] == student] for key in SPEEDUP_VIEWS}
    if not any(mine.values()):
        return [f"- Speedups against the teacher: {NOT_MEASURED}."]
    unexported = not (summary["recipe"].get("export") or {}).get("teacher")
    lines = []
    for e in mine["best_vs_best"]:
        engines = " (not exported: PyTorch backends only)" if unexported else ""
        lines.append(
            f"- Best against best (the headline): {student} on {_backend(e)}, its fastest backend, against "
            f"{e['baseline_model']} on {e['baseline_backend']}, its fastest{engines}: {_ratio(e, seq)}"
        )
    if mine["like_for_like"]:
        same = "; ".join(f"on {_backend(e)} {_ratio(e, seq)}" for e in mine["like_for_like"])
        lines.append(f"- Like for like, against the teacher on the same backend: {same}")
    if mine["vs_baseline_eager_fp32"]:
        eager = "; ".join(f"on {_backend(e)} {_ratio(e, seq)}" for e in mine["vs_baseline_eager_fp32"])
        lines.append(f"- Against the teacher's eager fp32 (pytorch): {eager}")
    return lines


def limitations(summary: dict[str, Any], model: dict[str, Any]) -> str:
    """Generic limitations, the sample-run warning, and the recipe's own."""
    recipe, data = summary["recipe"], distill_config(model).get("data") or {}
    items = []
    if recipe.get("build"):
        items.append(
            "**This is a toy.** It comes from the tiny offline sample run, which checks the pipeline; "
            "it is useless for real questions."
        )
    trained_on = [data.get("train"), (recipe.get("finetune") or {}).get("data", {}).get("train")]
    if any(hub_dataset(n) == HUB_DATASETS["squad_es_"] for n in trained_on if n):
        items.append(
            "Trained on SQuAD-es, a machine translation of SQuAD: translation errors and an English "
            "view of the world come with it."
        )
    items += [
        "Extractive only: every answer is a span of the given context, never knowledge from elsewhere.",
        f"Reads windows of at most {data.get('max_length', 'the configured')} tokens (question included); "
        "longer contexts are split into overlapping windows.",
        "A distilled student inherits the errors and biases of its teacher.",
        "The numbers above come from this run's own evaluation sets and may differ on other text.",
    ]
    items += list((recipe.get("card") or {}).get("limitations", []))
    return "\n".join(f"- {item}" for item in items)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _speed_cells(row: dict[str, Any]) -> list[str]:
    same, eager = row.get("speedup_like_for_like"), row.get("speedup_vs_baseline_eager_fp32")
    return [
        _num(row["latency_ms_b1"], ".1f"),
        _num(row["throughput"], ".1f"),
        f"{same['latency_b1']:.2f}x" if same else "-",
        f"{eager['latency_b1']:.2f}x" if eager else "-",
    ]


def _backend(row: dict[str, Any]) -> str:
    """A row's backend, marked when `--backend auto` chose it."""
    return f"{row['backend']} (auto)" if row.get("auto") else row["backend"]


def _ratio(entry: dict[str, Any], seq: Any) -> str:
    return (
        f"{entry['latency_b1']:.2f}x end to end ({entry['fixed_b1']:.2f}x on one {seq}-token window, "
        f"{entry['throughput']:.2f}x questions/s)"
    )


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)
