"""Which student layer learns from which teacher layer, and the projection between their widths.

A `LayerMatch` is one term of the intermediate-layer loss. Hidden layers count the embedding output as 0
(`hidden_states[i]` in Hugging Face); attention layers count transformer layers from 1 (the scores of layer
i are `attention_scores[i - 1]`). `layer_matches` turns `LossConfig.layer_map` into the list of matches:

- ``uniform`` (TinyBERT's g(m) = k m, k = teacher layers / student layers; the paper: 24 -> 6, k = 4),
- ``last`` (student layer m <-> teacher layer T - S + m: the top of the teacher),
- a list of S teacher layers, one per student layer (1..T, increasing).

Embeddings always meet embeddings (0 <-> 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from torch import Tensor, nn

from tinyroberta_es.config import LossConfig, check_choice
from tinyroberta_es.errors import UserError

FEATURES = ("hidden", "attention")
MATCH_LOSSES = ("mse", "kl")


@dataclass(frozen=True)
class LayerMatch:
    """One intermediate-layer loss term: `feature` of `student_layer` against that of `teacher_layer`.

    `feature` is "hidden" (layers from 0 = embeddings) or "attention" (layers from 1); `loss` names a loss
    of that feature ("mse" for hidden; `losses.ATTENTION_LOSSES` for attention); `weight` multiplies it.
    """

    teacher_layer: int
    student_layer: int
    feature: str
    loss: str
    weight: float

    def __post_init__(self) -> None:
        if self.feature not in FEATURES:
            raise ValueError(f"LayerMatch feature {self.feature!r} is not one of {FEATURES}")
        if self.loss not in MATCH_LOSSES or (self.feature == "hidden" and self.loss != "mse"):
            raise ValueError(f"LayerMatch loss {self.loss!r} does not apply to {self.feature}")
        first = 0 if self.feature == "hidden" else 1
        if min(self.teacher_layer, self.student_layer) < first:
            raise ValueError(f"{self.feature} layers count from {first}: got {self}")


def _list_problems(layer_map: list[int], teacher_layers: int, student_layers: int) -> list[str]:
    """What is wrong with an explicit `loss.layer_map` list (empty when nothing is)."""
    problems = []
    if len(layer_map) != student_layers:
        problems.append(
            f"loss.layer_map lists {len(layer_map)} teacher layers but the student has {student_layers}: "
            f"give one teacher layer (1..{teacher_layers}) per student layer"
        )
    bad = [
        v for v in layer_map if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= teacher_layers
    ]
    if bad:
        problems.append(
            f"loss.layer_map has {', '.join(map(repr, bad))}: teacher layers are numbered 1..{teacher_layers}"
        )
    elif any(a >= b for a, b in pairwise(layer_map)):
        problems.append(
            f"loss.layer_map {layer_map} must be increasing (student layer m gets the m-th entry)"
        )
    return problems


def uniform_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer (1-indexed) for each student layer: k*m with k = T/S (TinyBERT's uniform map).

    12 -> 6 gives 2, 4, ..., 12; 12 -> 3 gives 4, 8, 12. When T is not a multiple of S the layers are spread
    evenly, round(m*T/S), which still ends at the last teacher layer.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"cannot map {student_layers} student layers onto {teacher_layers} teacher layers")
    return [math.floor(m * teacher_layers / student_layers + 0.5) for m in range(1, student_layers + 1)]


def _teacher_layers(layer_map: str | list[int], teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer of each student layer 1..S (feasibility already checked for lists)."""
    if isinstance(layer_map, list):
        return list(layer_map)
    if student_layers > teacher_layers:
        raise UserError(
            f"the student has {student_layers} layers and the teacher {teacher_layers}: each student layer "
            f"needs its own teacher layer; use at most {teacher_layers} student layers (student.layers) "
            "or set loss.hidden and loss.attention to 0"
        )
    if layer_map == "last":
        return [teacher_layers - student_layers + m for m in range(1, student_layers + 1)]
    if teacher_layers % student_layers:
        raise UserError(
            f"teacher has {teacher_layers} layers and the student {student_layers}: {teacher_layers} is not "
            f"a multiple of {student_layers}; set loss.layer_map to last or to a list of {student_layers} "
            "teacher layers"
        )
    return uniform_layers(teacher_layers, student_layers)


