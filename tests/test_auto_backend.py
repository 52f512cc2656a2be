"""`--backend auto`: the fastest backend that passed the export's parity check, and what it says it chose.

A tiny random model exported to ONNX (and OpenVINO IR where openvino and nncf are installed) with a budget
that every backend passes; copies of it with a doctored or missing parity.json for the skips. Its positions
hold 510 tokens: auto times each candidate on one 384-token window.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from cli_helpers import run_cli
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.errors import UserError
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.onnx_export import ExportConfig, export_model
from tinyroberta_es.runtimes import make_runner
from tinyroberta_es.runtimes.auto import CANDIDATES
from tinyroberta_es.tiny import create_tiny_qa_model, train_tokenizer

pytest.importorskip("onnxruntime")

HAS_OPENVINO = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))
WINDOW_FLAGS = ("--max-length", "96", "--doc-stride", "32")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny model folder whose every export passed parity (budget 100 F1 points: the weights are random)."""
    root = tmp_path_factory.mktemp("auto")
    sample = load_dataset("sample")
    texts = [ex.context for ex in sample.examples] + [ex.question for ex in sample.examples]
    tokenizer_dir = train_tokenizer("bpe", texts, root / "tokenizer", vocab_size=1000)
    model_dir = create_tiny_qa_model(root / "model", tokenizer_dir, seed=7)  # 512 positions
    config = ExportConfig(
        model=str(model_dir),
        quantize="int8",
        dev="sample",  # the embedded sample, not a real dev set: random weights
        dev_limit=8,
        max_length=96,
        doc_stride=32,
        max_f1_drop=100.0,
        min_identical=0.0,  # random weights: which answers agree is noise
        formats=("onnx", "openvino") if HAS_OPENVINO else ("onnx",),
        calibration_size=8,
        int8_method="plain",
    )
    export_model(config)
    return model_dir


def copy_of(model_dir: Path, where: Path) -> Path:
    return Path(shutil.copytree(model_dir, where / model_dir.name))


def rows_by_backend(selection: dict) -> dict[str, dict]:
    return {row["backend"]: row for row in selection["candidates"]}


def test_auto_keeps_the_fastest_of_the_candidates_that_passed(exported):
    runner = make_runner(exported, "auto", threads=1)
    selection = runner.selection
    rows = rows_by_backend(selection)
    assert list(rows) == CANDIDATES  # every candidate is accounted for, in the registry's order
    measured = {b: row["ms"] for b, row in rows.items() if "ms" in row}
    parity = json.loads((exported / "onnx" / "parity.json").read_text(encoding="utf-8"))["variants"]
    exported_here = {"pytorch", "onnx", "onnx-int8"} | (
        {"openvino", "openvino-int8"} if HAS_OPENVINO else set()
    )
    assert exported_here <= set(measured) <= {"pytorch", *parity}  # only what was exported and checked
    assert all(parity[b]["passed"] for b in measured if b != "pytorch")
    assert runner.name == selection["chosen"] in measured
    assert measured[runner.name] == min(measured.values())
    assert re.fullmatch(
        r"fastest at 1 x 384 tokens \(\d+\.\d ms, median of 10\) of those that passed parity",
        selection["reason"],
    )
    assert rows["pytorch"]["parity"] == "the reference"
    assert all(("ms" in row) != ("skipped" in row) for row in rows.values())  # timed, or says why not
    answerer = QuestionAnswerer(runner, QuestionAnswerer.from_pretrained(exported).tokenizer)
    assert answerer.predict(load_dataset("sample").examples[:3])  # the chosen runner answers


def test_a_backend_whose_parity_row_failed_is_skipped_with_the_reason(exported, tmp_path):
    model_dir = copy_of(exported, tmp_path)
    report_path = model_dir / "onnx" / "parity.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["variants"]["onnx-int8"]["f1_drop"] = 101.0  # over the export's budget of 100
    report_path.write_text(json.dumps(report), encoding="utf-8")
    runner = make_runner(model_dir, "auto", threads=1)
    row = rows_by_backend(runner.selection)["onnx-int8"]
    assert "ms" not in row and row["skipped"] == "failed or lacks the parity check"
    assert row["parity"].startswith("-101.00 F1 on 8 sample questions (budget 100)")
    assert runner.name != "onnx-int8"


