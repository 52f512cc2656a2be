"""`tinyroberta-es export`: a QA model in ONNX and/or OpenVINO IR (fp32, int8), checked against PyTorch."""

from __future__ import annotations

import argparse
import logging

HELP = (
    "export a QA model to ONNX and/or OpenVINO (fp32, optionally int8), checked against PyTorch on a dev set"
)

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `export` flags to `parser`."""
    parser.add_argument("--model", required=True, help="QA model folder (config, weights, tokenizer)")
    parser.add_argument(
        "--output",
        default=None,
        help="folder for the ONNX files (default MODEL/onnx; elsewhere, the tokenizer is copied there too)",
    )
    parser.add_argument(
        "--format",
        default="onnx",
        help="onnx, openvino, or onnx,openvino (default onnx); the IR goes beside the ONNX files",
    )
    parser.add_argument("--quantize", default=None, metavar="int8", help="also write an int8 model")
    parser.add_argument(
        "--calibration",
        default=None,
        help="dataset of the OpenVINO int8 calibration windows (default: --dev, unchecked questions)",
    )
    parser.add_argument("--calibration-size", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument(
        "--int8-method",
        default="auto",
        help="OpenVINO int8: plain (NNCF), accuracy-aware, or auto: the second when plain misses the budget",
    )
    scales = parser.add_mutually_exclusive_group()
    scales.add_argument(
        "--per-tensor",
        action="store_true",
        help="ONNX int8 with one scale per weight tensor instead of per column (the default, which lost "
        "0.5 F1 where per tensor lost 4.9 on a trained model)",
    )
    scales.add_argument("--per-channel", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--no-optimize", action="store_true", help="keep the graph unfused")
    parser.add_argument(
        "--dev",
        default="auto",
        help="dataset of the parity check: a name or a SQuAD file; auto (default): a real Spanish dev set "
        "on this machine the model did not train on (xquad_es, mlqa_es_dev, squad_es_v1.1_dev), else the "
        "embedded sample, with a warning",
    )
    parser.add_argument(
        "--dev-limit", type=int, default=None, help="only its first N questions (auto: at most 2000)"
    )
    parser.add_argument("--max-length", type=int, default=384, help="tokens per dev window (default 384)")
    parser.add_argument("--doc-stride", type=int, default=128, help="tokens shared by windows (default 128)")
    parser.add_argument(
        "--max-f1-drop",
        type=float,
        default=1.0,
        help="fail when an exported model loses more F1 points than this on --dev (default 1.0)",
    )
    parser.add_argument(
        "--min-identical",
        type=float,
        default=None,
        help="fail when an exported model gives PyTorch fp32's answer to a smaller share of --dev than this "
        "(0 to 1; default per precision: 0.98 fp32, 0.90 bf16, 0.70 int8)",
    )


def run(args: argparse.Namespace) -> None:
    """Export, fuse, quantise, check parity; print the parity table."""
    from tinyroberta_es.onnx_export import ExportConfig, export_model
    from tinyroberta_es.parity import format_report

    config = ExportConfig(
        model=args.model,
        output=args.output,
        quantize=args.quantize,
        per_channel=not args.per_tensor,
        optimize=not args.no_optimize,
        dev=args.dev,
        dev_limit=args.dev_limit,
        max_length=args.max_length,
        doc_stride=args.doc_stride,
        max_f1_drop=args.max_f1_drop,
        min_identical=args.min_identical,
        formats=tuple(f.strip() for f in args.format.split(",") if f.strip()),
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        int8_method=args.int8_method,
    )
    report = export_model(config)
    print(format_report(report))
    print(f"wrote {config.output_dir}")
