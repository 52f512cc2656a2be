"""`distill(config)`: everything between a teacher folder and a student folder, as one function."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from tinyroberta_es import __version__, atomic
from tinyroberta_es.config import DistillConfig, TrainConfig, to_dict
from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where teacher logits are cached: `$TINYROBERTA_ES_CACHE/teacher_logits` (default under ~/.cache)."""
    root = Path(os.environ.get("TINYROBERTA_ES_CACHE", Path.home() / ".cache" / "tinyroberta_es"))
    return root.expanduser() / "teacher_logits"


def distill(config: DistillConfig) -> dict:
    """Distil `config.teacher` into a student saved at `config.output`; returns the final dev metrics.

    Under torchrun every process calls this: each computes its share of the teacher-logit cache, and rank 0
    alone writes `run_config.json` and `metrics.json`.
    """
    from tinyroberta_es.distill.mapping import layer_matches, make_projection, relation_match
    from tinyroberta_es.distill.module import DistillModule
    from tinyroberta_es.distill.student import build_student, count_parameters
    from tinyroberta_es.distributed import init_distributed
    from tinyroberta_es.model_folder import load_qa_model
    from tinyroberta_es.train import check_config, freeze, read_train_state, resolve_device, train
    from tinyroberta_es.training_data import dev_evaluator, load_training_examples, training_features

    out = Path(config.output).expanduser()
    done = read_train_state(out)
    if done is not None:
        print(f"{out} holds a finished run; student in {out} (use another output to train again)")
        return done.get("metrics") or {}
    check_config(config.train)
    device = resolve_device(config.train.device, config.train.precision)  # fail before any slow work
    rank, world_size = init_distributed(device)
    main = rank == 0
    teacher, teacher_tokenizer = load_qa_model(Path(config.teacher).expanduser())
    examples = load_training_examples(config.data)
    originals = len(examples)
    if config.augment.copies:
        examples = examples + _augment(config, teacher, teacher_tokenizer, examples)

    trim = None
    student_tokenizer = teacher_tokenizer
    if config.student.trim_vocab:
        from tinyroberta_es.distill.vocab import corpus_texts, plan_trim, trim_tokenizer

        texts = _texts(examples) + list(corpus_texts(config.student.trim_vocab))
        trim = plan_trim(teacher_tokenizer, texts)
        student_tokenizer = trim_tokenizer(teacher_tokenizer, trim)

    student = build_student(teacher, config.student, seed=config.train.seed)
    if trim is not None:
        from tinyroberta_es.distill.vocab import trim_model

        trim_model(student, trim)
    freeze(student, config.train)
    log.info(
        "student: %s parameters (teacher %s)",
        f"{count_parameters(student):,}",
        f"{count_parameters(teacher):,}",
    )

    t_cfg, s_cfg = teacher.config, student.config
    matches = layer_matches(
        t_cfg.num_hidden_layers,
        s_cfg.num_hidden_layers,
        config.loss,
        teacher_heads=t_cfg.num_attention_heads,
        student_heads=s_cfg.num_attention_heads,
    )
    relation = relation_match(
        t_cfg.num_hidden_layers,
        s_cfg.num_hidden_layers,
        config.loss,
        teacher_hidden=t_cfg.hidden_size,
        student_hidden=s_cfg.hidden_size,
        student_heads=s_cfg.num_attention_heads,
    )
    projection = make_projection(s_cfg.hidden_size, t_cfg.hidden_size) if config.loss.hidden > 0 else None
    teacher = frozen_teacher(teacher, config.train.precision, device)  # after the student copied its weights

    features = training_features(examples, teacher_tokenizer, config.data)  # the teacher's token ids
    hard_labels = None
    if len(examples) > originals:  # augmented windows learn from the teacher's soft labels only
        hard_labels = torch.as_tensor(features.example_index < originals, dtype=torch.float32)  # (N,)
    cached = None
    if config.cache_teacher_logits and config.loss.kd > 0 and kd_reads_cache(config):
        from tinyroberta_es.distill.cache import teacher_logits

        cached = teacher_logits(
            teacher,
            features,
            cache_root(),
            device=str(device),
            precision="bf16" if config.train.precision == "bf16" else "fp32",
            rank=rank,
            world_size=world_size,
        )
    elif config.cache_teacher_logits and config.loss.kd > 0:
        log.info("no teacher-logit cache: the teacher runs online for the intermediate losses, KD reads it")
    id_map = torch.as_tensor(trim.old_to_new, dtype=torch.long) if trim is not None else None
    evaluate = dev_evaluator(student, student_tokenizer, config.data, device)

    def save_model(folder: Path) -> None:
        student.save_pretrained(folder)
        student_tokenizer.save_pretrained(folder)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(
            out / "run_config.json", {"command": "distill", "tinyroberta_es": __version__, **to_dict(config)}
        )
    module_args = dict(
        teacher_logits=cached,
        id_map=id_map,
        relation=relation,
        hard_label_weight=hard_labels,
        gradient_shares_every=config.gradient_shares_every,
    )
    if config.schedule == "two-stage":
        stage1 = DistillModule(
            student, teacher, config.loss, matches, projection, stage="intermediate", **module_args
        )
        first = first_stage(config)
        train(
            stage1, features, first, out.parent / f"{out.name}.stage1", save_model=save_model, evaluate=None
        )
        stage = "prediction"
    else:
        stage = "all"
    module = DistillModule(student, teacher, config.loss, matches, projection, stage=stage, **module_args)
    result = train(module, features, config.train, out, save_model=save_model, evaluate=evaluate)
    metrics = result.metrics
    if main:
        atomic.write_json(
            out / "metrics.json",
            {
                "name": config.name,
                "params": count_parameters(student),
                "teacher_params": count_parameters(teacher),
                **(metrics or {}),
            },
        )
        print(f"student {config.name} saved to {out}")
    return metrics


