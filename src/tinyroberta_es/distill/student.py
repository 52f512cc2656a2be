"""The student: its config (the teacher's, with a preset and overrides, or a folder's) and its first weights.

`student_config` derives the student's Hugging Face config and checks it against the teacher in one place;
`build_student` makes the `*ForQuestionAnswering` model and initialises it one of three ways:

- ``random``: fresh weights from the config, as the paper did;
- ``teacher-layers``: DistilBERT-style, the teacher's embeddings, a subset of its transformer layers
  (by default the uniform map g(m) = k*m of TinyBERT) and its QA head, so the student starts as a
  truncated teacher (same width, heads and ffn required);
- ``pretrained``: the weights of the model folder `student.folder`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForQuestionAnswering, PretrainedConfig, PreTrainedModel

from tinyroberta_es.config import STUDENT_PRESETS as PRESETS
from tinyroberta_es.config import StudentConfig
from tinyroberta_es.distill.mapping import uniform_layers
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

# StudentConfig field -> Hugging Face config attribute.
SIZE_FIELDS = {
    "layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
}

# Model types that share an architecture and tokenizer conventions (RoBERTa's position ids start after pad).
_FAMILIES = {"xlm-roberta": "roberta", "camembert": "roberta", "roberta": "roberta"}


def student_config(teacher_config: PretrainedConfig, spec: StudentConfig) -> PretrainedConfig:
    """The student's config: the teacher's with `spec.preset` then the explicit sizes applied.

    With `spec.folder`, the folder's config instead, checked against the teacher (model family, and the
    vocabulary size unless `spec.trim_vocab` will change it). Every problem is collected and reported in one
    `UserError` that names the option.
    """
    if spec.folder:
        config = _folder_config(teacher_config, spec)
    else:
        config = copy.deepcopy(teacher_config)
        config.architectures = None
        for key, value in PRESETS[spec.preset].items() if spec.preset else ():
            setattr(config, key, value)
        for name, key in SIZE_FIELDS.items():
            if getattr(spec, name) is not None:
                setattr(config, key, getattr(spec, name))
    problems = []
    hidden, heads = config.hidden_size, config.num_attention_heads
    if hidden % heads:
        problems.append(
            f"student.heads={heads} does not divide student.hidden_size={hidden}: pick heads so that "
            f"hidden_size / heads is a whole head size (e.g. {_divisors_near(hidden, heads)})"
        )
    if spec.init == "teacher-layers":
        if config.num_hidden_layers > teacher_config.num_hidden_layers:
            problems.append(
                f"student.layers={config.num_hidden_layers} is more than the teacher's "
                f"{teacher_config.num_hidden_layers} layers: init 'teacher-layers' copies one teacher layer "
                "per student layer; use fewer layers or init 'random'"
            )
        for name, key in SIZE_FIELDS.items():
            value, teacher_value = getattr(config, key), getattr(teacher_config, key)
            if name != "layers" and value != teacher_value:
                problems.append(
                    f"student.{name}={value} differs from the teacher's {teacher_value}: "
                    "init 'teacher-layers' copies the teacher's weights; "
                    f"leave student.{name} unset or use init 'random'"
                )
    if problems:
        raise UserError("; ".join(problems))
    return config


def _folder_config(teacher_config: PretrainedConfig, spec: StudentConfig) -> PretrainedConfig:
    """The config of `spec.folder`, checked for compatibility with the teacher."""
    clashing = [f"student.{name}" for name in ("preset", *SIZE_FIELDS) if getattr(spec, name) is not None]
    if clashing:
        raise UserError(
            f"student.folder={spec.folder!r} gives the student's sizes, but {', '.join(clashing)} "
            "is also set: set it to null, or leave student.folder empty"
        )
    try:
        config = AutoConfig.from_pretrained(spec.folder)
    except (OSError, ValueError) as err:
        raise UserError(
            f"student.folder={spec.folder!r}: cannot read a model config there ({_one_line(err)}); "
            "pass a Hugging Face model folder with a config.json"
        ) from None
    problems = []
    family, teacher_family = _family(config.model_type), _family(teacher_config.model_type)
    if family != teacher_family:
        problems.append(f"model type {config.model_type!r} vs the teacher's {teacher_config.model_type!r}")
    if not spec.trim_vocab and config.vocab_size != teacher_config.vocab_size:
        problems.append(f"vocabulary of {config.vocab_size:,} vs the teacher's {teacher_config.vocab_size:,}")
    if problems:
        raise UserError(
            f"incompatible teacher and student: student.folder={spec.folder!r} has {' and '.join(problems)}; "
            "use a student folder with the teacher's tokenizer or set student.trim_vocab"
        )
    return config


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


def _family(model_type: str) -> str:
    return _FAMILIES.get(model_type, model_type)


def _divisors_near(hidden: int, heads: int) -> str:
    """Head counts that divide `hidden`, nearest to `heads` first: a hint for the error message."""
    divisors = sorted(
        (d for d in range(1, min(hidden, 64) + 1) if hidden % d == 0), key=lambda d: abs(d - heads)
    )
    return " or ".join(str(d) for d in sorted(divisors[:2]))


def build_student(
    teacher: PreTrainedModel,
    spec: StudentConfig,
    *,
    teacher_layers: list[int] | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A `*ForQuestionAnswering` student for `teacher`, initialised as `spec.init` says.

    `teacher_layers` (1-indexed, one per student layer) chooses the copied layers for init
    ``teacher-layers``; the default is `uniform_layers`. `seed` fixes every randomly initialised weight
    without touching the caller's random state. The model is returned in training mode.
    """
    config = student_config(teacher.config, spec)
    with torch.random.fork_rng(devices=[]):  # seed locally: leave the caller's random state alone
        torch.manual_seed(seed)
        if spec.init == "pretrained":
            model = _load_pretrained(spec.folder)
        else:
            model = AutoModelForQuestionAnswering.from_config(config)
    if spec.init == "teacher-layers":
        _copy_teacher_layers(teacher, model, teacher_layers)
    elif teacher_layers is not None:
        raise UserError(f"teacher_layers={teacher_layers} is only used with student.init 'teacher-layers'")
    model.train()
    log.info(
        "student %s (%s init): %d layers x %d, %d heads, ffn %d, vocabulary %s: %s parameters (teacher %s)",
        type(model).__name__,
        spec.init,
        model.config.num_hidden_layers,
        model.config.hidden_size,
        model.config.num_attention_heads,
        model.config.intermediate_size,
        f"{model.config.vocab_size:,}",
        f"{count_parameters(model):,}",
        f"{count_parameters(teacher):,}",
    )
    return model


