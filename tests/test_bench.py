"""The `bench` command end to end on two tiny models: its FLOP groups, peaks, fractions of peak, labelled
speedups, the `auto` backend, its timers, and bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tinyroberta_es import bench, timing
from tinyroberta_es.cli import main
from tinyroberta_es.runtimes import BACKENDS, engine_of
from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer

SEQ = 48
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
# (T, H, H), (T, F, H), (T, H, F) of the 64-wide teacher (F 128), then of the 32-wide student (F 64)
MODEL_SHAPES = [[SEQ, 64, 64], [SEQ, 128, 64], [SEQ, 64, 128], [SEQ, 32, 32], [SEQ, 64, 32], [SEQ, 32, 64]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-layer 'teacher' and a 1-layer 'student' sharing a tiny BPE; the student has int8 exports."""
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
                dev="sample",
                dev_limit=4,
                max_length=64,
                doc_stride=16,
                max_f1_drop=100.0,  # random weights: F1 means nothing, so no F1 budget
                min_identical=0.0,  # nor the share of identical answers
                formats=("onnx", "openvino") if HAS_OPENVINO else ("onnx",),
                calibration_size=8,
                validation_size=4,
            )
        )
    except ImportError:
        pass  # no onnxruntime: the exported rows are skipped, as for the big model
    return big, small


