"""The QA adapter: pre-softmax attention scores, hidden states and input filtering on tiny HF models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinyroberta_es.distill import outputs
from tinyroberta_es.distill.outputs import QAOutputs, forward_qa
from tinyroberta_es.errors import UserError

ARCHS = ("roberta", "bert", "xlm-roberta")
LAYERS, HEADS, HIDDEN = 2, 4, 32


def tiny_qa_model(arch: str, *, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """A randomly initialised *ForQuestionAnswering: 2 layers, hidden 32, 4 heads, vocabulary 100."""
    import transformers as tf

    config_cls, model_cls = {
        "roberta": (tf.RobertaConfig, tf.RobertaForQuestionAnswering),
        "bert": (tf.BertConfig, tf.BertForQuestionAnswering),
        "xlm-roberta": (tf.XLMRobertaConfig, tf.XLMRobertaForQuestionAnswering),
    }[arch]
    config = config_cls(
        vocab_size=100,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
        max_position_embeddings=40,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


def tiny_batch(arch: str = "bert") -> dict[str, torch.Tensor]:
    """Two windows of 8 tokens, the second with 3 padding tokens, plus keys the model must not see."""
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "start_positions": torch.tensor([1, 2])}
    batch["end_positions"] = torch.tensor([3, 4])
    batch["feature_index"] = torch.tensor([0, 1])
    if arch == "bert":
        batch["token_type_ids"] = (torch.arange(8) >= 3).long().expand(2, 8)
    return batch


def _key_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, T) additive mask: 0 for real keys, the dtype's minimum for padding (as HF's eager mask)."""
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


