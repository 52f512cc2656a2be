"""Export a QA model to ONNX (fp32, fused; int8) and check each file against PyTorch on a dev set.

The steps, each chosen because the alternative measurably failed on this project's models:

1. Load the model with eager attention and export with the TorchScript exporter (`dynamo=False`): ONNX
   Runtime's transformer optimizer recognises that graph's attention pattern; the dynamo exporter's graph
   did not fuse. Batch and sequence axes are dynamic.
2. Fuse with ONNX Runtime's BERT optimizer (one Attention per layer, SkipLayerNormalization, BiasGelu;
   timings in `backends.py`). If fusion fails, the unfused graph is kept and the export says so.
3. Quantise the fused graph to int8 (`quantize_dynamic`, weights int8, activations quantised at run time).
   Fused contrib ops have no type information, hence ``DefaultTensorType: FLOAT``. The default op types
   (MatMul, Attention, Gather) ran fastest and smallest on the 6x512 student: 30 ms and 51 MB against
   39 ms and 143 MB for MatMul alone.
4. Parity: logits of every ONNX file against PyTorch fp32 on the dev windows, and EM/F1 of each; a variant
   that loses more than `max_f1_drop` F1 fails the export and is kept only as `*.rejected.onnx`.

Nothing is published until the parity check has run: files are built in a temporary folder inside the
output folder and moved into place one by one with `os.replace`.
"""

from __future__ import annotations

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

