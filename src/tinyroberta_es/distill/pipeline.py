"""`distill(config)`: everything between a teacher folder and a student folder, as one function."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from tinyroberta_es import __version__, atomic
from tinyroberta_es.config import DistillConfig, to_dict
from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where teacher logits are cached: `$TINYROBERTA_ES_CACHE/teacher_logits` (default under ~/.cache)."""
    root = Path(os.environ.get("TINYROBERTA_ES_CACHE", Path.home() / ".cache" / "tinyroberta_es"))
    return root.expanduser() / "teacher_logits"


def distill(config: DistillConfig) -> dict:
    """Distil `config.teacher` into a student saved at `config.output`; returns the final dev metrics."""
    from tinyroberta_es.distill.mapping import layer_matches, make_projection
    from tinyroberta_es.distill.module import DistillModule
    from tinyroberta_es.distill.student import build_student, count_parameters
    from tinyroberta_es.inference import load_qa_model
    from tinyroberta_es.train import read_train_state, resolve_device, train
    from tinyroberta_es.training_data import dev_evaluator, load_training_examples, training_features

    out = Path(config.output).expanduser()
    done = read_train_state(out)
    if done is not None:
        print(f"{out} holds a finished run; student in {out} (use another output to train again)")
        return done.get("metrics") or {}
    teacher, teacher_tokenizer = load_qa_model(Path(config.teacher).expanduser())
    examples = load_training_examples(config.data)
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
    projection = make_projection(s_cfg.hidden_size, t_cfg.hidden_size) if config.loss.hidden > 0 else None

    features = training_features(examples, teacher_tokenizer, config.data)  # the teacher's token ids
    device = resolve_device(config.train.device, config.train.precision)
    cached = None
    if config.cache_teacher_logits and config.loss.kd > 0:
        from tinyroberta_es.distill.cache import teacher_logits

        cached = teacher_logits(
            teacher.to(device),
            features,
            cache_root(),
            device=str(device),
            precision="bf16" if config.train.precision == "bf16" else "fp32",
        )
    id_map = torch.as_tensor(trim.old_to_new, dtype=torch.long) if trim is not None else None
    evaluate = dev_evaluator(student, student_tokenizer, config.data, device)

    def save_model(folder: Path) -> None:
        student.save_pretrained(folder)
        student_tokenizer.save_pretrained(folder)

    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(
        out / "run_config.json", {"command": "distill", "tinyroberta_es": __version__, **to_dict(config)}
    )
    module_args = dict(teacher_logits=cached, id_map=id_map)
    if config.schedule == "two-stage":
        stage1 = DistillModule(
            student, teacher, config.loss, matches, projection, stage="intermediate", **module_args
        )
        stage1.find_unused_parameters = True  # the QA head has no loss in this stage (DDP must know)
        first = dataclasses.replace(config.train, epochs=config.intermediate_epochs, eval_every=0)
        train(
            stage1, features, first, out.parent / f"{out.name}.stage1", save_model=save_model, evaluate=None
        )
        stage = "prediction"
    else:
        stage = "all"
    module = DistillModule(student, teacher, config.loss, matches, projection, stage=stage, **module_args)
    result = train(module, features, config.train, out, save_model=save_model, evaluate=evaluate)
    metrics = result.metrics
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