@pytest.fixture(scope="module")
def run(models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `bench` run over both models on pytorch, onnx-int8, openvino-int8 and auto, with F1 scores."""
    big, small = models
    out = tmp_path_factory.mktemp("bench-out")
    scores = out / "scores.json"
    scores.write_text(json.dumps({"big": {"f1": 50.0}, str(small): 40.0}), encoding="utf-8")
    argv = ["bench", "--models", str(big), str(small), "--backends", "pytorch,onnx-int8,openvino-int8,auto"]
    argv += ["--questions", "3", "--batch-size", "2", "--seq-len", str(SEQ), "--threads", "1"]
    argv += ["--scores", str(scores), "--output", str(out)]
    assert main(argv) == 0
    return {"out": out, "report": json.loads((out / "bench.json").read_text(encoding="utf-8"))}


def rows_of(report: dict, model: str) -> dict[str, dict]:
    """The model's rows by backend, a concrete row before an auto row that chose the same backend."""
    rows: dict[str, dict] = {}
    for r in sorted((r for r in report["rows"] if r["model"] == model), key=lambda r: "auto" in r):
        rows.setdefault(r["backend"], r)
    return rows


def test_bench_writes_json_markdown_and_png_with_every_field(run):
    out, report = run["out"], run["report"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "bench.md").read_text(encoding="utf-8")
    pairs = [(r["model"], r["backend"]) for r in report["rows"] if "auto" not in r]
    assert pairs[0] == ("big", "pytorch") and ("small", "pytorch") in pairs
    for row in report["rows"]:
        backend = f"{row['backend']} (auto)" if "auto" in row else row["backend"]
        assert f"| {row['model']} | {backend} |" in table
        assert row["device"] == "cpu" and row["threads"] == 1
        assert row["params"] > 0 and row["weights_bytes"] > 0
        assert row["seq_len"] == SEQ and row["batch_size"] == 2 and row["questions"] == 3
        assert row["latency_ms_b1"] == row["latency_b1"]["p50"] > 0
        assert row["fixed_ms_b1"] == row["fixed_b1"]["p50"] > 0
        assert row["throughput"] > 0 and row["sequences_per_s"] > 0
        config = _config(row["folder"])
        assert row["flops_by_group"] == bench.matmul_flops_by_group(config, SEQ)
        assert (
            row["flops_per_sequence"]
            == bench.matmul_flops(config, SEQ)
            == sum(row["flops_by_group"].values())
        )
    assert row_of(report, "big", "pytorch")["dtype"] == "float32"
    assert set(report["peaks"]) >= {"torch-float32", "torch-bfloat16"}
    assert report["machine"]["cores"] >= 1 and report["command"].startswith("tinyroberta-es bench")


def row_of(report: dict, model: str, backend: str) -> dict:
    return rows_of(report, model)[backend]


def test_fraction_of_peak_is_ideal_time_over_measured_time_with_each_group_at_its_dtype_peak(run):
    report = run["report"]
    for row in report["rows"]:
        assert row["fraction_of_peak_note"] is None, row["fraction_of_peak_note"]
        ideal_ms = 0.0
        for group, flops in row["flops_by_group"].items():
            used = row["peaks_used"][group]
            assert used["peak"] == f"{engine_of(row['backend'])}-{row['matmul_dtypes'][group]}"
            assert used["gflops"] == report["peaks"][used["peak"]]["gflops"]
            ideal_ms += flops / (used["gflops"] * 1e9) * 1e3
        assert row["ideal_ms_b1"] == pytest.approx(ideal_ms)
        assert row["fraction_of_peak"] == pytest.approx(ideal_ms / row["fixed_b1"]["p50"])
        assert row["fraction_of_peak_batch"] == pytest.approx(ideal_ms / (1e3 / row["sequences_per_s"]))
    assert row_of(report, "big", "pytorch")["peaks_used"]["linear"]["peak"] == "torch-float32"


def test_exported_rows_bound_int8_matmuls_by_the_int8_peak_of_their_engine(run, models):
    report = run["report"]
    skipped = {(s["model"], s["backend"]): s["reason"] for s in report["skipped"]}
    assert "tinyroberta-es export --model" in skipped[("big", "onnx-int8")]
    assert "--format openvino" in skipped[("big", "openvino-int8")]
    assert "Skipped:" in (run["out"] / "bench.md").read_text(encoding="utf-8")
    small = rows_of(report, "small")
    assert ("openvino-int8" in small) == HAS_OPENVINO  # the fixture exports the IR where openvino is
    if ("small", "onnx-int8") not in skipped:  # onnxruntime is installed: the student's export ran
        row = small["onnx-int8"]
        assert row["weights_bytes"] == (models[1] / "onnx" / "model.int8.onnx").stat().st_size
        assert row["matmul_dtypes"] == {"linear": "int8", "attention": "float32"}
        assert {g: u["peak"] for g, u in row["peaks_used"].items()} == {
            "linear": "ort-int8",
            "attention": "ort-float32",
        }
    if (
        "small",
        "openvino-int8",
    ) not in skipped:  # openvino is installed: dtypes read from the compiled graph
        row = small["openvino-int8"]
        assert row["matmul_dtypes"]["linear"] == "int8"
        assert row["peaks_used"]["linear"]["peak"] == "ov-int8"
        assert report["peaks"]["ov-int8"]["verified_int8"] is True


def test_peaks_are_timed_at_the_models_own_shapes_by_their_median(run):
    report = run["report"]
    assert report["peak_shapes"] == MODEL_SHAPES
    for key, peak in report["peaks"].items():
        assert key == f"{peak['engine']}-{peak['dtype']}"
        assert list(peak["by_shape"]) == [f"{m}x{n}x{k}" for m, n, k in MODEL_SHAPES]
        assert peak["gflops"] == max(peak["by_shape"].values()) > 0
        assert peak["statistic"].startswith("median")
    engines = {p["engine"] for p in report["peaks"].values()}
    assert engines >= {"torch"} | ({"ov"} if HAS_OPENVINO else set())


def test_measure_peaks_takes_the_median_of_the_timed_calls(monkeypatch):
    seconds = [0.004, 0.001, 0.002, 0.1, 0.003]  # median 0.003; the minimum would be 0.001
    monkeypatch.setattr(timing, "time_calls", lambda fn, **kw: seconds)
    shapes = ((8, 16, 32), (8, 32, 16), (16, 16, 32))
    peaks = timing.measure_peaks(shapes, threads=1)
    for peak in peaks.values():
        assert peak["by_shape"] == {
            f"{m}x{n}x{k}": pytest.approx(2 * m * n * k / 0.003 / 1e9) for m, n, k in shapes
        }
        assert peak["shape"] == [16, 16, 32] and peak["gflops"] == pytest.approx(
            2 * 16 * 16 * 32 / 0.003 / 1e9
        )


def test_ov_int8_peak_runs_an_int8_matmul_on_this_cpu():
    if not HAS_OPENVINO:
        pytest.skip("openvino is not installed: no OpenVINO peaks")
    _, is_int8 = timing.ov_matmul(SEQ, 64, 32, int8=True, threads=1)
    assert is_int8
    _, fp32_is_int8 = timing.ov_matmul(SEQ, 64, 32, int8=False, threads=1)
    assert not fp32_is_int8  # the check can tell
    peaks = timing.measure_peaks(((SEQ, 64, 32),), threads=1, repeats=2)
    assert peaks["ov-int8"]["verified_int8"] is True and peaks["ov-int8"]["gflops"] > 0
    assert {"ov-float32", "ov-int8"} <= set(peaks)


def test_matmul_flops_by_group_by_hand_and_against_torch_flop_counter():
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
    # T=3, H=4, F=8 per layer: projections 2*3*(4*16) = 384, FFN 2*3*(2*32) = 384, scores + context
    # 2*2*9*4 = 144. Linear: two layers of 768 and the QA head 2*3*4*2 = 48; attention: two layers of 144.
    assert bench.matmul_flops_by_group(tiny, 3) == {"linear": 1584, "attention": 288}
    assert bench.matmul_flops(tiny, 3) == 1872
    model = RobertaForQuestionAnswering(tiny).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=torch.randint(3, 50, (1, 11)))
    assert counter.get_total_flops() == bench.matmul_flops(tiny, 11)


