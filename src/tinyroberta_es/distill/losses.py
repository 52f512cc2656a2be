"""Distillation losses: pure functions of tensors, each documented with its shapes.

Conventions: B batch, T sequence length, H hidden width, h attention heads. A `mask` is (B, T), True (or
nonzero) for real tokens; padded tokens never count, and a fully masked input gives a loss of exactly 0 with
finite gradients. Teacher tensors are targets: they are detached, so gradients reach the student only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """log_softmax over the last dim with `mask`ed-out entries at -inf, returned as 0 there (finite).

    `logits` (..., N), `mask` (..., N) bool, broadcastable. Rows with no valid entry get all zeros, so their
    probabilities (`exp(out) * mask`) are all 0 and no NaN appears in values or gradients.
    """
    mask = mask.expand_as(logits)
    empty = ~mask.any(dim=-1, keepdim=True)  # rows without any valid entry
    keep = mask | empty  # such rows are computed unmasked (finite), then zeroed below
    log_p = torch.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
    return log_p.masked_fill(~mask, 0.0)


def masked_kl(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Per-row KL(teacher || student) of the masked softmaxes over the last dim: (..., N) -> (...)."""
    mask = mask.expand_as(student)
    log_q = _masked_log_softmax(student, mask)
    log_p = _masked_log_softmax(teacher.detach(), mask)
    p = log_p.exp() * mask  # teacher probabilities, exactly 0 where masked
    return (p * (log_p - log_q)).sum(dim=-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Soft-target loss on one set of span logits (start or end): KL(teacher || student) * T^2.

    `student_logits`, `teacher_logits`: (B, T); `mask`: (B, T) bool. Softmax over the valid positions of
    logits / temperature; sum over positions of p_t (log p_t - log p_s) (the soft cross-entropy minus the
    teacher's entropy, so 0 when the student matches), times temperature^2 so gradients keep their scale
    (Hinton et al.; TinyBERT; DistilBERT), then the mean over the B rows (a fully masked row adds 0).
    Returns a scalar. Call it once for start and once for end logits and SUM the two, as the paper's code
    does (HF's run_squad_w_distillation averages them: half the weight).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ"
        )
    kl = masked_kl(student_logits / temperature, teacher_logits / temperature, mask.bool())  # (B,)
    return kl.mean() * temperature**2


def hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor, projection: nn.Module | None = None) -> Tensor:
    """MSE between projected student hidden states and the teacher's, over valid tokens (TinyBERT's L_hidn).

    `student`: (B, T, Hs); `teacher`: (B, T, Ht); `mask`: (B, T); `projection` maps Hs -> Ht (None: the
    widths must already match). Averages the squared error over the valid tokens and the Ht dimensions
    (padded tokens excluded; all masked -> 0). Returns a scalar.
    """
    if projection is not None:
        student = projection(student)  # (B, T, Ht)
    if student.shape != teacher.shape:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} hidden states differ"
        )
    valid = mask.bool()[..., None]  # (B, T, 1)
    squared = torch.where(valid, (student - teacher.detach()) ** 2, 0.0)  # (B, T, Ht)
    return squared.sum() / (valid.sum() * teacher.shape[-1]).clamp(min=1)


def _pair_mask(mask: Tensor) -> Tensor:
    """(B, 1, T, T) True where both the query (row) and the key (column) are real tokens."""
    mask = mask.bool()
    return mask[:, None, :, None] & mask[:, None, None, :]


def _check_scores(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} attention maps differ "
            "(attention losses need the same number of heads)"
        )


def attention_mse(student_scores: Tensor, teacher_scores: Tensor, mask: Tensor) -> Tensor:
    """TinyBERT's attention loss: MSE between pre-softmax attention scores.

    `student_scores`, `teacher_scores`: (B, h, T, T); `mask`: (B, T). Averages the squared difference over
    the heads and the valid (query, key) pairs, both tokens real (TinyBERT zeroes masked scores and averages
    over all pairs, padding included, which dilutes the loss by the padding share). All masked -> 0.
    Returns a scalar.
    """
    _check_scores(student_scores, teacher_scores)
    pairs = _pair_mask(mask)  # (B, 1, T, T)
    squared = torch.where(pairs, (student_scores - teacher_scores.detach()) ** 2, 0.0)  # (B, h, T, T)
    return squared.sum() / (pairs.sum() * student_scores.shape[1]).clamp(min=1)


def attention_kl(student_scores: Tensor, teacher_scores: Tensor, mask: Tensor) -> Tensor:
    """KL(teacher || student) between attention distributions, per valid query row.

    `student_scores`, `teacher_scores`: (B, h, T, T) pre-softmax scores; `mask`: (B, T). Each valid query row
    is softmaxed over the valid keys (padded keys at -inf); the KL is averaged over the heads and the valid
    queries. All masked -> 0. Returns a scalar.
    """
    _check_scores(student_scores, teacher_scores)
    mask = mask.bool()
    keys = mask[:, None, None, :]  # (B, 1, 1, T)
    queries = mask[:, None, :]  # (B, 1, T)
    kl = masked_kl(student_scores, teacher_scores, keys)  # (B, h, T)
    kl = torch.where(queries, kl, 0.0)
    return kl.sum() / (queries.sum() * student_scores.shape[1]).clamp(min=1)


AttentionLoss = Callable[[Tensor, Tensor, Tensor], Tensor]
ATTENTION_LOSSES: dict[str, AttentionLoss] = {"mse": attention_mse, "kl": attention_kl}
