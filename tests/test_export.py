"""`tinyroberta-es export` end to end, and the commands that run its files (predict, answer, evaluate).

ONNX always; OpenVINO IR (`--format openvino`, NNCF int8) where openvino and nncf are installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_cli
from tinyroberta_es import parity
from tinyroberta_es.cli import main
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.sources import CACHE_ENV, resolve_source
from tinyroberta_es.errors import UserError
from tinyroberta_es.onnx_export import ExportConfig, export_model
from tinyroberta_es.tiny import create_tiny_qa_model, train_tokenizer

pytest.importorskip("onnxruntime")

HAS_OPENVINO = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))
needs_openvino = pytest.mark.skipif(
    not HAS_OPENVINO,
    reason="openvino or nncf is not installed: pip install 'tinyroberta-es[openvino]'",
)

CONTEXT = (
    "Gabriel García Márquez nació en Aracataca, Colombia, en 1927. En 1982 recibió el Premio Nobel "
    "de Literatura. «Cien años de soledad» se publicó en Buenos Aires en 1967."
)
WINDOW_FLAGS = ("--max-length", "96", "--doc-stride", "32")
SAMPLE = ("--dev", "sample")  # the parity set named: `auto` would pick whatever real set this machine has
LAYERS = 2


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample")


def tiny_model(root: Path, kind: str, sample) -> Path:
    texts = [ex.context for ex in sample.examples] + [ex.question for ex in sample.examples]
    tokenizer_dir = train_tokenizer(kind, texts, root / "tokenizer", vocab_size=1000)
    return create_tiny_qa_model(root / "model", tokenizer_dir, layers=LAYERS, max_length=128, seed=5)


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def exported(request, tmp_path_factory, sample) -> Path:
    """A model folder after `export --quantize int8` (into its default place, MODEL/onnx)."""
    model_dir = tiny_model(tmp_path_factory.mktemp(f"export-{request.param}"), request.param, sample)
    # random weights: F1 is noise (a drop of 1.5 was seen), so no budget here; the budget has its own test
    argv = [
        "export",
        "--model",
        str(model_dir),
        "--quantize",
        "int8",
        "--dev-limit",
        "30",
        "--max-f1-drop",
        "100",
    ]
    status = main([*argv, *SAMPLE, *WINDOW_FLAGS])
    assert status == 0
    return model_dir


def test_export_writes_the_files_and_the_parity_report(exported, capsys):
    out = exported / "onnx"
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.int8.onnx", "parity.json", "export.json"}
    report = json.loads((out / "parity.json").read_text(encoding="utf-8"))
    assert report["dev"] == "sample" and report["questions"] == 30 and report["windows"] >= 30
    assert list(report["variants"]) == ["pytorch", "pytorch-bf16", "onnx", "onnx-int8"]
    fp32, int8 = report["variants"]["onnx"], report["variants"]["onnx-int8"]
    assert fp32["file"] == "model.onnx" and int8["file"] == "model.int8.onnx"
    assert max(fp32["max_abs_diff_start"], fp32["max_abs_diff_end"]) < 1e-4
    assert 0 < max(int8["max_abs_diff_start"], int8["max_abs_diff_end"]) < 0.5
    assert fp32["f1_drop"] == pytest.approx(0, abs=1e-9) and fp32["same_answers"] == 1.0
    assert int8["f1_drop"] <= report["max_f1_drop"] == 100.0
    assert int8["same_answers"] >= 0.8
    for row in report["variants"].values():
        assert 0 <= row["exact_match"] <= row["f1"] <= 100
    assert report["fused_ops"]["Attention"] == LAYERS  # one fused attention per layer
    assert report["fused_ops"]["SkipLayerNormalization"] >= LAYERS
    model_type = json.loads((exported / "config.json").read_text(encoding="utf-8"))["model_type"]
    token_types = ["token_type_ids"] if model_type == "bert" else []  # RoBERTa's tokenizer makes none
    assert sorted(report["input_names"]) == sorted(["input_ids", "attention_mask", *token_types])
    settings = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert settings["quantize"] == "int8" and settings["opset"] >= 14 and "onnxruntime_version" in settings
    assert not list(out.glob(".*"))  # no temporary files left behind
    assert report["dev_reason"] == "given with --dev" and report["external_data"] is False
    assert (int8["min_identical"], fp32["min_identical"]) == (0.70, 0.98) and int8["passed"]
    # int8 is per channel unless asked otherwise: one scale per output column of each weight matrix
    assert settings["per_channel"] is True
    scales = int8_scales(out / "model.int8.onnx")
    assert scales and all(n > 1 for n in scales.values())


def test_predict_with_onnx_int8_answers_with_spans_of_the_context(exported, sample, tmp_path, capsys):
    preds_path = tmp_path / "preds.json"
    status, out, _ = run_cli(
        capsys,
        "predict",
        "--model",
        str(exported),
        "--dataset",
        "sample",
        "--output",
        str(preds_path),
        "--limit",
        "20",
        "--backend",
        "onnx-int8",
        "--threads",
        "1",
        *WINDOW_FLAGS,
    )
    assert status == 0, out
    assert "with onnx-int8" in out
    preds = json.loads(preds_path.read_text(encoding="utf-8"))
    by_id = sample.by_id()
    assert len(preds) == 20
    for qid, text in preds.items():
        assert text and text in by_id[qid].context


def test_answer_with_onnx(exported, capsys):
    status, out, _ = run_cli(
        capsys,
        "answer",
        "--model",
        str(exported),
        "--question",
        "¿Dónde nació García Márquez?",
        "--context",
        CONTEXT,
        "--backend",
        "onnx",
        "--json",
        *WINDOW_FLAGS,
    )
    assert status == 0
    answer = json.loads(out)
    assert answer["answer"] and answer["answer"] in CONTEXT
    for span in answer["answers"]:
        assert CONTEXT[span["start"] : span["end"]] == span["text"]


def test_evaluate_model_equals_predict_then_evaluate(exported, tmp_path, capsys):
    preds, na_probs = tmp_path / "preds.json", tmp_path / "na.json"
    common = ("--dataset", "sample", *WINDOW_FLAGS)
    predict = ("predict", "--model", str(exported), "--backend", "onnx", "--null-threshold", "0")
    assert main([*predict, *common, "--output", str(preds), "--na-probs-output", str(na_probs)]) == 0
    two_steps = tmp_path / "two_steps.json"
    files = ("--predictions", str(preds), "--na-probs", str(na_probs))
    assert main(["evaluate", *files, "--dataset", "sample", "--output", str(two_steps)]) == 0
    one_step = tmp_path / "one_step.json"
    evaluate = ("evaluate", "--model", str(exported), "--backend", "onnx", "--null-threshold", "0")
    assert main([*evaluate, *common, "--output", str(one_step)]) == 0
    capsys.readouterr()
    a = json.loads(two_steps.read_text(encoding="utf-8"))
    b = json.loads(one_step.read_text(encoding="utf-8"))
    assert b.pop("model") == str(exported) and b.pop("backend") == "onnx"
    # Only `evaluate --model` knows the model's threshold: it says so, and searches one in logits.
    assert b.pop("null_threshold") == 0.0 and b.pop("null_threshold_source") == "--null-threshold"
    for report in (b, *b["other_normalizations"].values()):
        assert "best_f1_null_threshold" in report.pop("null_threshold_search")
    for report in (a, b):
        for key in ("predictions", "na_probs", "headline"):
            report.pop(key, None)
    assert a == b  # the same answers and the same no-answer probabilities, hence the same best_* too


def test_export_elsewhere_is_self_contained(tmp_path, sample, capsys):
    model_dir = tiny_model(tmp_path / "unigram", "unigram", sample)
    out = tmp_path / "exported"
    status, stdout, _ = run_cli(
        capsys,
        "export",
        "--model",
        str(model_dir),
        "--output",
        str(out),
        "--dev-limit",
        "5",
        *SAMPLE,
        *WINDOW_FLAGS,
    )
    assert status == 0
    assert "parity on sample" in stdout and "model.onnx" in stdout
    assert f"graph fused: {LAYERS} Attention" in stdout
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (model_dir / "onnx").exists()
    status, answer, _ = run_cli(
        capsys,
        "answer",
        "--model",
        str(out),
        "--backend",
        "onnx",
        "--question",
        "¿Quién?",
        "--context",
        CONTEXT,
    )
    assert status == 0 and answer.startswith("1. ")


def int8_scales(path: Path) -> dict[str, int]:
    """The weight scales of an int8 graph: name -> number of scales (1: per tensor, N: per column)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer if t.name.endswith("_scale")}
    return {name: n for name, n in sizes.items() if "embeddings" not in name}  # Gather: always per tensor


