"""Teacher-logit cache: parity with a direct forward, hits without a forward, keys, atomic writes, padding."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.distill.cache import TeacherLogits, teacher_logits
from tinyroberta_es.errors import UserError
from tinyroberta_es.features import Features, prepare_features
from tinyroberta_es.tiny import create_tiny_qa_model


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def teacher_and_features(request, tokenizer_dirs, tmp_path_factory) -> tuple[nn.Module, Features]:
    """A tiny random QA model (RoBERTa for bpe, BERT with token types for wordpiece) and ~170 windows."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    folder = create_tiny_qa_model(
        tmp_path_factory.mktemp(f"teacher-{request.param}"), tokenizer_dirs[request.param], max_length=128
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    examples = load_dataset("sample").examples[:40]
    features = prepare_features(examples, tokenizer, max_length=96, doc_stride=32, max_query_length=32)
    assert len(features) > len(examples) and len(set(features.lengths)) > 1  # several windows, ragged
    return AutoModelForQuestionAnswering.from_pretrained(str(folder)).eval(), features


@pytest.fixture
def teacher(teacher_and_features):
    """A fresh copy per test: tests may edit its weights."""
    import copy

    return copy.deepcopy(teacher_and_features[0])


@pytest.fixture
def features(teacher_and_features) -> Features:
    return teacher_and_features[1]


def count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_cached_logits_equal_a_direct_forward_for_random_batches(teacher, features, tmp_path):
    cached = teacher_logits(teacher, features, tmp_path, batch_size=16)
    rng = np.random.default_rng(0)
    for _ in range(6):
        idx = rng.choice(len(features), size=int(rng.integers(1, 12)), replace=False)
        batch = features.batch(idx)
        with torch.no_grad():
            out = teacher(**{k: torch.from_numpy(v) for k, v in batch.items()})
        real = torch.from_numpy(batch["attention_mask"]).bool()  # (B, T)
        width = real.shape[1] + int(rng.integers(0, 5))  # the batch's own width or a wider one
        start, end = cached.lookup(torch.from_numpy(idx), width)
        assert start.shape == end.shape == (len(idx), width) and start.dtype == torch.float32
        for got, want in ((start, out.start_logits), (end, out.end_logits)):
            torch.testing.assert_close(got[:, : real.shape[1]][real], want[real], atol=1e-5, rtol=0)


def test_lookup_pads_with_minus_inf_past_each_length(teacher, features, tmp_path):
    cached = teacher_logits(teacher, features, tmp_path)
    idx = torch.arange(len(features))
    start, end = cached.lookup(idx, int(features.lengths.max()) + 3)
    past = torch.arange(start.shape[1])[None, :] >= torch.from_numpy(features.lengths)[:, None]  # (N, W)
    for logits in (start, end):
        assert torch.isneginf(logits[past]).all() and torch.isfinite(logits[~past]).all()
    with pytest.raises(ValueError, match="narrower"):
        cached.lookup(idx, int(features.lengths.max()) - 1)