def _load_pretrained(folder: str) -> PreTrainedModel:
    try:
        return AutoModelForQuestionAnswering.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise UserError(
            f"student.folder={folder!r}: cannot load a model there ({_one_line(err)}); "
            "pass a Hugging Face model folder with config.json and weights"
        ) from None


def _copy_teacher_layers(
    teacher: PreTrainedModel, student: PreTrainedModel, layers: list[int] | None
) -> None:
    """Copy embeddings, the chosen encoder layers and the QA head from `teacher` into `student`."""
    t_base, s_base = _encoder_parts(teacher), _encoder_parts(student)
    n_teacher, n_student = len(t_base.encoder.layer), len(s_base.encoder.layer)
    if layers is None:
        layers = uniform_layers(n_teacher, n_student)
        if n_teacher % n_student:
            log.info(
                "%d teacher layers are not a multiple of %d student layers: spread evenly, copying %s",
                n_teacher,
                n_student,
                layers,
            )
    else:
        layers = list(layers)
        bad = [t for t in layers if not isinstance(t, int) or not 1 <= t <= n_teacher]
        if len(layers) != n_student or bad:
            raise UserError(
                f"teacher_layers={layers}: give {n_student} teacher layers (one per student layer), each "
                f"between 1 and {n_teacher}"
            )
    s_base.embeddings.load_state_dict(t_base.embeddings.state_dict())  # word, position, type, LayerNorm
    for m, t in enumerate(layers):
        s_base.encoder.layer[m].load_state_dict(t_base.encoder.layer[t - 1].state_dict())
    head = getattr(teacher, "qa_outputs", None)
    if isinstance(head, nn.Module):
        student.qa_outputs.load_state_dict(head.state_dict())
        what = "and the QA head"
    else:
        what = "(the teacher has no QA head: the student's is random)"
    log.info("copied the teacher's embeddings, layers %s (student layers 1..%d) %s", layers, n_student, what)


def _encoder_parts(model: PreTrainedModel) -> Any:
    """The BERT-like base model (`embeddings` and `encoder.layer`), or a UserError for other shapes."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(getattr(base, "embeddings", None), nn.Module) or not isinstance(layers, nn.ModuleList):
        raise UserError(
            f"student.init 'teacher-layers' supports BERT-like encoders (BERT, RoBERTa, XLM-R), not "
            f"{type(model).__name__}; use init 'random'"
        )
    return base


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters())
