"""MiniLM v2 self-attention relation distillation: pure functions of tensors, each documented with its shapes.

MiniLM v2 (Wang et al. 2021, "MiniLMv2: Multi-Head Self-Attention Relation Distillation") transfers what one
teacher layer attends to without matching attention maps head for head. Take the queries of that layer, as
the query projection outputs them: (B, T, H), all attention heads concatenated. Split the last dim into R
*relation heads* of size d_r = H / R, and give each its scaled dot products softmax(x_r x_r^T / sqrt(d_r)):
a (T, T) distribution over keys for every query token, the query-query relation. Keys and values give the
key-key and value-value relations the same way. The loss is KL(teacher || student) per relation head and
query token, and MiniLM v2 sums it over the three relations (Q-Q, K-K, V-V).

Why this works across sizes: a relation is (T, T) whatever d_r is, so teacher and student only have to use
the SAME number R of relation heads, with R dividing both widths. Their hidden widths (Ht, Hs) and their
numbers of attention heads may differ, and no projection is learned. (With R equal to a model's number of
attention heads, its relation heads are its attention heads, since Hugging Face splits heads the same way.)

What the distiller pairs: one teacher layer (the last one, or an upper-middle one for a large teacher, as
the paper does) with the student's LAST layer; only the student's last layer is constrained, so its depth
is free too. Conventions as in `losses.py`: B batch, T sequence length, H width of the q/k/v projections
(Hs student, Ht teacher), R relation heads; a `mask` is (B, T), True (or nonzero) for real tokens; padded
tokens never count; a fully masked input gives exactly 0 with finite gradients; teacher tensors are detached,
so gradients reach the student only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tinyroberta_es.distill.losses import attention_kl

RELATIONS = ("query", "key", "value")


def relation_logits(x: Tensor, heads: int) -> Tensor:
    """Scaled dot products within each relation head: (B, T, H) -> (B, R, T, T), R = `heads`.

    The last dim of `x` is split into `heads` contiguous slices of size d_r = H / heads, x_r: (B, R, T, d_r),
    and each gives x_r x_r^T / sqrt(d_r). Raises ValueError when `x` is not 3-D or H is not divisible by
    `heads`.
    """
    if x.dim() != 3:
        raise ValueError(f"relation inputs must be (B, T, H), got shape {tuple(x.shape)}")
    batch, length, width = x.shape
    if heads < 1 or width % heads:
        raise ValueError(
            f"width H={width} is not divisible by heads={heads} relation heads: choose a number of relation "
            "heads that divides both the student and the teacher widths"
        )
    size = width // heads
    x = x.reshape(batch, length, heads, size).transpose(1, 2)  # (B, R, T, d_r)
    return x @ x.transpose(-1, -2) / math.sqrt(size)  # (B, R, T, T)


def relation_kl(student: Tensor, teacher: Tensor, mask: Tensor, heads: int) -> Tensor:
    """KL(teacher || student) between the self-attention relations of one kind (q-q, k-k or v-v).

    `student`: (B, T, Hs); `teacher`: (B, T, Ht); `mask`: (B, T). Both sides become relation logits with the
    same `heads` R (`relation_logits`); each valid query row is softmaxed over the valid keys (padded keys
    excluded); the KL is averaged over the R relation heads and the valid queries. Computed in fp32, with
    autocast turned off (a bf16 autocast would otherwise run the T x T products in bf16). All masked -> 0.
    Returns a float32 scalar. Raises ValueError when B or T differ, or the mask is not (B, T).
    """
    if student.dim() != 3 or teacher.dim() != 3 or student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be (B, T, H) with the "
            "same batch size B and length T"
        )
    if mask.shape != student.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, T) = {tuple(student.shape[:2])}")
    with torch.autocast(student.device.type, enabled=False):
        s = relation_logits(student.float(), heads)  # (B, R, T, T)
        t = relation_logits(teacher.detach().float(), heads)  # (B, R, T, T)
        # relations are distributions over keys like attention maps: the same masked, averaged KL
        return attention_kl(s, t, mask)


def relation_loss(
    student: dict[str, Tensor],
    teacher: dict[str, Tensor],
    mask: Tensor,
    heads: int,
    relations: tuple[str, ...] = RELATIONS,
) -> Tensor:
    """MiniLM v2's loss: the SUM of `relation_kl` over `relations` (by default q-q, k-k and v-v).

    `student`, `teacher`: dicts from relation name ("query", "key", "value") to that layer's projections,
    (B, T, Hs) and (B, T, Ht); `mask`: (B, T); `heads`: the relation heads R, shared by both sides. Returns a
    float32 scalar. Raises ValueError naming every relation missing from either side.
    """
    if not relations:
        raise ValueError(f"relations is empty: name at least one of {', '.join(RELATIONS)}")
    missing = [
        f"{name!r} missing from the {side} (it has {', '.join(map(repr, tensors)) or 'nothing'})"
        for side, tensors in (("student", student), ("teacher", teacher))
        for name in relations
        if name not in tensors
    ]
    if missing:
        raise ValueError(f"relation_loss needs {', '.join(relations)}: " + "; ".join(missing))
    losses = [relation_kl(student[name], teacher[name], mask, heads) for name in relations]
    return torch.stack(losses).sum()