def test_no_optimize_keeps_the_plain_graph_and_per_tensor_int8_is_an_opt_out(tmp_path, sample, capsys):
    model_dir = tiny_model(tmp_path, "bpe", sample)
    flags = (
        "--no-optimize",
        "--quantize",
        "int8",
        "--per-tensor",
        "--dev-limit",
        "5",
        *SAMPLE,
        *WINDOW_FLAGS,
    )
    assert main(["export", "--model", str(model_dir), *flags]) == 0
    capsys.readouterr()
    report = json.loads((model_dir / "onnx" / "parity.json").read_text(encoding="utf-8"))
    assert report["fused_ops"] is None
    assert report["variants"]["onnx"]["max_abs_diff_start"] < 1e-4
    assert report["variants"]["onnx-int8"]["max_abs_diff_start"] < 0.5
    assert (
        json.loads((model_dir / "onnx" / "export.json").read_text(encoding="utf-8"))["per_channel"] is False
    )
    scales = int8_scales(model_dir / "onnx" / "model.int8.onnx")
    assert scales and set(scales.values()) == {1}


def change_row(monkeypatch, backend: str, **changes) -> None:
    """`parity.check`, but with `changes` in `backend`'s row: a backend made to fail the check."""
    real = parity.check

    def check(ref, runner):
        row = real(ref, runner)
        return row | changes if runner.name == backend else row

    monkeypatch.setattr(parity, "check", check)


