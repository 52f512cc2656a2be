"""The PyTorch runtime: fp32, bf16 (weights cast) and bf16 compiled by Inductor.

Measured on this project's CPU (2-core Xeon with AVX-512-BF16 and AMX, shared, so +-15%), a 6x512 RoBERTa
student, one 384-token window, 2 threads, median of 20, each backend in a fresh process: PyTorch fp32 102 ms,
PyTorch bf16 45 ms (ONNX Runtime fp32 fused 82 ms, int8 fused 32 ms). `pytorch-bf16-compiled` was the fastest
PyTorch backend at batch 1 there: see its factory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyroberta_es.errors import UserError
from tinyroberta_es.model_folder import load_fast_tokenizer, load_qa_module, max_tokens, tokenizer_folder
from tinyroberta_es.runtimes.runner import MODEL_INPUTS, Forward, Runner


def torch_runner(
    model: torch.nn.Module,
    device: str | torch.device = "cpu",
    *,
    name: str = "pytorch",
    threads: int | None = None,
    weights_bytes: int | None = None,
) -> Runner:
    """Wrap a torch QA module, moved to `device`, as a Runner (its dtype and train/eval mode are kept).

    The mode is left alone because the training loop evaluates the model it is training.
    """
    if threads:
        torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
    device = torch.device(device)
    model = model.to(device)
    accepted = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())  # wrappers: forward(*args, **kwargs)
    input_names = tuple(n for n in MODEL_INPUTS if takes_any or n in accepted)
    tensors = [*model.parameters(), *model.buffers()]
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return Runner(
        name=name,
        dtype=dtype,
        device=str(device),
        threads=threads,
        input_names=input_names,
        forward=torch_forward(model, device),
        params=sum(p.numel() for p in model.parameters()),
        weights_bytes=weights_bytes or sum(t.numel() * t.element_size() for t in tensors),
        module=model,
        optional_inputs=("token_type_ids",),  # RoBERTa accepts them; its tokenizer makes none
        matmul_dtypes={"linear": dtype, "attention": dtype},
    )


def torch_forward(call: Callable[..., Any], device: Any) -> Forward:
    """numpy inputs -> `call` (a QA module, or its compiled form) on `device` -> float32 numpy logits."""

    @torch.inference_mode()
    def forward(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = call(**{k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()})
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()  # (B, T)

    return forward


def load_pytorch(source: str, device: str, threads: int | None, revision: str | None = None) -> Runner:
    """fp32 weights (safetensors only); `revision` pins a Hub id."""
    return torch_runner(
        load_qa_module(source, revision=revision),
        _torch_device(device),
        threads=threads,
        weights_bytes=_torch_weights_bytes(source),
    )


def load_pytorch_bf16(source: str, device: str, threads: int | None, revision: str | None = None) -> Runner:
    """bf16 weights and activations: the weights are cast, on CPU and GPU alike.

    Casting beat autocast on this project's CPU (6x512 student, 1 x 384 tokens, median of 10): 37 ms against
    53 ms on 2 threads, 47 ms against 71 ms on 1 (fp32: 102 and 176 ms). Autocast keeps fp32 weights and
    converts them on every call, which an inference-only model does not need. Logits move by about 1% of
    their range (autocast: 0.4%).
    """
    return torch_runner(
        load_qa_module(source, revision=revision).to(torch.bfloat16),
        _torch_device(device),
        name="pytorch-bf16",
        threads=threads,
        weights_bytes=_torch_weights_bytes(source),
    )


def load_pytorch_bf16_compiled(
    source: str, device: str, threads: int | None, revision: str | None = None
) -> Runner:
    """The bf16 model compiled by Inductor (`torch.compile`): frozen weights, max-autotune, dynamic shapes.

    On this project's CPU (AMX) the paper student at 1 x 384 tokens took 21.6 ms against 31.5 ms in eager
    bf16 and 31.9 ms in ONNX Runtime int8 (benchmarks/results/speed-paper.md). Compiling happens here, at
    load, and takes tens of seconds: one graph for batch 1 and one for larger batches, each serving every
    sequence length. On CPU Inductor writes C++, so it needs a C++ compiler (g++). Freezing is a process-wide
    Inductor setting: it folds the weights into the graph, which suits inference only.
    """
    import torch._inductor.config as inductor
    import torch._inductor.select_algorithm as select_algorithm

    runner = load_pytorch_bf16(source, device, threads, revision)
    inductor.freezing = True
    inductor.max_autotune_report_choices_stats = False  # autotuning otherwise prints tables on stderr
    select_algorithm.PRINT_AUTOTUNE = False
    compiled = torch.compile(runner.module, dynamic=True, mode="max-autotune-no-cudagraphs")
    forward = torch_forward(compiled, torch.device(runner.device))
    # Warm up with the inputs the tokenizer makes (another set of keyword arguments recompiles) at a
    # realistic window length (autotuning picks kernels for the sizes it first sees).
    made = load_fast_tokenizer(tokenizer_folder(source), revision).model_input_names
    names = [n for n in runner.input_names if n in made]
    length = min(384, max_tokens(runner.module.config) or 384)
    try:
        for batch in (1, 2):  # batch 1 gets its own graph (dynamic shapes specialise sizes 0 and 1)
            ones = np.ones((batch, length), dtype=np.int64)
            forward({n: ones if n == "attention_mask" else 0 * ones for n in names})
    except Exception as err:  # Inductor raises many kinds (no compiler, unsupported op)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the pytorch-bf16-compiled backend could not compile {source} ({first}); it needs a C++ "
            "compiler (g++) on CPU: install one or use --backend pytorch-bf16"
        ) from None
    return replace(runner, name="pytorch-bf16-compiled", forward=forward)


def _torch_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but torch sees no CUDA GPU: run on cpu")
    return device


def _torch_weights_bytes(source: str) -> int | None:
    """Bytes of the weight files `from_pretrained` reads from a local folder (None for a Hub id)."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) or None  # what loads: never .bin