def test_without_a_parity_report_only_pytorch_is_measured(exported, tmp_path):
    model_dir = copy_of(exported, tmp_path)
    (model_dir / "onnx" / "parity.json").unlink()  # the exported files are there, their check is not
    runner = make_runner(model_dir, "auto", threads=1)
    rows = rows_by_backend(runner.selection)
    assert runner.name == "pytorch" and [b for b, row in rows.items() if "ms" in row] == ["pytorch"]
    assert rows["onnx"]["parity"] == "no parity report (run tinyroberta-es export)"


def test_predict_with_auto_writes_predictions_and_says_what_it_chose(exported, tmp_path, capsys, caplog):
    preds = tmp_path / "preds.json"
    argv = ["--model", str(exported), "--dataset", "sample", "--output", str(preds), "--limit", "6"]
    with caplog.at_level(logging.INFO, logger="tinyroberta_es.runtimes.auto"):
        status, out, err = run_cli(capsys, "predict", *argv, "--backend", "auto", "--threads", "1")
    assert status == 0, err
    chosen = re.search(r"with (\S+) \(chosen by --backend auto: fastest at 1 x 384 tokens", out)
    assert chosen and chosen.group(1) in CANDIDATES, out
    assert f"backend auto chose {chosen.group(1)}: fastest" in caplog.text  # with every candidate's time
    assert len(json.loads(preds.read_text(encoding="utf-8"))) == 6


def test_evaluate_with_auto_records_the_backend_that_ran_and_the_selection(exported, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    argv = ["--model", str(exported), "--dataset", "sample", "--output", str(report_path), "--bootstrap", "0"]
    status, _, err = run_cli(capsys, "evaluate", *argv, "--backend", "auto", "--threads", "1", *WINDOW_FLAGS)
    assert status == 0, err
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["backend_requested"] == "auto"
    assert report["backend"] == report["selection"]["chosen"] in CANDIDATES
    assert [row["backend"] for row in report["selection"]["candidates"]] == CANDIDATES
    status, _, err = run_cli(capsys, "evaluate", *argv, "--backend", "onnx", *WINDOW_FLAGS)
    assert status == 0, err
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["backend"] == "onnx" and "backend_requested" not in report and "selection" not in report


def test_auto_on_a_gpu_is_a_one_line_error(exported):
    for load in (
        lambda: make_runner(exported, "auto", device="cuda"),
        lambda: QuestionAnswerer.from_pretrained(exported, InferenceConfig(backend="auto"), device="cuda:1"),
    ):
        with pytest.raises(
            UserError, match=r"--backend auto measures CPU backends; device cuda(:1)? is not cpu"
        ):
            load()
    with pytest.raises(UserError) as caught:
        make_runner(exported, "auto", device="cuda")
    assert "\n" not in str(caught.value) and str(caught.value).endswith("name a backend")


def test_a_row_that_failed_the_identical_answers_gate_is_not_a_candidate(tmp_path):
    from tinyroberta_es.runtimes.auto import parity_verdict

    (tmp_path / "onnx").mkdir()
    row = {"f1_drop": 0.2, "passed": False, "failed": ["gives 61.0% identical answers (min 90%)"]}
    report = {"max_f1_drop": 1.0, "questions": 300, "dev": "xquad_es", "variants": {"openvino-bf16": row}}
    (tmp_path / "onnx" / "parity.json").write_text(json.dumps(report), encoding="utf-8")
    assert parity_verdict(tmp_path, "openvino-bf16") == (False, "gives 61.0% identical answers (min 90%)")
    row["passed"] = True
    (tmp_path / "onnx" / "parity.json").write_text(json.dumps(report), encoding="utf-8")
    assert parity_verdict(tmp_path, "openvino-bf16")[0] is True
