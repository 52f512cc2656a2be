"""The typed adapter between a Hugging Face QA model and the distiller.

`forward_qa` runs any `*ForQuestionAnswering` encoder (RoBERTa, BERT, XLM-R, ...) on a batch and returns a
`QAOutputs`: start/end logits, and on request the hidden states, the PRE-softmax attention scores of chosen
layers and the query/key/value vectors of chosen layers (MiniLM v2 relations).

Why pre-softmax scores need work: TinyBERT distils the scores QK^T / sqrt(d), but Hugging Face returns the
attention probabilities (after softmax) as `outputs.attentions`. Since transformers 5 (and late 4.x) every
attention layer calls a function looked up by name in `transformers.AttentionInterface`, chosen by
`config._attn_implementation`. We register one more such function, ``"tinyroberta_scores"``: plain eager
attention that keeps the scores before the mask is added. The model is switched to it only for the forward
passes that need captures (then switched back, usually to SDPA).

Only the layers a loss reads are captured: a 24-layer teacher distilled into 6 layers needs the scores of 6
layers, and keeping all 24 (eager attention everywhere) costs ~3.6 GB at batch 32 x 384 in bf16, ~2.7 GB of it
never read. Layers whose scores are not asked for run on the fused SDPA kernel inside the same forward pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

SCORES_ATTENTION = "tinyroberta_scores"  # the name registered in transformers' AttentionInterface
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # all else (labels, feature_index) stays out

# Counts the calls of the scores attention during one `forward_qa`, to prove every layer went through it.
_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("_capture", default=None)
QKV = ("query", "key", "value")
_LAYER = "_tinyroberta_layer"  # attribute set on every module of encoder layer i: i (1-indexed)
_EAGER = "_tinyroberta_eager"  # ... True where the layer's scores are captured (eager math), else SDPA


@dataclass
class _Capture:
    """What one `forward_qa` call asks the attention function to keep, and what it kept."""

    score_layers: frozenset[int]
    qkv_layers: frozenset[int]
    calls: list[int] = field(default_factory=list)  # the layer of each attention call
    scores: dict[int, Tensor] = field(default_factory=dict)
    qkv: dict[int, dict[str, Tensor]] = field(default_factory=dict)


@dataclass
class QAOutputs:
    """What the distiller needs from one forward pass of a QA model.

    - `start_logits`, `end_logits`: (B, T).
    - `hidden_states`: L + 1 tensors (B, T, H), index 0 the embedding output (HF indexing); None unless asked.
    - `attention_scores`: layer i (1-indexed) -> (B, heads, T, T), the PRE-softmax scores QK^T * scaling,
      before the padding mask is added (padded keys hold ordinary numbers), for the layers asked; None
      unless asked.
    - `qkv`: layer i -> {"query", "key", "value"} -> (B, T, H), the projections concatenated over heads
      (MiniLM v2's relations), for the layers asked; None unless asked.
    - `attention_mask`: (B, T), nonzero/True for real tokens (as given in the batch).
    """

    start_logits: Tensor
    end_logits: Tensor
    hidden_states: tuple[Tensor, ...] | None
    attention_scores: dict[int, Tensor] | None
    attention_mask: Tensor
    qkv: dict[int, dict[str, Tensor]] | None = None


def scores_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention that keeps what the current `forward_qa` capture asks for; returns `(output, None)`.

    In a layer whose scores are captured: the same operations, in the same order, as transformers'
    `eager_attention_forward` (so the output is that of eager attention), keeping the pre-softmax scores
    (B, heads, T, T). In every other layer: transformers' SDPA attention (fused kernel, no T x T tensor
    kept). `query`, `key`, `value`: (B, heads, T, d); `attention_mask`: additive (B, 1, T, T) or None.
    """
    capture = _capture.get()
    layer = getattr(module, _LAYER, None)
    if capture is not None:
        capture.calls.append(layer)
        if layer in capture.qkv_layers:  # (B, heads, T, d) -> (B, T, heads * d)
            tensors = (query, key, value)
            capture.qkv[layer] = {n: t.transpose(1, 2).flatten(2) for n, t in zip(QKV, tensors, strict=True)}
    if not getattr(module, _EAGER, True):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=False
        )
        return output, None
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, h, T, T)
    weights = scores if attention_mask is None else scores + attention_mask
    probs = nn.functional.softmax(weights, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()  # (B, T, h, d)
    if capture is not None and layer in capture.score_layers:
        capture.scores[layer] = scores
    return output, None


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


def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer layers: the ModuleList with `num_hidden_layers` entries."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise UserError(
        f"cannot find the {n} transformer layers of {type(model).__name__}, so its attention cannot be "
        "captured: set loss.attention and loss.relations to 0"
    )


