"""Typed run configurations: the `--help` text, the YAML schema and the metadata saved beside every model.

A recipe YAML file (`tinyroberta_es.recipe.Recipe`) has a `finetune` section (a `FinetuneConfig`) and a
`distill` list (one `DistillConfig` per student). `from_dict` maps plain data onto the dataclasses,
checking every key and type and naming the offending one; `to_dict` gives the resolved configuration back
for `config.json`-style records (`run_config.json` beside each model: `config.json` is the model's own).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tinyroberta_es.errors import UserError

T = TypeVar("T")

PRECISIONS = ("fp32", "bf16", "fp16")
INITS = ("random", "teacher-layers", "pretrained", "folder-layers")
ATTENTION_LOSSES = ("mse", "kl")
LAYER_MAPS = ("uniform", "last")
RELATION_LAYERS = ("last", "upper-middle")
NORMALIZATIONS = ("none", "initial")
SCHEDULES = ("one-stage", "two-stage")
STUDENT_PRESETS: dict[str, dict[str, int]] = {
    # The paper's SpanishTinyRoBERTa: head dim 32, so its 16 attention maps match a 16-head teacher's.
    "paper": {
        "num_hidden_layers": 6,
        "hidden_size": 512,
        "num_attention_heads": 16,
        "intermediate_size": 3072,
    },
}


def check_choice(where: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a UserError naming `where` when `value` is not one of `choices`."""
    if value not in choices:
        raise UserError(f"unknown {where} {value!r}: choose one of {', '.join(choices)}")


def check_positive(where: str, value: float | None, *, zero_ok: bool = False) -> None:
    """Raise a UserError naming `where` when `value` is negative (or zero, unless `zero_ok`)."""
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise UserError(f"{where} is {value}; it must be {'zero or more' if zero_ok else 'positive'}")


@dataclass
class DataConfig:
    """Which questions to train and evaluate on, and how they become windows."""

    train: str = "squad_es_v1.1_train"  # dataset name, path or URL
    dev: str | None = "squad_es_v1.1_dev"  # evaluated during training; None: no periodic evaluation
    exclude: list[str] = field(default_factory=list)  # held-out sets whose paragraphs leave `train`
    train_limit: int | None = None  # first N training questions (smoke runs)
    dev_limit: int | None = None  # first N dev questions for periodic evaluation
    max_length: int = 384  # tokens per window
    doc_stride: int = 128  # tokens shared by consecutive windows
    max_query_length: int = 64
    bad_spans: str = "repair"  # answer starts that miss their text: repair, drop

    def __post_init__(self) -> None:
        check_choice("data.bad_spans", self.bad_spans, ("repair", "drop"))
        for name in ("train_limit", "dev_limit", "max_length", "doc_stride", "max_query_length"):
            check_positive(f"data.{name}", getattr(self, name))


@dataclass
class TrainConfig:
    """The training loop shared by `finetune` and `distill`."""

    epochs: float = 2.0
    batch_size: int = 32  # examples per optimizer step on each process, after accumulation
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    warmup_ratio: float = 0.1  # share of the steps with a linear warmup, then linear decay to 0
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    precision: str = "bf16"  # fp32, bf16 (CPU and GPU autocast) or fp16 (GPU autocast + loss scaling)
    seed: int = 0
    eval_every: int = 0  # optimizer steps between evaluations; 0: at the end of each epoch
    log_every: int = 20  # optimizer steps between log lines
    checkpoint_every: int = (
        0  # optimizer steps between resume checkpoints; 0: at each evaluation and epoch end
    )
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    freeze_word_embeddings: bool = False  # saves most of the optimizer's work for 250k-piece vocabularies
    # the embeddings and the bottom N encoder layers stay as loaded: no backward pass below layer N+1
    # (12-layer me5-small, N=6: a step 1.3x faster), for short fine-tuning budgets such as the quickstart's
    freeze_layers: int = 0
    metric: str = "f1"  # dev metric that picks the best checkpoint
    tensorboard: bool = True
    device: str = "auto"  # auto, cpu, cuda, cuda:N

    def __post_init__(self) -> None:
        check_choice("train.precision", self.precision, PRECISIONS)
        for name in ("epochs", "batch_size", "grad_accum", "lr", "log_every", "max_steps"):
            check_positive(f"train.{name}", getattr(self, name))
        check_positive("train.freeze_layers", self.freeze_layers, zero_ok=True)
        for name in ("weight_decay", "warmup_ratio", "max_grad_norm", "eval_every", "checkpoint_every"):
            check_positive(f"train.{name}", getattr(self, name), zero_ok=True)
        if self.warmup_ratio > 1:
            raise UserError(f"train.warmup_ratio is {self.warmup_ratio}; it is a share of the steps (0 to 1)")


