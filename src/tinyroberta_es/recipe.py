"""A recipe: everything `tinyroberta-es run` does, from a teacher and a dataset to a documented student.

One YAML file maps onto `Recipe`. The training sections are the configs of `finetune` and `distill`
(`tinyroberta_es.config`); the sections here say how the run writes its training set (`split`), builds
its starting encoder (`build`, for the smoke recipe), which models it evaluates and benchmarks on which
backends (`backends`: any key of `runtimes.CHOICES`, `auto` included), how it exports them (`export`: ONNX
for an onnx* backend, OpenVINO for an openvino* one, both for `auto`; int8 for an int8 backend or `auto`)
and what their model cards say. `load_recipe` checks every key and names the offending one.

A student learns from the run's teacher, or from another student of the recipe (a teaching assistant:
12 -> 6 -> 3 layers): its `teacher` (and its `student.folder`, for init folder-layers or pretrained) may
name another student, by name or output folder. `Recipe.reads` says which students a student reads;
`with_student_folders` replaces those names by the students' output folders.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from tinyroberta_es.config import (
    DistillConfig,
    FinetuneConfig,
    check_choice,
    check_positive,
    from_dict,
)
from tinyroberta_es.errors import UserError
from tinyroberta_es.runtimes import CHOICES


@dataclass
class SplitSection:
    """A training set written without the paragraphs of held-out sets (`tinyroberta-es split`): the run's
    first stage, so that a recipe trained on part of a dev set needs no separate command."""

    train: str = ""  # dataset name, path or URL
    held_out: list[str] = field(default_factory=list)  # evaluation sets kept out (matched by question id)
    output: str = ""  # SQuAD JSON (.json or .json.gz) that finetune.data.train reads
    bad_spans: str = "repair"  # training answers whose answer_start misses their text: repair, drop, keep

    def __post_init__(self) -> None:
        from tinyroberta_es.data.loading import BAD_SPANS

        if not self.train:
            raise UserError("split.train is empty: name the training set to split, e.g. squad_es_v1.1_dev")
        if not self.held_out:
            raise UserError("split.held_out is empty: name the evaluation sets to keep out, e.g. [xquad_es]")
        if not self.output.endswith((".json", ".json.gz")):
            raise UserError(f"split.output {self.output!r}: must be a .json or .json.gz file to write")
        check_choice("split.bad_spans", self.bad_spans, BAD_SPANS)


@dataclass
class BuildSection:
    """A tiny randomly initialised encoder and its tokenizer, built offline (the sample recipe's teacher)."""

    output: str = "runs/sample/encoder"  # model folder; `finetune.model` points here
    tokenizer: str = "bpe"  # bpe (RoBERTa-like, as the paper's teacher), wordpiece or unigram
    vocab_size: int = 2000  # trained on the built-in Spanish sentences and the embedded sample
    layers: int = 4
    hidden_size: int = 128
    heads: int = 4
    intermediate_size: int = 512
    max_length: int = 512  # position embeddings
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("build.tokenizer", self.tokenizer, ("bpe", "wordpiece", "unigram"))
        for name in ("vocab_size", "layers", "hidden_size", "heads", "intermediate_size", "max_length"):
            check_positive(f"build.{name}", getattr(self, name))


@dataclass
class EvaluateSection:
    """Which held-out sets every model answers; scored under `mlqa-es` (primary) and `squad`."""

    datasets: list[str] = field(default_factory=lambda: ["squad_es_v1.1_dev"])
    limit: int | None = None  # first N questions of each set (smoke runs)
    max_length: int = 384
    doc_stride: int = 128
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not self.datasets:
            raise UserError("evaluate.datasets is empty: name at least one dev set, e.g. xquad_es")
        for name in ("limit", "max_length", "batch_size"):
            check_positive(f"evaluate.{name}", getattr(self, name))


@dataclass
class ExportSection:
    """How models become ONNX and OpenVINO files (`tinyroberta-es export`), beside each model in `onnx/`.

    The formats follow `backends`: ONNX for an onnx* backend, OpenVINO for an openvino* one, both for `auto`
    (which needs the openvino extra); int8 files when an int8 backend or `auto` is listed.
    """

    quantize: str | None = "int8"  # int8 or null
    per_channel: bool = True  # per-tensor int8 lost 4.9 F1 on a fine-tuned me5-small, per-channel 0.5
    max_f1_drop: float = 1.0  # a variant that loses more F1 on `dev` is kept as *.rejected.*, unused
    min_identical: float | None = None  # share of answers equal to fp32's; None: per precision (export's)
    dev: str | None = None  # parity set; default: the first evaluation set
    dev_limit: int | None = 300
    calibration: str | None = None  # OpenVINO int8 calibration set; default: `dev`, questions not checked
    calibration_size: int = 128  # calibration windows (ExportConfig's default)
    int8_method: str = "auto"  # OpenVINO int8: plain, accuracy-aware, or auto (the second when plain misses)
    teacher: bool = False  # export the teacher too: it then runs on its own best backend (best against best)

    def __post_init__(self) -> None:
        from tinyroberta_es.onnx_export import INT8_METHODS

        if self.quantize is not None:
            check_choice("export.quantize", self.quantize, ("int8",))
        check_positive("export.max_f1_drop", self.max_f1_drop, zero_ok=True)
        if self.min_identical is not None and not 0 <= self.min_identical <= 1:
            raise UserError(
                f"export.min_identical {self.min_identical} must be a share from 0 to 1, e.g. 0.9"
            )
        check_positive("export.dev_limit", self.dev_limit)
        check_positive("export.calibration_size", self.calibration_size)
        check_choice("export.int8_method", self.int8_method, INT8_METHODS)


@dataclass
class BenchSection:
    """How every model is timed on every backend (`tinyroberta-es bench`)."""

    dataset: str = "xquad_es"  # real questions for the end-to-end latency
    questions: int = 100
    batch_size: int = 32
    seq_len: int = 384
    threads: int | None = None
    repeats: int = 20
    budget_s: float = 20.0  # per timed series, once it has 3 calls

    def __post_init__(self) -> None:
        for name in ("questions", "batch_size", "seq_len", "threads", "repeats", "budget_s"):
            check_positive(f"bench.{name}", getattr(self, name))


@dataclass
class CardSection:
    """What the model cards say beyond what the run measured."""

    license: str = "apache-2.0"
    teacher_license: str | None = None  # shown beside the teacher's name when it differs
    datasets: list[str] = field(default_factory=list)  # Hub ids for the metadata, e.g. ccasimiro/squad_es
    repo_id: str | None = None  # where `tinyroberta-es push` uploads a student by default (user/name)
    limitations: list[str] = field(default_factory=list)  # added to the card's generic limitations


@dataclass
class Recipe:
    """A recipe file: the teacher (built, fine-tuned or given), its students, and what the run measures."""

    name: str = "run"
    output: str = "runs/run"  # stage records, evaluation, benchmark, report
    split: SplitSection | None = None
    build: BuildSection | None = None
    teacher: str | None = None  # an already fine-tuned QA teacher (folder or Hub id), instead of `finetune`
    finetune: FinetuneConfig | None = None
    distill: list[DistillConfig] = field(default_factory=list)
    backends: list[str] = field(default_factory=lambda: ["pytorch", "onnx", "onnx-int8"])  # runtimes.CHOICES
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    export: ExportSection = field(default_factory=ExportSection)
    bench: BenchSection = field(default_factory=BenchSection)
    card: CardSection = field(default_factory=CardSection)

    def __post_init__(self) -> None:
        for backend in self.backends:
            check_choice("backends entry", backend, CHOICES)
        names = [d.name for d in self.distill]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"distill names must differ; {', '.join(twice)} appears more than once")

    @property
    def teacher_folder(self) -> str | None:
        """The teacher every student learns from: `finetune.output`, else `teacher`."""
        return self.finetune.output if self.finetune is not None else self.teacher

    @property
    def local_teacher(self) -> str | None:
        """The folder students read the teacher from: a given Hub teacher is saved as `<output>/teacher`."""
        given = self.teacher
        if given is None or Path(given).expanduser().is_dir():
            return self.teacher_folder
        return str(Path(self.output) / "teacher")

    def models(self) -> dict[str, str]:
        """Every model of the run by name, the teacher first: name -> folder (as the students read it)."""
        return {"teacher": self.local_teacher} | {s.name: s.output for s in self.distill}

    def student_named(self, ref: str | None) -> DistillConfig | None:
        """The student that `ref` names, by its name or its output folder; None when it names none."""
        return next((s for s in self.distill if ref is not None and ref in (s.name, s.output)), None)

    def reads(self, student: DistillConfig) -> list[str]:
        """The other students whose models `student` reads (as its teacher or its student.folder), by name."""
        found = [self.student_named(ref) for ref in (student.teacher, student.student.folder)]
        return list(dict.fromkeys(s.name for s in found if s is not None and s.name != student.name))

    def chain(self, name: str) -> list[str]:
        """Who taught whom, from the student `name` back to the run's teacher: [s-3l, s-6l, "teacher"]."""
        names = [name]
        while (student := self.student_named(names[-1])) is not None:
            teacher = self.student_named(student.teacher)
            if teacher is None or teacher.name in names:  # the run's teacher (a cycle is refused earlier)
                break
            names.append(teacher.name)
        return [*names, "teacher"]

    def with_student_folders(self) -> Recipe:
        """This recipe with each `teacher` and `student.folder` that names another student replaced by that
        student's output folder, which its distill stage reads."""

        def folder(ref: str | None, reader: str) -> str | None:
            named = self.student_named(ref)
            return named.output if named is not None and named.name != reader else ref

        students = [
            dataclasses.replace(
                s,
                teacher=folder(s.teacher, s.name),
                student=dataclasses.replace(s.student, folder=folder(s.student.folder, s.name)),
            )
            for s in self.distill
        ]
        return dataclasses.replace(self, distill=students)


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe YAML file into a `Recipe`, checking every key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist; pass a YAML file such as recipes/sample.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path} is not valid YAML: {' '.join(str(err).split())}") from None
    try:
        recipe = from_dict(Recipe, data or {}, where=path.name)
    except UserError as err:
        raise UserError(f"recipe {path}: {err}") from None
    return recipe.with_student_folders()  # `distill --config R --name S` reads a chained student's teacher
