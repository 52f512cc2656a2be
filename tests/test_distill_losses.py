"""Distillation losses: against reference computations, hand-computed values and the fully masked case."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinyroberta_es.distill.losses import (
    ATTENTION_LOSSES,
    attention_kl,
    attention_mse,
    hidden_mse,
    kd_loss,
)
from tinyroberta_es.qa_loss import qa_cross_entropy as ce_loss

# KL([3/4, 1/4] || [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812
KL_34_UNIFORM = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mask(lengths: list[int], length: int) -> torch.Tensor:
    """(B, T) bool: the first lengths[b] tokens of row b are real."""
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


# ---- kd_loss ---------------------------------------------------------------------------------------------


def _kd_reference(student, teacher, mask, temperature):
    rows = []
    for s, t, m in zip(student, teacher, mask, strict=True):
        if not m.any():
            rows.append(torch.tensor(0.0))
            continue
        log_q = F.log_softmax(s[m] / temperature, dim=-1)
        p = F.softmax(t[m] / temperature, dim=-1)
        rows.append(F.kl_div(log_q, p, reduction="sum") * temperature**2)
    return torch.stack(rows).mean()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kd_loss_matches_reference(temperature):
    g = _gen(1)
    student, teacher = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g) * 3
    mask = _mask([9, 5, 1, 7], 9)
    got = kd_loss(student, teacher, mask, temperature)
    torch.testing.assert_close(got, _kd_reference(student, teacher, mask, temperature))


def test_kd_loss_hand_computed():
    # valid positions 0, 1: q = softmax([0, 0]) = [1/2, 1/2], p = softmax([ln 3, 0]) = [3/4, 1/4];
    # position 2 is padding, whatever its logits
    student = torch.tensor([[0.0, 0.0, 100.0]])
    teacher = torch.tensor([[math.log(3), 0.0, -100.0]])
    mask = torch.tensor([[True, True, False]])
    assert kd_loss(student, teacher, mask, 1.0).item() == pytest.approx(KL_34_UNIFORM, abs=1e-6)
    # T = 2 on logits [2 ln 3, 0]: the same p after dividing by T, times T^2 = 4: 0.523248
    teacher2 = torch.tensor([[2 * math.log(3), 0.0, -100.0]])
    assert kd_loss(student, teacher2, mask, 2.0).item() == pytest.approx(4 * KL_34_UNIFORM, abs=1e-6)
    # a second, fully padded row adds 0 but counts in the batch mean: 0.130812 / 2
    two = kd_loss(student.repeat(2, 1), teacher.repeat(2, 1), torch.tensor([[1, 1, 0], [0, 0, 0]]), 1.0)
    assert two.item() == pytest.approx(KL_34_UNIFORM / 2, abs=1e-6)


def test_kd_loss_is_zero_when_student_equals_teacher_and_scales_with_t_squared():
    g = _gen(2)
    logits = torch.randn(3, 6, generator=g)
    mask = _mask([6, 4, 2], 6)
    assert kd_loss(logits, logits.clone(), mask, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # scaling logits by T and the temperature by T gives the same distributions: loss ratio is T^2
    student, teacher = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    base = kd_loss(student, teacher, mask, 1.0)
    torch.testing.assert_close(kd_loss(3 * student, 3 * teacher, mask, 3.0), 9 * base)


def test_kd_loss_rejects_mismatched_logits():
    with pytest.raises(ValueError, match="logits differ"):
        kd_loss(torch.zeros(2, 5), torch.zeros(2, 6), torch.ones(2, 5, dtype=torch.bool))


# ---- ce_loss ---------------------------------------------------------------------------------------------


def _ce_reference(start_logits, end_logits, start_positions, end_positions):
    """The loss of Hugging Face's *ForQuestionAnswering heads, written out."""
    ignored = start_logits.size(1)
    fct = nn.CrossEntropyLoss(ignore_index=ignored)
    s, e = start_positions.clamp(0, ignored), end_positions.clamp(0, ignored)
    return (fct(start_logits, s) + fct(end_logits, e)) / 2


def test_ce_loss_matches_hugging_face_formula():
    g = _gen(3)
    start, end = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    sp, ep = torch.tensor([0, 3, 7, 12, 2]), torch.tensor([1, 3, 7, 12, -4])  # 12 ignored, -4 clamped to 0
    torch.testing.assert_close(ce_loss(start, end, sp, ep), _ce_reference(start, end, sp, ep))
    # (B, 1) positions, as some collators give them
    torch.testing.assert_close(
        ce_loss(start, end, sp[:, None], ep[:, None]), _ce_reference(start, end, sp, ep)
    )