@dataclass
class FinetuneConfig:
    """`tinyroberta-es finetune`: an encoder (Hub id or folder) into a QA model folder."""

    model: str = "PlanTL-GOB-ES/roberta-large-bne"
    output: str = "runs/teacher"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, lr=3e-5))


@dataclass
class StudentConfig:
    """The student: the teacher's config with overrides, a preset, or a model folder."""

    preset: str | None = None  # "paper": 6 layers, hidden 512, 16 heads, ffn 3072, the teacher's vocabulary
    layers: int | None = None
    hidden_size: int | None = None
    heads: int | None = None
    intermediate_size: int | None = None
    folder: str | None = (
        None  # a model folder whose config (and, with init=pretrained, weights) is the student
    )
    # random (the paper), teacher-layers (DistilBERT-style), pretrained (from `folder`), folder-layers (the
    # embeddings, chosen layers and QA head of the model in `folder`, e.g. a deeper student of this teacher)
    init: str = "random"
    # teacher-layers/folder-layers: the source layers copied into student layers 1..S: uniform (k*m as in
    # TinyBERT), bottom (1..S), every-K (K, 2K, ..., S*K) or an increasing list of S layers (1-indexed)
    init_layers: str | list[int] = "uniform"
    trim_vocab: list[str] = field(default_factory=list)  # keep only pieces these datasets/text files use

    def __post_init__(self) -> None:
        check_choice("student.init", self.init, INITS)
        if self.preset is not None:
            check_choice("student.preset", self.preset, tuple(STUDENT_PRESETS))
        for name in ("layers", "hidden_size", "heads", "intermediate_size"):
            check_positive(f"student.{name}", getattr(self, name))
        if self.init in ("pretrained", "folder-layers") and not self.folder:
            raise UserError(
                f"student.init is {self.init!r} but student.folder is not set: name the model folder"
            )
        layers = self.init_layers
        if isinstance(layers, str):
            k = layers.removeprefix("every-")
            ok = layers in ("uniform", "bottom") or (k != layers and k.isdecimal() and int(k) > 0)
        else:
            ok = bool(layers) and min(layers) >= 1 and layers == sorted(set(layers))
        if not ok:
            raise UserError(
                f"student.init_layers={layers!r} is not a choice of layers: use uniform, bottom, every-K "
                "(e.g. every-2) or an increasing list of 1-indexed layers such as [2, 4, 6]"
            )
        if layers != "uniform" and self.init not in ("teacher-layers", "folder-layers"):
            raise UserError(
                f"student.init_layers={layers!r} only applies to init teacher-layers or folder-layers, but "
                f"student.init is {self.init!r}: set student.init to one of them or leave init_layers unset"
            )