def test_a_variant_over_the_f1_budget_fails_and_is_not_published(tmp_path, sample, capsys, monkeypatch):
    model_dir = tiny_model(tmp_path, "bpe", sample)
    stale = model_dir / "onnx" / "model.int8.onnx"  # from an earlier export: must not survive a failed one
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    change_row(monkeypatch, "onnx-int8", f1_drop=2.5)
    argv = [
        "export",
        "--model",
        str(model_dir),
        "--quantize",
        "int8",
        "--dev-limit",
        "5",
        *SAMPLE,
        *WINDOW_FLAGS,
    ]
    status, _, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, "onnx-int8 loses 2.50 F1", "--max-f1-drop 1.0", "parity.json")
    assert not stale.exists()
    assert (model_dir / "onnx" / "model.int8.rejected.onnx").is_file()
    assert (model_dir / "onnx" / "model.onnx").is_file()
    report = json.loads((model_dir / "onnx" / "parity.json").read_text(encoding="utf-8"))
    assert report["variants"]["onnx-int8"]["file"] == "model.int8.rejected.onnx"
    status, _, err = run_cli(
        capsys,
        "answer",
        "--model",
        str(model_dir),
        "--backend",
        "onnx-int8",
        "--question",
        "¿Qué?",
        "--context",
        CONTEXT,
    )
    assert_one_line_error(status, err, "--quantize int8 first")


def test_weights_gathered_copied_and_renamed_stay_with_their_graph(tmp_path):
    """The exporter writes one file per tensor past 2 GB; export gathers them into `<graph>.data`, copies and
    renames graph and weights together, and ONNX Runtime still finds them."""
    import onnx
    import onnxruntime as ort

    from tinyroberta_es.onnx_files import copy_onnx, gather_external_data, publish_onnx
    from tinyroberta_es.runtimes.ort import data_file

    weight = np.arange(512, dtype=np.float32)  # 2 KiB: goes outside (1 KiB and more)
    node = onnx.helper.make_node("Add", ["x", "w"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [512])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [512])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    raw = tmp_path / "raw.onnx"
    onnx.save(
        model, str(raw), save_as_external_data=True, all_tensors_to_one_file=False
    )  # one file per tensor
    assert (tmp_path / "w").is_file()

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path)).run(None, {"x": np.ones(512, np.float32)})[0]

    gather_external_data(raw)
    (tmp_path / "w").unlink()  # the per-tensor file is no longer read
    assert data_file(raw).stat().st_size == weight.nbytes and raw.stat().st_size < weight.nbytes
    np.testing.assert_array_equal(run(raw), weight + 1)
    copy = tmp_path / "sub" / "model.onnx"
    copy.parent.mkdir()
    copy_onnx(raw, copy)
    out = tmp_path / "out"
    out.mkdir()
    publish_onnx(copy, out / "model.rejected.onnx")
    assert {p.name for p in out.iterdir()} == {"model.rejected.onnx", "model.rejected.onnx.data"}
    data_file(raw).unlink()
    np.testing.assert_array_equal(run(out / "model.rejected.onnx"), weight + 1)