def test_ce_loss_hand_computed():
    # start: softmax([ln 2, 0, 0]) = [1/2, 1/4, 1/4], gold 0: -ln(1/2) = ln 2
    # end: uniform over 3 positions, gold 2: ln 3; mean: (ln 2 + ln 3) / 2 = ln 6 / 2 = 0.895880
    start = torch.tensor([[math.log(2), 0.0, 0.0]])
    end = torch.zeros(1, 3)
    got = ce_loss(start, end, torch.tensor([0]), torch.tensor([2]))
    assert got.item() == pytest.approx(math.log(6) / 2, abs=1e-6)
    # an out-of-range row (position 9 -> clamped to 3 = ignored) leaves the mean unchanged
    got2 = ce_loss(start.repeat(2, 1), end.repeat(2, 1), torch.tensor([0, 9]), torch.tensor([2, 9]))
    assert got2.item() == pytest.approx(math.log(6) / 2, abs=1e-6)


def test_ce_loss_all_ignored_is_zero_not_nan():
    start = torch.randn(2, 4, requires_grad=True)
    end = torch.randn(2, 4, requires_grad=True)
    loss = ce_loss(start, end, torch.tensor([4, 7]), torch.tensor([4, 5]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(start.grad).all() and torch.isfinite(end.grad).all()


def test_ce_loss_masks_padding_so_batch_mates_do_not_matter():
    """Defect: the hard-label loss saw padded positions, so a window's loss depended on its batch-mates."""
    g = _gen(5)
    short_start, short_end = torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g)
    sp, ep = torch.tensor([1]), torch.tensor([2])
    alone = ce_loss(short_start, short_end, sp, ep, torch.ones(1, 4))
    # the same window padded to 9 tokens beside a longer one; padding logits are arbitrary (here large)
    pad = torch.full((1, 5), 5.0)
    start = torch.cat([torch.cat([short_start, pad], 1), torch.randn(1, 9, generator=g)])
    end = torch.cat([torch.cat([short_end, pad], 1), torch.randn(1, 9, generator=g)])
    mask = torch.tensor([[1] * 4 + [0] * 5, [1] * 9])
    first_row_only = torch.tensor([1.0, 0.0])
    padded = ce_loss(start, end, torch.tensor([1, 3]), torch.tensor([2, 4]), mask, first_row_only)
    torch.testing.assert_close(padded, alone, rtol=1e-6, atol=1e-6)
    unmasked = ce_loss(start, end, torch.tensor([1, 3]), torch.tensor([2, 4]), None, first_row_only)
    assert unmasked.item() > alone.item() + 1  # what the unmasked loss did


def test_ce_loss_row_weights():
    g = _gen(6)
    start, end = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    sp, ep = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])
    rows = [ce_loss(start[i : i + 1], end[i : i + 1], sp[i : i + 1], ep[i : i + 1]) for i in range(3)]
    weights = torch.tensor([1.0, 0.0, 3.0])  # row 1 (an augmented window) gets no hard-label loss
    got = ce_loss(start, end, sp, ep, row_weights=weights)
    torch.testing.assert_close(got, (rows[0] + 3 * rows[2]) / 4, rtol=1e-6, atol=1e-6)
    nothing = ce_loss(start.requires_grad_(), end, sp, ep, row_weights=torch.zeros(3))
    nothing.backward()
    assert nothing.item() == 0.0 and torch.isfinite(start.grad).all()


# ---- hidden_mse ------------------------------------------------------------------------------------------


def test_hidden_mse_matches_reference_with_projection():
    g = _gen(4)
    student, teacher = torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 8, generator=g)
    mask = _mask([6, 2, 4], 6)
    projection = nn.Linear(4, 8)
    # reference: every valid token's projected vector against the teacher's, mean over tokens and dims
    rows_s = torch.cat([projection(student[b][mask[b]]) for b in range(3)])
    rows_t = torch.cat([teacher[b][mask[b]] for b in range(3)])
    torch.testing.assert_close(hidden_mse(student, teacher, mask, projection), F.mse_loss(rows_s, rows_t))


