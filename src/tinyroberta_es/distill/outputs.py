"""The typed adapter between a Hugging Face QA model and the distiller.

`forward_qa` runs any `*ForQuestionAnswering` encoder (RoBERTa, BERT, XLM-R, ...) on a batch and returns a
`QAOutputs`: start/end logits, and on request the hidden states and the PRE-softmax attention scores.

Why pre-softmax scores need work: TinyBERT distils the scores QK^T / sqrt(d), but Hugging Face returns the
attention probabilities (after softmax) as `outputs.attentions`. Since transformers 5 (and late 4.x) every
attention layer calls a function looked up by name in `transformers.AttentionInterface`, chosen by
`config._attn_implementation`. We register one more such function, ``"tinyroberta_scores"``: plain eager
attention that hands back the scores before the mask is added instead of the probabilities. The model is
switched to it only for the forward passes that need scores (then switched back, usually to SDPA), and asked
for `output_attentions=True`, so the scores come out where the probabilities would have.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

SCORES_ATTENTION = "tinyroberta_scores"  # the name registered in transformers' AttentionInterface
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # all else (labels, feature_index) stays out

# Counts the calls of the scores attention during one `forward_qa`, to prove every layer went through it.
_score_calls: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("_score_calls", default=None)


@dataclass
class QAOutputs:
    """What the distiller needs from one forward pass of a QA model.

    - `start_logits`, `end_logits`: (B, T).
    - `hidden_states`: L + 1 tensors (B, T, H), index 0 the embedding output (HF indexing); None unless asked.
    - `attention_scores`: L tensors (B, heads, T, T), the PRE-softmax scores QK^T * scaling of layer i at
      index i - 1, before the padding mask is added (padded keys hold ordinary numbers); None unless asked.
    - `attention_mask`: (B, T), nonzero/True for real tokens (as given in the batch).
    """

    start_logits: Tensor
    end_logits: Tensor
    hidden_states: tuple[Tensor, ...] | None
    attention_scores: tuple[Tensor, ...] | None
    attention_mask: Tensor


def scores_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Eager attention returning `(output (B, T, heads, d), pre-softmax scores (B, heads, T, T))`.

    The same operations, in the same order, as transformers' `eager_attention_forward`, so the attention
    output is bitwise that of the eager implementation; only the second result differs (scores, not
    probabilities). `query`, `key`, `value`: (B, heads, T, d); `attention_mask`: additive (B, 1, T, T) or
    None.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, h, T, T)
    weights = scores if attention_mask is None else scores + attention_mask
    probs = nn.functional.softmax(weights, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()  # (B, T, h, d)
    calls = _score_calls.get()
    if calls is not None:
        calls.append(1)
    return output, scores


@cache
def _register() -> None:
    """Register the scores attention (and its mask: eager's additive one) with transformers, once."""
    try:
        from transformers import AttentionInterface
    except ImportError as err:
        raise UserError(
            "capturing pre-softmax attention scores needs transformers' AttentionInterface "
            "(transformers >= 5): upgrade transformers or set loss.attention to 0"
        ) from err
    AttentionInterface.register(SCORES_ATTENTION, scores_attention_forward)
    try:  # transformers 5 builds the mask per implementation: an unregistered name would get NO padding mask
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:  # older versions build the eager (additive) mask for any name but "sdpa"/flash
        return
    AttentionMaskInterface.register(SCORES_ATTENTION, eager_mask)


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside DistributedDataParallel (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if inner is None:
            raise TypeError(f"{type(model).__name__} is not a Hugging Face model (it has no .config)")
        model = inner
    return model


def _set_attn_implementation(model: nn.Module, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):  # recent transformers: checks the name, reaches sub-models
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def _recomputes_in_backward(model: nn.Module) -> bool:
    """True when the backward pass will rerun layers: activation (gradient) checkpointing while training."""
    if not (model.training and torch.is_grad_enabled()):
        return False
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


@contextlib.contextmanager
def scores_attention(model: nn.Module) -> Iterator[None]:
    """Within the block, `model` computes attention with `scores_attention_forward`; restored afterwards.

    Except under activation checkpointing while training: the backward pass reruns each layer and must
    rerun it the same way (PyTorch checks the recomputed tensors), so the model then keeps the scores
    attention (eager speed, same results) until switched back with `set_attn_implementation`.
    """
    _register()
    hf_model = _unwrap(model)
    previous = hf_model.config._attn_implementation
    if previous == SCORES_ATTENTION:  # nested use, or kept on from an earlier checkpointed pass
        yield
        return
    _set_attn_implementation(hf_model, SCORES_ATTENTION)
    try:
        yield
    finally:
        if _recomputes_in_backward(hf_model):
            log.info(
                "%s keeps the scores attention: activation checkpointing recomputes layers in backward",
                type(hf_model).__name__,
            )
        else:
            _set_attn_implementation(hf_model, previous)


@cache
def _accepted_inputs(forward: Any) -> tuple[str, ...]:
    parameters = inspect.signature(forward).parameters
    return tuple(name for name in MODEL_INPUTS if name in parameters)


def forward_qa(
    model: nn.Module,
    batch: dict[str, Tensor],
    *,
    hidden_states: bool = False,
    attention_scores: bool = False,
) -> QAOutputs:
    """Run a `*ForQuestionAnswering` model on `batch` and return its outputs as a `QAOutputs`.

    Only the inputs the model's forward accepts among input_ids, attention_mask and token_type_ids are
    passed (labels such as start_positions, and feature_index, stay out: the distiller computes its own
    losses). `hidden_states` asks for the L + 1 hidden states; `attention_scores` for the L pre-softmax score
    maps, computed by switching the model to the scores attention for this call only. Gradients flow as in
    an ordinary forward pass; works under `torch.autocast` (scores then come in the autocast dtype).
    """
    hf_model = _unwrap(model)
    inputs = {name: batch[name] for name in _accepted_inputs(type(hf_model).forward) if name in batch}
    if "input_ids" not in inputs:
        raise ValueError(f"batch has no input_ids (keys: {', '.join(batch)})")
    if hidden_states:
        inputs["output_hidden_states"] = True
    if not attention_scores:
        out = model(**inputs)
        scores = None
    else:
        calls: list[int] = []
        token = _score_calls.set(calls)
        try:
            with scores_attention(model):
                out = model(**inputs, output_attentions=True)
        finally:
            _score_calls.reset(token)
        scores = tuple(out.attentions or ())
        layers = hf_model.config.num_hidden_layers
        if len(calls) != layers or len(scores) != layers:
            raise UserError(
                f"{type(hf_model).__name__} did not route its attention through transformers' "
                f"AttentionInterface ({len(calls)} of {layers} layers did), so its pre-softmax attention "
                "scores cannot be captured: upgrade transformers (>= 5) or set loss.attention to 0"
            )
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    return QAOutputs(
        start_logits=out.start_logits,
        end_logits=out.end_logits,
        hidden_states=tuple(out.hidden_states) if hidden_states else None,
        attention_scores=scores,
        attention_mask=mask,
    )
