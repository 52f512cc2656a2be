"""The fine-tuning objective: cross-entropy of the gold start and end tokens of extractive QA.

As in Hugging Face's `*ForQuestionAnswering` with labels, but written out, and with padding masked out.
`QALoss` is the module `train` fine-tunes; distillation uses `qa_cross_entropy` for its hard-label term.
"""

from __future__ import annotations

import inspect

import torch


def span_cross_entropy(
    logits: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of gold token positions under start (or end) logits.

    `logits` (B, T), `positions` (B,) int64, `attention_mask` (B, T) with 0 on padding. Padding is masked
    out: with dynamic padding, a window's loss would otherwise depend on the windows it is batched with.
    """
    logits = logits.float()  # (B, T); softmax in fp32 under autocast
    if attention_mask is not None:
        logits = logits.masked_fill(attention_mask == 0, torch.finfo(logits.dtype).min)
    return torch.nn.functional.cross_entropy(logits, positions)


def qa_cross_entropy(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The extractive-QA loss: mean start and end `span_cross_entropy`; logits (B, T), positions (B,)."""
    start = span_cross_entropy(start_logits, start_positions, attention_mask)
    end = span_cross_entropy(end_logits, end_positions, attention_mask)
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
