"""Answer questions with a Hugging Face question-answering model folder.

`QuestionAnswerer` is the one inference path: the `predict`, `answer`, `evaluate --model` and `export`
commands, the benchmark and the server all go through it. Windows are run in length-sorted batches with
dynamic padding, because real questions with their contexts are much shorter than the maximum length. What
computes the logits is a `Runner` (`runtimes/`): PyTorch, ONNX Runtime or OpenVINO, in fp32, bf16 or int8.

It is also the entry point users copy, in the shape of the question-answering pipeline that transformers 5
removed::

    qa = QuestionAnswerer.from_pretrained("runs/sample/student-4l", backend="onnx-int8")
    qa(question="¿Dónde nació?", context="Gabriel García Márquez nació en Aracataca.")
    # {"answer": "Aracataca", "score": <its probability>, "start": 32, "end": 41}
    qa([{"question": ..., "context": ...}, ...], top_k=3)  # one batched call; a list per item
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import ModelOutputError, UserError
from tinyroberta_es.extraction import Prediction, extract_answers
from tinyroberta_es.features import Features, prepare_features
from tinyroberta_es.model_folder import load_fast_tokenizer, tokenizer_folder
from tinyroberta_es.runtimes import Runner, make_runner, torch_runner

log = logging.getLogger(__name__)

# One answer as the question-answering pipeline gave it: {"answer", "score", "start", "end"}.
PipelineAnswer = dict[str, str | float | int]
PipelineResult = PipelineAnswer | list[PipelineAnswer]


@dataclass
class InferenceConfig:
    """How examples become windows and logits become answers."""

    max_length: int = 384  # tokens per window, question included
    doc_stride: int = 128  # tokens shared by consecutive windows of a long context
    max_query_length: int = 64  # longer questions are cut to this many tokens
    max_answer_length: int = 30  # longest answer, in tokens
    n_best: int = 20  # start and end candidates per window
    batch_size: int = 32
    null_threshold: float | None = None  # None: never answer "no answer" (SQuAD v1 models)
    backend: str = "pytorch"  # what runs the model: a key of runtimes.BACKENDS, or auto
    threads: int | None = None  # intra-op CPU threads; None: the runtime's default
    align_to_words: bool = True  # widen answers that cut a word to whole words (the HF pipeline's default)


class QuestionAnswerer:
    """A QA model (behind a `Runner`), its tokenizer and the settings that turn examples into answers.

    `model` is a `Runner` or a torch module in memory (the training loop's dev evaluation), which runs as the
    fp32 PyTorch backend on `device`. `name` names the model in error messages (`from_pretrained` sets it to
    the folder or Hub id; without it, the module's `name_or_path` or else the runner's name).
    """

    def __init__(
        self,
        model: torch.nn.Module | Runner,
        tokenizer: object,
        config: InferenceConfig | None = None,
        device: str | torch.device = "cpu",
        name: str | None = None,
    ) -> None:
        self.config = config or InferenceConfig()
        if isinstance(model, Runner):
            self.runner = model
        else:
            self.runner = torch_runner(model, device, threads=self.config.threads)
        self.tokenizer = tokenizer
        # A fast tokenizer is one Rust object whose truncation settings each call sets: two threads tokenizing
        # at once (the server's validation and model threads) can fail with "Already borrowed".
        self._tokenizer_lock = threading.Lock()
        self.device = torch.device(self.runner.device)
        module_config = getattr(self.runner.module, "config", None)
        self.name = name or getattr(module_config, "name_or_path", None) or self.runner.name

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        config: InferenceConfig | None = None,
        device: str | None = None,
        *,
        revision: str | None = None,
        **overrides: Any,
    ) -> QuestionAnswerer:
        """Load from a local model folder (or a Hub id when a network exists) with `config.backend`.

        `overrides` replace fields of `config` (``backend="onnx-int8"``, ``null_threshold=0.0``); `revision`
        pins a Hub revision (a branch, tag or commit). Without `device`, the model runs on a GPU when the
        backend's library sees one.
        """
        config = _with_overrides(config or InferenceConfig(), overrides)
        runner = make_runner(source, config.backend, device=device, threads=config.threads, revision=revision)
        tokenizer = load_fast_tokenizer(tokenizer_folder(source), revision=revision)
        return cls(runner, tokenizer, config, name=str(source))

    @property
    def params(self) -> int | None:
        """Parameters of the model (None when the backend cannot tell)."""
        return self.runner.params

    @property
    def weights_bytes(self) -> int | None:
        """Size on disk of what the backend loads (for a module in memory: of its tensors)."""
        return self.runner.weights_bytes

    def __call__(
        self,
        inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        question: str | None = None,
        context: str | None = None,
        top_k: int = 1,
    ) -> PipelineResult | list[PipelineResult]:
        """Answer like the question-answering pipeline: ``qa(question=..., context=..., top_k=1)``.

        Gives ``{"answer", "score", "start", "end"}`` with `score` the answer's probability (a null answer,
        chosen under `config.null_threshold`, is ``""`` at 0..0 with the null probability), or with `top_k`
        above 1 a list of such dicts, best first. `inputs` may be one ``{"question", "context"}`` dict, or a
        list of them answered in one batched call: then a list with one result per dict.
        """
        _check_top_k(top_k)
        if inputs is None:
            given = {k: v for k, v in (("question", question), ("context", context)) if v is not None}
            items, single = [given], True
        elif question is not None or context is not None:
            raise UserError("give either question=... and context=... or `inputs`, not both")
        elif isinstance(inputs, Mapping):
            items, single = [inputs], True
        elif isinstance(inputs, (list, tuple)):
            items, single = list(inputs), False
        else:
            raise UserError(
                f"inputs is a {type(inputs).__name__}: give a dict with 'question' and 'context', "
                "or a list of them"
            )
        examples = _examples(items, single)
        predictions = self.predict(examples, top_k=top_k)
        results = [_pipeline_result(p, top_k) for p in predictions]
        return results[0] if single else results

    def cost(self, example: Example) -> tuple[int, int]:
        """(windows, tokens) that `example` makes alone with this config: only tokenization, no model.

        Raises UserError for a request that cannot be answered: an empty question or context, or settings
        that the question makes impossible (e.g. `doc_stride` not below the context tokens a window keeps).
        """
        features = self.prepare(example)
        return len(features), int(features.lengths.sum())

    def prepare(self, example: Example) -> Features:
        """The windows of `example` alone (what `cost` counts), checked as `cost` checks them.

        The server tokenizes each question once, here, and later runs these windows, possibly spread over
        several model calls, and extracts the answer with ``extract([example], features, ...)``.
        """
        _raise(_text_problems(example.question, example.context, ""))
        return self.features([example])

    def features(self, examples: Sequence[Example]) -> Features:
        """Tokenize examples into windows (thread-safe: one thread tokenizes at a time)."""
        c = self.config
        with self._tokenizer_lock:
            return prepare_features(
                examples,
                self.tokenizer,
                max_length=c.max_length,
                doc_stride=c.doc_stride,
                max_query_length=c.max_query_length,
            )

    def logits(self, features: Features, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits of every window, `(N, L)` float32, padded with -inf past each window's end.

        Raises `ModelOutputError` when the model gives a NaN or infinite logit inside a window.
        """
        n = len(features)
        lengths = np.asarray(features.lengths)
        width = int(lengths.max()) if n else 0
        start = np.full((n, width), -np.inf, dtype=np.float32)  # (N, L)
        end = np.full((n, width), -np.inf, dtype=np.float32)
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch shows peak memory
        batches = [order[i : i + self.config.batch_size] for i in range(0, n, self.config.batch_size)]
        for idx in tqdm(batches, desc="windows", unit="batch", disable=not progress):
            s, e = self.runner(features.batch(idx, self.runner.pad_to_multiple_of))  # (B, T)
            self._check_finite(s, e, lengths[idx], n)
            for row, i in enumerate(idx):
                length = lengths[i]
                start[i, :length] = s[row, :length]
                end[i, :length] = e[row, :length]
        return start, end

    def _check_finite(self, start: np.ndarray, end: np.ndarray, lengths: np.ndarray, total: int) -> None:
        """ModelOutputError unless every real position of the batch's windows has finite logits."""
        real = np.arange(start.shape[1])[None, :] < lengths[:, None]  # (B, T)
        bad = (real & ~(np.isfinite(start) & np.isfinite(end))).any(axis=1)  # (B,)
        if not bad.any():
            return
        runner = self.runner
        bf16 = "; with a bf16 backend, try its fp32 one" if runner.dtype == "bfloat16" else ""
        raise ModelOutputError(
            f"model {self.name} (backend {runner.name}, {runner.dtype} on {runner.device}) gave NaN or "
            f"infinite logits for {int(bad.sum())} of the {len(lengths)} windows of a batch ({total} windows "
            f"in all): its weights or export are broken: re-export it or check the checkpoint{bf16}"
        )

    def predict(
        self, examples: Sequence[Example], top_k: int = 1, progress: bool = False
    ) -> list[Prediction]:
        """Answer every example: one `Prediction` per example, in order."""
        if not examples:
            return []
        features = self.features(examples)
        start, end = self.logits(features, progress=progress)
        return self.extract(examples, features, start, end, top_k=top_k)

    def extract(
        self,
        examples: Sequence[Example],
        features: Features,
        start: np.ndarray,
        end: np.ndarray,
        top_k: int = 1,
    ) -> list[Prediction]:
        """Answers from the logits of `features` (as `logits` returns them), with this config's settings."""
        c = self.config
        return extract_answers(
            examples,
            features,
            start,
            end,
            top_k=top_k,
            n_best=c.n_best,
            max_answer_length=c.max_answer_length,
            null_threshold=c.null_threshold,
            align_to_words=c.align_to_words,
        )

    def answer(self, question: str, context: str, top_k: int = 1) -> Prediction:
        """Answer one question about one context."""
        _raise(_text_problems(question, context, ""))
        return self.predict([Example(id="q", question=question, context=context)], top_k=top_k)[0]