@pytest.mark.parametrize("arch", ARCHS)
def test_softmax_of_scores_equals_eager_probabilities(arch):
    model = tiny_qa_model(arch)
    model.set_attn_implementation("eager")
    batch = tiny_batch(arch)
    captured = forward_qa(model, batch, attention_scores=True)
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    eager = model(**inputs, output_attentions=True)
    assert captured.attention_scores is not None and len(captured.attention_scores) == LAYERS
    for scores, probs in zip(captured.attention_scores.values(), eager.attentions, strict=True):
        assert scores.shape == probs.shape == (2, HEADS, 8, 8)
        torch.testing.assert_close(torch.softmax(scores + _key_mask(batch["attention_mask"]), -1), probs)
        assert not torch.allclose(scores, probs)  # they really are scores, not probabilities
    # the adapter's capture does not change the logits (the same operations as eager attention)
    torch.testing.assert_close(captured.start_logits, eager.start_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured.end_logits, eager.end_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_are_scaled_dot_products_before_the_mask(arch):
    model = tiny_qa_model(arch)
    batch = tiny_batch(arch)
    out = forward_qa(model, batch, hidden_states=True, attention_scores=True)
    attention = model.base_model.encoder.layer[0].attention.self
    h = out.hidden_states[0]  # (B, T, H): the input of layer 1

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(2, 8, HEADS, HIDDEN // HEADS).transpose(1, 2)  # (B, h, T, d)

    q, k = heads(attention.query(h)), heads(attention.key(h))
    expected = q @ k.transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5  # (B, h, T, T), padded keys included
    torch.testing.assert_close(out.attention_scores[1], expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_do_not_depend_on_score_capture(arch):
    model = tiny_qa_model(arch)  # the default implementation (SDPA) when scores are not asked for
    batch = tiny_batch(arch)
    plain = forward_qa(model, batch)
    captured = forward_qa(model, batch, hidden_states=True, attention_scores=True)
    torch.testing.assert_close(captured.start_logits, plain.start_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(captured.end_logits, plain.end_logits, atol=1e-6, rtol=1e-5)
    assert plain.hidden_states is None and plain.attention_scores is None
    assert model.config._attn_implementation == "sdpa"  # switched back


def test_hidden_states_count_the_embedding_output_as_layer_zero():
    model = tiny_qa_model("roberta")
    batch = tiny_batch("roberta")
    out = forward_qa(model, batch, hidden_states=True)
    assert isinstance(out, QAOutputs) and out.attention_scores is None
    assert len(out.hidden_states) == LAYERS + 1
    assert all(h.shape == (2, 8, HIDDEN) for h in out.hidden_states)
    torch.testing.assert_close(
        out.hidden_states[0], model.base_model.embeddings(input_ids=batch["input_ids"])
    )
    assert out.start_logits.shape == out.end_logits.shape == (2, 8)
    assert torch.equal(out.attention_mask, batch["attention_mask"])


@pytest.mark.parametrize("arch", ["roberta", "bert"])
def test_only_model_inputs_reach_the_model(arch):
    model = tiny_qa_model(arch)
    seen: list[set[str]] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    forward_qa(model, tiny_batch(arch), hidden_states=True, attention_scores=True)
    inputs = {"input_ids", "attention_mask"} | ({"token_type_ids"} if arch == "bert" else set())
    assert seen == [inputs | {"output_hidden_states"}]


def test_gradients_flow_through_captured_scores_in_training_mode():
    model = tiny_qa_model("roberta", dropout=0.1).train()
    out = forward_qa(model, tiny_batch("roberta"), hidden_states=True, attention_scores=True)
    loss = (
        out.attention_scores[2].pow(2).mean() + out.hidden_states[1].pow(2).mean() + out.start_logits.mean()
    )
    loss.backward()
    query = model.base_model.encoder.layer[1].attention.self.query.weight
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert model.config._attn_implementation == "sdpa"


def test_works_under_bf16_autocast():
    model = tiny_qa_model("roberta")
    batch = tiny_batch("roberta")
    reference = forward_qa(model, batch, attention_scores=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = forward_qa(model, batch, attention_scores=True)
    assert out.attention_scores[1].dtype == torch.bfloat16
    for low, high in zip(out.attention_scores.values(), reference.attention_scores.values(), strict=True):
        torch.testing.assert_close(low.float(), high, atol=0.1, rtol=0.05)
    torch.testing.assert_close(out.start_logits.float(), reference.start_logits, atol=0.1, rtol=0.05)
    out.attention_scores[1].float().pow(2).mean().backward()
    grad = model.base_model.encoder.layer[0].attention.self.key.weight.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_model_is_switched_back_when_the_forward_fails():
    model = tiny_qa_model("roberta")
    bad = {"input_ids": torch.full((1, 50), 5)}  # longer than the 40 positions
    with pytest.raises(Exception):  # noqa: B017 - whatever the model raises
        forward_qa(model, bad, attention_scores=True)
    assert model.config._attn_implementation == "sdpa"


def test_a_model_that_bypasses_the_attention_interface_is_refused(monkeypatch):
    # as with transformers 4.x BERT/RoBERTa: the switch has no effect, the layers return probabilities
    monkeypatch.setattr(outputs, "_set_attn_implementation", lambda model, name: None)
    with pytest.raises(UserError, match=r"0 of 2 layers.*set loss\.attention and loss\.relations to 0"):
        forward_qa(tiny_qa_model("bert"), tiny_batch("bert"), attention_scores=True)


def test_wrapped_models_are_unwrapped():
    class Wrapper(nn.Module):  # like DistributedDataParallel: the model is `.module`
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    model = tiny_qa_model("bert")
    batch = tiny_batch("bert")
    wrapped = forward_qa(Wrapper(model), batch, attention_scores=True)
    torch.testing.assert_close(
        wrapped.attention_scores[1], forward_qa(model, batch, attention_scores=True).attention_scores[1]
    )


def test_activation_checkpointing_recomputes_with_the_scores_attention():
    def grads(checkpointing: bool) -> torch.Tensor:
        model = tiny_qa_model("roberta").train()
        if checkpointing:
            # layers rerun in backward and must use the same attention (older name: gradient_checkpointing_)
            enable = (
                getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            )
            enable()
        out = forward_qa(model, tiny_batch("roberta"), attention_scores=True)
        (out.attention_scores[1].pow(2).mean() + out.start_logits.mean()).backward()
        return model.base_model.encoder.layer[0].attention.self.query.weight.grad

    torch.testing.assert_close(grads(True), grads(False))


def test_only_the_layers_asked_keep_scores_and_the_rest_run_on_sdpa(monkeypatch):
    """A 24 -> 6 map reads 6 teacher layers: the others must not keep (B, h, T, T) scores."""
    import transformers.integrations.sdpa_attention as sdpa

    model = tiny_qa_model("roberta")
    batch = tiny_batch("roberta")
    full = forward_qa(model, batch, hidden_states=True, attention_scores=True)
    calls: list[int] = []
    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(
        sdpa, "sdpa_attention_forward", lambda module, *a, **k: calls.append(1) or real(module, *a, **k)
    )
    some = forward_qa(model, batch, hidden_states=True, attention_scores=[2])
    assert list(some.attention_scores) == [2] and len(calls) == 1  # layer 1 ran on SDPA
    torch.testing.assert_close(some.attention_scores[2], full.attention_scores[2])
    torch.testing.assert_close(some.start_logits, full.start_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(some.hidden_states, full.hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"layers \[3\] do not exist"):
        forward_qa(model, batch, attention_scores=[3])


@pytest.mark.parametrize("arch", ARCHS)
def test_query_key_value_capture(arch):
    model = tiny_qa_model(arch)
    batch = tiny_batch(arch)
    out = forward_qa(model, batch, hidden_states=True, qkv=[2])
    assert out.attention_scores is None and list(out.qkv) == [2]
    attention = model.base_model.encoder.layer[1].attention.self
    hidden = out.hidden_states[1]  # the input of layer 2
    for name in ("query", "key", "value"):
        assert out.qkv[2][name].shape == (2, 8, HIDDEN)
        torch.testing.assert_close(out.qkv[2][name], getattr(attention, name)(hidden), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.start_logits, forward_qa(model, batch).start_logits, rtol=1e-5, atol=1e-5)
