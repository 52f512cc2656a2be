"""The `bench` command end to end on two tiny models, its FLOP count, its timers and peaks, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyroberta_es import bench, timing
from tinyroberta_es.cli import main
from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer

TINY_SHAPES = ((128, 128, 128), (64, 256, 128))  # the peaks in milliseconds, not seconds


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-layer 'teacher' and a 1-layer 'student' sharing a tiny BPE; the student has an int8 ONNX export."""
    root = tmp_path_factory.mktemp("bench-models")
    tokenizer = train_tokenizer("bpe", spanish_texts(), root / "tokenizer", vocab_size=1000)
    big = create_tiny_qa_model(root / "big", tokenizer, layers=2, hidden=64, heads=4, intermediate=128)
    small = create_tiny_qa_model(root / "small", tokenizer, layers=1, hidden=32, heads=2, intermediate=64)
    try:
        from tinyroberta_es.onnx_export import ExportConfig, export_model

        export_model(
            ExportConfig(
                model=str(small),
                quantize="int8",
                dev_limit=4,
                max_length=64,
                doc_stride=16,
                max_f1_drop=100.0,
            )  # random weights: F1 means nothing, so no F1 budget
        )
    except ImportError:
        pass  # no onnxruntime: the onnx-int8 rows are skipped, as for the big model
    return big, small