def first_stage(config: DistillConfig) -> TrainConfig:
    """The training settings of a two-stage schedule's first stage: `train` with `intermediate`'s epochs,
    lr and warmup, and no evaluation (the QA head does not train in it)."""
    s = config.intermediate
    return dataclasses.replace(
        config.train,
        epochs=s.epochs,
        lr=config.train.lr if s.lr is None else s.lr,
        warmup_ratio=config.train.warmup_ratio if s.warmup_ratio is None else s.warmup_ratio,
        eval_every=0,
    )


def kd_reads_cache(config: DistillConfig) -> bool:
    """Whether some stage runs KD without running the teacher anyway (then a logit cache saves a pass)."""
    return config.schedule == "two-stage" or config.loss.intermediate == 0


def frozen_teacher(teacher: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """The teacher on `device` in the training precision (bf16/fp16 weights: half the memory and no casts
    under autocast), in eval mode, without gradients."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _texts(examples: list[Example]) -> list[str]:
    return list(dict.fromkeys(ex.context for ex in examples)) + [ex.question for ex in examples]


def _augment(config: DistillConfig, teacher, tokenizer, examples: list[Example]) -> list[Example]:
    """TinyBERT-style word replacement; the teacher labels the new examples through the KD loss."""
    from tinyroberta_es.distill.augment import WordNeighbours, augment_examples
    from tinyroberta_es.distill.vocab import corpus_texts

    a = config.augment
    if config.loss.kd <= 0:
        raise UserError("augment.copies > 0 needs the teacher's labels: set loss.kd above 0")
    texts = _texts(examples) + list(corpus_texts(a.corpus))
    neighbours = WordNeighbours.build(
        tokenizer, teacher.get_input_embeddings().weight.detach(), texts, top_k=a.candidates
    )
    new = augment_examples(examples, neighbours, copies=a.copies, replace_prob=a.replace_prob, seed=a.seed)
    log.info("augmentation: %d new examples from %d", len(new), len(examples))
    return new
