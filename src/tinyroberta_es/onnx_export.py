"""Export a QA model to ONNX (fp32 fused; int8) and OpenVINO IR (fp32; NNCF int8), checked against PyTorch.

The steps, each chosen because the alternative measurably failed on this project's models:

1. Load the model with eager attention and export with the TorchScript exporter (`dynamo=False`): ONNX
   Runtime's transformer optimizer recognises that graph's attention pattern; the dynamo exporter's graph
   did not fuse. Batch and sequence axes are dynamic.
2. Fuse with ONNX Runtime's BERT optimizer (one Attention per layer, SkipLayerNormalization, BiasGelu;
   timings in `runtimes/pytorch.py`). If fusion fails, the unfused graph is kept and the export says so.
3. Quantise the fused graph to int8 (`quantize_dynamic`, weights int8, activations quantised at run time).
   Fused contrib ops have no type information, hence ``DefaultTensorType: FLOAT``. The default op types
   (MatMul, Attention, Gather) ran fastest and smallest on the 6x512 student: 30 ms and 51 MB against
   39 ms and 143 MB for MatMul alone.
4. With `formats` holding "openvino": the unfused graph of step 1 converted to OpenVINO IR, and with int8
   quantised by NNCF on real calibration windows (`openvino_export.py`).
5. Parity (`parity.py`): logits of every backend against PyTorch fp32 on the dev windows, and EM/F1 of each
   (PyTorch bf16 and the OpenVINO bf16 runs too, which need no file of their own); a variant that loses more
   than `max_f1_drop` F1 fails the export and is kept only as `*.rejected.*`.

Nothing is published until the parity check has run: files are built in a temporary folder inside the
output folder and moved into place one by one with `os.replace`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyroberta_es import atomic, parity
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.errors import UserError
from tinyroberta_es.features import prepare_features
from tinyroberta_es.inference import InferenceConfig
from tinyroberta_es.runtimes import (
    BACKENDS,
    INSTALL_HINT,
    IR_FILES,
    ONNX_DIR,
    ONNX_FILES,
    Runner,
    has_bf16,
    import_onnxruntime,
    import_openvino,
    onnx_runner,
    ov_runner,
    torch_runner,
)
from tinyroberta_es.runtimes.ov import compiled_runner

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8",)
FORMATS = ("onnx", "openvino")
FILE_OWNERS = ("onnx", "onnx-int8", "openvino", "openvino-int8")  # the backends an export writes files for
INT8_METHODS = ("auto", "plain", "accuracy-aware")  # OpenVINO int8; auto: accuracy-aware when plain misses
# ONNX Runtime's optimizer type for each Hugging Face model_type it can fuse.
FUSION_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert"}
# What a self-contained export folder needs besides the ONNX files: the config and the tokenizer.
TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spm.model",
)


@dataclass
class ExportConfig:
    """What `tinyroberta-es export` does; saved as `export.json` beside the ONNX files."""

    model: str  # the QA model folder to export
    output: str | None = None  # default: <model>/onnx
    quantize: str | None = None  # None or "int8"
    optimize: bool = True  # fuse with ONNX Runtime's transformer optimizer
    opset: int = 17
    per_channel: bool = False  # int8 scales per output column instead of per tensor
    dev: str = "sample"  # dataset for the parity check
    dev_limit: int | None = None  # only its first N questions
    max_length: int = 384  # window length of the parity check
    doc_stride: int = 128
    max_f1_drop: float = 1.0  # a variant that loses more F1 (points) than this fails the export
    formats: tuple[str, ...] = ("onnx",)  # onnx, openvino: what to write
    calibration: str | None = (
        None  # OpenVINO int8 calibration set; default: --dev (questions it does not check)
    )
    calibration_size: int = 128  # calibration windows
    validation_size: int = 200  # questions the accuracy-aware mode scores F1 on (from the calibration set)
    int8_method: str = (
        "auto"  # OpenVINO int8: plain NNCF; accuracy-aware; auto (the second when plain misses)
    )
    smooth_quant_alpha: float | None = None  # None: NNCF's default for transformers

    def validate(self) -> None:
        """Raise one UserError naming every bad field."""
        problems = []
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            problems.append(f"--quantize {self.quantize!r}: choose {', '.join(QUANTIZATIONS)}")
        if self.opset < 14:
            problems.append(f"opset {self.opset}: use 14 or later (fused attention needs it)")
        for flag, value in (("dev-limit", self.dev_limit), ("max-length", self.max_length)):
            if value is not None and value < 1:
                problems.append(f"--{flag} {value} must be a positive integer")
        if self.doc_stride < 0:
            problems.append(f"--doc-stride {self.doc_stride} must be 0 or more")
        if not self.max_f1_drop >= 0:  # also catches NaN
            problems.append(f"--max-f1-drop {self.max_f1_drop} must be a number >= 0")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            problems.append(f"--format {','.join(self.formats)!r}: choose onnx, openvino or onnx,openvino")
        if self.int8_method not in INT8_METHODS:
            problems.append(f"--int8-method {self.int8_method!r}: choose {', '.join(INT8_METHODS)}")
        for flag, value in (
            ("calibration-size", self.calibration_size),
            ("validation-size", self.validation_size),
        ):
            if value < 1:
                problems.append(f"--{flag} {value} must be a positive integer")
        if self.output is None and not Path(self.model).expanduser().is_dir():
            problems.append(f"--model {self.model} is not a local folder: pass --output for the export")
        if problems:
            raise UserError("; ".join(problems))

    @property
    def output_dir(self) -> Path:
        """Where the ONNX files go."""
        return Path(self.output or Path(self.model) / ONNX_DIR).expanduser()


def export_model(config: ExportConfig, strict: bool = True) -> dict[str, Any]:
    """Export, fuse, quantise and check `config.model`; returns the parity report written to parity.json.

    A variant over the F1 budget is kept as `*.rejected.*` and named in `report["rejected"]`; with `strict`
    (the `export` command) that is an error, without it (`run`) the caller reports it.
    """
    from tinyroberta_es.model_folder import load_qa_model

    config.validate()
    _check_installed(config)
    model, tokenizer = load_qa_model(config.model, attn_implementation="eager")
    out = config.output_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --output {out} ({err.strerror or err}): check the path") from None
    params = sum(p.numel() for p in model.parameters())
    dev, inference = parity_questions(config)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp_name:
        tmp = Path(tmp_name)
        input_names = torchscript_export(model, tokenizer, tmp / "raw.onnx", config.opset)
        ref = parity.reference(dev, tokenizer, torch_runner(model), inference)
        rows: dict[str, dict[str, Any]] = {"pytorch": ref.reference}
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        rows["pytorch-bf16"] = parity.check(ref, torch_runner(bf16, name="pytorch-bf16"))
        del bf16
        files: dict[str, Path] = {}  # backend -> the file it loads, in tmp
        fused_ops, int8 = None, {}
        if "onnx" in config.formats:
            fused_ops = _onnx_variants(config, model, tmp, files, params)
        if "openvino" in config.formats:
            int8 = _openvino_variants(
                config, tokenizer, inference, ref, input_names, tmp, files, params, rows
            )
        for backend, path in files.items():
            if backend not in rows:
                rows[backend] = parity.check(ref, _runner(backend, path))
        rows = {b: rows[b] for b in BACKENDS if b in rows}  # the registry's order: engine, then dtype
        report = {
            "dev": config.dev,
            "questions": len(dev.examples),
            "windows": len(ref.features),
            "max_length": config.max_length,
            "doc_stride": config.doc_stride,
            "normalization": "mlqa-es",
            "max_f1_drop": config.max_f1_drop,
            "variants": rows,
            "int8": int8,
        }
        for row in rows.values():
            row["passed"] = row.get("f1_drop", 0.0) <= config.max_f1_drop
        # Only a backend with files of its own fails the export; a bf16 run over budget is marked not passed.
        rejected = [b for b in parity.over_budget(report, config.max_f1_drop) if b in FILE_OWNERS]
        report.update(fused_ops=fused_ops, input_names=list(input_names), params=params, rejected=rejected)
        _publish_files(files, rejected, out, rows)
    if config.output is not None:
        copy_tokenizer_files(Path(config.model).expanduser(), out)
    report["variants"] = _keep_earlier_rows(out / "parity.json", report, config)
    atomic.write_json(out / "parity.json", report)
    atomic.write_json(out / "export.json", {**asdict(config), **versions()})
    if rejected and strict:
        worst = ", ".join(f"{b} loses {report['variants'][b]['f1_drop']:.2f} F1" for b in rejected)
        raise UserError(
            f"{worst} on {config.dev} (budget --max-f1-drop {config.max_f1_drop}); kept as *.rejected.* "
            f"in {out}, see {out / 'parity.json'}"
            + (
                ""
                if config.per_channel or "onnx-int8" not in rejected
                else "; for ONNX int8, try --per-channel"
            )
        )
    return report


def _publish_files(
    files: dict[str, Path], rejected: list[str], out: Path, rows: dict[str, dict[str, Any]]
) -> None:
    """Move each backend's files into `out`: `model.int8.onnx`, or `model.int8.rejected.onnx` when rejected.

    An IR is two files (`.xml`, `.bin`); the bf16 backends share their sibling's files, which are rejected
    only with the sibling (a bf16 run over budget is marked in parity.json, and `auto` skips it).
    """
    by_file: dict[Path, list[str]] = {}
    for backend, path in files.items():
        by_file.setdefault(path, []).append(backend)
    for path, backends in by_file.items():
        owner = backends[0]  # the fp32-rest backend that the file was made for
        is_rejected = owner in rejected
        for file in [path, *([path.with_suffix(".bin")] if path.suffix == ".xml" else [])]:
            name = f"{file.stem}.rejected{file.suffix}" if is_rejected else file.name
            publish(file, out / name)
            if is_rejected:
                (out / file.name).unlink(missing_ok=True)  # a stale file of an earlier export must not run
        for backend in backends:
            rows[backend]["file"] = f"{path.stem}.rejected{path.suffix}" if is_rejected else path.name


def _check_installed(config: ExportConfig) -> None:
    import_onnxruntime()  # the parity check of the ONNX files, and onnx for the first graph of every format
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError(f"export needs the onnx package, which is missing: {INSTALL_HINT}") from None
    if "openvino" in config.formats:
        import_openvino()
        if config.quantize:
            from tinyroberta_es.openvino_export import import_nncf

            import_nncf()


def parity_questions(config: ExportConfig) -> tuple[Any, InferenceConfig]:
    """The dev questions of the parity check and the window settings they are read with."""
    dev = load_dataset(config.dev, bad_spans="keep")
    dev = dataclasses.replace(dev, examples=dev.examples[: config.dev_limit])
    if not dev.examples:
        raise UserError(f"--dev {config.dev} has no questions for the parity check: pick another dataset")
    inference = InferenceConfig(
        max_length=config.max_length,
        doc_stride=config.doc_stride,
        null_threshold=0.0 if dev.is_v2 else None,
    )
    return dev, inference


def _onnx_variants(
    config: ExportConfig, model: Any, tmp: Path, files: dict[str, Path], params: int
) -> dict[str, int] | None:
    """Fuse (and quantise) the TorchScript graph into `tmp`; adds the ONNX backends to `files`."""
    metadata = {"params": str(params), "source": str(config.model), "producer": "tinyroberta-es export"}
    files["onnx"] = tmp / ONNX_FILES["onnx"]
    fused_ops = fuse(tmp / "raw.onnx", files["onnx"], model.config) if config.optimize else None
    if fused_ops is None:
        shutil.copyfile(tmp / "raw.onnx", files["onnx"])
    if config.quantize == "int8":
        files["onnx-int8"] = tmp / ONNX_FILES["onnx-int8"]
        quantize_int8(files["onnx"], files["onnx-int8"], per_channel=config.per_channel)
    for backend in ("onnx", "onnx-int8"):
        if backend in files:
            set_metadata(files[backend], metadata)
    return fused_ops


def _openvino_variants(
    config: ExportConfig,
    tokenizer: Any,
    inference: InferenceConfig,
    ref: parity.ParitySet,
    input_names: tuple[str, ...],
    tmp: Path,
    files: dict[str, Path],
    params: int,
    rows: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Convert (and quantise with NNCF) into `tmp`, checking each OpenVINO backend; how int8 was made."""
    from tinyroberta_es import openvino_export

    fp32 = tmp / IR_FILES["openvino"]
    openvino_export.convert(tmp / "raw.onnx", fp32, params)
    files["openvino"] = fp32
    bf16 = has_bf16()
    if bf16:
        files["openvino-bf16"] = fp32
    if config.quantize != "int8":
        return {}
    int8 = tmp / IR_FILES["openvino-int8"]
    windows, questions, calibration = calibration_set(config, tokenizer, inference, input_names)
    how = openvino_export.quantize(fp32, int8, windows, smooth_quant_alpha=config.smooth_quant_alpha)
    rows["openvino-int8"] = parity.check(ref, _runner("openvino-int8", int8))
    method = config.int8_method
    if method == "accuracy-aware" or (
        method == "auto" and rows["openvino-int8"]["f1_drop"] > config.max_f1_drop
    ):
        plain = {**how, "f1_drop": rows["openvino-int8"]["f1_drop"]}
        f1_of = parity.f1_function(
            tokenizer, inference, lambda c: compiled_runner(c, "openvino-int8"), questions
        )
        how = openvino_export.quantize_accuracy_aware(
            fp32, int8, windows, questions.examples, f1_of, max_drop=config.max_f1_drop
        )
        how["plain_attempt"] = plain
        rows["openvino-int8"] = parity.check(ref, _runner("openvino-int8", int8))
    files["openvino-int8"] = int8
    if bf16:
        files["openvino-int8-bf16"] = int8
    return {"openvino-int8": {**how, **calibration}}