def layer_matches(
    teacher_layers: int, student_layers: int, loss: LossConfig, *, teacher_heads: int, student_heads: int
) -> list[LayerMatch]:
    """The intermediate-layer matches `loss` asks for: hidden (m = 0..S) first, then attention (m = 1..S).

    Matches whose weight is 0 are left out (no hidden matches when `loss.hidden` is 0, and so on). Raises
    `UserError` naming the option to change when `loss.layer_map` does not fit the two depths, or when the
    attention loss is on and the head counts differ (attention maps are compared head by head).
    """
    layer_map = loss.layer_map
    problems = []
    if isinstance(layer_map, list):
        problems += _list_problems(layer_map, teacher_layers, student_layers)
    else:
        check_choice("loss.layer_map", layer_map, ("uniform", "last"))
    if loss.attention > 0 and teacher_heads != student_heads:
        problems.append(
            "attention loss needs the same number of heads "
            f"(teacher {teacher_heads}, student {student_heads}): "
            f"set loss.attention to 0 or student.heads to {teacher_heads}"
        )
    if problems:
        raise UserError("; ".join(problems))
    if loss.hidden == 0 and loss.attention == 0:
        return []
    pairs = list(enumerate(_teacher_layers(layer_map, teacher_layers, student_layers), start=1))  # (s, t)
    matches = []
    if loss.hidden > 0:
        matches += [LayerMatch(0, 0, "hidden", "mse", loss.hidden)]
        matches += [LayerMatch(t, s, "hidden", "mse", loss.hidden) for s, t in pairs]
    if loss.attention > 0:
        matches += [LayerMatch(t, s, "attention", loss.attention_loss, loss.attention) for s, t in pairs]
    return matches


class HiddenProjection(nn.Module):
    """Student hidden states (..., Hs) -> teacher width (..., Ht): TinyBERT's W_h.

    One `nn.Linear(Hs, Ht)` shared by every matched layer (as TinyBERT's single W_h and the paper's code)
    when the widths differ; the identity, without parameters, when they are equal.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int) -> None:
        super().__init__()
        self.student_hidden, self.teacher_hidden = student_hidden, teacher_hidden
        self.linear = nn.Linear(student_hidden, teacher_hidden) if student_hidden != teacher_hidden else None

    def forward(self, hidden: Tensor) -> Tensor:
        """(..., Hs) -> (..., Ht)."""
        return hidden if self.linear is None else self.linear(hidden)

    def extra_repr(self) -> str:
        return f"{self.student_hidden} -> {self.teacher_hidden}"


def make_projection(student_hidden: int, teacher_hidden: int) -> nn.Module:
    """The projection used by `hidden_mse`: a shared Linear(Hs, Ht), or the identity when Hs == Ht."""
    return HiddenProjection(student_hidden, teacher_hidden)


@dataclass(frozen=True)
class RelationMatch:
    """MiniLM v2's term: the q/k/v relations of `teacher_layer` against those of `student_layer` (from 1)."""

    teacher_layer: int
    student_layer: int
    heads: int  # relation heads: each width is split into this many, so widths and head counts may differ
    weight: float


def relation_match(
    teacher_layers: int,
    student_layers: int,
    loss: LossConfig,
    *,
    teacher_hidden: int,
    student_hidden: int,
    student_heads: int,
) -> RelationMatch | None:
    """The relation term `loss` asks for (None when `loss.relations` is 0): one teacher layer (`last`,
    `upper-middle` = L - L // 8, MiniLM v2's choice for large teachers, or a number) against the student's
    last layer. Raises `UserError` naming the option when the layer or the relation heads do not fit."""
    if loss.relations == 0:
        return None
    layer = loss.relation_layer
    if layer == "last":
        layer = teacher_layers
    elif layer == "upper-middle":
        layer = teacher_layers - teacher_layers // 8
    problems = []
    if not 1 <= layer <= teacher_layers:
        problems.append(f"loss.relation_layer {layer} is not a teacher layer (1..{teacher_layers})")
    heads = loss.relation_heads or student_heads
    if teacher_hidden % heads or student_hidden % heads:
        problems.append(
            f"loss.relation_heads {heads} must divide the teacher's width {teacher_hidden} and the student's "
            f"{student_hidden}: pick a common divisor such as {math.gcd(teacher_hidden, student_hidden)}"
        )
    if problems:
        raise UserError("; ".join(problems))
    return RelationMatch(layer, student_layers, heads, loss.relations)
