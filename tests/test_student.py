"""The student's config and initialisation: presets, checks, and teacher-layers copying that really copies."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    BertConfig,
    BertForQuestionAnswering,
    RobertaConfig,
    RobertaForQuestionAnswering,
)

from tinyroberta_es.config import DistillConfig, StudentConfig, apply_overrides, from_dict
from tinyroberta_es.distill.student import (
    PRESETS,
    build_student,
    count_parameters,
    student_config,
    uniform_layers,
)
from tinyroberta_es.errors import UserError

SIZES = {"vocab_size": 120, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 48}


def tiny_teacher(layers: int = 4, family: str = "roberta", seed: int = 1):
    """A tiny teacher with dropout off, so outputs are deterministic."""
    torch.manual_seed(seed)
    common = {
        **SIZES,
        "num_hidden_layers": layers,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if family == "roberta":
        config = RobertaConfig(**common, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1)
        return RobertaForQuestionAnswering(config).eval()
    config = BertConfig(**common, max_position_embeddings=64, pad_token_id=0, type_vocab_size=2)
    return BertForQuestionAnswering(config).eval()


def truncated(teacher, layers: list[int]):
    """The teacher with only `layers` (1-indexed) left in its encoder."""
    model = copy.deepcopy(teacher)
    model.base_model.encoder.layer = torch.nn.ModuleList(
        [model.base_model.encoder.layer[t - 1] for t in layers]
    )
    model.config.num_hidden_layers = len(layers)
    return model


def inputs(vocab: int = 120) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, 9:], mask[1, 9:] = 1, 0  # padding in the second row
    return {"input_ids": ids, "attention_mask": mask}


def test_paper_preset_has_the_papers_parameter_count(shared_dir: Path) -> None:
    teacher_config = AutoConfig.from_pretrained(
        shared_dir / "tokenizers" / "roberta-large-bne" / "teacher-config.json"
    )
    config = student_config(teacher_config, StudentConfig(preset="paper"))
    assert {k: getattr(config, k) for k in PRESETS["paper"]} == PRESETS["paper"]
    assert (config.vocab_size, config.max_position_embeddings) == (50262, 514)
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        student = AutoModelForQuestionAnswering.from_config(config)
        teacher = AutoModelForQuestionAnswering.from_config(teacher_config)
    assert count_parameters(student) == 51_211_778
    assert count_parameters(teacher) == 354_309_122
    assert teacher_config.num_hidden_layers == 24  # config untouched


def test_overrides_apply_after_the_preset() -> None:
    teacher = tiny_teacher().config
    config = student_config(teacher, StudentConfig(preset="paper", layers=3, hidden_size=384, heads=12))
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (3, 384, 12)
    assert config.intermediate_size == 3072  # from the preset
    assert config.vocab_size == teacher.vocab_size
    plain = student_config(teacher, StudentConfig(layers=2))
    assert (plain.num_hidden_layers, plain.hidden_size) == (2, 32)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (StudentConfig(hidden_size=100, heads=16), "student.heads=16"),
        (StudentConfig(layers=6, init="teacher-layers"), "student.layers=6"),
        (StudentConfig(layers=2, hidden_size=64, init="teacher-layers"), "student.hidden_size=64"),
        (StudentConfig(layers=2, heads=8, init="teacher-layers"), "student.heads=8"),
        (StudentConfig(intermediate_size=64, init="teacher-layers"), "student.intermediate_size=64"),
    ],
)
def test_bad_sizes_name_the_option(spec: StudentConfig, named: str) -> None:
    with pytest.raises(UserError, match=named.replace(".", r"\.")):
        student_config(tiny_teacher().config, spec)


def test_all_problems_reported_together() -> None:
    spec = StudentConfig(layers=9, hidden_size=30, heads=4, init="teacher-layers")
    with pytest.raises(UserError) as err:
        student_config(tiny_teacher().config, spec)
    assert all(
        name in str(err.value) for name in ("student.heads=4", "student.layers=9", "student.hidden_size=30")
    )


def test_uniform_layers() -> None:
    assert uniform_layers(12, 6) == [2, 4, 6, 8, 10, 12]
    assert uniform_layers(12, 3) == [4, 8, 12]
    assert uniform_layers(24, 6) == [4, 8, 12, 16, 20, 24]  # the paper's g(m) = 4m
    assert uniform_layers(12, 5) == [2, 5, 7, 10, 12]
    assert uniform_layers(4, 4) == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        uniform_layers(3, 4)


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_teacher_layers_init_is_a_truncated_teacher(family: str) -> None:
    teacher = tiny_teacher(layers=4, family=family)
    student = build_student(teacher, StudentConfig(layers=2, init="teacher-layers")).eval()
    assert type(student) is type(teacher)
    s_layers, t_layers = student.base_model.encoder.layer, teacher.base_model.encoder.layer
    for m, t in ((0, 1), (1, 3)):  # student layers 1, 2 <- teacher layers 2, 4
        for (name, s_param), t_param in zip(
            s_layers[m].state_dict().items(), t_layers[t].state_dict().values(), strict=True
        ):
            assert torch.equal(s_param, t_param), name
    for name, param in teacher.base_model.embeddings.state_dict().items():
        assert torch.equal(student.base_model.embeddings.state_dict()[name], param), name
    assert torch.equal(student.qa_outputs.weight, teacher.qa_outputs.weight)
    with torch.no_grad():
        got, want = student(**inputs()), truncated(teacher, [2, 4])(**inputs())
    torch.testing.assert_close(got.start_logits, want.start_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.end_logits, want.end_logits, rtol=1e-5, atol=1e-5)


def test_teacher_layers_explicit_and_uneven(caplog: pytest.LogCaptureFixture) -> None:
    teacher = tiny_teacher(layers=5)
    spec = StudentConfig(layers=2, init="teacher-layers", init_layers=[1, 3])
    student = build_student(teacher, spec).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            student(**inputs()).start_logits,
            truncated(teacher, [1, 3])(**inputs()).start_logits,
            rtol=1e-5,
            atol=1e-5,
        )
    with caplog.at_level(logging.INFO, logger="tinyroberta_es.distill.student"):
        build_student(teacher, StudentConfig(layers=3, init="teacher-layers"))
    assert "not a multiple" in caplog.text and "[2, 3, 5]" in caplog.text
    assert "parameters" in caplog.text


def assert_copied(student, source, layers: list[int]) -> None:
    """Student layer m holds source layer layers[m - 1]; embeddings and QA head are the source's."""
    s_base, t_base = student.base_model, source.base_model
    assert len(s_base.encoder.layer) == len(layers)
    pairs = [(s_base.embeddings, t_base.embeddings), (student.qa_outputs, source.qa_outputs)]
    pairs += [(s_base.encoder.layer[m], t_base.encoder.layer[t - 1]) for m, t in enumerate(layers)]
    for s_part, t_part in pairs:  # copied tensors, not recomputed ones: bit-identical
        torch.testing.assert_close(s_part.state_dict(), t_part.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("init_layers", "student_layers", "copied"),
    [
        ("uniform", 3, [2, 4, 6]),
        ("bottom", 3, [1, 2, 3]),
        ("every-2", 3, [2, 4, 6]),
        ("every-3", 2, [3, 6]),
        ("every-1", 2, [1, 2]),
        ([1, 5, 6], 3, [1, 5, 6]),
    ],
)
def test_init_layers_chooses_the_copied_teacher_layers(init_layers, student_layers, copied, caplog) -> None:
    teacher = tiny_teacher(layers=6)
    spec = StudentConfig(layers=student_layers, init="teacher-layers", init_layers=init_layers)
    with caplog.at_level(logging.INFO, logger="tinyroberta_es.distill.student"):
        student = build_student(teacher, spec)
    assert_copied(student, teacher, copied)
    assert f"layers {copied} into student layers 1..{student_layers}" in caplog.text  # the log says which