def calibration_set(
    config: ExportConfig, tokenizer: Any, inference: InferenceConfig, input_names: tuple[str, ...]
) -> tuple[list[dict[str, np.ndarray]], Any, dict[str, Any]]:
    """Calibration windows and validation questions for OpenVINO int8, and where they come from.

    One window per question (its first, unpadded), from `calibration_size` questions in a fixed random order;
    a set with fewer questions gives fewer windows. From `--calibration` (default: `--dev`). Taken from the
    dev set, they are the questions after the ones the parity check uses when there are any, so the check
    scores questions the calibration did not see.
    """
    name = config.calibration or config.dev
    data = load_dataset(name, bad_spans="keep")
    examples = list(data.examples)
    overlaps = False
    if name == config.dev:
        rest = examples[config.dev_limit :] if config.dev_limit else []
        overlaps = not rest
        examples = rest or examples
    order = np.random.default_rng(0).permutation(len(examples))
    examples = [examples[i] for i in order]
    features = prepare_features(
        examples[: config.calibration_size],
        tokenizer,
        max_length=inference.max_length,
        doc_stride=inference.doc_stride,
        max_query_length=inference.max_query_length,
    )
    first = sorted({int(q): i for i, q in reversed(list(enumerate(features.example_index)))}.values())
    windows = [
        {k: v for k, v in features.batch([i]).items() if k in input_names} for i in first
    ]  # (1, T_i) each
    questions = dataclasses.replace(data, examples=examples[: config.validation_size])
    info = {
        "calibration_set": name,
        "calibration_questions": len(windows),
        "calibration_overlaps_parity": overlaps,
    }
    if overlaps:
        log.warning("calibrating on the parity questions of %s: pass --calibration another set", name)
    return windows, questions, info