@dataclass
class LossConfig:
    """Weights of the distillation losses and how student layers meet teacher layers."""

    kd: float = 1.0  # KL(teacher || student) on start and end logits, at `temperature`, times T^2
    temperature: float = 1.0
    ce: float = 1.0  # cross-entropy on the gold start and end positions (original windows only)
    hidden: float = 1.0  # MSE of projected student hidden states against the teacher's (embeddings included)
    attention: float = 1.0
    attention_loss: str = "mse"  # mse on pre-softmax scores (TinyBERT) or kl between attention distributions
    layer_map: str | list[int] = (
        "uniform"  # uniform g(m) = k*m, last, or the teacher layer of each student layer
    )
    # MiniLM v2: KL between query-query, key-key and value-value relations of one teacher layer and the
    # student's last layer, over `relation_heads` relation heads (works across widths and head counts)
    relations: float = 0.0
    relation_heads: int | None = None  # None: the student's attention heads; must divide both widths
    relation_layer: str | int = "last"  # teacher layer: last, upper-middle (L - L // 8: 24 -> 21) or 1..L
    # none: the weights multiply the raw terms; initial: each intermediate term (hidden, attention,
    # relations) is first divided by its value on the first training batch, so every one starts at 1
    normalize: str = "none"

    def __post_init__(self) -> None:
        for name in ("kd", "ce", "hidden", "attention", "relations"):
            check_positive(f"loss.{name}", getattr(self, name), zero_ok=True)
        check_positive("loss.temperature", self.temperature)
        check_positive("loss.relation_heads", self.relation_heads)
        check_choice("loss.attention_loss", self.attention_loss, ATTENTION_LOSSES)
        check_choice("loss.normalize", self.normalize, NORMALIZATIONS)
        if isinstance(self.layer_map, str):
            check_choice("loss.layer_map", self.layer_map, LAYER_MAPS)
        if isinstance(self.relation_layer, str):
            check_choice("loss.relation_layer", self.relation_layer, RELATION_LAYERS)
        else:
            check_positive("loss.relation_layer", self.relation_layer)
        unused = [
            f"loss.{name} is set but loss.relations is 0"
            for name, default in (("relation_heads", None), ("relation_layer", "last"))
            if self.relations == 0 and getattr(self, name) != default
        ]
        if self.normalize != "none" and self.intermediate == 0:
            unused.append("loss.normalize is set but loss.hidden, loss.attention and loss.relations are 0")
        if unused:  # a setting no loss reads would be recorded as if applied
            raise UserError(
                f"{'; '.join(unused)}: no loss uses it; set that loss above 0 or leave the setting at default"
            )

    @property
    def intermediate(self) -> float:
        """The total weight of the intermediate-layer terms (0: none of them runs)."""
        return self.hidden + self.attention + self.relations

    @property
    def prediction(self) -> float:
        """The total weight of the prediction-layer terms (0: none of them runs)."""
        return self.kd + self.ce


@dataclass
class StageConfig:
    """TinyBERT's first stage (intermediate layers) in a two-stage schedule: its own length and optimiser."""

    epochs: float = 0.0  # 0: one-stage schedule only
    lr: float | None = None  # None: train.lr
    warmup_ratio: float | None = None  # None: train.warmup_ratio

    def __post_init__(self) -> None:
        check_positive("intermediate.epochs", self.epochs, zero_ok=True)
        check_positive("intermediate.lr", self.lr)
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio <= 1:
            raise UserError(f"intermediate.warmup_ratio is {self.warmup_ratio}; it is a share (0 to 1)")


@dataclass
class AugmentConfig:
    """TinyBERT-style word replacement that keeps the answer span; the teacher labels the new examples."""

    copies: int = 0  # new examples per training example; 0 disables augmentation
    replace_prob: float = 0.4
    candidates: int = 15
    corpus: list[str] = field(default_factory=list)  # text files/datasets for the replacement vocabulary
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("augment.copies", self.copies, zero_ok=True)
        if not 0 <= self.replace_prob <= 1:
            raise UserError(f"augment.replace_prob is {self.replace_prob}; it must be between 0 and 1")
        check_positive("augment.candidates", self.candidates)