def test_folder_layers_copies_a_saved_student_not_the_teacher(tmp_path: Path, caplog) -> None:
    teacher = tiny_teacher(layers=6)
    assistant = build_student(teacher, StudentConfig(layers=4), seed=7)  # random: unlike any teacher layer
    assistant.save_pretrained(tmp_path / "assistant")
    folder = str(tmp_path / "assistant")
    spec = StudentConfig(layers=2, folder=folder, init="folder-layers", init_layers="every-2")
    with caplog.at_level(logging.INFO, logger="tinyroberta_es.distill.student"):
        student = build_student(teacher, spec)
    assert_copied(student, assistant, [2, 4])
    assert f"copied from student.folder {tmp_path / 'assistant'} (4 layers" in caplog.text
    assert student.config.num_hidden_layers == 2 and type(student) is type(teacher)
    uniform = build_student(teacher, StudentConfig(layers=2, folder=spec.folder, init="folder-layers"))
    assert_copied(uniform, assistant, [2, 4])  # uniform over the folder's 4 layers, not the teacher's 6


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"init_layers": "top"}, ["student.init_layers='top'", "every-K"]),
        ({"init_layers": "every-0"}, ["student.init_layers='every-0'"]),
        ({"init_layers": "every-x"}, ["student.init_layers='every-x'"]),
        ({"init_layers": [3, 2]}, ["student.init_layers=[3, 2]", "increasing"]),
        ({"init_layers": [0, 2]}, ["student.init_layers=[0, 2]", "1-indexed"]),
        ({"init_layers": []}, ["student.init_layers=[]"]),
        ({"init": "random", "init_layers": "bottom"}, ["student.init_layers='bottom'", "'random'"]),
        ({"init": "pretrained", "folder": "x", "init_layers": [1]}, ["only applies to init teacher-layers"]),
        ({"init": "folder-layers"}, ["student.init is 'folder-layers'", "student.folder is not set"]),
    ],
)
def test_bad_init_layers_are_refused_when_the_config_is_built(kwargs, needles) -> None:
    with pytest.raises(UserError) as err:
        StudentConfig(**{"layers": 2, "init": "teacher-layers", **kwargs})
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message