@pytest.fixture(scope="module")
def run(models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `bench` run over both models on pytorch and onnx-int8, with F1 scores; its files and report."""
    big, small = models
    out = tmp_path_factory.mktemp("bench-out")
    scores = out / "scores.json"
    scores.write_text(json.dumps({"big": {"f1": 50.0}, str(small): 40.0}), encoding="utf-8")
    argv = ["bench", "--models", str(big), str(small), "--backends", "pytorch,onnx-int8"]
    argv += ["--questions", "3", "--batch-size", "2", "--seq-len", "48", "--threads", "1"]
    argv += ["--scores", str(scores), "--output", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "PEAK_SHAPES", TINY_SHAPES)
        status = main(argv)
    assert status == 0
    return {"out": out, "report": json.loads((out / "bench.json").read_text(encoding="utf-8"))}


def test_bench_writes_json_markdown_and_png_with_every_field(run):
    out, report = run["out"], run["report"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "bench.md").read_text(encoding="utf-8")
    assert table.startswith("| model | backend |")
    pairs = [(r["model"], r["backend"]) for r in report["rows"]]
    assert pairs[:2] == [("big", "pytorch"), ("small", "pytorch")]
    for row in report["rows"]:
        assert f"| {row['model']} | {row['backend']} |" in table
        assert row["device"] == "cpu" and row["threads"] == 1
        assert row["dtype"] == {"pytorch": "float32", "onnx-int8": "int8"}[row["backend"]]
        assert row["params"] > 0 and row["weights_bytes"] > 0
        assert row["seq_len"] == 48 and row["batch_size"] == 2 and row["questions"] == 3
        assert row["latency_ms_b1"] == row["latency_b1"]["p50"] > 0
        assert row["fixed_ms_b1"] == row["fixed_b1"]["p50"] > 0
        assert row["throughput"] > 0 and row["sequences_per_s"] > 0
        assert row["flops_per_sequence"] == bench.matmul_flops(_config(row["folder"]), 48)
        assert row["peak"] == bench.PEAK_OF_BACKEND[row["backend"]]
        assert row["fraction_of_peak"] == pytest.approx(
            row["gflops_b1"] / report["peaks"][row["peak"]]["gflops"]
        )
    assert set(report["peaks"]) >= {"torch-fp32", "torch-bf16"}
    assert report["machine"]["cores"] >= 1 and report["command"].startswith("tinyroberta-es bench")


def test_speedups_are_against_the_first_model_first_backend(run):
    rows = run["report"]["rows"]
    first = rows[0]
    assert run["report"]["baseline"] == {"model": "big", "backend": "pytorch"}
    assert first["speedup_vs_first"] == pytest.approx(
        {"latency_b1": 1.0, "fixed_b1": 1.0, "throughput": 1.0, "sequences_per_s": 1.0}
    )
    for row in rows:
        s = row["speedup_vs_first"]
        assert s["fixed_b1"] == pytest.approx(first["fixed_ms_b1"] / row["fixed_ms_b1"])
        assert s["latency_b1"] == pytest.approx(first["latency_ms_b1"] / row["latency_ms_b1"])
        assert s["throughput"] == pytest.approx(row["throughput"] / first["throughput"])
        assert s["sequences_per_s"] == pytest.approx(row["sequences_per_s"] / first["sequences_per_s"])


def test_percentiles_are_ordered(run):
    for row in run["report"]["rows"]:
        for key in ("latency_b1", "fixed_b1", "fixed_batch"):
            p = row[key]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"], (row["model"], row["backend"], key, p)


def test_missing_onnx_exports_are_skipped_and_said(run, models):
    report = run["report"]
    skipped = {(s["model"], s["backend"]): s["reason"] for s in report["skipped"]}
    assert "tinyroberta-es export --model" in skipped[("big", "onnx-int8")]
    assert "Skipped:" in (run["out"] / "bench.md").read_text(encoding="utf-8")
    if ("small", "onnx-int8") not in skipped:  # onnxruntime is installed: the student's export ran
        row = next(r for r in report["rows"] if r["backend"] == "onnx-int8")
        assert row["weights_bytes"] == (models[1] / "onnx" / "model.int8.onnx").stat().st_size
        assert row["peak"] == "ort-int8" and row["fraction_of_peak"] > 0


def test_scores_put_f1_on_rows_by_name_or_folder(run):
    f1 = {(r["model"], r["backend"]): r.get("f1") for r in run["report"]["rows"]}
    assert f1[("big", "pytorch")] == 50.0
    assert f1[("small", "pytorch")] == 40.0


def test_plot_without_scores_draws_latency_bars(run, tmp_path):
    from tinyroberta_es.commands.bench import plot

    report = json.loads(json.dumps(run["report"]))
    for row in report["rows"]:
        row.pop("f1", None)
    plot(report, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000


def test_matmul_flops_by_hand_and_against_torch_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import RobertaConfig, RobertaForQuestionAnswering

    tiny = RobertaConfig(
        vocab_size=50,
        hidden_size=4,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=16,
        attn_implementation="eager",  # explicit matmuls, which the counter sees (SDPA on CPU it does not)
    )
    # T=3, H=4, F=8 per layer: projections 2*3*(4*16) = 384, FFN 2*3*(2*32) = 384, scores+context
    # 2*2*9*4 = 144; two layers 1824; QA head 2*3*4*2 = 48.
    assert bench.matmul_flops(tiny, 3) == 2 * (384 + 384 + 144) + 48 == 1872
    model = RobertaForQuestionAnswering(tiny).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=torch.randint(3, 50, (1, 11)))
    assert counter.get_total_flops() == bench.matmul_flops(tiny, 11)


def test_measure_peaks_returns_positive_rates_for_every_engine():
    pytest.importorskip("onnxruntime")
    peaks = timing.measure_peaks(TINY_SHAPES, threads=1, repeats=2)
    assert set(peaks) == set(bench.PEAK_OF_BACKEND.values())
    for peak in peaks.values():
        assert peak["gflops"] > 0
        assert tuple(peak["shape"]) in TINY_SHAPES


def test_percentiles_and_time_calls():
    p = timing.percentiles([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert (
        p["p50"] == pytest.approx(50.5)
        and p["p90"] == pytest.approx(90.1)
        and p["p99"] == pytest.approx(99.01)
    )
    assert p["n"] == 100
    calls = []
    times = timing.time_calls(lambda: calls.append(1), warmup=3, repeats=5)
    assert len(calls) == 8 and len(times) == 5
    calls.clear()
    times = timing.time_calls(lambda: calls.append(1), warmup=0, repeats=50, budget_s=0.0, min_repeats=2)
    assert len(times) == 2  # the budget is spent at once: only the minimum


def _one_line_error(capsys, argv: list[str], *needles: str) -> None:
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err


def test_bad_input_exits_2_with_one_line(models, tmp_path, capsys):
    big, _ = models
    out = ["--output", str(tmp_path / "out")]
    _one_line_error(capsys, ["bench", "--models", str(tmp_path / "nope"), *out], "does not exist", "nope")
    _one_line_error(
        capsys, ["bench", "--models", str(big), "--backends", "pytorch,tensorrt", *out], "'tensorrt'"
    )
    _one_line_error(capsys, ["bench", "--models", *out], "no models")
    _one_line_error(capsys, ["bench", "--models", str(big), "--questions", "0", *out], "--questions 0")
    assert not (tmp_path / "out").exists()


def _config(folder: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)
