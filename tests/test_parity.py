"""The export's parity check without an export: which dev set `--dev auto` picks, and the pass/fail rules.

Every test points the dataset cache and the data folders at its own temporary folders, so what this machine
happens to hold (../shared/data, ~/.cache) never decides a result; one test reads the real XQuAD-es file.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from tinyroberta_es import parity
from tinyroberta_es.commands import export as export_command
from tinyroberta_es.data.sources import CACHE_ENV, resolve_source
from tinyroberta_es.errors import UserError

XQUAD_FILE = "xquad.es.json"  # the name of XQuAD-es's file upstream and in ../shared/data/xquad_es/
SHARED_XQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xquad_es" / XQUAD_FILE


@pytest.fixture(autouse=True)
def no_local_data(tmp_path, monkeypatch):
    """An empty dataset cache and no data folders: only the packaged sample is on this 'machine'."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(parity.DATA_ENV, "")


def squad_file(path: Path, ids: list[str]) -> Path:
    """A SQuAD v1.1 file of one paragraph with one question per id."""
    context = "Gabriel García Márquez nació en Aracataca en 1927."
    qas = [
        {"id": qid, "question": "¿Dónde nació?", "answers": [{"text": "Aracataca", "answer_start": 32}]}
        for qid in ids
    ]
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def fake_xquad(tmp_path: Path, monkeypatch, ids: list[str]) -> Path:
    """A small file that the registry takes for XQuAD-es (its sha256 made the expected one)."""
    path = squad_file(tmp_path / "data" / "xquad_es" / XQUAD_FILE, ids)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(
        parity.DATASETS, "xquad_es", dataclasses.replace(parity.DATASETS["xquad_es"], sha256=sha)
    )
    monkeypatch.setenv(parity.DATA_ENV, str(tmp_path / "data"))
    return path


def model_folder(path: Path, train: str, exclude: tuple[str, ...] = (), teacher: Path | None = None) -> Path:
    """A model folder whose run_config.json says what it trained on."""
    path.mkdir(parents=True, exist_ok=True)
    record = {
        "data": {"train": train, "exclude": list(exclude)},
        "teacher": str(teacher) if teacher else None,
    }
    (path / "run_config.json").write_text(json.dumps(record), encoding="utf-8")
    return path


def test_a_named_dev_set_is_used_as_given(tmp_path):
    choice = parity.choose_dev("xquad_es", tmp_path, 7)
    assert (choice.name, choice.source, choice.limit, choice.fallback) == ("xquad_es", "xquad_es", 7, False)


def test_auto_takes_a_real_set_from_a_data_folder_checked_by_sha256(tmp_path, monkeypatch):
    path = fake_xquad(tmp_path, monkeypatch, ["q1", "q2"])
    choice = parity.choose_dev("auto", tmp_path / "model", None)
    assert choice.name == "xquad_es" and choice.source == str(path) and not choice.fallback
    assert choice.limit == parity.AUTO_MAX_QUESTIONS  # a 10k-question set is not checked whole by default
    assert choice.reason.startswith(f"--dev auto chose xquad_es (at {path})")
    assert "training data is unknown" in choice.reason  # no run_config.json in that folder
    assert parity.choose_dev("auto", tmp_path / "model", 5).limit == 5
    path.write_text(path.read_text(encoding="utf-8") + " ", encoding="utf-8")  # not XQuAD-es any more
    assert parity.choose_dev("auto", tmp_path / "model", None).name == "sample"


@pytest.mark.skipif(not SHARED_XQUAD.is_file(), reason=f"{SHARED_XQUAD} is absent (see ../shared/data)")
def test_auto_recognises_the_real_xquad_es_file(tmp_path, monkeypatch):
    shutil.copyfile(SHARED_XQUAD, tmp_path / XQUAD_FILE)
    monkeypatch.setenv(parity.DATA_ENV, str(tmp_path))
    choice = parity.choose_dev("auto", tmp_path, None)
    assert choice.name == "xquad_es" and choice.source == str(tmp_path / XQUAD_FILE)


def test_auto_takes_a_set_from_the_dataset_cache(tmp_path):
    squad_file(tmp_path / "cache" / "datasets" / "mlqa_es_dev.json", ["m1", "m2", "m3"])
    choice = parity.choose_dev("auto", tmp_path, None)
    assert (choice.name, choice.source) == ("mlqa_es_dev", "mlqa_es_dev")
    assert "(cached)" in choice.reason
    dev, _ = parity.questions(choice, 96, 32, 1.0)
    assert [ex.id for ex in dev.examples] == ["m1", "m2", "m3"]


def test_auto_skips_a_set_the_model_trained_on(tmp_path, monkeypatch):
    fake_xquad(tmp_path, monkeypatch, ["x1", "x2", "x3"])
    # named and not on this machine: known to share XQuAD's SQuAD v1.1 dev paragraphs
    by_name = parity.choose_dev("auto", model_folder(tmp_path / "a", "squad_es_v1.1_dev_small"), None)
    assert by_name.name == "sample" and "skipped xquad_es (squad_es_v1.1_dev_small" in by_name.reason
    # a local training file: its question ids tell
    train = squad_file(tmp_path / "train.json", ["t1", "x2", "x3"])
    by_ids = parity.choose_dev("auto", model_folder(tmp_path / "b", str(train)), None)
    assert by_ids.name == "sample" and "2 of its question ids are in" in by_ids.reason
    # the same file with XQuAD-es held out (the training stage dropped those paragraphs)
    held_out = parity.choose_dev("auto", model_folder(tmp_path / "c", str(train), ("xquad_es",)), None)
    assert held_out.name == "xquad_es" and "skipped" not in held_out.reason
    # a student distilled from a teacher that trained on it
    teacher = model_folder(tmp_path / "teacher", str(train))
    student = model_folder(tmp_path / "student", "squad_es_v1.1_train", teacher=teacher)
    assert parity.choose_dev("auto", student, None).name == "sample"
    # a training set that shares nothing
    other = squad_file(tmp_path / "other.json", ["o1"])
    assert parity.choose_dev("auto", model_folder(tmp_path / "d", str(other)), None).name == "xquad_es"