def _with_overrides(config: InferenceConfig, overrides: dict[str, Any]) -> InferenceConfig:
    """`config` with `overrides` set; TypeError naming any keyword that is not an InferenceConfig field."""
    fields = [f.name for f in dataclasses.fields(InferenceConfig)]
    unknown = [key for key in overrides if key not in fields]
    if unknown:
        hint = (
            "; top_k is given per call: qa(question=..., context=..., top_k=3)" if "top_k" in unknown else ""
        )
        raise TypeError(
            f"QuestionAnswerer.from_pretrained got unknown setting(s) {', '.join(map(repr, unknown))}: "
            f"choose among the InferenceConfig fields {', '.join(fields)}{hint}"
        )
    return dataclasses.replace(config, **overrides)


def _check_top_k(top_k: object) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"top_k must be a positive integer, got {top_k!r}")


def _text_problems(question: object, context: object, where: str) -> list[str]:
    """What is wrong with a question and its context (`where` prefixes each problem), or nothing."""
    problems = []
    for key, value, fix in (
        ("question", question, "ask a question"),
        ("context", context, "give the text that holds the answer"),
    ):
        if not isinstance(value, str):
            problems.append(f"{where}the {key} is a {type(value).__name__}, not a string; {fix}")
        elif not value.strip():
            problems.append(f"{where}the {key} is empty; {fix}")
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise UserError("; ".join(problems))