def test_second_call_hits_the_cache_without_a_forward(teacher, features, tmp_path, caplog):
    calls = count_forwards(teacher)
    first = teacher_logits(teacher, features, tmp_path, batch_size=32)
    assert calls[0] == -(-len(features) // 32)
    caplog.set_level("INFO", logger="tinyroberta_es.distill.cache")
    second = teacher_logits(teacher, features, tmp_path, batch_size=7)  # batching is not part of the key
    assert calls[0] == -(-len(features) // 32) and "cache hit" in caplog.text
    assert second.path == first.path and len(second) == len(features)
    np.testing.assert_array_equal(np.asarray(second.start), np.asarray(first.start))
    np.testing.assert_array_equal(np.asarray(second.end), np.asarray(first.end))
    assert sorted(p.name for p in first.path.iterdir()) == [
        "end.f32",
        "lengths.i32",
        "meta.json",
        "start.f32",
    ]
    assert first.meta["n"] == len(features) and first.meta["max_len"] == features.lengths.max()
    assert isinstance(first.start, np.memmap) and first.start.mode == "r"


def test_weights_features_and_precision_change_the_key(teacher, features, tmp_path):
    calls = count_forwards(teacher)
    base = teacher_logits(teacher, features, tmp_path).key
    with torch.no_grad():
        teacher.qa_outputs.bias[0] += 0.01
    retrained = teacher_logits(teacher, features, tmp_path).key
    with torch.no_grad():  # element 0 of the word embeddings: large tensors enter by a sample from 0
        next(iter(teacher.parameters())).view(-1)[0] += 0.01
    edited = teacher_logits(teacher, features, tmp_path).key
    ids = [row.copy() for row in features.input_ids]
    ids[3][-2] = (ids[3][-2] + 1) % 50
    other = teacher_logits(teacher, dataclasses.replace(features, input_ids=ids), tmp_path).key
    bf16 = teacher_logits(teacher, features, tmp_path, precision="bf16")
    keys = {base, retrained, edited, other, bf16.key}
    assert len(keys) == 5 and calls[0] > 0
    assert {p.name for p in tmp_path.iterdir()} == keys
    fp32 = teacher_logits(teacher, features, tmp_path)
    finite = np.isfinite(fp32.start)
    np.testing.assert_allclose(bf16.start[finite], fp32.start[finite], atol=0.1)


def test_interrupted_computation_leaves_no_cache_folder(teacher, features, tmp_path):
    def fail_on_third(module, args, kwargs, output, calls=[0]):  # noqa: B006 - a call counter
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt

    handle = teacher.register_forward_hook(fail_on_third, with_kwargs=True)
    teacher.train()
    with pytest.raises(KeyboardInterrupt):
        teacher_logits(teacher, features, tmp_path, batch_size=8)
    assert list(tmp_path.iterdir()) == []
    assert teacher.training  # the caller's mode is restored
    handle.remove()
    assert len(teacher_logits(teacher, features, tmp_path)) == len(features)


def test_an_entry_written_meanwhile_by_another_process_is_used(teacher, features, tmp_path):
    nested: list = []

    def other_process(*_):
        if not nested:  # while we compute, "another process" finishes the same entry
            nested.append(None)
            nested[0] = teacher_logits(teacher, features, tmp_path)

    teacher.register_forward_hook(other_process)
    ours = teacher_logits(teacher, features, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [ours.key] == [nested[0].key]
    np.testing.assert_array_equal(np.asarray(ours.start), np.asarray(nested[0].start))


def test_models_without_token_types_and_tuple_outputs_work(teacher, features, tmp_path):
    class Plain(nn.Module):  # forward takes no token_type_ids and returns a tuple
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            return out.start_logits, out.end_logits

    cached = teacher_logits(Plain(teacher), features, tmp_path)
    if features.token_type_ids is None:  # same model, same inputs: the same logits as the HF output
        direct = teacher_logits(teacher, features, tmp_path / "hf")
        np.testing.assert_array_equal(np.asarray(cached.start), np.asarray(direct.start))
    assert np.isfinite(cached.start[0, : features.lengths[0]]).all()


def test_reopens_after_pickling_and_rejects_damage(teacher, features, tmp_path):
    cached = teacher_logits(teacher, features, tmp_path)
    clone = pickle.loads(pickle.dumps(cached))
    idx = torch.tensor([2, 0, 5])
    for a, b in zip(clone.lookup(idx, 96), cached.lookup(idx, 96), strict=True):
        torch.testing.assert_close(a, b)
    (cached.path / "end.f32").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match=r"damaged.*delete that folder"):
        TeacherLogits(cached.path)
    with pytest.raises(UserError, match="precision"):
        teacher_logits(teacher, features, Path(tmp_path), precision="int8")


def test_two_processes_each_compute_a_share_and_rank_zero_writes_the_whole_entry(
    teacher, features, tmp_path, monkeypatch
):
    """Under torchrun each process computes every other window; rank 0 gathers them into one entry."""
    from tinyroberta_es.distill import cache

    whole = teacher_logits(teacher, features, tmp_path / "one")
    windows: list[int] = []
    teacher.register_forward_hook(
        lambda m, args, kwargs, out: windows.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    order = np.argsort(-features.lengths, kind="stable")
    other = order[1::2]  # what rank 1 computes, handed over by the (patched) gather
    rank1 = (other, *cache._compute(teacher, features, other, batch_size=64, device="cpu", precision="fp32"))
    monkeypatch.setattr(cache, "gather", lambda obj, world_size: [obj, rank1])
    monkeypatch.setattr(cache, "barrier", lambda world_size: None)
    windows.clear()
    sharded = teacher_logits(teacher, features, tmp_path / "two", rank=0, world_size=2)
    assert sum(windows) == len(order[0::2])  # rank 0 ran its own share only
    np.testing.assert_array_equal(np.asarray(sharded.start), np.asarray(whole.start))
    np.testing.assert_array_equal(np.asarray(sharded.end), np.asarray(whole.end))