def test_auto_falls_back_to_the_sample_and_says_what_one_flip_costs(tmp_path, caplog):
    choice = parity.choose_dev("auto", tmp_path, 60)
    assert choice.name == "sample" and choice.fallback
    with caplog.at_level(logging.WARNING, logger="tinyroberta_es.parity"):
        dev, inference = parity.questions(choice, 96, 32, 1.0)
    assert len(dev.examples) == 60 and inference.null_threshold == 0.0  # the sample is SQuAD v2
    warning = caplog.text
    assert "60 questions" in warning and "costs up to 1.67 F1" in warning
    assert "more than --max-f1-drop 1.0" in warning and "pass --dev xquad_es" in warning


def test_auto_falls_back_to_sample_dev_for_a_model_trained_on_sample_train(tmp_path):
    choice = parity.choose_dev("auto", model_folder(tmp_path / "m", "sample_train"), None)
    assert choice.name == "sample_dev" and choice.fallback
    assert "skipped sample (480 of its question ids are in sample_train" in choice.reason


def test_auto_fails_when_the_model_trained_on_every_set(tmp_path):
    model = model_folder(tmp_path / "m", "sample")
    with pytest.raises(UserError, match=r"--dev auto found no dev set .* pass --dev NAME"):
        parity.choose_dev("auto", model, None)


def test_an_explicit_set_is_read_as_given(tmp_path):
    path = squad_file(tmp_path / "dev.json", ["a", "b"])
    dev, inference = parity.questions(parity.choose_dev(str(path), tmp_path, None), 96, 32, 1.0)
    assert [ex.id for ex in dev.examples] == ["a", "b"] and inference.null_threshold is None
    assert resolve_source(str(path)) == path


# --- pass or fail ------------------------------------------------------------------------------------------


def rows(**shares: float) -> dict:
    report = {"variants": {"pytorch": {"exact_match": 50.0, "f1": 60.0}}}
    for backend, share in shares.items():
        name = backend.replace("_", "-")
        report["variants"][name] = {"exact_match": 50.0, "f1": 60.0, "f1_drop": 0.0, "same_answers": share}
    return report


def test_identical_answers_gate_each_precision_with_its_own_minimum():
    report = rows(pytorch_bf16=0.89, onnx=0.99, onnx_int8=0.70, openvino_int8_bf16=0.69)
    failed = parity.judge(report, max_f1_drop=1.0, min_identical=None)
    assert failed == ["pytorch-bf16", "openvino-int8-bf16"]  # int8 weights: the int8 minimum
    variants = report["variants"]
    assert [variants[b]["min_identical"] for b in failed] == [0.90, 0.70]
    assert variants["pytorch"]["passed"] and "min_identical" not in variants["pytorch"]
    assert variants["onnx"]["passed"] and variants["onnx-int8"]["passed"]  # at the minimum passes
    assert variants["pytorch-bf16"]["failed"] == [
        "gives PyTorch fp32's answer to 89.0% of the questions (budget --min-identical 0.9)"
    ]


def test_a_given_minimum_applies_to_every_backend_and_f1_still_counts():
    report = rows(onnx=0.95, onnx_int8=0.95)
    report["variants"]["onnx-int8"]["f1_drop"] = 1.5
    assert parity.judge(report, max_f1_drop=1.0, min_identical=0.96) == ["onnx", "onnx-int8"]
    assert report["variants"]["onnx-int8"]["failed"] == [
        "loses 1.50 F1 (budget --max-f1-drop 1.0)",
        "gives PyTorch fp32's answer to 95.0% of the questions (budget --min-identical 0.96)",
    ]
    assert parity.judge(report, max_f1_drop=2.0, min_identical=0.0) == []
    assert all(row["passed"] and "failed" not in row for row in report["variants"].values())


def test_the_printed_report_shows_both_budgets():
    report = rows(onnx=1.0, onnx_int8=0.5) | {"dev": "xquad_es", "questions": 300, "windows": 310}
    report["max_f1_drop"] = 1.0
    parity.judge(report, 1.0, None)
    text = parity.format_report(report)
    assert "parity on xquad_es: 300 questions" in text and "F1 drop <= 1" in text
    int8 = next(line for line in text.splitlines() if line.startswith("onnx-int8"))
    assert "50.0% (min 70%)" in int8 and int8.endswith("NO")
    assert next(line for line in text.splitlines() if line.startswith("onnx ")).endswith("yes")


def test_the_help_text_states_the_defaults_of_the_code():
    parser = argparse.ArgumentParser()
    export_command.configure(parser)
    helps = {a.dest: a.help or "" for a in parser._actions}
    for precision, share in parity.MIN_IDENTICAL.items():
        assert f"{share:.2f} {precision}" in helps["min_identical"]
    assert f"at most {parity.AUTO_MAX_QUESTIONS}" in helps["dev_limit"]
    assert all(name in helps["dev"] for name in parity.AUTO_DEV_SETS[:3])