@pytest.mark.parametrize(
    ("layers", "init_layers", "needles"),
    [
        (6, "every-4", ["student.init_layers='every-4'", "4, 8, ..., 24", "has 12", "use every-2"]),
        (3, "every-5", ["'every-5'", "use every-4"]),
        (3, [2, 4], ["student.init_layers=[2, 4]", "give 3 increasing teacher layers", "between 1 and 12"]),
        (2, [4, 13], ["student.init_layers=[4, 13]", "between 1 and 12"]),
        (13, "bottom", ["student.layers=13 is more than the teacher's 12 layers"]),
    ],
)
def test_init_layers_that_do_not_fit_the_teacher_say_so(layers, init_layers, needles) -> None:
    teacher = tiny_teacher(layers=12).config
    spec = StudentConfig(layers=layers, init="teacher-layers", init_layers=init_layers)
    with pytest.raises(UserError) as err:
        student_config(teacher, spec)
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_folder_layers_needs_the_students_width_and_the_teachers_vocabulary(tmp_path: Path) -> None:
    teacher = tiny_teacher(layers=4)
    wide = RobertaConfig(**{**SIZES, "hidden_size": 64, "num_hidden_layers": 4}, max_position_embeddings=66)
    wide.save_pretrained(tmp_path / "wide")
    trimmed = RobertaConfig(**{**SIZES, "vocab_size": 99, "num_hidden_layers": 4}, max_position_embeddings=66)
    trimmed.save_pretrained(tmp_path / "trimmed")
    bert = BertConfig(**{**SIZES, "num_hidden_layers": 4}, max_position_embeddings=64)
    bert.save_pretrained(tmp_path / "bert")
    shallow = RobertaConfig(**{**SIZES, "num_hidden_layers": 1}, max_position_embeddings=66)
    shallow.save_pretrained(tmp_path / "shallow")
    cases = {
        "wide": ["student.hidden_size=32 differs from 64 in student.folder", "set student.hidden_size=64"],
        "trimmed": ["vocab_size 99 (the teacher's 120)", "untrimmed"],
        "bert": ["model type 'bert' (the teacher's 'roberta')"],
        "shallow": ["student.layers=2 is more than the student.folder model's 1 layers"],
        "missing": ["cannot read a model config"],
    }
    for folder, needles in cases.items():
        spec = StudentConfig(layers=2, folder=str(tmp_path / folder), init="folder-layers")
        with pytest.raises(UserError) as err:
            build_student(teacher, spec)
        message = str(err.value)
        assert "\n" not in message and all(n in message for n in needles), (folder, message)


def test_random_init_is_seeded_and_leaves_global_state_alone() -> None:
    teacher = tiny_teacher()
    state = torch.random.get_rng_state()
    a = build_student(teacher, StudentConfig(layers=2), seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_student(teacher, StudentConfig(layers=2), seed=3)
    c = build_student(teacher, StudentConfig(layers=2), seed=4)
    assert a.training
    assert torch.equal(a.qa_outputs.weight, b.qa_outputs.weight)
    assert not torch.equal(a.qa_outputs.weight, c.qa_outputs.weight)
    assert not torch.equal(
        a.base_model.encoder.layer[0].output.dense.weight,
        teacher.base_model.encoder.layer[1].output.dense.weight,
    )


def test_pretrained_init_loads_the_folder(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    saved = build_student(teacher, StudentConfig(layers=2), seed=5)
    saved.save_pretrained(tmp_path)
    student = build_student(teacher, StudentConfig(folder=str(tmp_path), init="pretrained"))
    assert student.config.num_hidden_layers == 2
    for name, param in saved.state_dict().items():
        assert torch.equal(student.state_dict()[name], param), name


def test_folder_must_match_the_teacher(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    BertConfig(**{**SIZES, "vocab_size": 99}).save_pretrained(tmp_path / "bert")
    RobertaConfig(**{**SIZES, "vocab_size": 99}).save_pretrained(tmp_path / "roberta")
    with pytest.raises(
        UserError, match=r"incompatible teacher and student.*'bert'.*vocabulary of 99.*trim_vocab"
    ):
        student_config(teacher.config, StudentConfig(folder=str(tmp_path / "bert")))
    spec = StudentConfig(folder=str(tmp_path / "roberta"), trim_vocab=["sample"])
    assert student_config(teacher.config, spec).vocab_size == 99  # the vocabulary is trimmed later
    with pytest.raises(UserError, match=r"student\.preset"):
        student_config(teacher.config, StudentConfig(preset="paper", folder=str(tmp_path / "roberta")))
    with pytest.raises(UserError, match="cannot read a model config"):
        student_config(teacher.config, StudentConfig(folder=str(tmp_path / "missing")))


def test_init_layers_come_from_yaml_and_set_flags() -> None:
    student = {"layers": 2, "init": "teacher-layers", "init_layers": [2, 4]}
    config = from_dict(DistillConfig, {"student": student})
    assert config.student.init_layers == [2, 4]
    assert apply_overrides(config, ["student.init_layers=every-2"]).student.init_layers == "every-2"
    with pytest.raises(UserError, match=r"student\.init_layers='every-two'"):
        apply_overrides(config, ["student.init_layers=every-two"])
