"""MiniLM v2 relation losses: a loop reference, hand-computed values, padding, the fully masked case."""

from __future__ import annotations

import math

import pytest
import torch

from tinyroberta_es.distill.relations import RELATIONS, relation_kl, relation_logits, relation_loss

# KL([3/4, 1/4] || [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812
KL_34_UNIFORM = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
TOL = {"atol": 1e-6, "rtol": 1e-5}  # fp32 against an fp64 loop, or two fp32 code paths


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def _inputs(seed: int, hs: int = 8, ht: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student (4, 5, hs), teacher (4, 5, ht) and a mask with full, short, holed and empty rows."""
    torch.manual_seed(seed)
    mask = _mask([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 1, 1], [0, 0, 0, 0, 0]])
    return torch.randn(4, 5, hs), torch.randn(4, 5, ht) * 2, mask


def _reference(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Explicit loops over batch, relation head and valid query row, in fp64."""
    student, teacher = student.double(), teacher.double()
    ds, dt = student.shape[-1] // heads, teacher.shape[-1] // heads
    total, rows = torch.tensor(0.0, dtype=torch.float64), 0
    for b in range(student.shape[0]):
        valid = mask[b].bool()
        for r in range(heads):
            s = student[b, valid, r * ds : (r + 1) * ds]  # (n, ds): valid tokens only
            t = teacher[b, valid, r * dt : (r + 1) * dt]  # (n, dt)
            for i in range(s.shape[0]):
                q = torch.softmax(s @ s[i] / math.sqrt(ds), dim=-1)  # (n,)
                p = torch.softmax(t @ t[i] / math.sqrt(dt), dim=-1)  # (n,)
                total = total + (p * (p.log() - q.log())).sum()
                rows += 1
    return (total / max(rows, 1)).float()


def test_relation_logits_shapes_and_values():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6)
    got = relation_logits(x, 3)
    assert got.shape == (2, 3, 3, 3)
    # relation head 1 holds dims 2:4; logits are dot products / sqrt(2)
    head = x[:, :, 2:4]
    torch.testing.assert_close(got[:, 1], head @ head.transpose(-1, -2) / math.sqrt(2), **TOL)


@pytest.mark.parametrize(("hs", "ht", "heads"), [(8, 12, 4), (6, 6, 1), (12, 8, 2)])
def test_relation_kl_matches_reference(hs, ht, heads):
    student, teacher, mask = _inputs(1, hs, ht)
    got = relation_kl(student, teacher, mask, heads)
    assert got.dtype == torch.float32 and got.shape == ()
    torch.testing.assert_close(got, _reference(student, teacher, mask, heads), **TOL)


def test_relation_kl_hand_computed():
    # T = 2 valid tokens, one relation head of size 1: teacher x = [sqrt(ln 3), 0], student x = [0, 0].
    # Teacher logits [[ln 3, 0], [0, 0]]: row 0 p = [3/4, 1/4], row 1 p = [1/2, 1/2]; student rows are
    # uniform. KL row 0 = 0.130812, row 1 = 0; mean over 2 valid queries and 1 head = 0.065406.
    # Position 2 is padding, whatever its values.
    teacher = torch.tensor([[[math.sqrt(math.log(3))], [0.0], [7.0]]])  # (1, 3, 1)
    student = torch.tensor([[[0.0], [0.0], [-5.0]]])
    mask = _mask([[1, 1, 0]])
    assert relation_kl(student, teacher, mask, 1).item() == pytest.approx(KL_34_UNIFORM / 2, abs=1e-6)
    # one relation head of size 4 checks the 1/sqrt(d_r) scale: x0 = [c, c, c, c] gives x0.x0 / sqrt(4) =
    # 4c^2 / 2 = 2c^2 = ln 3 for c = sqrt(ln 3 / 2): the same distributions, the same loss
    c = math.sqrt(math.log(3) / 2)
    teacher4 = torch.tensor([[[c] * 4, [0.0] * 4, [7.0] * 4]])  # (1, 3, 4)
    student4 = torch.zeros(1, 3, 4)
    assert relation_kl(student4, teacher4, mask, 1).item() == pytest.approx(KL_34_UNIFORM / 2, abs=1e-6)


