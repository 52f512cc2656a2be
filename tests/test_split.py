"""Removing held-out paragraphs from training data: counts by hand, the real XQuAD overlap, the command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tinyroberta_es.commands import split as split_command
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.schema import Answer, Example, QADataset
from tinyroberta_es.data.split import SplitReport, remove_overlap
from tinyroberta_es.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SQUAD_ES_V11_SMALL = SHARED_DATA / "squad_es_v1.1_small" / "dev-v1.1-es_small.json"
XQUAD_ES = SHARED_DATA / "xquad_es" / "xquad.es.json"


def example(qid: str, article: int, paragraph: int) -> Example:
    context = f"Párrafo {article}.{paragraph}"
    return Example(
        qid, "¿Qué?", context, (Answer("Párrafo", 0),), article_index=article, paragraph_index=paragraph
    )


def dataset(*examples: Example, source: str = "train.json") -> QADataset:
    return QADataset(source=source, version="1.1", examples=list(examples))


def requires_real_data() -> None:
    for path in (SQUAD_ES_V11_SMALL, XQUAD_ES):
        if not path.is_file():
            pytest.skip(f"real data not available: {path} is absent (see ../shared/data/README.md)")


def run_split(*argv: str) -> None:
    """Run the command through its own parser (no dependency on the other commands of the CLI)."""
    parser = argparse.ArgumentParser()
    split_command.configure(parser)
    split_command.run(parser.parse_args(list(argv)))


def test_tiny_case_by_hand() -> None:
    # paragraphs: (0,0) a b | (0,1) c | (1,0) d e f ; held-out ids: b (in (0,0)), f (in (1,0)), z (nowhere)
    train = dataset(example("a", 0, 0), example("b", 0, 0), example("c", 0, 1),
                    example("d", 1, 0), example("e", 1, 0), example("f", 1, 0))  # fmt: skip
    held_a = dataset(example("b", 5, 5), source="held_a")
    held_b = dataset(example("f", 0, 0), example("z", 0, 0), source="held_b")
    kept, report = remove_overlap(train, [held_a, held_b])
    assert [ex.id for ex in kept.examples] == ["c"]
    assert report == SplitReport(
        paragraphs_kept=1, questions_kept=1, paragraphs_removed=2, questions_removed=5, shared_ids=2
    )
    assert "held_a, held_b" in kept.source and kept.version == "1.1" and not kept.is_v2
    only_a, report_a = remove_overlap(train, held_a)  # a single dataset works too
    assert [ex.id for ex in only_a.examples] == ["c", "d", "e", "f"]
    assert (report_a.paragraphs_removed, report_a.questions_removed) == (1, 2)


def test_no_overlap_keeps_everything() -> None:
    train = dataset(example("a", 0, 0), example("b", 0, 1))
    kept, report = remove_overlap(train, dataset(example("x", 0, 0)))
    assert kept.examples == train.examples
    assert report == SplitReport(2, 2, 0, 0, 0)


def test_real_xquad_overlap_leaves_1766_paragraphs() -> None:
    requires_real_data()
    train, xquad = load_dataset(SQUAD_ES_V11_SMALL), load_dataset(XQUAD_ES)
    kept, report = remove_overlap(train, xquad)
    assert (report.paragraphs_kept, report.questions_kept) == (1766, 5851)
    assert report.shared_ids == 732
    assert len(kept) == 5851
    assert not {ex.id for ex in kept.examples} & {ex.id for ex in xquad.examples}


def test_split_command_writes_a_loadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requires_real_data()
    out = tmp_path / "train_no_xquad.json"
    run_split("--train", str(SQUAD_ES_V11_SMALL), "--held-out", str(XQUAD_ES), "--output", str(out))
    printed = capsys.readouterr().out
    assert "kept 1,766 paragraphs / 5,851 questions" in printed and str(out) in printed
    written = load_dataset(out)
    assert written.report is not None
    assert (written.report.paragraphs, written.report.questions) == (1766, 5851)
    assert json.loads(out.read_text(encoding="utf-8"))["version"] == "1.1"


def test_split_command_on_tiny_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def squad(*paragraphs: list[str]) -> dict:
        answers = [{"text": "Hola", "answer_start": 0}]
        return {
            "version": "1.1",
            "data": [
                {
                    "title": "T",
                    "paragraphs": [
                        {
                            "context": "Hola mundo.",
                            "qas": [{"id": i, "question": "¿Qué?", "answers": answers} for i in ids],
                        }
                        for ids in paragraphs
                    ],
                }
            ],
        }

    train, held = tmp_path / "train.json", tmp_path / "held.json"
    train.write_text(json.dumps(squad(["a", "b"], ["c"], ["d"])), encoding="utf-8")
    held.write_text(json.dumps(squad(["c"])), encoding="utf-8")
    out = tmp_path / "out.json.gz"
    run_split("--train", str(train), "--held-out", str(held), "--held-out", str(held), "--output", str(out))
    assert "kept 2 paragraphs / 3 questions; removed 1 paragraphs / 1 questions" in capsys.readouterr().out
    assert [ex.id for ex in load_dataset(out).examples] == ["a", "b", "d"]
    with pytest.raises(UserError, match="nothing left to write"):
        run_split("--train", str(held), "--held-out", str(held), "--output", str(tmp_path / "empty.json"))
    with pytest.raises(UserError, match=r"--output out.txt: must end in .json or .json.gz"):
        run_split("--train", str(train), "--held-out", str(held), "--output", "out.txt")


def test_cli_missing_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tinyroberta_es import cli

    try:
        cli.build_parser()
    except ImportError as err:  # another command module not written yet
        pytest.skip(f"the CLI cannot be built yet: {err}")
    missing = tmp_path / "missing.json"
    status = cli.main(
        ["split", "--train", str(missing), "--held-out", str(missing), "--output", str(tmp_path / "o.json")]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tinyroberta-es split: error: ") and f"{missing}: file does not exist" in err


# --- the split stage of `tinyroberta-es run` -------------------------------------------------------------

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def split_recipe(tmp_path: Path, **split: object) -> Path:
    """The smoke recipe with a split stage: the whole sample minus the articles of sample_dev."""
    import yaml

    data = yaml.safe_load(SMOKE.read_text())
    section = {"train": "sample", "held_out": ["sample_dev"], "output": "runs/smoke/train.json"} | split
    data["split"] = section
    data["finetune"]["data"]["train"] = "runs/smoke/train.json"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_split_stage_writes_the_training_set_first_and_records_the_counts(tmp_path, monkeypatch, capsys):
    from tinyroberta_es.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", str(split_recipe(tmp_path)), "--stages", "split"]) == 0
    written = load_dataset(tmp_path / "runs" / "smoke" / "train.json")
    assert {ex.id for ex in written.examples} == {ex.id for ex in load_dataset("sample_train").examples}
    record = json.loads((tmp_path / "runs" / "smoke" / "stages" / "split.json").read_text())
    assert record["result"]["questions_kept"] == 480 and record["result"]["questions_removed"] == 120
    assert not (tmp_path / "runs" / "smoke" / "teacher").exists()  # only the chosen stage ran


@pytest.mark.parametrize(
    ("split", "needle"),
    [
        ({"output": "runs/smoke/other.json"}, "split.output runs/smoke/other.json is not what any training"),
        ({"held_out": []}, "split.held_out is empty"),
        ({"output": "runs/smoke/train.txt"}, "must be a .json or .json.gz file"),
    ],
)
def test_a_split_that_trains_on_nothing_or_writes_no_json_is_one_line(
    tmp_path, monkeypatch, capsys, split, needle
):
    from cli_helpers import assert_one_line_error, run_cli

    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(capsys, "run", str(split_recipe(tmp_path, **split)), "--stages", "split")
    assert_one_line_error(status, err, needle)


def test_a_held_out_set_that_is_also_trained_on_is_refused(tmp_path, monkeypatch, capsys):
    import yaml

    from cli_helpers import assert_one_line_error, run_cli

    path = split_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["distill"][0]["data"] = data["distill"][0]["data"] | {"train": "sample_dev"}  # a YAML alias
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(capsys, "run", str(path), "--stages", "split")
    assert_one_line_error(status, err, "sample_dev is both held out by split.held_out and trained on")