def test_peak_bound_by_hand_and_when_it_cannot_be_given():
    flops = {"linear": 6_000_000, "attention": 1_000_000}
    peaks = {
        "ort-int8": {"gflops": 3.0, "device": "cpu"},
        "ort-float32": {"gflops": 1.0, "device": "cpu"},
        "torch-bfloat16": {"gflops": 100.0, "device": "cuda"},
        "ov-int8": {"gflops": 9.0, "device": "cpu", "verified_int8": False},
    }
    bound = bench.peak_bound(flops, {"linear": "int8", "attention": "float32"}, "ort", "cpu", peaks)
    assert bound.ideal_ms == pytest.approx(2.0 + 1.0) and bound.note is None  # 6e6 / 3e9 s + 1e6 / 1e9 s
    assert bound.peaks_used["linear"] == {"peak": "ort-int8", "gflops": 3.0}
    gpu = bench.peak_bound(flops, {"linear": "int8", "attention": "float32"}, "ort", "cuda", peaks)
    assert gpu.ideal_ms is None and "no fraction of a CPU peak for a GPU run" in gpu.note
    on_gpu = bench.peak_bound(
        flops, {"linear": "bfloat16", "attention": "bfloat16"}, "torch", "cuda:0", peaks
    )
    assert on_gpu.ideal_ms == pytest.approx(0.07) and on_gpu.note is None
    unknown = bench.peak_bound(flops, {"linear": "int8"}, "ort", "cpu", peaks)
    assert unknown.ideal_ms is None and "attention" in unknown.note
    assert "no torch-float32 peak" in bench.peak_bound(flops, {"linear": "float32"}, "torch", "cpu", {}).note
    unverified = bench.peak_bound(flops, {"linear": "int8", "attention": "int8"}, "ov", "cpu", peaks)
    assert unverified.ideal_ms is None and "did not compile to an int8" in unverified.note


def test_speedups_are_labelled_and_equal_the_ratios_of_the_medians(run):
    report = run["report"]
    s, rows = report["speedups"], report["rows"]
    big, small = rows_of(report, "big"), rows_of(report, "small")

    def ratios(row: dict, base: dict) -> dict:
        return {
            "fixed_b1": pytest.approx(base["fixed_ms_b1"] / row["fixed_ms_b1"]),
            "latency_b1": pytest.approx(base["latency_ms_b1"] / row["latency_ms_b1"]),
            "throughput": pytest.approx(row["throughput"] / base["throughput"]),
        }

    assert s["baseline_model"] == "big"
    for row in rows:
        same = big.get(row["backend"])
        assert row["speedup_like_for_like"] == (ratios(row, same) if same else None)
        assert row["speedup_vs_baseline_eager_fp32"] == ratios(row, big["pytorch"])
    assert small["pytorch"]["speedup_like_for_like"] == ratios(small["pytorch"], big["pytorch"])
    if "onnx-int8" in small:  # the baseline has no onnx-int8 row: nothing like for like
        assert small["onnx-int8"]["speedup_like_for_like"] is None
    assert [(e["model"], e["baseline_backend"]) for e in s["like_for_like"]] == [
        (r["model"], r["backend"]) for r in rows if r["backend"] in big
    ]
    fastest = {
        m: min((r for r in rows if r["model"] == m), key=lambda r: r["fixed_ms_b1"]) for m in ("big", "small")
    }
    assert s["best_vs_best"] == [
        {
            "model": m,
            "backend": r["backend"],
            "auto": "auto" in r,
            "baseline_model": "big",
            "baseline_backend": fastest["big"]["backend"],
        }
        | ratios(r, fastest["big"])
        for m, r in fastest.items()
    ]
    assert s["headline"] == s["best_vs_best"][1]
    assert rows[0]["speedup_vs_first"]["fixed_b1"] == 1.0  # kept for the report and the cards


