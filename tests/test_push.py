"""`tinyroberta-es push`, without a network: refusals before any call, the upload, network failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub.utils import filter_repo_objects

from cli_helpers import assert_one_line_error, run_cli
from tinyroberta_es.commands.push import IGNORE_PATTERNS

REPO = "someone/tiny-student"


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """No token anywhere, no stored login, and HfApi calls recorded instead of sent."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(name: str, result: Any = None):
        def method(self, *args: Any, **kwargs: Any) -> Any:
            calls.append((name, {"args": args, **kwargs}))
            return result

        return method

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", record("create_repo", f"https://hf.co/{REPO}"))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", record("create_branch"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", record("upload_folder"))
    return calls


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A trained student folder as `tinyroberta-es run` leaves it, training state included."""
    folder = tmp_path / "student"
    files = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "run_config.json",
        "metrics.json",
        "train_state.json",
        "checkpoint/state.pt",
        "tensorboard/events.out.tfevents.1700000000.host.1.0",
        "onnx/model.onnx",
        "onnx/model.int8.rejected.onnx",
        "onnx/model.int8.rejected.xml",
        "onnx/model.int8.rejected.bin",
        "onnx/parity.json",
    ]
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}", encoding="utf-8")
    return folder


def test_ignore_patterns_keep_the_model_and_drop_training_state(model_dir: Path) -> None:
    files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    kept = set(filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS))
    assert kept == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "run_config.json",
        "metrics.json",
        "onnx/model.onnx",
        "onnx/parity.json",
    }


def test_push_uploads_the_folder(capsys, model_dir: Path, no_hub: list) -> None:
    status, out, err = run_cli(
        capsys, "push", "--model", str(model_dir), "--repo-id", REPO, "--token", "hf_x", "--private"
    )
    assert status == 0, err
    assert [name for name, _ in no_hub] == ["create_repo", "upload_folder"]
    create, upload = no_hub[0][1], no_hub[1][1]
    assert create["args"] == (REPO,) and create["private"] is True and create["exist_ok"] is True
    assert create["token"] == "hf_x"
    assert upload["repo_id"] == REPO and upload["token"] == "hf_x" and upload["revision"] is None
    assert upload["folder_path"] == str(model_dir)
    assert "checkpoint/*" in upload["ignore_patterns"] and "*.rejected.*" in upload["ignore_patterns"]
    assert f"https://hf.co/{REPO}" in out


def test_push_takes_hf_token_and_a_branch(capsys, monkeypatch, model_dir: Path, no_hub: list) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    status, out, err = run_cli(
        capsys, "push", "--model", str(model_dir), "--repo-id", REPO, "--revision", "v1"
    )
    assert status == 0, err
    assert [name for name, _ in no_hub] == ["create_repo", "create_branch", "upload_folder"]
    assert no_hub[0][1]["private"] is False
    assert no_hub[1][1]["branch"] == "v1" and no_hub[2][1]["revision"] == "v1"
    assert all(call["token"] == "hf_env" for _, call in no_hub)
    assert f"https://hf.co/{REPO}/tree/v1" in out


def test_no_token_is_refused_before_any_network_call(capsys, model_dir: Path, no_hub: list) -> None:
    status, _, err = run_cli(capsys, "push", "--model", str(model_dir), "--repo-id", REPO)
    assert_one_line_error(status, err, "no Hugging Face token", "HF_TOKEN", "hf auth login")
    assert no_hub == []


def test_missing_folder_is_refused(capsys, tmp_path: Path, no_hub: list) -> None:
    missing = tmp_path / "nowhere"
    status, _, err = run_cli(capsys, "push", "--model", str(missing), "--repo-id", REPO, "--token", "t")
    assert_one_line_error(status, err, str(missing), "does not exist")
    assert no_hub == []


def test_folder_without_config_or_card_is_refused(capsys, model_dir: Path, no_hub: list) -> None:
    (model_dir / "config.json").unlink()
    (model_dir / "README.md").unlink()
    status, _, err = run_cli(capsys, "push", "--model", str(model_dir), "--repo-id", REPO, "--token", "t")
    assert_one_line_error(status, err, "no config.json", "no README.md model card", "tinyroberta-es run")
    assert no_hub == []


def test_folder_without_weights_is_refused(capsys, model_dir: Path, no_hub: list) -> None:
    (model_dir / "model.safetensors").unlink()
    status, _, err = run_cli(capsys, "push", "--model", str(model_dir), "--repo-id", REPO, "--token", "t")
    assert_one_line_error(status, err, "no weights", "model.safetensors")
    assert no_hub == []


@pytest.mark.parametrize("repo_id", ["just-a-name", "a/b/c", "owner/", "own er/name", "owner/na..me"])
def test_bad_repo_id_is_refused(capsys, model_dir: Path, no_hub: list, repo_id: str) -> None:
    status, _, err = run_cli(capsys, "push", "--model", str(model_dir), "--repo-id", repo_id, "--token", "t")
    assert_one_line_error(status, err, f"--repo-id {repo_id!r}", "OWNER/NAME")
    assert no_hub == []


def hub_http_error() -> Exception:
    """A 403 as huggingface_hub raises it (its constructor wants the HTTP library's response)."""
    httpx = pytest.importorskip("httpx2")
    request = httpx.Request("POST", f"https://huggingface.co/api/repos/{REPO}")
    response = httpx.Response(403, request=request)
    return huggingface_hub.errors.HfHubHTTPError(
        "403 Forbidden: no write access\nmore detail", response=response
    )


@pytest.mark.parametrize(
    "make_error", [hub_http_error, lambda: ConnectionError("Connection refused\n(trace)")]
)
def test_network_failure_is_a_one_line_error(capsys, monkeypatch, model_dir: Path, make_error) -> None:
    error = make_error()

    def fail(self, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fail)
    status, _, err = run_cli(capsys, "push", "--model", str(model_dir), "--repo-id", REPO, "--token", "t")
    assert_one_line_error(status, err, f"cannot push {model_dir} to {REPO}", str(error).splitlines()[0])
