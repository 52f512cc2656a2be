"""The model card: front matter that parses, numbers that are the summary's, and honest gaps."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tinyroberta_es.card import exported_backends, hub_dataset, is_hub_model, model_card, write_card
from tinyroberta_es.config import DataConfig, DistillConfig, to_dict
from tinyroberta_es.errors import UserError
from tinyroberta_es.speedups import labelled_speedups

STUDENT = "student-6l"


def distill_dict(folder: Path) -> dict[str, Any]:
    """A DistillConfig as the summary records it."""
    config = DistillConfig(
        name=STUDENT,
        teacher=str(folder.parent / "teacher"),
        output=str(folder),
        data=DataConfig(train="squad_es_v1.1_train", exclude=["xquad_es"], train_limit=5000, max_length=256),
    )
    config.student.trim_vocab = ["squad_es_v1.1_train"]
    return to_dict(config)


def eval_row(model: str, backend: str, em: float, f1: float) -> dict[str, Any]:
    scores = {"mlqa-es": {"exact_match": em, "f1": f1}, "squad": {"exact_match": em - 3.5, "f1": f1 - 1.25}}
    return {"model": model, "backend": backend, "dataset": "xquad_es", "questions": 1190, "scores": scores}


def bench_row(model: str, backend: str, latency: float, throughput: float) -> dict[str, Any]:
    return {
        "model": model,
        "folder": f"run/{model}",
        "backend": backend,
        "dtype": "float32",
        "threads": 2,
        "latency_b1": {"p50": latency, "p90": latency * 1.1, "p99": latency * 1.2},
        "latency_ms_b1": latency,
        "fixed_ms_b1": latency / 2,
        "throughput": throughput,
    }


def bench(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The bench section as the run writes it: rows, and the labelled speedups against the teacher."""
    return {
        "config": {
            "models": ["run/teacher", f"run/{STUDENT}"],
            "dataset": "xquad_es",
            "questions": 100,
            "batch_size": 32,
            "seq_len": 384,
            "threads": 2,
        },
        "machine": {"cpu": "Test CPU 9000", "cores": 2, "torch_threads": 2},
        "rows": rows,
        "speedups": labelled_speedups(rows, "run/teacher"),
        "skipped": [],
    }


