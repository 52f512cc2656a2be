"""The run report: its four files, retention by hand, a self-contained escaped HTML page, missing stages."""

from __future__ import annotations

import base64
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tinyroberta_es import report, report_plots
from tinyroberta_es.errors import UserError
from tinyroberta_es.speedups import labelled_speedups

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scores(f1: float, em: float) -> dict[str, dict[str, float]]:
    return {"mlqa-es": {"exact_match": em, "f1": f1}, "squad": {"exact_match": em - 1, "f1": f1 - 1}}


def _bench_row(model: str, backend: str, latency: float) -> dict[str, Any]:
    return {
        "model": model, "folder": f"runs/sample/{model}", "backend": backend, "dtype": "float32",
        "params": 1_234_567, "weights_bytes": 4_938_268,
        "latency_b1": {"p50": latency, "p90": 6.0, "p99": 7.2},
        "latency_ms_b1": latency, "fixed_ms_b1": 0.8 * latency, "throughput": 600 / latency, "seq_len": 256,
    }  # fmt: skip


def _with_speedups(bench: dict[str, Any]) -> dict[str, Any]:
    """The labelled speedups against the teacher, as `bench` writes them into bench.json."""
    bench["speedups"] = labelled_speedups(bench["rows"], "runs/sample/teacher")
    return bench


def _variant(f1: float, drop: float, file: str) -> dict[str, Any]:
    return {"file": file, "exact_match": 10.0, "f1": f1, "f1_drop": drop, "max_abs_diff_start": 1e-5,
            "max_abs_diff_end": 2e-5, "same_answers": 0.95}  # fmt: skip


@pytest.fixture
def summary(tmp_path: Path) -> dict[str, Any]:
    """A teacher and two students, pytorch and onnx rows, a rejected int8 export and one metrics log."""
    log = tmp_path / "student-2l" / "metrics.jsonl"
    log.parent.mkdir()
    rows = [
        {"step": 10, "epoch": 0.1, "loss": 18.0, "kd": 4.2, "lr": 8e-5, "elapsed": 5.0},
        {"step": 20, "epoch": 0.2, "loss": 12.0, "kd": 3.1, "lr": 7e-5, "elapsed": 9.0},
        {"step": 20, "epoch": 0.2, "elapsed": 10.0, "eval": {"f1": 11.0, "exact_match": 5.0}},
        {"step": 30, "epoch": 0.3, "loss": 9.0, "kd": 2.0, "lr": 6e-5, "elapsed": 14.0},
        {"step": 40, "epoch": 0.4, "elapsed": 20.0, "eval": {"f1": 15.0, "exact_match": 7.0}},
    ]
    cut = '{"step": 50, "note": "é'.encode()[:-1]  # killed mid-line, inside a two-byte character
    log.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode() + cut)
    export = {
        "folder": "runs/sample/student-2l/onnx", "dev": "sample_dev", "per_channel": True,
        "rejected": ["onnx-int8"], "max_f1_drop": 1.0,
        "variants": {"pytorch": {"exact_match": 10.0, "f1": 15.0}, "onnx": _variant(15.0, 0.0, "model.onnx"),
                     "onnx-int8": _variant(12.5, 2.5, "model.int8.rejected.onnx")},
    }  # fmt: skip
    models = [
        {"name": "teacher", "role": "teacher", "metrics_log": None, "export": None},
        {"name": "student-2l", "role": "student", "metrics_log": str(log), "export": export},
        {"name": "student-1l", "role": "student", "metrics_log": str(tmp_path / "no.jsonl"), "export": None},
    ]
    evaluation_rows = [
        ("teacher", "pytorch", 20.0, 12.5),
        ("student-2l", "pytorch", 15.0, 10.0),
        ("student-2l", "onnx", 14.0, 9.0),
        ("student-1l", "pytorch", 10.0, 5.0),
    ]
    evaluation = {"datasets": ["sample_dev"], "normalizations": ["mlqa-es", "squad"], "primary": "mlqa-es"}
    evaluation["rows"] = [
        {"model": m, "backend": b, "dataset": "sample_dev", "questions": 60, "scores": _scores(f1, em)}
        for m, b, f1, em in evaluation_rows
    ]
    evaluation["rows"][1]["scores"]["mlqa-es"]["f1_ci"] = [9.5, 20.25]
    evaluation["rows"][1]["vs_teacher"] = {
        "mlqa-es": {"difference": -5.0, "ci_low": -9.25, "ci_high": -1.5, "p_value": 0.01}
    }
    evaluation["baselines"] = [
        {"dataset": "sample_dev", "questions": 60, "unanswerable": 12, "f1": 20.0, "exact_match": 20.0}
    ]
    bench = {
        "config": {
            "dataset": "sample_dev",
            "questions": 20,
            "batch_size": 8,
            "seq_len": 256,
            "models": ["runs/sample/teacher", "runs/sample/student-2l"],
        },
        "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 2},
        "rows": [
            _bench_row("teacher", "pytorch", 5.1),
            _bench_row("student-2l", "pytorch", 1.7),
            _bench_row("student-2l", "onnx", 1.0),
        ],
        "skipped": [{"model": "teacher", "backend": "onnx", "reason": "no ONNX export: run export"}],
    }
    return {
        "name": "sample",
        "command": "tinyroberta-es run recipes/sample.yaml",
        "created": "2026-11-26T19:30:00+00:00",
        "versions": {"tinyroberta_es": "0.1.0", "torch": "2.13.0"},
        "recipe": {
            "name": "sample",
            "teacher": {"epochs": 2},
            "students": [{"name": "student-2l"}],
            "card": {"limitations": ["A toy."]},
        },
        "teacher": "teacher",
        "models": models,
        "evaluation": evaluation,
        "bench": _with_speedups(bench),
        "skipped": [{"model": "teacher", "backend": "onnx", "reason": "not exported"}],
    }


