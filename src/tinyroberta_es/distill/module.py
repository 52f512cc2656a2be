"""The distillation objective as an `nn.Module`: what the training loop optimises for `distill`.

`forward(**batch)` runs the student (and, for intermediate losses, the frozen teacher), then adds up the
weighted losses: prediction-layer KD on start/end logits (teacher logits from the on-disk cache when one is
given), hard-label cross-entropy, hidden-state MSE through a learned projection, and attention losses, per
`LayerMatch`. The teacher is a frozen submodule listed in `frozen_submodules`, so checkpoints leave it out.
"""

from __future__ import annotations

import torch
from torch import nn

from tinyroberta_es.config import LossConfig
from tinyroberta_es.distill.cache import TeacherLogits
from tinyroberta_es.distill.losses import ATTENTION_LOSSES, ce_loss, hidden_mse, kd_loss
from tinyroberta_es.distill.mapping import LayerMatch
from tinyroberta_es.distill.outputs import forward_qa

STAGES = ("all", "intermediate", "prediction")  # one-stage; TinyBERT's first and second stage


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
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.projection = projection if projection is not None else nn.Identity()
        self.loss = loss
        self.stage = stage
        self.teacher_logits = teacher_logits
        # teacher token id -> student token id, when the student's vocabulary was trimmed
        self.register_buffer("id_map", id_map, persistent=False)
        intermediate = stage in ("all", "intermediate")
        prediction = stage in ("all", "prediction")
        self.matches = [m for m in matches if intermediate and m.weight > 0]
        self.kd = loss.kd if prediction else 0.0
        self.ce = loss.ce if prediction else 0.0
        self.need_hidden = any(m.feature == "hidden" for m in self.matches)
        self.need_scores = any(m.feature == "attention" for m in self.matches)

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()  # the teacher never trains: dropout off, always
        return self

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
        s = forward_qa(
            self.student, student_batch, hidden_states=self.need_hidden, attention_scores=self.need_scores
        )
        mask = attention_mask.bool()  # (B, T)

        cached = self.teacher_logits is not None
        t = None
        if self.matches or (self.kd > 0 and not cached):
            with torch.no_grad():
                t = forward_qa(
                    self.teacher,
                    teacher_batch,
                    hidden_states=self.need_hidden,
                    attention_scores=self.need_scores,
                )

        parts: dict[str, torch.Tensor] = {}
        if self.kd > 0:
            if cached:
                t_start, t_end = self.teacher_logits.lookup(feature_index.cpu(), input_ids.shape[1])
                t_start, t_end = t_start.to(input_ids.device), t_end.to(input_ids.device)
            else:
                t_start, t_end = t.start_logits.float(), t.end_logits.float()
            T = self.loss.temperature
            # summed over start and end, as the paper's code does
            parts["kd"] = kd_loss(s.start_logits.float(), t_start, mask, T) + kd_loss(
                s.end_logits.float(), t_end, mask, T
            )
        if self.ce > 0:
            parts["ce"] = ce_loss(
                s.start_logits.float(), s.end_logits.float(), start_positions, end_positions
            )
        for m in self.matches:
            key = f"{m.feature}_{m.student_layer}"
            if m.feature == "hidden":
                parts[key] = hidden_mse(
                    s.hidden_states[m.student_layer].float(),
                    t.hidden_states[m.teacher_layer].float(),
                    mask,
                    self.projection,
                )
            else:  # attention layers count from 1
                parts[key] = ATTENTION_LOSSES[m.loss](
                    s.attention_scores[m.student_layer - 1].float(),
                    t.attention_scores[m.teacher_layer - 1].float(),
                    mask,
                )
        weights = {"kd": self.kd, "ce": self.ce} | {
            f"{m.feature}_{m.student_layer}": m.weight for m in self.matches
        }
        loss = sum(weights[k] * v for k, v in parts.items())
        return loss, {k: v.detach() for k, v in parts.items()}
