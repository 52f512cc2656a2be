"""Layer matches between teacher and student, and the hidden-state projection."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinyroberta_es.config import LossConfig
from tinyroberta_es.distill.mapping import HiddenProjection, LayerMatch, layer_matches, make_projection
from tinyroberta_es.errors import UserError


def _pairs(matches: list[LayerMatch], feature: str) -> list[tuple[int, int]]:
    """(student layer, teacher layer) of the matches of one feature, in order."""
    return [(m.student_layer, m.teacher_layer) for m in matches if m.feature == feature]


def _matches(teacher: int, student: int, heads: tuple[int, int] = (16, 16), **loss) -> list[LayerMatch]:
    return layer_matches(teacher, student, LossConfig(**loss), teacher_heads=heads[0], student_heads=heads[1])


def test_uniform_24_to_6_is_the_papers_mapping():
    matches = _matches(24, 6)
    assert _pairs(matches, "hidden") == [(m, 4 * m) for m in range(7)]
    assert [m.teacher_layer for m in matches if m.feature == "hidden"] == [0, 4, 8, 12, 16, 20, 24]
    assert _pairs(matches, "attention") == [(m, 4 * m) for m in range(1, 7)]
    assert {(m.feature, m.loss, m.weight) for m in matches} == {
        ("hidden", "mse", 1.0),
        ("attention", "mse", 1.0),
    }


@pytest.mark.parametrize(
    ("teacher", "student", "hidden"), [(12, 6, [0, 2, 4, 6, 8, 10, 12]), (12, 3, [0, 4, 8, 12])]
)
def test_uniform_other_depths(teacher, student, hidden):
    matches = _matches(teacher, student)
    assert [t for _, t in _pairs(matches, "hidden")] == hidden
    assert [t for _, t in _pairs(matches, "attention")] == hidden[1:]


def test_last_matches_the_top_of_the_teacher():
    matches = _matches(12, 4, layer_map="last")
    assert _pairs(matches, "hidden") == [(0, 0), (1, 9), (2, 10), (3, 11), (4, 12)]
    assert _pairs(matches, "attention") == [(1, 9), (2, 10), (3, 11), (4, 12)]


def test_a_list_names_the_teacher_layer_of_each_student_layer():
    matches = _matches(12, 3, layer_map=[2, 7, 12])
    assert _pairs(matches, "hidden") == [(0, 0), (1, 2), (2, 7), (3, 12)]
    assert _pairs(matches, "attention") == [(1, 2), (2, 7), (3, 12)]


def test_weights_and_attention_loss_carry_over_and_zero_weights_are_left_out():
    matches = _matches(12, 6, hidden=0.5, attention=2.0, attention_loss="kl")
    assert {m.weight for m in matches if m.feature == "hidden"} == {0.5}
    assert {(m.loss, m.weight) for m in matches if m.feature == "attention"} == {("kl", 2.0)}
    assert not _pairs(_matches(12, 6, hidden=0.0), "hidden")
    assert len(_pairs(_matches(12, 6, hidden=0.0), "attention")) == 6
    assert not _pairs(_matches(12, 6, attention=0.0), "attention")
    # no intermediate loss: no matches, and the depths need not fit
    assert _matches(12, 5, hidden=0.0, attention=0.0) == []


def test_uniform_needs_a_multiple():
    with pytest.raises(UserError) as err:
        _matches(12, 5)
    assert str(err.value) == (
        "teacher has 12 layers and the student 5: 12 is not a multiple of 5; "
        "set loss.layer_map to last or to a list of 5 teacher layers"
    )


def test_student_deeper_than_teacher_is_refused():
    for layer_map in ("uniform", "last"):
        with pytest.raises(UserError, match=r"student has 8 layers and the teacher 4.*student\.layers"):
            _matches(4, 8, layer_map=layer_map)


@pytest.mark.parametrize(
    ("layer_map", "message"),
    [
        ([4, 8], r"loss\.layer_map lists 2 teacher layers but the student has 3"),
        ([0, 4, 8], r"loss\.layer_map has 0: teacher layers are numbered 1\.\.12"),
        ([4, 8, 13], r"loss\.layer_map has 13: teacher layers are numbered 1\.\.12"),
        ([4, 4, 8], r"loss\.layer_map \[4, 4, 8\] must be increasing"),
        ([8, 4, 12], r"loss\.layer_map \[8, 4, 12\] must be increasing"),
    ],
)
def test_bad_lists_are_refused_naming_the_option(layer_map, message):
    with pytest.raises(UserError, match=message):
        _matches(12, 3, layer_map=layer_map)


def test_all_problems_are_reported_at_once():
    with pytest.raises(UserError) as err:
        _matches(12, 3, heads=(16, 12), layer_map=[4, 13])
    text = str(err.value)
    assert "lists 2 teacher layers" in text and "has 13" in text and "same number of heads" in text


def test_unknown_layer_map_name():
    loss = LossConfig()
    loss.layer_map = "uniformm"  # bypassing LossConfig's own check
    with pytest.raises(UserError, match=r"unknown loss\.layer_map 'uniformm': choose one of uniform, last"):
        layer_matches(12, 6, loss, teacher_heads=12, student_heads=12)


def test_attention_needs_equal_heads():
    with pytest.raises(UserError) as err:
        _matches(24, 6, heads=(16, 12))
    assert str(err.value) == (
        "attention loss needs the same number of heads (teacher 16, student 12): "
        "set loss.attention to 0 or student.heads to 16"
    )
    # without the attention loss, different head counts are fine
    assert not _pairs(_matches(24, 6, heads=(16, 12), attention=0.0), "attention")


def test_layer_match_is_a_checked_frozen_record():
    match = LayerMatch(teacher_layer=4, student_layer=1, feature="attention", loss="kl", weight=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        match.weight = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="feature"):
        LayerMatch(4, 1, "logits", "mse", 1.0)
    with pytest.raises(ValueError, match="does not apply to hidden"):
        LayerMatch(4, 1, "hidden", "kl", 1.0)
    with pytest.raises(ValueError, match="count from 1"):
        LayerMatch(0, 0, "attention", "mse", 1.0)


def test_projection_is_one_shared_linear_or_the_identity():
    projection = make_projection(512, 1024)
    assert isinstance(projection, HiddenProjection)
    assert [tuple(p.shape) for p in projection.parameters()] == [(1024, 512), (1024,)]
    assert projection(torch.zeros(2, 3, 512)).shape == (2, 3, 1024)
    same = make_projection(64, 64)
    x = torch.randn(2, 3, 64)
    assert list(same.parameters()) == [] and same(x) is x
    assert "512 -> 1024" in repr(projection)