@pytest.fixture
def summary(tmp_path: Path) -> dict[str, Any]:
    """A run summary with a teacher and one student whose folder holds a config.json."""
    folder = tmp_path / "run" / STUDENT
    folder.mkdir(parents=True)
    shape = {"num_hidden_layers": 6, "hidden_size": 512, "num_attention_heads": 16, "vocab_size": 50262}
    (folder / "config.json").write_text(json.dumps(shape), encoding="utf-8")
    distill = distill_dict(folder)
    export = {
        "folder": str(folder / "onnx"),
        "rejected": [],
        "variants": {"pytorch": {"exact_match": 40.0, "f1": 56.0}, "onnx": {"file": "model.onnx"}},
    }
    recipe = {
        "name": "paper",
        "output": str(tmp_path / "run"),
        "build": None,
        "teacher": None,
        "finetune": {"model": "PlanTL-GOB-ES/roberta-large-bne", "data": {"train": "squad_es_v1.1_train"}},
        "distill": [distill],
        "evaluate": {"datasets": ["xquad_es"]},
        "card": {
            "license": "apache-2.0",
            "teacher_license": None,
            "datasets": ["some/extra"],
            "repo_id": None,
            "limitations": ["Not tested on legal text."],
        },
    }
    return {
        "name": "paper",
        "versions": {"tinyroberta_es": "0.1.0"},
        "recipe": recipe,
        "teacher": "teacher",
        "models": [
            {
                "name": "teacher",
                "role": "teacher",
                "folder": str(tmp_path / "run" / "teacher"),
                "params": 355_000_000,
                "source": "PlanTL-GOB-ES/roberta-large-bne",
                "config": None,
                "export": None,
            },
            {
                "name": STUDENT,
                "role": "student",
                "folder": str(folder),
                "params": 51_211_778,
                "source": str(tmp_path / "run" / "teacher"),
                "config": distill,
                "export": export,
            },
        ],
        "evaluation": {
            "datasets": ["xquad_es"],
            "normalizations": ["mlqa-es", "squad"],
            "primary": "mlqa-es",
            "rows": [
                eval_row("teacher", "pytorch", 60.25, 75.5),
                eval_row(STUDENT, "pytorch", 40.5, 56.75),
                eval_row(STUDENT, "onnx", 40.25, 56.5),
            ],
        },
        "bench": bench(
            [
                bench_row("teacher", "pytorch", 400.0, 2.5),
                bench_row(STUDENT, "pytorch", 50.0, 20.0),
                bench_row(STUDENT, "onnx", 25.0, 40.0),
            ]
        ),
        "skipped": [],
    }


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a model card."""
    assert text.startswith("---\n"), text[:80]
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_front_matter_is_hub_metadata(summary: dict[str, Any]) -> None:
    meta, _ = split_card(model_card(summary, STUDENT))
    assert meta["language"] == ["es"]
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "question-answering"
    assert "onnx" in meta["tags"] and "knowledge-distillation" in meta["tags"]
    assert meta["datasets"] == ["some/extra", "ccasimiro/squad_es", "google/xquad"]
    assert meta["base_model"] == "PlanTL-GOB-ES/roberta-large-bne"
    assert meta["metrics"] == ["exact_match", "f1"]


def test_model_index_holds_the_summary_numbers(summary: dict[str, Any]) -> None:
    meta, _ = split_card(model_card(summary, STUDENT))
    (entry,) = meta["model-index"]
    assert entry["name"] == STUDENT
    (result,) = entry["results"]  # the PyTorch row only, not the ONNX one
    assert result["task"]["type"] == "question-answering"
    assert result["dataset"] == {"name": "xquad_es", "type": "google/xquad"}
    values = {(m["type"], m["name"]): m["value"] for m in result["metrics"]}
    assert values[("exact_match", "EM (mlqa-es normalisation)")] == 40.5
    assert values[("f1", "F1 (mlqa-es normalisation)")] == 56.75
    assert values[("f1", "F1 (squad normalisation)")] == 55.5
    assert result["metrics"][0]["name"].startswith("EM (mlqa-es")  # the primary normalisation first


def test_base_model_only_for_hub_teachers(summary: dict[str, Any], tmp_path: Path) -> None:
    local = tmp_path / "encoders" / "me5"
    local.mkdir(parents=True)
    for source in (str(local), "~/.cache/tinyroberta_es/me5-small", "runs/x/teacher"):
        summary["models"][0]["source"] = source
        meta, _ = split_card(model_card(summary, STUDENT))
        assert "base_model" not in meta, source
    assert is_hub_model("PlanTL-GOB-ES/roberta-large-bne")
    assert not is_hub_model(None)


def test_body_states_normalisation_speed_protocol_and_citation(summary: dict[str, Any]) -> None:
    _, body = split_card(model_card(summary, STUDENT))
    assert "Spanish articles (el, la, los, las, un, una, unos, unas)" in body
    assert "SQuAD v1.1's official normalisation" in body
    assert "Latency is end to end: tokenisation, model, answer extraction" in body
    assert "Test CPU 9000" in body and "2 threads" in body and "batch size 32" in body
    # like for like (the teacher has no onnx row), then against the teacher's eager fp32
    assert "| teacher | pytorch | float32 | 400.0 | 2.5 | 1.00x | 1.00x |" in body
    assert "| student-6l | onnx | float32 | 25.0 | 40.0 | - | 16.00x |" in body
    assert "| xquad_es | pytorch | 1190 | 40.50 | 56.75 | 37.00 | 55.50 | 75.2 |" in body  # 56.75/75.5
    assert "51,211,778 parameters, 14.4% of the teacher's 355,000,000" in body
    assert "6 layers, hidden size 512, 16 attention heads" in body
    assert "SQuAD-es v1.1 train" in body and "first 5,000 questions" in body and "`xquad_es`" in body
    assert "temperature 1" in body and "Layer map: uniform" in body
    assert "--backend onnx" in body
    assert "machine translation of SQuAD" in body and "Not tested on legal text." in body
    assert "@article{bazaga2023language" in body and "Li{\\`o}, Pietro" in body
    assert "toy" not in body and "not measured" not in body


def test_missing_measurements_are_stated_not_invented(summary: dict[str, Any]) -> None:
    summary["bench"] = None
    summary["evaluation"]["rows"] = []
    summary["models"][1]["export"] = None
    meta, body = split_card(model_card(summary, STUDENT))
    assert "model-index" not in meta and "onnx" not in meta["tags"]
    assert "Speed: not measured in this run." in body
    assert "Evaluation: not measured in this run." in body
    assert "--backend onnx" not in body


def test_rejected_onnx_is_not_advertised(summary: dict[str, Any]) -> None:
    summary["models"][1]["export"]["rejected"] = ["onnx"]
    meta, body = split_card(model_card(summary, STUDENT))
    assert "onnx" not in meta["tags"] and "--backend" not in body


def test_sample_run_warns_that_the_model_is_a_toy(summary: dict[str, Any]) -> None:
    summary["recipe"]["build"] = {"layers": 4, "hidden_size": 128, "tokenizer": "bpe", "vocab_size": 2000}
    sample = copy.deepcopy(summary)
    sample["models"][1]["config"]["data"]["train"] = "sample_train"
    sample["recipe"]["finetune"]["data"]["train"] = "sample_train"
    sample["evaluation"]["datasets"] = ["sample_dev"]
    for row in sample["evaluation"]["rows"]:
        row["dataset"] = "sample_dev"
    meta, body = split_card(model_card(sample, STUDENT))
    assert "**This is a toy.**" in body and "useless for real questions" in body
    assert "`sample_train`" in body  # named in the text, absent from the Hub metadata
    assert meta["datasets"] == ["some/extra"]
    assert meta["model-index"][0]["results"][0]["dataset"] == {"name": "sample_dev", "type": "sample_dev"}


def test_hub_dataset_mapping() -> None:
    assert hub_dataset("squad_es_v2.0_dev") == "ccasimiro/squad_es"
    assert hub_dataset("MLQA-es-test") == "facebook/mlqa"
    assert hub_dataset("sqac_train") == "PlanTL-GOB-ES/SQAC"
    assert hub_dataset("sample") is None
    assert hub_dataset("data/squad_es_v1.1_train.json") is None


def test_write_card_writes_readme(summary: dict[str, Any]) -> None:
    path = write_card(summary, STUDENT)
    assert path == Path(summary["models"][1]["folder"]) / "README.md"
    assert path.read_text(encoding="utf-8") == model_card(summary, STUDENT)


def test_unknown_student_names_the_choices(summary: dict[str, Any]) -> None:
    with pytest.raises(UserError, match="no model 'nope': choose one of teacher, student-6l"):
        model_card(summary, "nope")


def test_speed_states_three_labelled_speedups_and_what_auto_chose(summary: dict[str, Any]) -> None:
    selection = {
        "chosen": "onnx",
        "reason": "fastest at 1 x 384 tokens (11.0 ms, median of 10) of those that passed parity",
        "candidates": [
            {"backend": "pytorch", "parity": "the reference", "ms": 24.0},
            {"backend": "onnx", "parity": "-0.10 F1", "ms": 11.0},
            {"backend": "openvino-int8", "parity": "-3.00 F1", "skipped": "failed or lacks the parity check"},
        ],
    }
    summary["recipe"]["export"] = {"teacher": True}
    rows = [
        bench_row("teacher", "pytorch", 400.0, 2.5),
        bench_row("teacher", "onnx", 200.0, 5.0),  # an exported teacher: its best is not its eager fp32
        bench_row(STUDENT, "pytorch", 50.0, 20.0),
        bench_row(STUDENT, "onnx", 25.0, 40.0) | {"auto": selection, "backend_requested": "auto"},
    ]
    summary["bench"] = bench(rows)
    _, body = split_card(model_card(summary, STUDENT))
    assert "| student-6l | onnx (auto) | float32 | 25.0 | 40.0 | 8.00x | 16.00x |" in body
    assert (
        "- Best against best (the headline): student-6l on onnx (auto), its fastest backend, against teacher "
        "on onnx, its fastest: 8.00x end to end (8.00x on one 384-token window, 8.00x questions/s)"
    ) in body
    assert "- Like for like, against the teacher on the same backend: on pytorch 8.00x end to end" in body
    assert "on onnx (auto) 8.00x end to end" in body
    assert "- Against the teacher's eager fp32 (pytorch): on pytorch 8.00x end to end" in body
    assert "on onnx (auto) 16.00x end to end" in body
    assert (
        "- `--backend auto` chose onnx (benchmark): fastest at 1 x 384 tokens (11.0 ms, median of 10) of "
        "those that passed parity; measured: pytorch 24.0 ms; onnx 11.0 ms; openvino-int8 not measured "
        "(failed or lacks the parity check)"
    ) in body
    assert "not exported" not in body


def test_usage_recommends_auto_and_lists_the_exports_that_passed_parity(summary: dict[str, Any]) -> None:
    export = summary["models"][1]["export"]
    export["max_f1_drop"] = 1.0
    export["rejected"] = ["onnx-int8"]
    export["variants"] = {
        "pytorch": {"f1": 56.0},
        "pytorch-bf16": {"f1": 55.0, "f1_drop": 1.0, "passed": True},
        "onnx": {"f1": 56.0, "f1_drop": 0.0, "passed": True},
        "onnx-int8": {"f1": 52.0, "f1_drop": 4.0, "passed": False},
        "openvino": {"f1": 56.0, "f1_drop": 0.0, "passed": True},
        "openvino-bf16": {"f1": 54.0, "f1_drop": 2.0, "passed": False},  # shares openvino's files
        "openvino-int8": {"f1": 55.5, "f1_drop": 0.5, "passed": True},
    }
    assert exported_backends(summary["models"][1]) == ["onnx", "openvino", "openvino-int8"]
    summary["recipe"]["card"]["repo_id"] = "someone/student-6l"
    meta, body = split_card(model_card(summary, STUDENT))
    assert "onnx" in meta["tags"] and "openvino" in meta["tags"]
    assert "passed the parity check on onnx, openvino, openvino-int8" in body
    assert "hf download someone/student-6l --local-dir ./student-6l\n" in body  # huggingface_hub 1+ CLI
    assert "tinyroberta-es answer --model ./student-6l --backend auto --question" in body
    assert "Or name one: `--backend onnx`, `--backend openvino`, `--backend openvino-int8`." in body
    assert "onnx-int8" not in body.split("## How to use")[1] and "openvino-bf16" not in body
    assert 'QuestionAnswerer.from_pretrained("./student-6l", backend="auto")' in body


def test_usage_shows_the_toolkit_api_and_plain_transformers_not_the_removed_pipeline(
    summary: dict[str, Any],
) -> None:
    summary["recipe"]["card"]["repo_id"] = "someone/student-6l"
    _, body = split_card(model_card(summary, STUDENT))
    usage = body.split("## How to use")[1].split("## Limitations")[0]
    assert "pipeline(" not in usage  # transformers 5 removed the question-answering pipeline
    assert "```bash\npip install tinyroberta-es\n```" in usage
    assert 'qa = QuestionAnswerer.from_pretrained("someone/student-6l")\n' in usage
    assert 'AutoModelForQuestionAnswering.from_pretrained("someone/student-6l")' in usage
    assert 'tinyroberta-es answer --model someone/student-6l --question "¿Dónde nació Frida Kahlo?"' in usage
    assert "huggingface-cli" not in usage  # gone from huggingface_hub 1.0; `hf download` replaces it


def test_usage_quotes_a_local_folder_for_python_and_bash(summary: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "my runs" / 'o"dd'
    folder.mkdir(parents=True)
    summary["models"][1]["folder"] = str(folder)
    _, body = split_card(model_card(summary, STUDENT))
    assert f"QuestionAnswerer.from_pretrained({json.dumps(str(folder))})" in body
    assert f"tinyroberta-es answer --model {shlex.quote(str(folder))} --question" in body


def test_metadata_parses_as_hub_model_card_data(summary: dict[str, Any]) -> None:
    from huggingface_hub import ModelCard

    data = ModelCard(model_card(summary, STUDENT)).data
    assert data.pipeline_tag == "question-answering" and data.library_name == "transformers"
    assert data.language == ["es"] and data.license == "apache-2.0"
    assert data.base_model == "PlanTL-GOB-ES/roberta-large-bne"
    results = {(r.dataset_type, r.metric_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert results[("google/xquad", "f1", "F1 (mlqa-es normalisation)")] == 56.75
    assert all(r.task_type == "question-answering" for r in data.eval_results)