def _tag_layers(model: nn.Module, score_layers: frozenset[int]) -> None:
    """Number every module of layer i with i, and mark the layers whose scores are captured (eager)."""
    for i, layer in enumerate(_layer_list(model), start=1):
        for module in layer.modules():
            setattr(module, _LAYER, i)
            setattr(module, _EAGER, i in score_layers)


def _layers(asked: bool | Iterable[int], n: int) -> frozenset[int]:
    """1-indexed layers from True (all), False (none) or a collection of layers."""
    if asked is True:
        return frozenset(range(1, n + 1))
    if asked is False:
        return frozenset()
    layers = frozenset(asked)
    bad = sorted(i for i in layers if not 1 <= i <= n)
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has layers 1..{n}")
    return layers


@cache
def _accepted_inputs(forward: Any) -> tuple[str, ...]:
    parameters = inspect.signature(forward).parameters
    return tuple(name for name in MODEL_INPUTS if name in parameters)


def forward_qa(
    model: nn.Module,
    batch: dict[str, Tensor],
    *,
    hidden_states: bool = False,
    attention_scores: bool | Iterable[int] = False,
    qkv: Iterable[int] = (),
) -> QAOutputs:
    """Run a `*ForQuestionAnswering` model on `batch` and return its outputs as a `QAOutputs`.

    Only the inputs the model's forward accepts among input_ids, attention_mask and token_type_ids are
    passed (labels such as start_positions, and feature_index, stay out: the distiller computes its own
    losses). `hidden_states` asks for the L + 1 hidden states; `attention_scores` for the pre-softmax
    scores of every layer (True) or of the given 1-indexed layers; `qkv` for the query/key/value vectors of
    the given layers. Captures switch the model to the capturing attention for this call only; layers
    without captured scores run on SDPA. Gradients flow as in an ordinary forward pass; works under
    `torch.autocast` (captures then come in the autocast dtype).
    """
    hf_model = _unwrap(model)
    inputs = {name: batch[name] for name in _accepted_inputs(type(hf_model).forward) if name in batch}
    if "input_ids" not in inputs:
        raise ValueError(f"batch has no input_ids (keys: {', '.join(batch)})")
    if hidden_states:
        inputs["output_hidden_states"] = True
    layers = hf_model.config.num_hidden_layers
    capture = _Capture(_layers(attention_scores, layers), _layers(list(qkv), layers))
    if not capture.score_layers and not capture.qkv_layers:
        out = model(**inputs)
    else:
        _tag_layers(hf_model, capture.score_layers)
        token = _capture.set(capture)
        try:
            with scores_attention(model):
                out = model(**inputs)
        finally:
            _capture.reset(token)
        if sorted(c for c in capture.calls if c is not None) != list(range(1, layers + 1)):
            raise UserError(
                f"{type(hf_model).__name__} did not route its attention through transformers' "
                f"AttentionInterface ({len(capture.calls)} of {layers} layers did), so its attention "
                "cannot be captured: upgrade transformers (>= 5) or set loss.attention and loss.relations "
                "to 0"
            )
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    return QAOutputs(
        start_logits=out.start_logits,
        end_logits=out.end_logits,
        hidden_states=tuple(out.hidden_states) if hidden_states else None,
        attention_scores=dict(sorted(capture.scores.items())) if capture.score_layers else None,
        attention_mask=mask,
        qkv=dict(sorted(capture.qkv.items())) if capture.qkv_layers else None,
    )
