"""The distillation objective as an `nn.Module`: what the training loop optimises for `distill`.

`forward(**batch)` runs the student (and, when a term needs it, the frozen teacher), then adds up the
weighted terms: prediction-layer KD on start/end logits, the hard-label cross-entropy (original windows only:
an augmented window's replaced words can make its gold span wrong, so it learns from the teacher's soft
labels alone, as in TinyBERT), hidden-state MSE through a learned projection and attention losses per
`LayerMatch`, and MiniLM v2 relations per `RelationMatch`.

Only what the terms read is captured: the attention scores of the matched layers (the other layers run on
SDPA) and the query/key/value vectors of the relation layers. The teacher runs online when an intermediate
term needs it, and then its logits feed KD too; otherwise KD reads the on-disk logit cache when one is given.

Balance: `loss.normalize: initial` divides each intermediate term by its value on the first training batch
(kept in a buffer, so it survives resume), so that a term on a large scale (pre-softmax score MSE, ~400 per
layer on me5-small) cannot swamp the others under gradient clipping. Every `gradient_shares_every` training
forward passes, each group of terms (kd, ce, hidden, attention, relations) has the norm of its own gradient
measured, and its share of their sum is logged as `share_<group>` (metrics.jsonl, TensorBoard, report).
"""

from __future__ import annotations

import torch
from torch import nn

from tinyroberta_es.config import LossConfig
from tinyroberta_es.distill.cache import TeacherLogits
from tinyroberta_es.distill.losses import ATTENTION_LOSSES, hidden_mse, kd_loss
from tinyroberta_es.distill.mapping import LayerMatch, RelationMatch
from tinyroberta_es.distill.outputs import forward_qa
from tinyroberta_es.distill.relations import relation_loss
from tinyroberta_es.qa_loss import qa_cross_entropy

STAGES = ("all", "intermediate", "prediction")  # one-stage; TinyBERT's first and second stage
GROUPS = ("kd", "ce", "hidden", "attention", "relations")  # what a gradient share is measured for