@dataclass
class DistillConfig:
    """`tinyroberta-es distill`: a teacher QA model and a student specification into a student QA model."""

    name: str = "student"
    teacher: str = "runs/teacher"
    output: str = "runs/student"
    student: StudentConfig = field(default_factory=lambda: StudentConfig(preset="paper"))
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: str = (
        "one-stage"  # one-stage (all losses together) or two-stage (intermediate, then prediction)
    )
    # two-stage: the first stage (intermediate layers; its epochs, lr and warmup); `train` is the second
    intermediate: StageConfig = field(default_factory=StageConfig)
    gradient_shares_every: int = 100  # optimizer steps between measures of each term's share of the gradient
    cache_teacher_logits: bool = True  # compute the teacher's start/end logits once and memory-map them
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, lr=3e-5, warmup_ratio=0.2))

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, SCHEDULES)
        check_positive("gradient_shares_every", self.gradient_shares_every, zero_ok=True)
        loss = self.loss
        if loss.intermediate + loss.prediction == 0:
            raise UserError(
                "every loss weight is 0 (loss.kd, loss.ce, loss.hidden, loss.attention, loss.relations): "
                "set at least one above 0, e.g. loss.kd=1"
            )
        if self.schedule == "two-stage":
            if not self.intermediate.epochs:
                raise UserError(
                    "schedule is 'two-stage' but intermediate.epochs is 0: set the first stage's epochs"
                )
            if loss.intermediate == 0:
                raise UserError(
                    "schedule is 'two-stage' but loss.hidden, loss.attention and loss.relations are 0: the "
                    "first stage would have no loss; set one above 0 or use schedule one-stage"
                )
            if loss.prediction == 0:
                raise UserError(
                    "schedule is 'two-stage' but loss.kd and loss.ce are 0: the second stage would have no "
                    "loss; set loss.kd above 0 or use schedule one-stage"
                )
        elif self.intermediate != StageConfig():
            raise UserError(
                "intermediate.* sets the first stage of schedule two-stage, but schedule is one-stage: "
                "set schedule=two-stage or remove the intermediate section"
            )


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from plain data, checking every key and value; errors name `where.key`."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of keys to values, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise UserError(f"unknown key {where}.{unknown[0]}: choose one of {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0])
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list, got {_kind(value)} {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e-5 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"{where} must be {hint.__name__}, got {_kind(value)} {value!r}")
    return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def to_dict(config: Any) -> dict[str, Any]:
    """The configuration as plain data (for JSON and YAML)."""
    return dataclasses.asdict(config)


def to_yaml(data: Any) -> str:
    """Plain data as block YAML, keys in their order, non-ASCII kept (resolved recipes, model cards)."""
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def add_set_flag(parser: Any, example: str) -> None:
    """The repeatable `--set KEY=VALUE` flag of the commands that take a configuration (`args.overrides`)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a setting, e.g. {example} (repeatable)",
    )


def apply_overrides(config: T, overrides: list[str]) -> T:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a dataclass config; returns a new one."""
    import yaml

    data = to_dict(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r} must look like key=value, e.g. train.lr=3e-5")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = _child(node, part, item)
            if not isinstance(node, (dict, list)):
                raise UserError(f"--set {item!r}: {part!r} is not a section of this configuration")
        last = parts[-1]
        if isinstance(node, list):
            _child(node, last, item)  # checks the index
            node[int(last)] = yaml.safe_load(raw)
            continue
        if last not in node:
            raise UserError(f"--set {item!r}: unknown key {last!r}; choose one of {', '.join(node)}")
        node[last] = yaml.safe_load(raw)
    return from_dict(type(config), data, where="--set")


def _child(node: dict | list, part: str, item: str) -> Any:
    """`node[part]`: a key of a section, or an index (`distill.0.train.lr`) of a list."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise UserError(f"--set {item!r}: {part!r} is not an index of a list of {len(node)} entries")
        return node[int(part)]
    if part not in node:
        raise UserError(f"--set {item!r}: {part!r} is not a section of this configuration")
    return node[part]
