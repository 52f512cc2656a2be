"""The interface every runtime implements: a loaded QA model behind one call from padded inputs to logits.

A `Runner` hides what executes a QA model (PyTorch, ONNX Runtime, OpenVINO; fp32, bf16, int8).
`QuestionAnswerer` batches the windows and turns logits into answers; the runner only maps
`{"input_ids": (B, T) int64, ...}` to two float32 `(B, T)` arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what `Features.batch` makes

Forward = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


@dataclass
class Runner:
    """A loaded QA model behind one call: `runner(inputs) -> (start_logits, end_logits)`, float32 (B, T).

    `inputs` holds (B, T) int64 arrays; the runner takes the ones in `input_names` and ignores the rest, so
    callers may pass `token_type_ids` to a model that has none; those in `optional_inputs` may be absent.
    """

    name: str  # the backend, a key of BACKENDS
    dtype: str  # what the matmuls run in: float32, bfloat16, int8
    device: str  # cpu, cuda, cuda:1
    threads: int | None  # intra-op CPU threads; None: the library's default
    input_names: tuple[str, ...]
    forward: Forward = field(repr=False)
    params: int | None = None  # parameters of the model (None when unknown)
    weights_bytes: int | None = None  # size on disk of what the backend loads (in memory: of the tensors)
    pad_to_multiple_of: int | None = None  # pad T up to a multiple of this before calling
    module: Any = field(default=None, repr=False)  # the torch module of the PyTorch backends
    optional_inputs: tuple[str, ...] = ()
    # The dtype each group of matmuls runs in: "linear" (projections, FFN, QA head: weights constant) and
    # "attention" (scores and context: both inputs computed). `bench` divides each group's FLOPs by that
    # dtype's peak; None where the runtime cannot tell.
    matmul_dtypes: dict[str, str] | None = None
    # Set by `--backend auto`: the backend it chose, why, and what it measured of every candidate.
    selection: dict[str, Any] | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits (B, T) float32 of a padded batch."""
        missing = [n for n in self.input_names if n not in inputs and n not in self.optional_inputs]
        if missing:
            raise ValueError(f"the {self.name} runner needs inputs {missing}; got {sorted(inputs)}")
        return self.forward({name: inputs[name] for name in self.input_names if name in inputs})
