"""Runtime backends against PyTorch fp32: ONNX fp32 to 1e-4, int8 and bf16 within loose bounds.

Tiny random models of each tokenizer family (byte-level BPE/RoBERTa, WordPiece/BERT with token types,
Unigram/XLM-R), exported once per module with the library API; windows of the embedded sample dataset.
"""

from __future__ import annotations

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
from tinyroberta_es.runtimes import BACKENDS, make_runner, onnx_path
from tinyroberta_es.tiny import create_tiny_qa_model, train_tokenizer

pytest.importorskip("onnxruntime")

WINDOWS = InferenceConfig(max_length=96, doc_stride=32)


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample")


@pytest.fixture(scope="module", params=["bpe", "wordpiece", "unigram"])
def exported(request, tmp_path_factory, sample) -> Path:
    """A tiny QA model folder with `onnx/model.onnx` and `onnx/model.int8.onnx` beside it."""
    root = tmp_path_factory.mktemp(f"backend-{request.param}")
    texts = [ex.context for ex in sample.examples] + [ex.question for ex in sample.examples]
    tokenizer_dir = train_tokenizer(request.param, texts, root / "tokenizer", vocab_size=1000)
    model_dir = create_tiny_qa_model(root / "model", tokenizer_dir, max_length=128, seed=3)
    export_model(
        ExportConfig(
            model=str(model_dir),
            quantize="int8",
            dev_limit=10,
            max_length=96,
            doc_stride=32,
            max_f1_drop=100.0,
        )  # random weights: F1 is noise
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


@pytest.mark.parametrize("batch_size", [1, 5, 33])
def test_onnx_fp32_matches_pytorch(exported, features, batch_size):
    """Batch and sequence axes are dynamic: every batch size and padded length gives PyTorch's logits."""
    start, end = logits_with(exported, "pytorch", features, batch_size)
    onnx_start, onnx_end = logits_with(exported, "onnx", features, batch_size)
    np.testing.assert_allclose(onnx_start, start, atol=1e-4)  # -inf past each window's end on both sides
    np.testing.assert_allclose(onnx_end, end, atol=1e-4)


def test_int8_is_close_and_answers_mostly_the_same(exported, features, sample):
    config = InferenceConfig(max_length=96, doc_stride=32, backend="onnx-int8")
    int8 = QuestionAnswerer.from_pretrained(exported, config, device="cpu")
    fp32 = QuestionAnswerer.from_pretrained(exported, WINDOWS, device="cpu")
    start, end = fp32.logits(features)
    q_start, q_end = int8.logits(features)
    valid = np.isfinite(start)
    scale = np.abs(start[valid]).max()
    assert np.abs(q_start[valid] - start[valid]).max() < 0.25 * scale
    assert np.abs(q_end[valid] - end[valid]).max() < 0.25 * scale
    examples = sample.examples[:40]
    same = [a.text == b.text for a, b in zip(fp32.predict(examples), int8.predict(examples), strict=True)]
    assert np.mean(same) >= 0.6  # random weights give flat logits, so int8 noise flips some argmaxes


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
    with pytest.raises(UserError, match="unknown backend 'onnxx': choose one of " + ", ".join(BACKENDS)):
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
