"""The student: its config (the teacher's, with a preset and overrides, or a folder's) and its first weights.

`student_config` derives the student's Hugging Face config and checks it against the teacher (and the
model it copies layers from) in one place; `build_student` makes the `*ForQuestionAnswering` model and
initialises it one of four ways:

- ``random``: fresh weights from the config, as the paper did;
- ``teacher-layers``: DistilBERT-style, the teacher's embeddings, a subset of its transformer layers and its
  QA head, so the student starts as a truncated teacher (same width, heads and ffn required);
- ``folder-layers``: the same, copied from the model in `student.folder` instead of the teacher (e.g. a
  6-layer student of the same teacher, for a 3-layer one): same width, heads and ffn as the student, and the
  teacher's vocabulary (the student is trimmed later, from the teacher's vocabulary);
- ``pretrained``: the weights of the model folder `student.folder`.

`student.init_layers` chooses the copied layers (1-indexed, one per student layer; `copied_layers`):
``uniform`` (TinyBERT's g(m) = k*m: 12 -> 6 copies 2, 4, ..., 12), ``bottom`` (1..S), ``every-K`` (K, 2K,
..., S*K) or an explicit increasing list.
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

LAYER_INITS = ("teacher-layers", "folder-layers")  # the inits that copy layers of a source model

# Model types that share an architecture and tokenizer conventions (RoBERTa's position ids start after pad).
_FAMILIES = {"xlm-roberta": "roberta", "camembert": "roberta", "roberta": "roberta"}


def student_config(teacher_config: PretrainedConfig, spec: StudentConfig) -> PretrainedConfig:
    """The student's config: the teacher's with `spec.preset` then the explicit sizes applied.

    With `spec.folder` (and an init other than ``folder-layers``, whose folder is only the source of weights),
    the folder's config instead, checked against the teacher (model family, and the vocabulary size unless
    `spec.trim_vocab` will change it). Every problem is collected and reported in one `UserError` that names
    the option.
    """
    if spec.folder and spec.init != "folder-layers":
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
    if spec.init in LAYER_INITS:
        problems += _copy_problems(teacher_config, config, spec)
    if problems:
        raise UserError("; ".join(problems))
    return config


def _copy_problems(
    teacher_config: PretrainedConfig, config: PretrainedConfig, spec: StudentConfig
) -> list[str]:
    """What stops init teacher-layers / folder-layers: the source model's shape against the student's."""
    problems = []
    source = teacher_config if spec.init == "teacher-layers" else _read_config(spec.folder)
    for name, key in SIZE_FIELDS.items():
        value, wanted = getattr(config, key), getattr(source, key)
        if name == "layers" or value == wanted:
            continue
        if spec.init == "teacher-layers":
            problems.append(
                f"student.{name}={value} differs from the teacher's {wanted}: init 'teacher-layers' copies "
                f"the teacher's weights; leave student.{name} unset or use init 'random'"
            )
        else:
            problems.append(
                f"student.{name}={value} differs from {wanted} in student.folder {spec.folder!r}: init "
                f"'folder-layers' copies its weights; set student.{name}={wanted} or use init 'random'"
            )
    if spec.init == "folder-layers":
        differ = [
            f"{key} {getattr(source, key, None)} (the teacher's {getattr(teacher_config, key, None)})"
            for key in ("vocab_size", "max_position_embeddings", "type_vocab_size")
            if getattr(source, key, None) != getattr(teacher_config, key, None)
        ]
        if _family(source.model_type) != _family(teacher_config.model_type):
            types = f"model type {source.model_type!r} (the teacher's {teacher_config.model_type!r})"
            differ.insert(0, types)
        if differ:
            problems.append(
                f"student.folder {spec.folder!r} has {' and '.join(differ)}: init 'folder-layers' copies its "
                "embeddings into a student on the teacher's vocabulary (trimmed later); use an untrimmed "
                "student of this teacher, or init 'teacher-layers'"
            )
    try:
        copied_layers(spec, source.num_hidden_layers, config.num_hidden_layers)
    except UserError as err:
        problems.append(str(err))
    return problems


def copied_layers(spec: StudentConfig, source_layers: int, student_layers: int) -> list[int]:
    """The source layers (1-indexed) that `spec.init` copies into student layers 1..S, as `spec.init_layers`
    says; a one-line UserError, with a fix, when they do not fit in the source's `source_layers`."""
    source = "teacher" if spec.init == "teacher-layers" else "student.folder model"
    choice, n = spec.init_layers, student_layers
    if n > source_layers:
        raise UserError(
            f"student.layers={n} is more than the {source}'s {source_layers} layers: init {spec.init!r} "
            f"copies one {source} layer per student layer; use at most {source_layers} layers or init "
            "'random'"
        )
    if choice == "uniform":
        return uniform_layers(source_layers, n)
    if choice == "bottom":
        return list(range(1, n + 1))
    if isinstance(choice, str):  # every-K (the format was checked by StudentConfig)
        k = int(choice.removeprefix("every-"))
        if n * k > source_layers:
            raise UserError(
                f"student.init_layers={choice!r} copies {source} layers {k}, {2 * k}, ..., {n * k} into {n} "
                f"student layers, but the {source} has {source_layers}: use every-{source_layers // n} or "
                "uniform, or fewer student layers"
            )
        return [k * m for m in range(1, n + 1)]
    if len(choice) != n or max(choice) > source_layers:
        raise UserError(
            f"student.init_layers={choice} does not fit: give {n} increasing {source} layers (one per "
            f"student layer), each between 1 and {source_layers}"
        )
    return list(choice)