def test_large_graphs_keep_their_weights_beside_them_through_every_step(
    tmp_path, sample, capsys, monkeypatch
):
    """`EXTERNAL_DATA_BYTES = 0` makes the tiny model 'large': the path of a teacher past 2 GB."""
    from tinyroberta_es import onnx_export
    from tinyroberta_es.runtimes import onnx_runner

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # a cached real dev set for --dev auto
    monkeypatch.setenv(parity.DATA_ENV, "")
    (tmp_path / "cache" / "datasets").mkdir(parents=True)
    small_dev(tmp_path / "cache" / "datasets" / "mlqa_es_dev.json")
    model_dir = tiny_model(tmp_path, "bpe", sample)
    out = model_dir / "onnx"
    out.mkdir()
    (out / "model.onnx.data").write_bytes(b"old")  # an earlier export's weights: replaced
    config = ExportConfig(
        model=str(model_dir),
        quantize="int8",
        max_length=96,
        doc_stride=32,
        max_f1_drop=100.0,
        formats=("onnx", "openvino") if HAS_OPENVINO else ("onnx",),
        calibration_size=8,
        int8_method="plain",
    )
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    report = export_model(config)
    # the whole cached set, not the sample
    assert report["dev"] == "mlqa_es_dev" and report["questions"] == 20
    assert report["dev_reason"].startswith("--dev auto chose mlqa_es_dev (cached)")
    assert report["external_data"] is True
    for graph in ("model.onnx", "model.int8.onnx"):  # the weights are outside the graph
        assert (out / f"{graph}.data").stat().st_size > (out / graph).stat().st_size
    assert all(row["passed"] for row in report["variants"].values())
    fp32 = report["variants"]["onnx"]
    assert max(fp32["max_abs_diff_start"], fp32["max_abs_diff_end"]) < 1e-4 and fp32["same_answers"] == 1.0
    if HAS_OPENVINO:  # converted from the TorchScript graph, saved with external data too
        assert report["variants"]["openvino"]["max_abs_diff_start"] < 1e-4
    runner = onnx_runner(out / "model.int8.onnx", name="onnx-int8", dtype="int8")
    assert runner.weights_bytes > (out / "model.int8.onnx.data").stat().st_size
    ask = ("--question", "¿Dónde nació?", "--context", CONTEXT, *WINDOW_FLAGS)
    capsys.readouterr()  # NNCF's progress bars
    status, answer, _ = run_cli(capsys, "answer", "--model", str(model_dir), "--backend", "onnx-int8", *ask)
    assert status == 0 and answer.startswith("1. ")

    # Exported again, int8 gives PyTorch's answer too rarely: rejected, its weights renamed with it.
    change_row(monkeypatch, "onnx-int8", same_answers=0.5)
    with pytest.raises(UserError) as info:
        export_model(config)
    assert (
        "onnx-int8 gives PyTorch fp32's answer to 50.0% of the questions (budget --min-identical 0.7)"
        in str(info.value)
    )
    files = {p.name for p in out.iterdir()}
    assert {
        "model.onnx",
        "model.onnx.data",
        "model.int8.rejected.onnx",
        "model.int8.rejected.onnx.data",
    } <= files
    assert not {"model.int8.onnx", "model.int8.onnx.data"} & files
    rejected = onnx_runner(
        out / "model.int8.rejected.onnx", name="onnx-int8", dtype="int8"
    )  # finds its weights
    assert rejected.weights_bytes > (out / "model.int8.rejected.onnx.data").stat().st_size


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    status, _, err = run_cli(
        capsys,
        "export",
        "--model",
        str(tmp_path),
        "--quantize",
        "int4",
        "--max-f1-drop",
        "-1",
        "--min-identical",
        "90",
    )
    assert_one_line_error(
        status,
        err,
        "--quantize 'int4'",
        "--max-f1-drop -1.0",
        "--min-identical 90.0 must be a share from 0 to 1, e.g. 0.9",
    )
    with pytest.raises(SystemExit) as exit_info:  # --per-channel is the default and still accepted, alone
        main(["export", "--model", str(tmp_path), "--per-channel", "--per-tensor"])
    assert exit_info.value.code == 2
    assert "--per-tensor: not allowed with argument --per-channel" in capsys.readouterr().err
    flags = ("--format", "tflite", "--int8-method", "x", "--calibration-size", "0")
    status, _, err = run_cli(capsys, "export", "--model", str(tmp_path), *flags)
    assert_one_line_error(
        status,
        err,
        "--format 'tflite': choose onnx, openvino or onnx,openvino",
        "--int8-method 'x': choose auto, plain, accuracy-aware",
        "--calibration-size 0 must be a positive integer",
    )
    assert not (tmp_path / "onnx").exists()  # checked before anything is written


# --- OpenVINO IR: fp32 and NNCF int8 -----------------------------------------------------------------------

OV_FLAGS = ("--quantize", "int8", "--calibration-size", "16", *WINDOW_FLAGS)  # --dev comes separately


def ov_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {"parity.json", "export.json"}


@pytest.fixture(scope="module")
def ov_exported(tmp_path_factory, sample) -> Path:
    """A model folder after `export --format onnx,openvino --quantize int8` with 10 parity questions."""
    model_dir = tiny_model(tmp_path_factory.mktemp("export-openvino"), "wordpiece", sample)
    argv = ["export", "--model", str(model_dir), "--format", "onnx,openvino", "--dev-limit", "10", *SAMPLE]
    assert main([*argv, *OV_FLAGS, "--max-f1-drop", "100", "--int8-method", "plain"]) == 0
    return model_dir


@needs_openvino
def test_openvino_export_writes_the_ir_beside_the_onnx_files_and_checks_every_backend(ov_exported, capsys):
    from tinyroberta_es.runtimes import has_bf16

    capsys.readouterr()
    out = ov_exported / "onnx"
    onnx = {"model.onnx", "model.int8.onnx"}
    assert ov_files(out) == onnx | {"model.xml", "model.bin", "model.int8.xml", "model.int8.bin"}
    report = json.loads((out / "parity.json").read_text(encoding="utf-8"))
    bf16 = has_bf16()  # the bf16 runs are checked only where the CPU has bf16
    expected = ["pytorch", "pytorch-bf16", "onnx", "onnx-int8", "openvino"]
    expected += ["openvino-bf16"] * bf16 + ["openvino-int8"] + ["openvino-int8-bf16"] * bf16
    assert list(report["variants"]) == expected
    rows = report["variants"]
    assert all(row["passed"] is True for row in rows.values())
    assert max(rows["openvino"]["max_abs_diff_start"], rows["openvino"]["max_abs_diff_end"]) < 1e-4
    assert rows["openvino"]["file"] == "model.xml" and rows["openvino-int8"]["file"] == "model.int8.xml"
    assert 0 < rows["openvino-int8"]["max_abs_diff_start"] < 0.5
    assert 0 <= rows["openvino-int8"]["same_answers"] <= 1
    if bf16:
        assert rows["openvino-bf16"]["file"] == "model.xml"
        assert rows["openvino-int8-bf16"]["file"] == "model.int8.xml"
    int8 = report["int8"]["openvino-int8"]
    assert int8["method"].startswith("nncf post-training") and "plain_attempt" not in int8
    assert int8["calibration_windows"] == 16 and int8["calibration_set"] == "sample"
    assert int8["calibration_overlaps_parity"] is False  # calibrated on the questions after the first 10
    settings = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert settings["formats"] == ["onnx", "openvino"] and settings["int8_method"] == "plain"


@needs_openvino
def test_predict_runs_the_openvino_int8_export(ov_exported, tmp_path, capsys):
    preds_path = tmp_path / "preds.json"
    argv = ["--dataset", "sample", "--output", str(preds_path), "--limit", "8", *WINDOW_FLAGS]
    status, out, err = run_cli(
        capsys, "predict", "--model", str(ov_exported), "--backend", "openvino-int8", *argv
    )
    assert status == 0, err
    assert "with openvino-int8" in out
    assert len(json.loads(preds_path.read_text(encoding="utf-8"))) == 8


