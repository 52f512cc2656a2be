"""The fine-tuning objective: cross-entropy of the gold start and end tokens of extractive QA.

As in Hugging Face's `*ForQuestionAnswering` with labels, but written out, and with padding masked out.
`QALoss` is the module `train` fine-tunes; distillation uses `qa_cross_entropy` for its hard-label term (one
masked cross-entropy for both commands, with per-row weights so that augmented windows can skip it).
"""

from __future__ import annotations

import inspect

import torch


def span_cross_entropy(
    logits: torch.Tensor,
    positions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean over rows of the cross-entropy of gold token positions under start (or end) logits.

    `logits` (B, T); `positions` (B,) or (B, 1) int64; `attention_mask` (B, T), 0 on padding; `row_weights`
    (B,) >= 0 (None: 1 each). Padding is masked out: with dynamic padding, a window's loss would otherwise
    depend on the windows it is batched with. As in Hugging Face's QA heads, positions are clamped to
    [0, T] and position T (outside the window) is ignored. Returns sum_b w_b ce_b / sum_b w_b over the
    rows not ignored; 0 (finite gradients) when every row is ignored or weighs 0.
    """
    logits = logits.float()  # (B, T); softmax in fp32 under autocast
    length = logits.shape[1]
    if attention_mask is not None:
        logits = logits.masked_fill(attention_mask == 0, torch.finfo(logits.dtype).min)
    positions = positions.reshape(-1).clamp(0, length)  # (B,)
    per_row = torch.nn.functional.cross_entropy(logits, positions, ignore_index=length, reduction="none")
    weights = (positions != length).float()  # (B,)
    if row_weights is not None:
        weights = weights * row_weights.float()
    return (per_row * weights).sum() / weights.sum().clamp(min=1e-12)


def qa_cross_entropy(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The extractive-QA loss: mean start and end `span_cross_entropy`; logits (B, T), positions (B,)."""
    start = span_cross_entropy(start_logits, start_positions, attention_mask, row_weights)
    end = span_cross_entropy(end_logits, end_positions, attention_mask, row_weights)
    return (start + end) / 2


class QALoss(torch.nn.Module):
    """What `train` fine-tunes: a `*ForQuestionAnswering` model under `qa_cross_entropy`."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self._token_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        start_positions: torch.Tensor,
        end_positions: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        feature_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {"start_ce", "end_ce"}) of one batch; inputs (B, T), positions and feature_index (B,)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._token_types:
            inputs["token_type_ids"] = token_type_ids
        out = self.model(**inputs)
        start = span_cross_entropy(out.start_logits, start_positions, attention_mask)
        end = span_cross_entropy(out.end_logits, end_positions, attention_mask)
        return (start + end) / 2, {"start_ce": start.detach(), "end_ce": end.detach()}