def test_markdown_puts_the_headline_first_then_labelled_tables(run):
    report = run["report"]
    table = (run["out"] / "bench.md").read_text(encoding="utf-8")
    head = report["speedups"]["headline"]
    assert table.splitlines()[0].startswith(
        f"Headline (best against best): small on {head['backend']} is {head['fixed_b1']:.1f}x faster than "
        f"big on {head['baseline_backend']}"
    )
    order = ["Like for like:", "Against big in eager fp32", "Best against best:", "Measurements:"]
    assert [table.index(t) for t in order] == sorted(table.index(t) for t in order)


def test_write_report_names_the_speedups_as_the_rows_are_named(run, tmp_path):
    from tinyroberta_es.commands.bench import write_report

    report = json.loads(json.dumps(run["report"]))
    for row in report["rows"]:
        row["model"] = {"big": "teacher", "small": "student"}[row["model"]]
    write_report(report, tmp_path)
    assert (
        (tmp_path / "bench.md")
        .read_text(encoding="utf-8")
        .startswith("Headline (best against best): student on")
    )
    assert report["speedups"]["baseline_model"] == "teacher"


def test_auto_rows_name_the_backend_chosen_and_why(run):
    autos = [r for r in run["report"]["rows"] if "auto" in r]
    assert [r["model"] for r in autos] == ["big", "small"]
    for row in autos:
        assert row["backend"] == row["auto"]["chosen"] and row["backend"] in BACKENDS
        assert row["auto"]["reason"] and {c["backend"] for c in row["auto"]["candidates"]} >= {"pytorch"}
    assert "Chosen by auto:" in (run["out"] / "bench.md").read_text(encoding="utf-8")


def test_latency_series_have_100_samples_and_throughput_is_a_median_of_passes(run):
    for row in run["report"]["rows"]:
        assert row["latency_b1"]["n"] >= 100  # 3 questions, cycled
        assert row["fixed_b1"]["n"] == 100  # the default repeats, within the 20 s budget
        for key in ("latency_b1", "fixed_b1"):
            p = row[key]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"], (row["model"], row["backend"], key, p)
        assert row["e2e_batch"]["n"] == 3
        assert row["throughput"] == pytest.approx(3 / (row["e2e_batch"]["p50"] / 1e3))


def test_p99_needs_100_samples_and_the_table_shows_a_dash(run):
    assert timing.percentiles([0.001] * 99)["p99"] is None
    assert timing.percentiles([0.001] * 100)["p99"] == pytest.approx(1.0)
    from tinyroberta_es.commands.bench import markdown

    report = json.loads(json.dumps(run["report"]))
    report["rows"][0]["fixed_b1"]["p99"] = None
    assert f"| {report['rows'][0]['fixed_ms_b1']:.1f} / - |" in markdown(report)


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
        capsys, ["bench", "--models", str(big), "--backends", "pytorch,tensorrt", *out], "'tensorrt'", "auto"
    )
    _one_line_error(capsys, ["bench", "--models", *out], "no models")
    _one_line_error(capsys, ["bench", "--models", str(big), "--questions", "0", *out], "--questions 0")
    assert not (tmp_path / "out").exists()
    bench.BenchConfig(models=[str(big)], backends=["auto", "openvino-int8-bf16"]).validate()  # both accepted


def _config(folder: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)