def _examples(items: Sequence[object], single: bool) -> list[Example]:
    """Examples from ``{"question", "context"}`` dicts; one UserError naming every bad item and its fix."""
    problems: list[str] = []
    examples = []
    for i, item in enumerate(items):
        where = "" if single else f"inputs[{i}]: "
        if not isinstance(item, Mapping):
            problems.append(f"{where}a {type(item).__name__}, not a dict with 'question' and 'context'")
            continue
        missing = [key for key in ("question", "context") if key not in item]
        unknown = [key for key in item if key not in ("question", "context")]
        if missing or unknown:
            problems.append(
                f"{where}"
                + (f"missing {' and '.join(map(repr, missing))}" if missing else "")
                + (", " if missing and unknown else "")
                + (f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else "")
                + "; give {'question': ..., 'context': ...}"
            )
            continue
        found = _text_problems(item["question"], item["context"], where)
        problems += found
        if not found:
            examples.append(Example(id=str(i), question=item["question"], context=item["context"]))
    _raise(problems)
    return examples


def _pipeline_result(prediction: Prediction, top_k: int) -> PipelineResult:
    """A prediction as the pipeline gave it: the best answer's dict, or the `top_k` best in a list."""
    answers: list[PipelineAnswer] = [
        {"answer": s.text, "score": s.probability, "start": s.start, "end": s.end} for s in prediction.answers
    ]
    if prediction.is_null:
        answers.insert(0, {"answer": "", "score": prediction.null_probability, "start": 0, "end": 0})
    answers = answers[:top_k]
    return answers[0] if top_k == 1 else answers