from tinyroberta_es import atomic
from tinyroberta_es.backends import INSTALL_HINT, ONNX_DIR, ONNX_FILES, import_onnxruntime, onnx_runner
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8",)
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

    A variant over the F1 budget is kept as `*.rejected.onnx` and named in `report["rejected"]`; with
    `strict` (the `export` command) that is an error, without it (`run`) the caller reports it.
    """
    from tinyroberta_es.inference import load_qa_model

    config.validate()
    import_onnxruntime()
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError(f"export needs the onnx package, which is missing: {INSTALL_HINT}") from None
    model, tokenizer = load_qa_model(config.model, attn_implementation="eager")
    out = config.output_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --output {out} ({err.strerror or err}): check the path") from None
    params = sum(p.numel() for p in model.parameters())
    metadata = {"params": str(params), "source": str(config.model), "producer": "tinyroberta-es export"}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp_name:
        tmp = Path(tmp_name)
        input_names = torchscript_export(model, tokenizer, tmp / "raw.onnx", config.opset)
        variants = {"onnx": tmp / ONNX_FILES["onnx"]}
        fused_ops = None
        if config.optimize:
            fused_ops = fuse(tmp / "raw.onnx", variants["onnx"], model.config)
        if fused_ops is None:
            os.replace(tmp / "raw.onnx", variants["onnx"])
        if config.quantize == "int8":
            variants["onnx-int8"] = tmp / ONNX_FILES["onnx-int8"]
            quantize_int8(variants["onnx"], variants["onnx-int8"], per_channel=config.per_channel)
        for path in variants.values():
            set_metadata(path, metadata)
        report = parity_report(model, tokenizer, variants, config)
        rejected = over_budget(report, config.max_f1_drop)
        report.update(fused_ops=fused_ops, input_names=list(input_names), params=params, rejected=rejected)
        for backend, path in variants.items():
            name = path.name.replace(".onnx", ".rejected.onnx") if backend in rejected else path.name
            publish(path, out / name)
            if backend in rejected:
                (out / path.name).unlink(missing_ok=True)  # a stale file from an earlier export must not run
            report["variants"][backend]["file"] = name
    if config.output is not None:
        copy_tokenizer_files(Path(config.model).expanduser(), out)
    atomic.write_json(out / "parity.json", report)
    atomic.write_json(out / "export.json", {**asdict(config), **versions()})
    if rejected and strict:
        worst = ", ".join(f"{b} loses {report['variants'][b]['f1_drop']:.2f} F1" for b in rejected)
        raise UserError(
            f"{worst} on {config.dev} (budget --max-f1-drop {config.max_f1_drop}); kept as *.rejected.onnx "
            f"in {out}, see {out / 'parity.json'}"
            + ("" if config.per_channel else "; for int8, try --per-channel")
        )
    return report


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


def parity_report(model: Any, tokenizer: Any, variants: dict[str, Path], config: ExportConfig) -> dict:
    """Largest logit differences to PyTorch fp32 and EM/F1 on the dev windows, per variant."""
    import dataclasses

    from tinyroberta_es.backends import torch_runner
    from tinyroberta_es.data.loading import load_dataset
    from tinyroberta_es.evaluation import evaluate_predictions
    from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer

    dev = load_dataset(config.dev, bad_spans="keep")
    dev = dataclasses.replace(dev, examples=dev.examples[: config.dev_limit])
    if not dev.examples:
        raise UserError(f"--dev {config.dev} has no questions for the parity check: pick another dataset")
    inference = InferenceConfig(
        max_length=config.max_length,
        doc_stride=config.doc_stride,
        null_threshold=0.0 if dev.is_v2 else None,
    )
    reference = QuestionAnswerer(torch_runner(model), tokenizer, inference)
    features = reference.features(dev.examples)
    valid = np.arange(features.lengths.max())[None, :] < features.lengths[:, None]  # (N, L)
    ref_start, ref_end = reference.logits(features)
    runners = {"pytorch": reference.runner}
    for backend, path in variants.items():
        runners[backend] = onnx_runner(path, name=backend, dtype="int8" if "int8" in backend else "float32")
    report: dict[str, Any] = {
        "dev": config.dev,
        "questions": len(dev.examples),
        "windows": len(features),
        "max_length": config.max_length,
        "doc_stride": config.doc_stride,
        "normalization": "mlqa-es",
        "max_f1_drop": config.max_f1_drop,
        "variants": {},
    }
    reference_answers: dict[str, str] = {}
    for backend, runner in runners.items():
        answerer = QuestionAnswerer(runner, tokenizer, inference)
        start, end = (ref_start, ref_end) if backend == "pytorch" else answerer.logits(features)
        answers = {p.id: p.text for p in answerer.extract(dev.examples, features, start, end)}
        scores = evaluate_predictions(dev, answers, normalization="mlqa-es")
        row: dict[str, Any] = {
            "exact_match": float(scores.get("exact_match", scores.get("exact"))),
            "f1": float(scores["f1"]),
        }
        if backend == "pytorch":
            reference_answers = answers
        else:
            source = report["variants"]["pytorch"]
            row |= {
                "max_abs_diff_start": float(np.abs(start[valid] - ref_start[valid]).max()),
                "max_abs_diff_end": float(np.abs(end[valid] - ref_end[valid]).max()),
                "f1_drop": source["f1"] - row["f1"],
                "same_answers": sum(answers[q] == reference_answers[q] for q in answers) / len(answers),
            }
        report["variants"][backend] = row
    return report


def over_budget(report: dict[str, Any], max_f1_drop: float) -> list[str]:
    """The ONNX variants of a parity report that lose more than `max_f1_drop` F1 points."""
    return [b for b, row in report["variants"].items() if row.get("f1_drop", 0.0) > max_f1_drop]


def format_report(report: dict[str, Any]) -> str:
    """The parity report as a short aligned table."""
    header = ["backend", "file", "max|d start|", "max|d end|", "EM", "F1", "F1 drop", "same answers"]
    rows = [header]
    for backend, r in report["variants"].items():
        diffs = [f"{r[k]:.2e}" if k in r else "-" for k in ("max_abs_diff_start", "max_abs_diff_end")]
        rows.append(
            [
                backend,
                r.get("file") or "(source)",
                *diffs,
                f"{r['exact_match']:.2f}",
                f"{r['f1']:.2f}",
                f"{r['f1_drop']:+.2f}" if "f1_drop" in r else "-",
                f"{100 * r['same_answers']:.1f}%" if "same_answers" in r else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # names left-aligned, numbers right-aligned
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    title = f"parity on {report['dev']}: {report['questions']} questions, {report['windows']} windows"
    ops = report.get("fused_ops")
    graph = "fused: " + ", ".join(f"{n} {op}" for op, n in ops.items()) if ops else "not fused"
    return "\n".join([title, *map(line, rows), f"graph {graph}"])


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