def test_writes_the_four_files(summary: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "report"
    written = report.write_report(summary, out)
    names = {"report.md", "report.html", "training_curves.png", "f1_latency.png"}
    assert {p.name for p in written} == names
    assert all((out / name).is_file() for name in names)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary file behind


def test_markdown_holds_scores_and_retention(summary: dict[str, Any], tmp_path: Path) -> None:
    report.write_report(summary, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# sample: distillation report")
    assert "`tinyroberta-es run recipes/sample.yaml`" in md
    # F1 15.0 of a teacher's 20.0 -> 75.0 %; the squad scores follow the primary (mlqa-es) ones
    # then the F1 interval, the retention and the paired difference from the teacher, where measured
    row = "| student-2l | student | pytorch | sample_dev | 60 | 10.00 | 15.00 | 9.00 | 14.00 |"
    assert f"{row} 9.5-20.2 | 75.0 | -5.00 (-9.2 to -1.5) |" in md
    assert (
        "| student-2l | student | onnx | sample_dev | 60 | 9.00 | 14.00 | 8.00 | 13.00 |  | 70.0 |  |" in md
    )
    assert (
        "| student-1l | student | pytorch | sample_dev | 60 | 5.00 | 10.00 | 4.00 | 9.00 |  | 50.0 |  |" in md
    )
    teacher = next(line for line in md.splitlines() if line.startswith("| teacher | teacher | pytorch"))
    assert teacher.endswith("| 19.00 |  |  |  |")  # no retention for the teacher itself
    assert 'Answering "no answer" to every question scores 20.00 F1 on sample_dev (12 of 60' in md
    assert "Limitation: A toy." in md  # the recipe's own, under the accuracy table
    assert "![training curves](training_curves.png)" in md
    assert "![F1 against latency](f1_latency.png)" in md
    assert "```yaml\nname: sample\nteacher:\n  epochs: 2\n" in md
    assert "Test CPU, 2 cores, 2 threads" in md
    assert "no ONNX export: run export" in md and "not exported" in md


def test_speed_and_export_rows(summary: dict[str, Any]) -> None:
    speed = report.speed_rows(summary)
    assert [(r["model"], r["backend"]) for r in speed] == [
        ("teacher", "pytorch"), ("student-2l", "pytorch"), ("student-2l", "onnx")
    ]  # fmt: skip
    assert speed[2]["F1 sample_dev"] == "14.00"
    assert speed[1]["e2e speedup like for like"] == "3.0x"  # against the teacher on pytorch too
    assert speed[2]["e2e speedup like for like"] == "-"  # the teacher was not exported
    assert speed[2]["e2e speedup against teacher eager fp32"] == "5.1x"
    assert speed[0]["params (M)"] == "1.23" and speed[0]["size MB"] == "4.9"
    assert speed[0]["e2e b1 p50 / p90 / p99 ms"] == "5.1 / 6.0 / 7.2"
    exports = {r["variant"]: r for r in report.export_rows(summary)}
    assert exports["onnx-int8"]["status"] == "rejected"
    assert exports["onnx"]["status"] == "kept"
    assert exports["onnx-int8"]["F1 drop"] == "2.50"
    assert exports["onnx"]["same answers"] == "95.0%"


def test_html_is_self_contained(summary: dict[str, Any], tmp_path: Path) -> None:
    report.write_report(summary, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert base64.b64decode(images[0]).startswith(PNG_SIGNATURE)
    assert "<td>75.0</td>" in page


def test_html_escapes_names_from_the_summary(summary: dict[str, Any], tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    summary["name"] = evil
    summary["models"][1]["name"] = evil
    for row in summary["evaluation"]["rows"] + summary["bench"]["rows"]:
        if row["model"] == "student-2l":
            row["model"] = evil
    summary["recipe"]["students"][0]["name"] = evil
    report.write_report(summary, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_renders_without_bench_or_curves(summary: dict[str, Any], tmp_path: Path) -> None:
    bare = copy.deepcopy(summary)
    bare["bench"] = None
    for model in bare["models"]:
        model["metrics_log"] = None
    (tmp_path / "f1_latency.png").write_bytes(PNG_SIGNATURE)  # from an earlier report: no longer referenced
    written = report.write_report(bare, tmp_path)
    assert {p.name for p in written} == {"report.md", "report.html"}
    assert not (tmp_path / "f1_latency.png").exists()
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "The benchmark was not run" in md
    assert "No training curves" in md and "No F1-latency plot" in md
    assert "75.0" in md  # the accuracy table does not need the benchmark
    assert "data:image/png" not in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_renders_without_evaluation_rows(summary: dict[str, Any], tmp_path: Path) -> None:
    summary["evaluation"]["rows"] = []
    report.write_report(summary, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "No evaluation rows" in md
    assert "| teacher | pytorch | float32 |" in md  # the speed table still renders, without F1
    assert not (tmp_path / "f1_latency.png").exists()


def test_metrics_log_skips_a_cut_line(summary: dict[str, Any]) -> None:
    curves = report_plots.training_curves(summary)
    assert list(curves) == ["student-2l"]  # the teacher has no log, student-1l's file is missing
    loss, f1 = curves["student-2l"]
    assert loss == [(10, 18.0), (20, 12.0), (30, 9.0)]
    assert f1 == [(20, 11.0), (40, 15.0)]


def test_plots_without_matplotlib_say_how_to_install_it(
    summary: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(UserError, match=r"pip install 'tinyroberta-es\[bench\]'"):
        report.write_report(summary, tmp_path)


def test_loss_balance_rows_read_gradient_shares_of_both_stages(tmp_path):
    from tinyroberta_es.report import loss_balance_rows

    student = tmp_path / "student"
    (tmp_path / "student.stage1").mkdir()
    student.mkdir()
    rows = [{"step": 1, "share_hidden": 0.9, "share_attention": 0.1}, {"step": 2, "loss": 1.0}]
    rows += [{"step": 3, "share_hidden": 0.5, "share_attention": 0.5}]
    (tmp_path / "student.stage1" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (student / "metrics.jsonl").write_text(json.dumps({"step": 1, "share_kd": 0.25, "share_ce": 0.75}))
    summary = {"models": [{"name": "s", "metrics_log": str(student / "metrics.jsonl")}, {"name": "t"}]}
    got = {(r["stage"], r["group"]): (r["first"], r["last"], r["mean"]) for r in loss_balance_rows(summary)}
    assert got == {
        ("intermediate", "hidden"): ("90.0%", "50.0%", "70.0%"),
        ("intermediate", "attention"): ("10.0%", "50.0%", "30.0%"),
        ("prediction", "kd"): ("25.0%", "25.0%", "25.0%"),
        ("prediction", "ce"): ("75.0%", "75.0%", "75.0%"),
    }


def test_students_of_several_seeds_get_their_mean_and_spread(summary: dict[str, Any]) -> None:
    rows = summary["evaluation"]["rows"]
    rows.append({**rows[1], "model": "student-2l-seed1", "scores": _scores(17.0, 11.0)})
    assert report.seed_rows(summary) == [
        {
            "student": "student-2l",
            "dataset": "sample_dev",
            "seeds": "2",
            "F1 per seed": "15.00, 17.00",
            "mean F1": "16.00",
            "sd": "1.41",
        }
    ]  # fmt: skip  (only pytorch rows: the onnx row of student-2l is left out)


SELECTION = {
    "chosen": "onnx",
    "reason": "fastest at 1 x 384 tokens (0.9 ms, median of 10) of those that passed parity",
    "candidates": [
        {"backend": "pytorch", "parity": "the reference", "ms": 1.6},
        {"backend": "onnx", "parity": "+0.00 F1", "ms": 0.9},
        {"backend": "openvino", "parity": "no parity report", "skipped": "no export"},
    ],
}


def test_speedups_are_stated_three_ways_against_the_teachers_best_and_auto_says_why(
    summary: dict[str, Any], tmp_path: Path
) -> None:
    summary["recipe"]["export"] = {"teacher": True}
    bench = summary["bench"]
    bench["rows"].insert(1, _bench_row("teacher", "onnx", 3.4))  # the teacher's best is not its eager fp32
    bench["rows"][-1] |= {"auto": SELECTION, "backend_requested": "auto"}
    _with_speedups(bench)
    summary["evaluation"]["rows"][2] |= {"auto": SELECTION, "backend_requested": "auto"}
    report.write_report(summary, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert (
        "Headline (best against best): student-2l on onnx (auto), its fastest backend, is 3.4x faster than "
        "teacher on onnx, its fastest (one 256-token window, batch 1, median); end to end 3.4x at batch 1"
    ) in md
    assert "| best against best | student-2l | onnx (auto) | teacher on onnx | 3.4x | 3.4x | 3.4x |" in md
    assert "| like for like | student-2l | pytorch | teacher on pytorch | 3.0x |" in md
    assert "| like for like | student-2l | onnx (auto) | teacher on onnx | 3.4x |" in md
    assert "| against teacher eager fp32 | student-2l | onnx (auto) | teacher on pytorch | 5.1x |" in md
    assert "| against teacher eager fp32 | teacher | onnx | teacher on pytorch | 1.5x |" in md
    assert "The teacher was not exported" not in md
    assert (
        "| student-2l | benchmark | onnx | fastest at 1 x 384 tokens (0.9 ms, median of 10) of those that "
        "passed parity | pytorch 1.6 ms; onnx 0.9 ms; openvino not measured (no export) |"
    ) in md
    assert "| student-2l | evaluation, sample_dev | onnx |" in md
    assert "| student-2l | student | onnx (auto) | sample_dev | 60 |" in md  # the accuracy table


def test_a_bf16_run_over_budget_is_marked_failed_and_openvino_int8_says_how_it_was_calibrated(
    summary: dict[str, Any],
) -> None:
    export = summary["models"][1]["export"]
    export["variants"]["openvino"] = _variant(15.0, 0.0, "model.xml") | {"passed": True}
    export["variants"]["openvino-bf16"] = _variant(13.0, 2.0, "model.xml") | {"passed": False}
    export["int8"] = {
        "openvino-int8": {"method": "nncf post-training", "calibration_windows": 128,
                          "calibration_set": "sample_dev", "calibration_questions": 40}
    }  # fmt: skip
    statuses = {r["variant"]: r["status"] for r in report.export_rows(summary)}
    assert statuses["openvino"] == "kept" and statuses["openvino-bf16"] == "failed"
    assert report.int8_notes(summary) == [
        "student-2l, openvino-int8: nncf post-training; 128 calibration windows of sample_dev (40 questions)."
    ]
