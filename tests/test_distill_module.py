"""`DistillModule`: which terms run in which stage, hard labels for augmented windows, normalisation,
gradient shares, and what it captures from the teacher (only the layers a match reads)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

from tinyroberta_es.config import LossConfig
from tinyroberta_es.distill.mapping import RelationMatch, layer_matches, make_projection
from tinyroberta_es.distill.module import DistillModule
from tinyroberta_es.qa_loss import qa_cross_entropy


def bert(layers: int, hidden: int = 32, heads: int = 4, seed: int = 0) -> BertForQuestionAnswering:
    config = BertConfig(
        vocab_size=60, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return BertForQuestionAnswering(config)


def batch(rows: int = 3, length: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, 7:] = 0
    return {
        "input_ids": torch.randint(5, 60, (rows, length), generator=g),
        "attention_mask": mask,
        "start_positions": torch.tensor([1, 2, 3])[:rows],
        "end_positions": torch.tensor([2, 4, 5])[:rows],
        "feature_index": torch.arange(rows),
    }


def module(loss: LossConfig, *, teacher_layers: int = 4, student_layers: int = 2, **kwargs) -> DistillModule:
    teacher, student = bert(teacher_layers, seed=1), bert(student_layers, hidden=16, heads=4, seed=2)
    matches = layer_matches(teacher_layers, student_layers, loss, teacher_heads=4, student_heads=4)
    return DistillModule(student, teacher, loss, matches, make_projection(16, 32), **kwargs)


def test_augmented_windows_get_no_hard_label_loss():
    """Defect: augmented copies got the gold-span loss although a replaced word can make the span wrong."""
    loss = LossConfig(kd=0.0, ce=1.0, hidden=0.0, attention=0.0)
    m = module(loss, hard_label_weight=torch.tensor([1.0, 0.0, 1.0]))  # window 1 is augmented
    b = batch()
    _, parts = m(**b)
    s = m.student(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    keep = [0, 2]
    want = qa_cross_entropy(
        s.start_logits[keep], s.end_logits[keep], b["start_positions"][keep], b["end_positions"][keep],
        b["attention_mask"][keep],
    )  # fmt: skip
    torch.testing.assert_close(parts["ce"], want, rtol=1e-5, atol=1e-6)


def test_prediction_stage_has_no_projection_and_runs_no_teacher_layers_it_does_not_need():
    loss = LossConfig(attention_loss="kl")
    prediction = module(loss, stage="prediction")
    assert not any("projection" in name for name, _ in prediction.named_parameters())  # DDP: no unused
    assert prediction.student_scores == [] and prediction.teacher_scores == []
    intermediate = module(loss, stage="intermediate")
    assert intermediate.find_unused_parameters  # the QA head gets no gradient in this stage
    assert intermediate.teacher_scores == [2, 4] and intermediate.student_scores == [1, 2]  # 4 -> 2
    _, parts = intermediate(**batch())
    assert set(parts) == {"hidden_0", "hidden_1", "hidden_2", "attention_1", "attention_2"}


def test_initial_normalisation_starts_every_intermediate_term_at_its_weight():
    loss = LossConfig(kd=1.0, ce=1.0, hidden=2.0, attention=1.0, attention_loss="mse", normalize="initial")
    m = module(loss).train()
    total, parts = m(**batch())
    normalized = [k for k in parts if k.startswith(("hidden", "attention"))]
    torch.testing.assert_close(m.initial, torch.stack([parts[k] for k in normalized]))
    expected = (
        parts["kd"] + parts["ce"] + sum(loss.hidden if k.startswith("hidden") else 1.0 for k in normalized)
    )
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-5)
    assert "initial" in m.state_dict()  # survives a resume
    first = m.initial.clone()
    m(**batch())
    torch.testing.assert_close(m.initial, first)  # fixed after the first batch


def test_gradient_shares_sum_to_one_and_are_measured_every_n_passes():
    m = module(LossConfig(attention_loss="kl"), gradient_shares_every=3).train()
    seen = []
    for _ in range(5):
        _, parts = m(**batch())
        seen.append(any(k.startswith("share_") for k in parts))
    assert seen == [True, False, False, True, False]
    _, parts = module(LossConfig(attention_loss="kl"), gradient_shares_every=1).train()(**batch())
    shares = {k: v.item() for k, v in parts.items() if k.startswith("share_")}
    assert set(shares) == {"share_kd", "share_ce", "share_hidden", "share_attention"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():  # evaluation passes never measure
        assert not any(k.startswith("share_") for k in m.eval()(**batch())[1])


def test_relations_term_reads_one_teacher_layer_and_the_students_last():
    loss = LossConfig(kd=0.0, ce=0.0, hidden=0.0, attention=0.0, relations=1.0)
    m = module(loss, relation=RelationMatch(teacher_layer=3, student_layer=2, heads=4, weight=1.0))
    assert m.teacher_scores == [] and m.student_scores == []  # no score maps: q/k/v vectors only
    total, parts = m(**batch())
    assert set(parts) == {"relations"} and parts["relations"] > 0
    total.backward()
    assert m.student.bert.encoder.layer[1].attention.self.value.weight.grad is not None


def test_settings_name_what_a_resume_must_keep():
    a = module(LossConfig(attention_loss="kl")).settings()
    b = module(LossConfig(attention_loss="kl", kd=2.0)).settings()
    assert a["weight.kd"] == 1.0 and b["weight.kd"] == 2.0
    assert a["teacher_layer.attention_2"] == 4


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_the_frozen_teacher_is_kept_in_the_training_precision(precision, dtype):
    from tinyroberta_es.distill.pipeline import frozen_teacher

    teacher = frozen_teacher(bert(2).train(), precision, torch.device("cpu"))
    assert {p.dtype for p in teacher.parameters()} == {dtype}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    m = DistillModule(bert(1, hidden=16), teacher, LossConfig(attention_loss="kl", layer_map="last"), [])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = m.train()(**batch())
    assert torch.isfinite(total)
