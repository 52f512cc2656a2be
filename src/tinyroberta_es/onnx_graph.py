"""The ONNX graph of a QA model: exported with the TorchScript exporter, fused, and quantised to int8.

The steps and why each was chosen are in `onnx_export`, which runs them in order and checks the result.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from tinyroberta_es.onnx_files import remove_data_file

log = logging.getLogger(__name__)

# ONNX Runtime's optimizer type for each Hugging Face model_type it can fuse.
FUSION_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert"}


def torchscript_export(model: Any, tokenizer: Any, path: Path, opset: int) -> tuple[str, ...]:
    """Export `model` with the TorchScript exporter; inputs are the tokenizer's that the model accepts."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    names = tuple(n for n in tokenizer.model_input_names if n in accepted)
    # Two pairs of different lengths: the traced graph must see padding (a zero in the attention mask).
    example = tokenizer(
        ["¿Dónde nació?", "¿Quién escribió la novela que se publicó en 1967?"],
        ["Nació en Aracataca.", "«Cien años de soledad» la escribió Gabriel García Márquez en México."],
        padding=True,
        return_tensors="pt",
    )
    dynamic = {name: {0: "batch", 1: "sequence"} for name in (*names, "start_logits", "end_logits")}
    wrapper = _Logits(model, names).eval()  # export restores the wrapper's mode: a train() one leaks dropout
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about its own deprecation and traced Python bools that are shape checks.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        torch.onnx.export(
            wrapper,
            tuple(example[n] for n in names),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(names),
            output_names=["start_logits", "end_logits"],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    log.info("exported %s (inputs %s, opset %d)", path.name, ", ".join(names), opset)
    return names


class _Logits(torch.nn.Module):
    """Positional inputs in, (start_logits, end_logits) out: the shape the TorchScript exporter traces."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(**dict(zip(self.names, inputs, strict=True)))
        return out.start_logits, out.end_logits  # (B, T) each


def fuse(src: Path, dst: Path, model_config: Any, external: bool = False) -> dict[str, int] | None:
    """Fuse `src` into `dst` with ONNX Runtime's BERT optimizer; the fused op counts, or None if it failed.

    With `external`, the weights go to `<dst>.data` (the optimizer reads a `src` with external data as is).
    """
    model_type = FUSION_TYPES.get(model_config.model_type)
    if model_type is None:
        log.warning(
            "no fusion recipe for model_type %s (known: %s): keeping the unfused graph",
            model_config.model_type,
            ", ".join(FUSION_TYPES),
        )
        return None
    from onnxruntime.transformers.optimizer import optimize_model

    layers = model_config.num_hidden_layers
    try:
        optimized = optimize_model(
            str(src),
            model_type=model_type,
            num_heads=model_config.num_attention_heads,
            hidden_size=model_config.hidden_size,
        )
    except Exception as err:  # the optimizer raises whatever its pattern matchers hit
        log.warning("fusion failed (%s): keeping the unfused graph", str(err).strip()[:200])
        return None
    ops = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    attention = ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0)
    log.info("fused ops: %s", ", ".join(f"{op} {n}" for op, n in ops.items()) or "none")
    if attention == 0:
        log.warning("fusion found no attention to fuse in %d layers: keeping the unfused graph", layers)
        return None
    if attention < layers:
        log.warning("only %d of %d attention layers fused; the rest run unfused", attention, layers)
    remove_data_file(dst)  # the optimizer appends to an existing one
    optimized.save_model_to_file(str(dst), use_external_data_format=external)
    return ops


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = True, external: bool = False) -> None:
    """Dynamic int8 quantisation of `src` (int8 weights; activations quantised per call) into `dst`.

    `per_channel`: one scale per weight column, else one per tensor; `external`: weights in `<dst>.data`.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = _DropRootRecords()  # the quantizer logs one line per tensor through the root logger
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            use_external_data_format=external,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    log.info("quantised %s to int8 (%s)", src.name, "per channel" if per_channel else "per tensor")


class _DropRootRecords(logging.Filter):
    """Drop records below ERROR logged on the root logger itself (not on named loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR
