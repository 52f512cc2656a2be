"""Export a QA model to ONNX (fp32 fused; int8) and OpenVINO IR (fp32; NNCF int8), checked against PyTorch.

The steps, each chosen because the alternative measurably failed on this project's models:

1. Load the model with eager attention and export with the TorchScript exporter (`dynamo=False`): ONNX
   Runtime's transformer optimizer recognises that graph's attention pattern; the dynamo exporter's graph
   did not fuse. Batch and sequence axes are dynamic.
2. Fuse with ONNX Runtime's BERT optimizer (one Attention per layer, SkipLayerNormalization, BiasGelu;
   timings in `runtimes/pytorch.py`). If fusion fails, the unfused graph is kept and the export says so.
3. Quantise the fused graph to int8 (`quantize_dynamic`, weights int8, activations quantised at run time),
   with one scale per weight column (per channel): per tensor lost 4.86 F1 on a fine-tuned me5-small where
   per channel lost 0.48 (`benchmarks/results/int8-parity-me5.json`); `per_channel=False` opts out.
   Fused contrib ops have no type information, hence ``DefaultTensorType: FLOAT``. The default op types
   (MatMul, Attention, Gather) ran fastest and smallest on the 6x512 student: 30 ms and 51 MB against
   39 ms and 143 MB for MatMul alone.
4. With `formats` holding "openvino": the unfused graph of step 1 converted to OpenVINO IR, and with int8
   quantised by NNCF on real calibration windows (`openvino_export.py`).
5. Parity (`parity.py`): logits of every backend against PyTorch fp32 on the dev windows (`dev="auto"`: a
   real Spanish dev set found on this machine), and EM/F1 of each (PyTorch bf16 and the OpenVINO bf16 runs
   too, which need no file of their own); a variant that loses more than `max_f1_drop` F1, or gives fewer
   identical answers than `min_identical`, fails the export and is kept only as `*.rejected.*`.

A model whose fp32 weights exceed `EXTERNAL_DATA_BYTES` (protobuf caps a file at 2 GiB; a 24-layer
teacher passes it) gets ONNX graphs with their weights in a file beside each, `model.onnx` and
`model.onnx.data`, which ONNX Runtime finds by that name; the two move, and are rejected, together.

Nothing is published until the parity check has run: files are built in a temporary folder inside the
output folder and moved into place one by one with `os.replace`.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tinyroberta_es import atomic, openvino_export, parity
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.errors import UserError
from tinyroberta_es.inference import InferenceConfig
from tinyroberta_es.onnx_files import (
    copy_onnx,
    copy_tokenizer_files,
    gather_external_data,
    publish,
    publish_onnx,
    set_metadata,
)
from tinyroberta_es.onnx_graph import fuse, quantize_int8, torchscript_export
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
from tinyroberta_es.runtimes.ort import data_file
from tinyroberta_es.runtimes.ov import compiled_runner, ir_files

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8",)
FORMATS = ("onnx", "openvino")
FILE_OWNERS = ("onnx", "onnx-int8", "openvino", "openvino-int8")  # the backends an export writes files for
INT8_METHODS = ("auto", "plain", "accuracy-aware")  # OpenVINO int8; auto: accuracy-aware when plain misses
# protobuf caps a serialised model at 2 GiB; the margin covers the graph itself and constant tensors. Larger
# fp32 weights: ONNX weights in <file>.data.
EXTERNAL_DATA_BYTES = 2**31 - 2**27


@dataclass
class ExportConfig:
    """What `tinyroberta-es export` does; saved as `export.json` beside the ONNX files."""

    model: str  # the QA model folder to export
    output: str | None = None  # default: <model>/onnx
    quantize: str | None = None  # None or "int8"
    optimize: bool = True  # fuse with ONNX Runtime's transformer optimizer
    opset: int = 17
    per_channel: bool = True  # int8 scales per weight column; False: one per tensor (lost 4.86 F1 once)
    dev: str = "auto"  # dataset for the parity check; auto: a real dev set on this machine, else the sample
    dev_limit: int | None = None  # only its first N questions (auto: at most parity.AUTO_MAX_QUESTIONS)
    max_length: int = 384  # window length of the parity check
    doc_stride: int = 128
    max_f1_drop: float = 1.0  # a variant that loses more F1 (points) than this fails the export
    # a variant with a smaller share of answers identical to PyTorch fp32's fails; None: parity.MIN_IDENTICAL
    min_identical: float | None = None
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
        if self.min_identical is not None and not 0 <= self.min_identical <= 1:
            problems.append(f"--min-identical {self.min_identical} must be a share from 0 to 1, e.g. 0.9")
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

    A variant over the F1 budget, or under its share of identical answers, is kept as `*.rejected.*` and named
    in `report["rejected"]`; with `strict` (the `export` command) that is an error, without it (`run`) the
    caller reports it.
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
    external = 4 * params > EXTERNAL_DATA_BYTES  # fp32 bytes of the weights
    choice = parity.choose_dev(config.dev, config.model, config.dev_limit)
    log.info("parity questions: %s", choice.reason)
    dev_set = load_dataset(choice.source, bad_spans="keep")  # read once: parity's questions, calibration's
    dev, inference = parity.questions(
        choice, config.max_length, config.doc_stride, config.max_f1_drop, data=dev_set
    )
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp_name:
        tmp = Path(tmp_name)
        input_names = torchscript_export(model, tokenizer, tmp / "raw.onnx", config.opset)
        if external:  # later steps read one weights file; past 2 GiB the exporter writes one per tensor
            gather_external_data(tmp / "raw.onnx")
        ref = parity.reference(dev, tokenizer, torch_runner(model), inference)
        rows: dict[str, dict[str, Any]] = {"pytorch": ref.reference}
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        rows["pytorch-bf16"] = parity.check(ref, torch_runner(bf16, name="pytorch-bf16"))
        model_config = model.config
        del bf16, model  # PyTorch is done: its memory goes back before fusion and quantisation (a 2 GB model)
        files: dict[str, Path] = {}  # backend -> the file it loads, in tmp
        fused_ops, int8 = None, {}
        if "onnx" in config.formats:
            fused_ops = _onnx_variants(config, model_config, tmp, files, params, external)
        if "openvino" in config.formats:
            int8 = _openvino_variants(
                config, choice, dev_set, tokenizer, inference, ref, input_names, tmp, files, params, rows
            )
        for backend, path in files.items():
            if backend not in rows:
                rows[backend] = parity.check(ref, _runner(backend, path))
        rows = {b: rows[b] for b in BACKENDS if b in rows}  # the registry's order: engine, then dtype
        report = {
            "dev": choice.name,
            "dev_source": choice.source,
            "dev_reason": choice.reason,
            "questions": len(dev.examples),
            "windows": len(ref.features),
            "max_length": config.max_length,
            "doc_stride": config.doc_stride,
            "normalization": "mlqa-es",
            "max_f1_drop": config.max_f1_drop,
            "min_identical": config.min_identical,  # None: per precision, each row's min_identical
            "variants": rows,
            "int8": int8,
        }
        # Only a backend with files of its own fails the export; a bf16 run that fails is marked not passed.
        failed = parity.judge(report, config.max_f1_drop, config.min_identical)
        rejected = [b for b in failed if b in FILE_OWNERS]
        report.update(
            fused_ops=fused_ops,
            input_names=list(input_names),
            params=params,
            external_data=external and "onnx" in config.formats,
            rejected=rejected,
        )
        _publish_files(files, rejected, out, rows)
    if config.output is not None:
        copy_tokenizer_files(Path(config.model).expanduser(), out)
    report["variants"] = _keep_earlier_rows(out / "parity.json", report, config)
    atomic.write_json(out / "parity.json", report)
    atomic.write_json(out / "export.json", {**asdict(config), **versions()})
    if rejected and strict:
        why = "; ".join(f"{b} {' and '.join(report['variants'][b]['failed'])}" for b in rejected)
        hint = ""
        if "onnx-int8" in rejected:
            hint = (
                "; for ONNX int8, drop --per-tensor"
                if not config.per_channel
                else "; for int8, try --format openvino (NNCF int8, calibrated, accuracy-aware)"
            )
        raise UserError(
            f"{why} on {choice.name}; kept as *.rejected.* in {out}, see {out / 'parity.json'}{hint}"
        )
    return report


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


def _publish_files(
    files: dict[str, Path], rejected: list[str], out: Path, rows: dict[str, dict[str, Any]]
) -> None:
    """Move each backend's files into `out`: `model.int8.onnx`, or `model.int8.rejected.onnx` when rejected.

    An IR is two files (`.xml`, `.bin`), an ONNX graph with external data two (`.onnx`, `.onnx.data`); the
    bf16 backends share their sibling's files, which are rejected only with the sibling (a bf16 run that fails
    is marked in parity.json, and `auto` skips it).
    """
    by_file: dict[Path, list[str]] = {}
    for backend, path in files.items():
        by_file.setdefault(path, []).append(backend)
    for path, backends in by_file.items():
        owner = backends[0]  # the fp32-rest backend that the file was made for
        name = f"{path.stem}.rejected{path.suffix}" if owner in rejected else path.name
        onnx = path.suffix == ".onnx"
        if onnx:
            publish_onnx(path, out / name)
        else:
            for file in ir_files(path):
                publish(file, out / f"{Path(name).stem}{file.suffix}")
        if name != path.name:  # a stale file of an earlier export must not run
            stale = out / path.name
            for file in [stale, data_file(stale)] if onnx else ir_files(stale):
                file.unlink(missing_ok=True)
        for backend in backends:
            rows[backend]["file"] = name


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


def _onnx_variants(
    config: ExportConfig, model_config: Any, tmp: Path, files: dict[str, Path], params: int, external: bool
) -> dict[str, int] | None:
    """Fuse (and quantise) the TorchScript graph into `tmp`; adds the ONNX backends to `files`."""
    metadata = {"params": str(params), "source": str(config.model), "producer": "tinyroberta-es export"}
    files["onnx"] = tmp / ONNX_FILES["onnx"]
    fused_ops = fuse(tmp / "raw.onnx", files["onnx"], model_config, external) if config.optimize else None
    if fused_ops is None:
        copy_onnx(tmp / "raw.onnx", files["onnx"])
    if config.quantize == "int8":
        files["onnx-int8"] = tmp / ONNX_FILES["onnx-int8"]
        quantize_int8(files["onnx"], files["onnx-int8"], per_channel=config.per_channel, external=external)
    for backend in ("onnx", "onnx-int8"):
        if backend in files:
            set_metadata(files[backend], metadata)
    return fused_ops


def _openvino_variants(
    config: ExportConfig,
    dev: parity.DevChoice,
    dev_set: Any,
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
    fp32 = tmp / IR_FILES["openvino"]
    openvino_export.convert(tmp / "raw.onnx", fp32, params)
    files["openvino"] = fp32
    bf16 = has_bf16()
    if bf16:
        files["openvino-bf16"] = fp32
    if config.quantize != "int8":
        return {}
    int8 = tmp / IR_FILES["openvino-int8"]
    windows, questions, calibration = openvino_export.calibration_set(
        config.calibration,
        dev,
        dev_set,
        tokenizer,
        inference,
        input_names,
        size=config.calibration_size,
        validation_size=config.validation_size,
    )
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


def _runner(backend: str, path: Path) -> Runner:
    """A runner on a file still in the temporary folder: parity is checked before anything is published."""
    if backend.startswith("onnx"):
        return onnx_runner(path, name=backend, dtype="int8" if "int8" in backend else "float32")
    precision = "bf16" if backend.endswith("bf16") else "f32"
    return ov_runner(path, name=backend, precision=precision)


def _keep_earlier_rows(path: Path, report: dict[str, Any], config: ExportConfig) -> dict[str, Any]:
    """This export's rows, plus an earlier parity.json's rows of formats not exported now, when that export
    made the same check: the same questions and windows, and the same gates (a row's `passed` is its verdict
    under them)."""
    if not path.is_file():
        return report["variants"]
    earlier = json.loads(path.read_text(encoding="utf-8"))
    check = ("dev", "questions", "max_length", "doc_stride", "max_f1_drop", "min_identical")
    same = all(earlier.get(k) == report[k] for k in check)
    if not same:
        return report["variants"]
    formats = {"onnx": "onnx", "openvino": "openvino"}
    kept = {
        b: row
        for b, row in earlier.get("variants", {}).items()
        if b not in report["variants"] and formats.get(b.split("-")[0]) not in config.formats
    }
    return {**report["variants"], **kept}
