"""Loading a model folder safely: no silent Hub download for a mistyped path, pinnable revisions, no pickle.

Nothing here reaches the network: Hub ids are either refused before any download or served by patching
`from_pretrained` to load a local tiny model while recording what it was asked for.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tinyroberta_es.errors import UserError
from tinyroberta_es.model_folder import load_fast_tokenizer, load_qa_model, load_qa_module, model_source
from tinyroberta_es.runtimes import make_runner
from tinyroberta_es.runtimes.pytorch import _torch_weights_bytes
from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model-folder")
    tokenizer_dir = train_tokenizer("bpe", spanish_texts(), root / "tokenizer", vocab_size=500)
    return create_tiny_qa_model(root / "model", tokenizer_dir, max_length=64)


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything asks transformers to load a model, config or tokenizer."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"from_pretrained called with {args} {kwargs}: a Hub download was attempted")

    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForQuestionAnswering"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)


@pytest.fixture
def fake_hub(monkeypatch, model_dir):
    """Serve every Hub id from the local tiny model; returns the list of (id, kwargs) asked for."""
    import transformers

    calls: list[tuple[str, dict]] = []
    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForQuestionAnswering"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__

        def fake(klass, source, _original=original, **kwargs):
            calls.append((str(source), dict(kwargs)))
            local = str(model_dir) if source == "org/name" else source
            kwargs.pop("revision", None)
            return _original(klass, local, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(fake))
    return calls


@pytest.mark.parametrize(
    "path",
    [
        "/no/such/model",
        "./teacher",
        "../teacher",
        "~/no-such-model-folder",
        "runs/teacher",  # runs/ exists locally: a path, not the Hub id of an org called runs
        "runs/reproduction/teacher",
        "runs\\teacher",
        "teacher",
    ],
)
def test_a_missing_local_path_is_an_error_never_a_hub_download(path, tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for load in (model_source, load_qa_module, load_fast_tokenizer, lambda p: make_runner(p, "pytorch")):
        with pytest.raises(UserError, match=f"model folder {re.escape(path)} does not exist"):
            load(path)


def test_a_hub_id_still_goes_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder called PlanTL-GOB-ES here
    assert model_source("PlanTL-GOB-ES/roberta-base-bne") == "PlanTL-GOB-ES/roberta-base-bne"


def test_revision_reaches_every_loader_of_a_hub_id(fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = make_runner("org/name", "pytorch", revision="v1.0")
    assert runner.params
    load_fast_tokenizer("org/name", revision="0123abc")
    load_qa_module("org/name", revision="main")
    asked = {(source, kwargs.get("revision")) for source, kwargs in fake_hub}
    assert {("org/name", "v1.0"), ("org/name", "0123abc"), ("org/name", "main")} <= asked
    assert all(kwargs.get("revision") for source, kwargs in fake_hub if source == "org/name")


def test_a_revision_of_a_local_folder_is_an_error_naming_it(model_dir, no_hub):
    loads = (
        lambda: model_source(model_dir, revision="v1"),
        lambda: load_fast_tokenizer(str(model_dir), revision="v1"),
        lambda: load_qa_module(model_dir, revision="v1"),
        lambda: make_runner(model_dir, "pytorch", revision="v1"),
        lambda: make_runner(model_dir, "auto", revision="v1"),
    )
    for load in loads:
        with pytest.raises(UserError, match=f"{model_dir}: a revision applies to Hub ids"):
            load()


@pytest.fixture
def pickle_only_dir(model_dir, tmp_path) -> Path:
    """The tiny model with its weights as pytorch_model.bin (a pickle) and no safetensors."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(model_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_a_pickled_model_is_never_unpickled(pickle_only_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", refuse)
    for load in (load_qa_module, load_qa_model, lambda p: make_runner(p, "pytorch")):
        with pytest.raises(UserError, match=r"holds only pytorch_model\.bin .*save_pretrained") as err:
            load(pickle_only_dir)
        assert "\n" not in str(err.value)


def test_weights_bytes_counts_only_safetensors(pickle_only_dir, model_dir):
    assert _torch_weights_bytes(str(pickle_only_dir)) is None
    assert _torch_weights_bytes(str(model_dir)) == (model_dir / "model.safetensors").stat().st_size


def test_a_safetensors_folder_loads(model_dir):
    module, tokenizer = load_qa_model(model_dir)
    assert not module.training and tokenizer.is_fast