def test_hidden_mse_hand_computed():
    # token 0: (1 - 0)^2 + (2 - 0)^2 = 5 over 2 dims; token 1 is padding: 5 / 2 = 2.5
    student = torch.tensor([[[1.0, 2.0], [30.0, 40.0]]])
    teacher = torch.zeros(1, 2, 2)
    assert hidden_mse(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(2.5)
    # unmasked: (1 + 4 + 900 + 1600) / 4 = 626.25
    assert hidden_mse(student, teacher, torch.tensor([[1, 1]])).item() == pytest.approx(626.25)


def test_hidden_mse_needs_matching_widths():
    with pytest.raises(ValueError, match="hidden states differ"):
        hidden_mse(torch.zeros(1, 2, 4), torch.zeros(1, 2, 8), torch.ones(1, 2))


def test_hidden_mse_trains_the_projection():
    student = torch.randn(2, 3, 4, requires_grad=True)
    projection = nn.Linear(4, 6)
    hidden_mse(student, torch.randn(2, 3, 6), torch.ones(2, 3), projection).backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


# ---- attention losses ------------------------------------------------------------------------------------


def test_attention_mse_matches_reference():
    g = _gen(5)
    student, teacher = torch.randn(3, 2, 7, 7, generator=g), torch.randn(3, 2, 7, 7, generator=g)
    mask = _mask([7, 3, 5], 7)
    # reference: per example, the valid (query, key) block of every head, pooled over the batch
    diffs = [
        (student[b][:, mask[b]][:, :, mask[b]] - teacher[b][:, mask[b]][:, :, mask[b]]).flatten()
        for b in range(3)
    ]
    reference = torch.cat(diffs).pow(2).mean()
    torch.testing.assert_close(attention_mse(student, teacher, mask), reference)
    # without padding it is plain MSE, as TinyBERT computes it
    full = torch.ones(3, 7, dtype=torch.bool)
    torch.testing.assert_close(attention_mse(student, teacher, full), F.mse_loss(student, teacher))


def test_attention_mse_hand_computed():
    # mask [1, 0]: only the (0, 0) pair counts. head 0: (3 - 1)^2 = 4; head 1: (2 - 1)^2 = 1; mean 2.5
    student = torch.tensor([[[[3.0, 50.0], [50.0, 50.0]], [[2.0, -50.0], [-50.0, -50.0]]]])  # (1, 2, 2, 2)
    teacher = torch.ones(1, 2, 2, 2)
    assert attention_mse(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(2.5)


def test_attention_kl_matches_reference():
    g = _gen(6)
    student, teacher = torch.randn(3, 2, 6, 6, generator=g), torch.randn(3, 2, 6, 6, generator=g) * 2
    mask = _mask([6, 2, 4], 6)
    rows = []
    for b in range(3):
        s = student[b][:, mask[b]][:, :, mask[b]]  # (h, n, n): valid queries and keys
        t = teacher[b][:, mask[b]][:, :, mask[b]]
        kl = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="none").sum(-1)  # (h, n)
        rows.append(kl.flatten())
    torch.testing.assert_close(attention_kl(student, teacher, mask), torch.cat(rows).mean())


def test_attention_kl_hand_computed():
    # mask [1, 1, 0], 1 head. query 0: student [0, 0 | pad], teacher [ln 3, 0 | pad] -> 0.130812;
    # query 1: student == teacher -> 0; query 2 is padding. Mean over 2 queries: 0.065406
    student = torch.tensor([[[[0.0, 0.0, 9.0], [1.0, 2.0, 9.0], [5.0, 5.0, 5.0]]]])
    teacher = torch.tensor([[[[math.log(3), 0.0, -9.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]])
    got = attention_kl(student, teacher, torch.tensor([[1, 1, 0]]))
    assert got.item() == pytest.approx(KL_34_UNIFORM / 2, abs=1e-6)


@pytest.mark.parametrize("name", sorted(ATTENTION_LOSSES))
def test_attention_losses_need_equal_heads(name):
    with pytest.raises(ValueError, match="same number of heads"):
        ATTENTION_LOSSES[name](torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3), torch.ones(1, 3))


def test_attention_losses_registry():
    assert {"mse": attention_mse, "kl": attention_kl} == ATTENTION_LOSSES


# ---- shared properties: the fully masked case and where gradients go ---------------------------------


def _call(name, student, teacher, mask):
    if name == "kd":
        return kd_loss(student, teacher, mask, 2.0)
    if name == "hidden":
        return hidden_mse(student, teacher, mask, None)
    return ATTENTION_LOSSES[name](student, teacher, mask)


SHAPES = {"kd": (2, 5), "hidden": (2, 5, 3), "mse": (2, 2, 5, 5), "kl": (2, 2, 5, 5)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_fully_masked_is_zero_with_finite_gradients(name):
    g = _gen(7)
    student = torch.randn(*SHAPES[name], generator=g).requires_grad_()
    teacher = torch.randn(*SHAPES[name], generator=g)
    loss = _call(name, student, teacher, torch.zeros(2, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() == 0


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_gradients_reach_the_student_only(name):
    g = _gen(8)
    student = torch.randn(*SHAPES[name], generator=g).requires_grad_()
    teacher = torch.randn(*SHAPES[name], generator=g).requires_grad_()
    mask = _mask([5, 3], 5)
    loss = _call(name, student, teacher, mask)
    loss.backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # padded positions of the student get no gradient (only padded keys/queries for attention maps)
    if name in ("kd", "hidden"):
        assert student.grad[1, 3:].abs().sum() == 0
    else:
        assert student.grad[1, :, 3:, :].abs().sum() == 0 and student.grad[1, :, :, 3:].abs().sum() == 0
