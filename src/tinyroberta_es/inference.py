"""Answer questions with a Hugging Face question-answering model folder.

`QuestionAnswerer` is the one inference path: the `predict`, `answer`, `evaluate --model` and `export`
commands (and later the benchmark and the server) all go through it. Windows are run in length-sorted
batches with dynamic padding, because real questions with their contexts are much shorter than the maximum
length. What computes the logits is a `Runner` (`runtimes/`): PyTorch, ONNX Runtime or OpenVINO, in fp32,
bf16 or int8.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import UserError
from tinyroberta_es.extraction import Prediction, extract_answers
from tinyroberta_es.features import Features, prepare_features
from tinyroberta_es.model_folder import load_fast_tokenizer, tokenizer_folder
from tinyroberta_es.runtimes import Runner, make_runner, torch_runner

log = logging.getLogger(__name__)


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


class QuestionAnswerer:
    """A QA model (behind a `Runner`), its tokenizer and the settings that turn examples into answers.

    `model` is a `Runner` or a torch module in memory (the training loop's dev evaluation), which runs as the
    fp32 PyTorch backend on `device`.
    """

    def __init__(
        self,
        model: torch.nn.Module | Runner,
        tokenizer: object,
        config: InferenceConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config or InferenceConfig()
        if isinstance(model, Runner):
            self.runner = model
        else:
            self.runner = torch_runner(model, device, threads=self.config.threads)
        self.tokenizer = tokenizer
        self.device = torch.device(self.runner.device)

    @classmethod
    def from_pretrained(
        cls, source: str | Path, config: InferenceConfig | None = None, device: str | None = None
    ) -> QuestionAnswerer:
        """Load from a local model folder (or a Hub id when a network exists) with `config.backend`.

        Without `device`, the model runs on a GPU when the backend's library sees one.
        """
        config = config or InferenceConfig()
        runner = make_runner(source, config.backend, device=device, threads=config.threads)
        return cls(runner, load_fast_tokenizer(tokenizer_folder(source)), config)

    @property
    def params(self) -> int | None:
        """Parameters of the model (None when the backend cannot tell)."""
        return self.runner.params

    @property
    def weights_bytes(self) -> int | None:
        """Size on disk of what the backend loads (for a module in memory: of its tensors)."""
        return self.runner.weights_bytes

    def features(self, examples: Sequence[Example]) -> Features:
        """Tokenize examples into windows."""
        c = self.config
        return prepare_features(
            examples,
            self.tokenizer,
            max_length=c.max_length,
            doc_stride=c.doc_stride,
            max_query_length=c.max_query_length,
        )

    def logits(self, features: Features, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits of every window, `(N, L)` float32, padded with -inf past each window's end."""
        n = len(features)
        lengths = np.asarray(features.lengths)
        width = int(lengths.max()) if n else 0
        start = np.full((n, width), -np.inf, dtype=np.float32)  # (N, L)
        end = np.full((n, width), -np.inf, dtype=np.float32)
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch shows peak memory
        batches = [order[i : i + self.config.batch_size] for i in range(0, n, self.config.batch_size)]
        for idx in tqdm(batches, desc="windows", unit="batch", disable=not progress):
            s, e = self.runner(features.batch(idx, self.runner.pad_to_multiple_of))  # (B, T)
            for row, i in enumerate(idx):
                length = lengths[i]
                start[i, :length] = s[row, :length]
                end[i, :length] = e[row, :length]
        return start, end

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
        )

    def answer(self, question: str, context: str, top_k: int = 1) -> Prediction:
        """Answer one question about one context."""
        if not question.strip():
            raise UserError("the question is empty; ask a question")
        if not context.strip():
            raise UserError("the context is empty; give the text that holds the answer")
        return self.predict([Example(id="q", question=question, context=context)], top_k=top_k)[0]