def _runner(backend: str, path: Path) -> Runner:
    """A runner on a file still in the temporary folder: parity is checked before anything is published."""
    if backend.startswith("onnx"):
        return onnx_runner(path, name=backend, dtype="int8" if "int8" in backend else "float32")
    precision = "bf16" if backend.endswith("bf16") else "f32"
    return ov_runner(path, name=backend, precision=precision)


def _keep_earlier_rows(path: Path, report: dict[str, Any], config: ExportConfig) -> dict[str, Any]:
    """This export's rows, plus an earlier parity.json's rows of formats not exported now (same check)."""
    if not path.is_file():
        return report["variants"]
    earlier = json.loads(path.read_text(encoding="utf-8"))
    same = all(earlier.get(k) == report[k] for k in ("dev", "questions", "max_length", "doc_stride"))
    if not same:
        return report["variants"]
    formats = {"onnx": "onnx", "openvino": "openvino"}
    kept = {
        b: row
        for b, row in earlier.get("variants", {}).items()
        if b not in report["variants"] and formats.get(b.split("-")[0]) not in config.formats
    }
    return {**report["variants"], **kept}


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


def fuse(src: Path, dst: Path, model_config: Any) -> dict[str, int] | None:
    """Fuse `src` into `dst` with ONNX Runtime's BERT optimizer; the fused op counts, or None if it failed."""
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
    optimized.save_model_to_file(str(dst))
    return ops


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = False) -> None:
    """Dynamic int8 quantisation of `src` (int8 weights; activations quantised per call) into `dst`."""
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
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    log.info("quantised %s to int8 (%s)", src.name, "per channel" if per_channel else "per tensor")


class _DropRootRecords(logging.Filter):
    """Drop records below ERROR logged on the root logger itself (not on named loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Store `metadata` in the model file (ONNX Runtime exposes it as the custom metadata map)."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def publish(src: Path, dst: Path) -> None:
    """Move a finished file into place atomically (flushed to disk first)."""
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)


def copy_tokenizer_files(model_dir: Path, out: Path) -> None:
    """Copy the config and tokenizer files so that `out` loads on its own (`make_runner`, `--model out`)."""
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            with atomic.atomic_path(out / name) as tmp:
                shutil.copyfile(model_dir / name, tmp)


def versions() -> dict[str, str]:
    """Versions of the libraries that made the export."""
    import onnx
    import onnxruntime
    import transformers

    from tinyroberta_es import __version__

    return {
        "tinyroberta_es_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