def test_relation_kl_is_zero_for_identical_inputs_and_nonnegative():
    student, teacher, mask = _inputs(2, 12, 12)
    assert relation_kl(teacher, teacher.clone(), mask, 4).item() == pytest.approx(0.0, abs=1e-6)
    for seed in range(3):
        student, teacher, mask = _inputs(seed)
        assert relation_kl(student, teacher, mask, 4).item() > 0


def test_relation_kl_ignores_appended_padding():
    student, teacher, mask = _inputs(3)
    base = relation_kl(student, teacher, mask, 4)
    torch.manual_seed(4)
    padded = relation_kl(
        torch.cat([student, torch.randn(4, 3, 8) * 10], dim=1),  # (4, 8, 8)
        torch.cat([teacher, torch.randn(4, 3, 12) * 10], dim=1),  # (4, 8, 12)
        torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1),
        4,
    )
    torch.testing.assert_close(padded, base, **TOL)


def test_relation_kl_fully_masked_is_zero_with_finite_gradients():
    student, teacher, _ = _inputs(5)
    student.requires_grad_()
    loss = relation_kl(student, teacher, torch.zeros(4, 5, dtype=torch.long), 4)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_relation_kl_gradient_reaches_the_student_only():
    student, teacher, mask = _inputs(6)
    student.requires_grad_()
    teacher.requires_grad_()
    relation_kl(student, teacher, mask, 4).backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert student.grad[3].abs().sum() == 0  # the fully padded row gets no gradient


def test_relation_kl_bf16_inputs_and_autocast_compute_in_fp32():
    student, teacher, mask = _inputs(7)
    s16, t16 = student.bfloat16(), teacher.bfloat16()
    got = relation_kl(s16, t16, mask, 4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, relation_kl(s16.float(), t16.float(), mask, 4), **TOL)
    torch.testing.assert_close(got, relation_kl(student, teacher, mask, 4), atol=1e-3, rtol=5e-2)
    # under a bf16 autocast the T x T products still run in fp32, so the loss barely moves
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = relation_kl(student, teacher, mask, 4)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, relation_kl(student, teacher, mask, 4), **TOL)


def test_relation_errors_name_the_shapes():
    student, teacher, mask = _inputs(8)
    with pytest.raises(ValueError, match=r"H=8 is not divisible by heads=3"):
        relation_logits(student, 3)
    with pytest.raises(ValueError, match=r"H=12 is not divisible by heads=8"):
        relation_kl(student, teacher, mask, 8)  # 8 divides Hs = 8, not Ht = 12
    with pytest.raises(ValueError, match=r"\(3, 5, 8\).*\(4, 5, 12\)"):
        relation_kl(student[:3], teacher, mask, 4)
    with pytest.raises(ValueError, match=r"\(4, 4, 8\).*\(4, 5, 12\)"):
        relation_kl(student[:, :4], teacher, mask, 4)
    with pytest.raises(ValueError, match=r"mask \(4, 4\)"):
        relation_kl(student, teacher, mask[:, :4], 4)


def test_relation_loss_sums_the_three_relations():
    torch.manual_seed(9)
    mask = _mask([[1, 1, 1, 0], [1, 1, 0, 0]])
    student = {name: torch.randn(2, 4, 8) for name in RELATIONS}
    teacher = {name: torch.randn(2, 4, 12) for name in RELATIONS}
    parts = [relation_kl(student[name], teacher[name], mask, 2) for name in RELATIONS]
    torch.testing.assert_close(relation_loss(student, teacher, mask, 2), sum(parts), **TOL)
    torch.testing.assert_close(relation_loss(student, teacher, mask, 2, ("value",)), parts[2], **TOL)


def test_relation_loss_names_missing_relations():
    torch.manual_seed(10)
    mask = _mask([[1, 1]])
    full = {name: torch.randn(1, 2, 4) for name in RELATIONS}
    with pytest.raises(ValueError, match=r"'value' missing from the student"):
        relation_loss({"query": full["query"], "key": full["key"]}, full, mask, 2)
    with pytest.raises(ValueError, match=r"'key' missing from the teacher"):
        relation_loss(full, {"query": full["query"]}, mask, 2)
    with pytest.raises(ValueError, match=r"relations is empty"):
        relation_loss(full, full, mask, 2, ())
