"""OpenVINO IR of an exported QA model: fp32 conversion and NNCF int8 calibrated on real windows.

The steps, in the order `export --format openvino` runs them:

1. Convert the plain (unfused) ONNX graph that `onnx_export.torchscript_export` wrote: OpenVINO does its own
   fusions (attention, layer norm) from standard ops, and does not need ONNX Runtime's contrib ops. Weights
   stay fp32 in the file (`compress_to_fp16=False`); bf16 is a run-time choice (`runtimes.ov`).
2. Quantise to int8 with NNCF's post-training quantisation: the transformer model type (SmoothQuant on the
   matmul inputs, softmax and layer norms left in floating point), the mixed preset (symmetric weights,
   asymmetric activations), fast bias correction, calibrated on real windows of the calibration set (the
   first window of each of `calibration_size` questions, unpadded; `calibration_set`).
3. When that int8 model loses more F1 than the budget, `accuracy_aware` quantises again with NNCF's
   accuracy control: it ranks the quantised layers by how much they cost F1 on the validation questions and
   returns them to floating point, a few at a time, until the drop is within `max_drop`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.errors import UserError
from tinyroberta_es.features import prepare_features
from tinyroberta_es.runtimes import import_openvino
from tinyroberta_es.runtimes.ov import INSTALL_HINT

log = logging.getLogger(__name__)


def import_nncf() -> Any:
    """`nncf`, or a UserError with the install hint."""
    try:
        import nncf
    except ImportError:
        raise UserError(f"int8 for OpenVINO needs nncf, which is not installed: {INSTALL_HINT}") from None
    return nncf


def convert(onnx_file: Path, xml: Path, params: int) -> None:
    """The ONNX graph as OpenVINO IR (`xml` and its `.bin`), fp32 weights, with the parameter count inside."""
    ov = import_openvino()
    model = ov.convert_model(str(onnx_file))
    model.set_rt_info(str(params), ["tinyroberta_es", "params"])
    ov.save_model(model, str(xml), compress_to_fp16=False)
    log.info("converted %s to OpenVINO IR %s", onnx_file.name, xml.name)


def calibration_set(
    calibration: str | None,
    dev: Any,
    dev_set: Any,
    tokenizer: Any,
    inference: Any,
    input_names: Sequence[str],
    *,
    size: int,
    validation_size: int,
) -> tuple[list[dict[str, np.ndarray]], Any, dict[str, Any]]:
    """Calibration windows and validation questions for OpenVINO int8, and where they come from.

    One window per question (its first, unpadded), from `size` questions in a fixed random order; a set with
    fewer questions gives fewer windows. From `calibration` (default: the parity check's `dev`, a
    `parity.DevChoice`, whose whole set `dev_set` holds, loaded already). Taken from the dev set, they are the
    questions after the ones the parity check uses when there are any, so the check scores questions the
    calibration did not see.
    """
    name = calibration or dev.name
    from_dev = name in (dev.name, dev.source)
    data = dev_set if from_dev else load_dataset(name, bad_spans="keep")
    examples = list(data.examples)
    overlaps = False
    if from_dev:
        rest = examples[dev.limit :] if dev.limit else []
        overlaps = not rest
        examples = rest or examples
    order = np.random.default_rng(0).permutation(len(examples))
    examples = [examples[i] for i in order]
    features = prepare_features(
        examples[:size],
        tokenizer,
        max_length=inference.max_length,
        doc_stride=inference.doc_stride,
        max_query_length=inference.max_query_length,
    )
    first = sorted({int(q): i for i, q in reversed(list(enumerate(features.example_index)))}.values())
    windows = [{k: v for k, v in features.batch([i]).items() if k in input_names} for i in first]  # (1, T_i)
    questions = dataclasses.replace(data, examples=examples[:validation_size])
    info = {
        "calibration_set": name,
        "calibration_questions": len(windows),
        "calibration_overlaps_parity": overlaps,
    }
    if overlaps:
        log.warning("calibrating on the parity questions of %s: pass --calibration another set", name)
    return windows, questions, info


def quantize(
    xml: Path, out: Path, windows: Sequence[dict[str, np.ndarray]], *, smooth_quant_alpha: float | None = None
) -> dict[str, Any]:
    """NNCF post-training int8 of the IR `xml` into `out`, calibrated on `windows`; what it did, as a dict."""
    ov, nncf = import_openvino(), import_nncf()
    model = ov.Core().read_model(str(xml))
    params = model.get_rt_info(["tinyroberta_es", "params"]).astype(str)
    advanced = None
    if smooth_quant_alpha is not None:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        advanced = AdvancedQuantizationParameters(smooth_quant_alpha=smooth_quant_alpha)
    started = time.perf_counter()
    quantized = nncf.quantize(
        model,
        nncf.Dataset(list(windows)),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(windows),
        advanced_parameters=advanced,
    )
    quantized.set_rt_info(params, ["tinyroberta_es", "params"])
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    seconds = time.perf_counter() - started
    log.info("quantised %s to int8 with NNCF on %d windows in %.0f s", xml.name, len(windows), seconds)
    return {
        "method": "nncf post-training (transformer model type, mixed preset, fast bias correction)",
        "calibration_windows": len(windows),
        "smooth_quant_alpha": smooth_quant_alpha,
        "seconds": round(seconds, 1),
    }


def quantize_accuracy_aware(
    xml: Path,
    out: Path,
    windows: Sequence[dict[str, np.ndarray]],
    questions: Sequence[Any],
    f1_of: Callable[[Any, Sequence[Any]], tuple[float, list[float]]],
    *,
    max_drop: float,
    max_iterations: int = 8,
) -> dict[str, Any]:
    """NNCF int8 with accuracy control: layers go back to floating point until F1 drops by at most `max_drop`.

    `f1_of(compiled_model, questions)` returns the F1 (points) on `questions` and each question's F1; it is
    NNCF's validation function, called on the fp32 model, the int8 model and each partly restored one.
    """
    ov, nncf = import_openvino(), import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    model = ov.Core().read_model(str(xml))
    params = model.get_rt_info(["tinyroberta_es", "params"]).astype(str)
    started = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(list(windows)),
        nncf.Dataset(list(questions)),
        f1_of,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(windows),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=max_iterations
        ),
    )
    quantized.set_rt_info(params, ["tinyroberta_es", "params"])
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    kept_fp = _count_float_matmuls(quantized)
    seconds = time.perf_counter() - started
    log.info("accuracy-aware int8 in %.0f s; %d matmuls left in floating point", seconds, kept_fp)
    return {
        "method": "nncf accuracy control (layers restored to floating point by F1 cost)",
        "calibration_windows": len(windows),
        "validation_questions": len(questions),
        "max_drop": max_drop,
        "max_iterations": max_iterations,
        "float_matmuls": kept_fp,
        "seconds": round(seconds, 1),
    }


def _count_float_matmuls(model: Any) -> int:
    """MatMuls with no FakeQuantize on either input: those NNCF left in floating point."""
    count = 0
    for op in model.get_ops():
        sources = [op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())]
        count += op.get_type_name() == "MatMul" and "FakeQuantize" not in sources
    return count