def small_dev(path: Path) -> Path:
    """The sample's first article (20 questions) as a SQuAD file."""
    obj = json.loads(resolve_source("sample").read_text(encoding="utf-8"))
    path.write_text(json.dumps({"version": obj["version"], "data": obj["data"][:1]}), encoding="utf-8")
    return path


@needs_openvino
def test_openvino_only_export_calibrating_on_the_parity_questions_says_so(tmp_path, sample, capsys, caplog):
    model_dir = tiny_model(tmp_path, "bpe", sample)
    dev = small_dev(tmp_path / "dev.json")  # no --dev-limit: no other questions to calibrate on
    argv = ["export", "--model", str(model_dir), "--format", "openvino", "--dev", str(dev), *OV_FLAGS]
    with caplog.at_level(logging.WARNING, logger="tinyroberta_es.onnx_export"):
        status, out, err = run_cli(capsys, *argv, "--max-f1-drop", "100")
    assert status == 0, err
    assert "calibrating on the parity questions" in caplog.text and "--calibration" in caplog.text
    assert "openvino-int8: nncf" in out and "16 calibration windows" in out  # the printed report
    folder = model_dir / "onnx"
    assert ov_files(folder) == {"model.xml", "model.bin", "model.int8.xml", "model.int8.bin"}
    report = json.loads((folder / "parity.json").read_text(encoding="utf-8"))
    assert report["questions"] == 20
    assert {"pytorch", "pytorch-bf16", "openvino", "openvino-int8"} <= set(report["variants"])
    assert not any(b.startswith("onnx") for b in report["variants"])
    int8 = report["int8"]["openvino-int8"]
    assert int8["calibration_overlaps_parity"] is True and int8["calibration_set"] == str(dev)


@needs_openvino
def test_an_earlier_exports_rows_are_kept_only_under_the_same_gates(tmp_path, sample, capsys):
    """Rows of a format not exported now stay in parity.json only when they were judged by the same check."""
    model_dir = tiny_model(tmp_path, "bpe", sample)
    base = ["export", "--model", str(model_dir), "--dev-limit", "5", *SAMPLE, *WINDOW_FLAGS]
    gates = ["--max-f1-drop", "100", "--min-identical", "0"]
    assert run_cli(capsys, *base, "--format", "onnx", *gates)[0] == 0
    parity_json = model_dir / "onnx" / "parity.json"
    assert run_cli(capsys, *base, "--format", "openvino", *gates)[0] == 0
    report = json.loads(parity_json.read_text(encoding="utf-8"))
    assert {"onnx", "openvino"} <= set(report["variants"])  # same check: the ONNX rows are kept
    status, _, err = run_cli(capsys, *base, "--format", "openvino", "--max-f1-drop", "100")
    assert status == 0, err
    report = json.loads(parity_json.read_text(encoding="utf-8"))
    # another identical-answers gate: the ONNX rows' verdicts no longer hold, so they are not carried over
    assert "openvino" in report["variants"] and not any(b.startswith("onnx") for b in report["variants"])


@needs_openvino
def test_a_rejected_openvino_int8_is_kept_aside_and_a_stale_one_removed(
    tmp_path, sample, capsys, monkeypatch
):
    model_dir = tiny_model(tmp_path, "bpe", sample)
    folder = model_dir / "onnx"
    folder.mkdir()
    for stale in ("model.int8.xml", "model.int8.bin"):  # from an earlier export: must not survive this one
        (folder / stale).write_bytes(b"old")
    change_row(monkeypatch, "openvino-int8", f1_drop=2.5)
    argv = [
        "export",
        "--model",
        str(model_dir),
        "--format",
        "openvino",
        "--dev-limit",
        "5",
        *SAMPLE,
        *OV_FLAGS,
    ]
    status, _, err = run_cli(capsys, *argv, "--int8-method", "plain")
    assert_one_line_error(status, err, "openvino-int8 loses 2.50 F1", "--max-f1-drop 1.0", "parity.json")
    assert ov_files(folder) == {
        "model.xml",
        "model.bin",
        "model.int8.rejected.xml",
        "model.int8.rejected.bin",
    }
    report = json.loads((folder / "parity.json").read_text(encoding="utf-8"))
    assert report["rejected"] == ["openvino-int8"]
    assert report["variants"]["openvino-int8"]["file"] == "model.int8.rejected.xml"
    assert report["variants"]["openvino-int8"]["passed"] is False
    assert report["variants"]["openvino"]["passed"] is True
    ask = ("--question", "¿Qué?", "--context", CONTEXT)
    status, _, err = run_cli(capsys, "answer", "--model", str(model_dir), "--backend", "openvino-int8", *ask)
    assert_one_line_error(status, err, "no OpenVINO export", "--format openvino --quantize int8 first")