def _folder_config(teacher_config: PretrainedConfig, spec: StudentConfig) -> PretrainedConfig:
    """The config of `spec.folder`, checked for compatibility with the teacher."""
    clashing = [f"student.{name}" for name in ("preset", *SIZE_FIELDS) if getattr(spec, name) is not None]
    if clashing:
        raise UserError(
            f"student.folder={spec.folder!r} gives the student's sizes, but {', '.join(clashing)} "
            "is also set: set it to null, or leave student.folder empty"
        )
    config = _read_config(spec.folder)
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


def _read_config(folder: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise UserError(
            f"student.folder={folder!r}: cannot read a model config there ({_one_line(err)}); "
            "pass a Hugging Face model folder with a config.json"
        ) from None


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


def build_student(teacher: PreTrainedModel, spec: StudentConfig, *, seed: int = 0) -> PreTrainedModel:
    """A `*ForQuestionAnswering` student for `teacher`, initialised as `spec.init` says.

    `seed` fixes every randomly initialised weight without touching the caller's random state. The model is
    returned in training mode.
    """
    config = student_config(teacher.config, spec)
    with torch.random.fork_rng(devices=[]):  # seed locally: leave the caller's random state alone
        torch.manual_seed(seed)
        if spec.init == "pretrained":
            model = _load_pretrained(spec.folder)
        else:
            model = AutoModelForQuestionAnswering.from_config(config)
    if spec.init == "teacher-layers":
        _copy_teacher_layers(teacher, model, spec, "the teacher")
    elif spec.init == "folder-layers":
        _copy_teacher_layers(_load_pretrained(spec.folder), model, spec, f"student.folder {spec.folder}")
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
    source: PreTrainedModel, student: PreTrainedModel, spec: StudentConfig, name: str
) -> None:
    """Copy embeddings, the encoder layers `spec.init_layers` chooses and the QA head from `source` (the
    teacher, or the model of `student.folder`, called `name` in the log) into `student`."""
    t_base, s_base = _encoder_parts(source), _encoder_parts(student)
    n_source, n_student = len(t_base.encoder.layer), len(s_base.encoder.layer)
    layers = copied_layers(spec, n_source, n_student)
    if spec.init_layers == "uniform" and n_source % n_student:
        log.info(
            "%d source layers are not a multiple of %d student layers: spread evenly, copying %s",
            n_source,
            n_student,
            layers,
        )
    s_base.embeddings.load_state_dict(t_base.embeddings.state_dict())  # word, position, type, LayerNorm
    for m, t in enumerate(layers):
        s_base.encoder.layer[m].load_state_dict(t_base.encoder.layer[t - 1].state_dict())
    head = getattr(source, "qa_outputs", None)
    if isinstance(head, nn.Module):
        student.qa_outputs.load_state_dict(head.state_dict())
        what = "and its QA head"
    else:
        what = "(it has no QA head: the student's is random)"
    log.info(
        "copied from %s (%d layers, init_layers %s): its embeddings, layers %s into student layers 1..%d %s",
        name,
        n_source,
        spec.init_layers,
        layers,
        n_student,
        what,
    )


def _encoder_parts(model: PreTrainedModel) -> Any:
    """The BERT-like base model (`embeddings` and `encoder.layer`), or a UserError for other shapes."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(getattr(base, "embeddings", None), nn.Module) or not isinstance(layers, nn.ModuleList):
        raise UserError(
            "student.init teacher-layers and folder-layers support BERT-like encoders (BERT, RoBERTa, "
            f"XLM-R), not {type(model).__name__}; use init 'random'"
        )
    return base


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters())
