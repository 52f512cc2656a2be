"""Runtime backends against PyTorch fp32: ONNX and OpenVINO fp32 to 1e-4, int8 and bf16 within loose bounds.

Tiny random models of each tokenizer family (byte-level BPE/RoBERTa, WordPiece/BERT with token types,
Unigram/XLM-R), exported once per module with the library API (ONNX and OpenVINO IR, fp32 and int8);
windows of the embedded sample dataset. The OpenVINO tests are skipped where openvino or nncf is missing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.errors import UserError
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.model_folder import load_qa_model
from tinyroberta_es.onnx_export import ExportConfig, export_model
from tinyroberta_es.runtimes import CHOICES, ir_path, make_runner, onnx_path
from tinyroberta_es.tiny import create_tiny_qa_model, train_tokenizer

pytest.importorskip("onnxruntime")

WINDOWS = InferenceConfig(max_length=96, doc_stride=32)
HAS_OPENVINO = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))
needs_openvino = pytest.mark.skipif(
    not HAS_OPENVINO, reason="openvino or nncf is not installed: pip install 'tinyroberta-es[openvino]'"
)


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample")


@pytest.fixture(scope="module", params=["bpe", "wordpiece", "unigram"])
def exported(request, tmp_path_factory, sample) -> Path:
    """A tiny QA model folder with ONNX (`model.onnx`, `model.int8.onnx`) and OpenVINO IR (`model.xml`,
    `model.int8.xml`, where openvino and nncf are installed) in `onnx/`."""
    root = tmp_path_factory.mktemp(f"backend-{request.param}")
    texts = [ex.context for ex in sample.examples] + [ex.question for ex in sample.examples]
    tokenizer_dir = train_tokenizer(request.param, texts, root / "tokenizer", vocab_size=1000)
    model_dir = create_tiny_qa_model(root / "model", tokenizer_dir, max_length=128, seed=3)
    export_model(
        ExportConfig(
            model=str(model_dir),
            quantize="int8",
            dev="sample",  # the parity check and the calibration read the embedded sample
            dev_limit=10,
            max_length=96,
            doc_stride=32,
            max_f1_drop=100.0,  # random weights: F1 is noise
            min_identical=0.0,  # ... and so is the share of answers identical to fp32's
            formats=("onnx", "openvino") if HAS_OPENVINO else ("onnx",),
            calibration_size=16,  # NNCF int8, calibrated on windows of the questions after the first 10
            int8_method="plain",
        )
    )
    return model_dir


@pytest.fixture(scope="module")
def features(exported, sample):
    answerer = QuestionAnswerer.from_pretrained(exported, WINDOWS, device="cpu")
    features = answerer.features(sample.examples[:6])
    assert len(set(features.lengths)) > 3  # windows of many lengths: every batch below is padded
    return features


def logits_with(model_dir: Path, backend: str, features, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    config = InferenceConfig(max_length=96, doc_stride=32, batch_size=batch_size, backend=backend)
    return QuestionAnswerer.from_pretrained(model_dir, config, device="cpu").logits(features)


@pytest.mark.parametrize("backend", ["onnx", pytest.param("openvino", marks=needs_openvino)])
@pytest.mark.parametrize("batch_size", [1, 5, 33])
def test_fp32_exports_match_pytorch(exported, features, backend, batch_size):
    """Batch and sequence axes are dynamic: every batch size and padded length gives PyTorch's logits."""
    start, end = logits_with(exported, "pytorch", features, batch_size)
    exported_start, exported_end = logits_with(exported, backend, features, batch_size)
    np.testing.assert_allclose(exported_start, start, atol=1e-4)  # -inf past each window's end on both
    np.testing.assert_allclose(exported_end, end, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnx-int8", pytest.param("openvino-int8", marks=needs_openvino)])
def test_int8_is_close_and_answers_mostly_the_same(exported, features, sample, backend, record_property):
    config = InferenceConfig(max_length=96, doc_stride=32, backend=backend)
    int8 = QuestionAnswerer.from_pretrained(exported, config, device="cpu")
    fp32 = QuestionAnswerer.from_pretrained(exported, WINDOWS, device="cpu")
    start, end = fp32.logits(features)
    q_start, q_end = int8.logits(features)
    valid = np.isfinite(start)
    assert np.array_equal(np.isfinite(q_start), valid)
    scale = np.abs(start[valid]).max()
    assert 0 < np.abs(q_start[valid] - start[valid]).max() < 0.25 * scale  # quantised, and not far off
    assert np.abs(q_end[valid] - end[valid]).max() < 0.25 * scale
    examples = sample.examples[:40]
    same = np.mean(
        [a.text == b.text for a, b in zip(fp32.predict(examples), int8.predict(examples), strict=True)]
    )
    record_property(f"{backend}_same_answers", float(same))  # in the JUnit XML of CI
    assert same >= 0.6  # random weights give flat logits, so int8 noise flips some argmaxes
    # The export's parity check reports the same measure, on its own 10 questions (too few for a bound).
    row = json.loads((exported / "onnx" / "parity.json").read_text(encoding="utf-8"))["variants"][backend]
    assert 0 <= row["same_answers"] <= 1 and row["passed"] is True


def test_pytorch_bf16_is_close_to_fp32(exported, features):
    start, end = logits_with(exported, "pytorch", features, 8)
    b_start, b_end = logits_with(exported, "pytorch-bf16", features, 8)
    valid = np.isfinite(start)
    assert np.isfinite(b_start[valid]).all()
    np.testing.assert_allclose(b_start[valid], start[valid], atol=0.05)
    np.testing.assert_allclose(b_end[valid], end[valid], atol=0.05)


def test_runner_attributes(exported):
    module, _ = load_qa_model(exported)
    params = sum(p.numel() for p in module.parameters())
    for backend, dtype in (("pytorch", "float32"), ("pytorch-bf16", "bfloat16"), ("onnx", "float32")):
        runner = make_runner(exported, backend)
        assert (runner.name, runner.dtype, runner.device, runner.threads) == (backend, dtype, "cpu", None)
        assert runner.params == params
    int8 = make_runner(exported, "onnx-int8")
    assert int8.dtype == "int8"
    assert int8.params == params  # stored in the ONNX metadata by export
    assert int8.weights_bytes == onnx_path(exported, "onnx-int8").stat().st_size
    assert int8.weights_bytes < 0.6 * make_runner(exported, "onnx").weights_bytes
    assert make_runner(exported, "pytorch").weights_bytes == (exported / "model.safetensors").stat().st_size
    answerer = QuestionAnswerer.from_pretrained(exported, InferenceConfig(backend="onnx"), device="cpu")
    assert answerer.params == params
    assert answerer.weights_bytes == onnx_path(exported, "onnx").stat().st_size


@needs_openvino
def test_openvino_runners_report_what_they_run(exported):
    """Params from the IR, weights_bytes of graph and weights, and the dtype each group of matmuls runs in."""
    module, _ = load_qa_model(exported)
    params = sum(p.numel() for p in module.parameters())
    for backend in ("openvino", "openvino-int8"):
        runner = make_runner(exported, backend)
        xml = ir_path(exported, backend)
        assert (runner.name, runner.device, runner.params) == (backend, "cpu", params)
        assert runner.weights_bytes == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    fp32, int8 = make_runner(exported, "openvino"), make_runner(exported, "openvino-int8")
    assert fp32.dtype == "float32"  # fp32 asked for explicitly: the CPU plugin would pick bf16 on its own
    assert fp32.matmul_dtypes == {"linear": "float32", "attention": "float32"}
    assert int8.dtype == "int8" and int8.matmul_dtypes["linear"] == "int8"
    assert int8.weights_bytes < 0.7 * fp32.weights_bytes


def test_matmul_dtypes_of_the_onnx_and_pytorch_backends(exported):
    expected = {
        "pytorch": {"linear": "float32", "attention": "float32"},
        "pytorch-bf16": {"linear": "bfloat16", "attention": "bfloat16"},
        "onnx": {"linear": "float32", "attention": "float32"},
        "onnx-int8": {"linear": "int8", "attention": "float32"},  # dynamic int8 leaves attention in fp32
    }
    assert {b: make_runner(exported, b).matmul_dtypes for b in expected} == expected


@needs_openvino
def test_openvino_bf16_runs_in_bf16_or_refuses_in_one_line_without_it(exported, features, monkeypatch):
    from tinyroberta_es.runtimes import has_bf16, ov

    if has_bf16():
        start, _ = logits_with(exported, "openvino", features, 8)
        b_start, _ = logits_with(exported, "openvino-bf16", features, 8)
        valid = np.isfinite(start)
        np.testing.assert_allclose(b_start[valid], start[valid], atol=0.05)
        bf16 = make_runner(exported, "openvino-bf16")
        assert bf16.dtype == "bfloat16" and bf16.matmul_dtypes["linear"] == "bfloat16"
    monkeypatch.setattr(ov, "has_bf16", lambda: False)  # as on a CPU without AVX-512-BF16 or AMX
    for backend, fallback in (("openvino-bf16", "openvino"), ("openvino-int8-bf16", "openvino-int8")):
        with pytest.raises(UserError) as caught:
            make_runner(exported, backend)
        message = str(caught.value)
        assert "\n" not in message and "needs a CPU with bf16" in message
        assert message.endswith(f"use --backend {fallback}")


def test_threads(exported):
    before = torch.get_num_threads()
    try:
        assert make_runner(exported, "pytorch", threads=1).threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert make_runner(exported, "onnx", threads=1).threads == 1
    with pytest.raises(UserError, match="threads 0"):
        make_runner(exported, "onnx", threads=0)


def test_a_module_in_memory_runs_as_the_pytorch_backend(exported, features):
    """The training loop's way in: `QuestionAnswerer(model, tokenizer, config, device)`."""
    module, tokenizer = load_qa_model(exported)
    in_memory = QuestionAnswerer(module, tokenizer, WINDOWS, "cpu")
    assert in_memory.runner.name == "pytorch"
    assert in_memory.params == sum(p.numel() for p in module.parameters())
    start, _ = in_memory.logits(features)
    np.testing.assert_array_equal(start, logits_with(exported, "pytorch", features, 32)[0])


def test_unknown_backend(exported):
    with pytest.raises(UserError, match="unknown backend 'onnxx': choose one of " + ", ".join(CHOICES)):
        make_runner(exported, "onnxx")
    with pytest.raises(UserError, match="unknown backend"):
        QuestionAnswerer.from_pretrained(exported, InferenceConfig(backend="torch"))


def test_missing_export(tmp_path, exported):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((exported / "config.json").read_text())
    with pytest.raises(UserError, match=r"run tinyroberta-es export --model .* --quantize int8 first"):
        make_runner(bare, "onnx-int8")
    with pytest.raises(UserError, match=r"run tinyroberta-es export --model \S+ first"):
        make_runner(bare, "onnx")
    with pytest.raises(UserError, match=r"no OpenVINO export .* --format openvino --quantize int8 first"):
        make_runner(bare, "openvino-int8-bf16")


def test_missing_onnxruntime(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'tinyroberta-es\[onnx\]'"):
        make_runner(exported, "onnx")
    make_runner(exported, "pytorch")  # the PyTorch backends do not need it


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])  # RoBERTa; BERT with token types
def test_compiled_bf16_matches_eager_bf16_and_compiles_only_at_load(tmp_path, sample, kind):
    from torch._dynamo.utils import counters

    texts = [ex.context for ex in sample.examples] + [ex.question for ex in sample.examples]
    tokenizer_dir = train_tokenizer(kind, texts, tmp_path / "tokenizer", vocab_size=1000)
    model_dir = create_tiny_qa_model(tmp_path / "model", tokenizer_dir, max_length=128, seed=3)
    answerer = QuestionAnswerer.from_pretrained(model_dir, WINDOWS, device="cpu")
    features = answerer.features(sample.examples[:6])
    compiled = make_runner(model_dir, "pytorch-bf16-compiled")
    assert (compiled.name, compiled.dtype) == ("pytorch-bf16-compiled", "bfloat16")
    frames = counters["frames"]["total"]
    for batch_size in (1, 5, 33):  # batch 1 and larger batches, windows of many padded lengths
        start, end = logits_with(model_dir, "pytorch-bf16", features, batch_size)
        config = InferenceConfig(max_length=96, doc_stride=32, batch_size=batch_size)
        c_start, c_end = QuestionAnswerer(compiled, answerer.tokenizer, config).logits(features)
        valid = np.isfinite(start)
        np.testing.assert_allclose(c_start[valid], start[valid], atol=0.05)
        np.testing.assert_allclose(c_end[valid], end[valid], atol=0.05)
    assert counters["frames"]["total"] == frames  # the warm-up at load compiled every graph these needed


def test_a_compile_failure_is_one_line_naming_the_fallback(exported, monkeypatch):
    def broken(module, **kwargs):
        def call(**inputs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong details")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(
        UserError, match=r"could not compile .*No working C\+\+ compiler found\); .*pytorch-bf16$"
    ):
        make_runner(exported, "pytorch-bf16-compiled")