@needs_openvino
def test_int8_method_auto_falls_back_to_accuracy_aware_when_plain_misses(
    tmp_path, sample, capsys, monkeypatch
):
    from tinyroberta_es import openvino_export

    model_dir = tiny_model(tmp_path, "bpe", sample)
    real = parity.check
    plain_rows = []

    def plain_misses(ref, runner):
        row = real(ref, runner)
        if runner.name == "openvino-int8" and not plain_rows:  # the first check of int8: the plain model
            plain_rows.append(row)
            return row | {"f1_drop": 60.0}
        return row

    calls = []

    def accuracy_aware(xml, out, windows, questions, f1_of, *, max_drop, **kwargs):
        calls.append({"windows": len(windows), "questions": len(questions), "max_drop": max_drop})
        assert out.is_file()  # the plain int8 model, which this stub leaves in place of a restored one
        return {"method": "stub accuracy control", "calibration_windows": len(windows)}

    monkeypatch.setattr(parity, "check", plain_misses)
    monkeypatch.setattr(openvino_export, "quantize_accuracy_aware", accuracy_aware)
    argv = [
        "export",
        "--model",
        str(model_dir),
        "--format",
        "openvino",
        "--dev-limit",
        "5",
        *SAMPLE,
        *OV_FLAGS,
    ]
    status, _, err = run_cli(capsys, *argv, "--max-f1-drop", "50")  # --int8-method auto is the default
    assert status == 0, err
    assert calls == [
        {"windows": 16, "questions": 200, "max_drop": 50.0}
    ]  # the budget, 200 validation questions
    report = json.loads((model_dir / "onnx" / "parity.json").read_text(encoding="utf-8"))
    int8 = report["int8"]["openvino-int8"]
    assert int8["method"] == "stub accuracy control"
    assert int8["plain_attempt"]["f1_drop"] == 60.0
    assert int8["plain_attempt"]["method"].startswith("nncf post-training")
    assert int8["calibration_overlaps_parity"] is False
    assert report["variants"]["openvino-int8"]["f1_drop"] == plain_rows[0]["f1_drop"]  # checked again after
    assert report["variants"]["openvino-int8"]["passed"] is True


def test_cli_errors_for_backends(exported, tmp_path, capsys, monkeypatch):
    base = ("--question", "¿Dónde?", "--context", CONTEXT, *WINDOW_FLAGS)
    status, _, err = run_cli(capsys, "answer", "--model", str(exported), "--backend", "onnxx", *base)
    assert_one_line_error(
        status,
        err,
        "--backend 'onnxx' is unknown",
        "pytorch, pytorch-bf16, pytorch-bf16-compiled, onnx, onnx-int8, openvino, openvino-bf16, "
        "openvino-int8, openvino-int8-bf16, auto",
    )
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (bare / name).write_bytes((exported / name).read_bytes())
    status, _, err = run_cli(capsys, "answer", "--model", str(bare), "--backend", "onnx", *base)
    assert_one_line_error(status, err, "no ONNX export", f"run tinyroberta-es export --model {bare} first")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    status, _, err = run_cli(capsys, "answer", "--model", str(exported), "--backend", "onnx", *base)
    assert_one_line_error(status, err, "pip install 'tinyroberta-es[onnx]'")
    status, _, err = run_cli(capsys, "export", "--model", str(exported), "--dev-limit", "2")
    assert_one_line_error(status, err, "pip install 'tinyroberta-es[onnx]'")