class DistillModule(nn.Module):
    """Student + frozen teacher + projection; `forward` returns `(loss, parts)` for the training loop."""

    frozen_submodules = ("teacher",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: LossConfig,
        matches: list[LayerMatch],
        projection: nn.Module | None = None,
        *,
        teacher_logits: TeacherLogits | None = None,
        id_map: torch.Tensor | None = None,
        stage: str = "all",
        relation: RelationMatch | None = None,
        hard_label_weight: torch.Tensor | None = None,
        gradient_shares_every: int = 0,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss = loss
        self.stage = stage
        self.teacher_logits = teacher_logits
        # teacher token id -> student token id, when the student's vocabulary was trimmed
        self.register_buffer("id_map", id_map, persistent=False)
        # (N,) weight of each training window in the hard-label loss: 0 for augmented windows
        self.register_buffer("hard_label_weight", hard_label_weight, persistent=False)
        intermediate = stage in ("all", "intermediate")
        prediction = stage in ("all", "prediction")
        self.matches = [m for m in matches if intermediate and m.weight > 0]
        self.relation = relation if intermediate and relation is not None and relation.weight > 0 else None
        self.kd = loss.kd if prediction else 0.0
        self.ce = loss.ce if prediction else 0.0
        self.need_hidden = any(m.feature == "hidden" for m in self.matches)
        # a projection with no loss in this stage stays out (DDP refuses parameters that get no gradient)
        self.projection = projection if self.need_hidden and projection is not None else nn.Identity()
        attention = [m for m in self.matches if m.feature == "attention"]
        self.student_scores = sorted({m.student_layer for m in attention})
        self.teacher_scores = sorted({m.teacher_layer for m in attention})
        self.find_unused_parameters = stage == "intermediate"  # the QA head has no loss there
        self.weights = {"kd": self.kd, "ce": self.ce} | {_name(m): m.weight for m in self.matches}
        if self.relation is not None:
            self.weights["relations"] = self.relation.weight
        self.weights = {k: w for k, w in self.weights.items() if w > 0}
        self.normalized = (
            [k for k in self.weights if k not in ("kd", "ce")] if loss.normalize != "none" else []
        )
        # each normalised term's value on the first training batch (NaN until then); saved in checkpoints
        self.register_buffer("initial", torch.full((len(self.normalized),), float("nan")))
        self.gradient_shares_every = gradient_shares_every
        self._forwards = 0

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()  # the teacher never trains: dropout off, always
        return self

    def settings(self) -> dict[str, object]:
        """What defines this objective, flat: a checkpoint of another objective is not resumed with it."""
        flat: dict[str, object] = {"stage": self.stage, "normalize": self.loss.normalize}
        flat |= {f"weight.{k}": w for k, w in self.weights.items()}
        if self.kd:
            flat["temperature"] = self.loss.temperature
        flat |= {f"teacher_layer.{_name(m)}": m.teacher_layer for m in self.matches}
        if self.student_scores:
            flat["attention_loss"] = self.loss.attention_loss
        if self.relation is not None:
            flat["relation"] = f"teacher {self.relation.teacher_layer}, {self.relation.heads} heads"
        return flat

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        feature_index: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher_batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            teacher_batch["token_type_ids"] = token_type_ids
        student_batch = dict(teacher_batch)
        if self.id_map is not None:
            student_batch["input_ids"] = self.id_map[input_ids]  # (B, T) in the trimmed vocabulary
        rel = self.relation
        s = forward_qa(
            self.student,
            student_batch,
            hidden_states=self.need_hidden,
            attention_scores=self.student_scores,
            qkv=[rel.student_layer] if rel else [],
        )
        mask = attention_mask.bool()  # (B, T)

        t = None
        if self.matches or rel is not None or (self.kd > 0 and self.teacher_logits is None):
            with torch.no_grad():
                t = forward_qa(
                    self.teacher,
                    teacher_batch,
                    hidden_states=self.need_hidden,
                    attention_scores=self.teacher_scores,
                    qkv=[rel.teacher_layer] if rel else [],
                )

        parts: dict[str, torch.Tensor] = {}
        if self.kd > 0:
            if t is not None:  # the teacher ran anyway: its logits are the cache's, computed now
                t_start, t_end = t.start_logits.float(), t.end_logits.float()
            else:
                t_start, t_end = self.teacher_logits.lookup(feature_index.cpu(), input_ids.shape[1])
                t_start, t_end = t_start.to(input_ids.device), t_end.to(input_ids.device)
            T = self.loss.temperature
            # summed over start and end, as the paper's code does
            parts["kd"] = kd_loss(s.start_logits.float(), t_start, mask, T) + kd_loss(
                s.end_logits.float(), t_end, mask, T
            )
        if self.ce > 0:
            rows = None
            if self.hard_label_weight is not None:
                rows = self.hard_label_weight[feature_index.to(self.hard_label_weight.device)]  # (B,)
            parts["ce"] = qa_cross_entropy(
                s.start_logits, s.end_logits, start_positions, end_positions, attention_mask, rows
            )
        for m in self.matches:
            if m.feature == "hidden":
                parts[_name(m)] = hidden_mse(
                    s.hidden_states[m.student_layer].float(),
                    t.hidden_states[m.teacher_layer].float(),
                    mask,
                    self.projection,
                )
            else:
                parts[_name(m)] = ATTENTION_LOSSES[m.loss](
                    s.attention_scores[m.student_layer].float(),
                    t.attention_scores[m.teacher_layer].float(),
                    mask,
                )
        if rel is not None:
            parts["relations"] = relation_loss(
                s.qkv[rel.student_layer], t.qkv[rel.teacher_layer], mask, rel.heads
            )
        terms = self._weighted(parts)
        loss = sum(terms.values())
        report = {k: v.detach() for k, v in parts.items()}
        if self._measure_now():
            report |= self._gradient_shares(terms)
        return loss, report

    def _weighted(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each term times its weight, normalised by its first value where `loss.normalize` says so."""
        if self.normalized and self.training and torch.isnan(self.initial).any():
            with torch.no_grad():
                first = torch.stack([parts[k].detach().float() for k in self.normalized])
                self.initial.copy_(first.clamp(min=1e-8))
        scale = dict(zip(self.normalized, self.initial, strict=True))
        return {
            k: self.weights[k] * v / scale[k] if k in scale else self.weights[k] * v for k, v in parts.items()
        }

    def _measure_now(self) -> bool:
        if not (self.training and torch.is_grad_enabled() and self.gradient_shares_every):
            return False
        self._forwards += 1
        return (self._forwards - 1) % self.gradient_shares_every == 0

    def _gradient_shares(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`share_<group>`: the norm of each group's gradient (trainable parameters) over their sum."""
        params = [p for p in self.parameters() if p.requires_grad]
        norms = {}
        for group in GROUPS:
            total = sum(v for k, v in terms.items() if k.split("_")[0] == group)
            if not isinstance(total, torch.Tensor) or not total.requires_grad:
                continue
            grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
            norms[group] = torch.linalg.vector_norm(
                torch.stack([g.float().norm() for g in grads if g is not None])
            )
        whole = sum(norms.values())
        return {f"share_{k}": (v / whole).detach() for k, v in norms.items()} if norms else {}


def _name(m: LayerMatch) -> str:
    return f"{m.feature}_{m.student_layer}"
