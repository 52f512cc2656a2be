"""Named datasets and downloads, against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.sources import DATASETS, DatasetSource, cache_dir, resolve_source
from tinyroberta_es.errors import UserError

QA = {
    "id": "q1",
    "question": "¿Cuál es la capital del Perú?",
    "answers": [{"text": "Lima", "answer_start": 0}],
}
TINY = {
    "version": "1.1",
    "data": [{"title": "T", "paragraphs": [{"context": "Lima es la capital.", "qas": [QA]}]}],
}
TINY_BYTES = json.dumps(TINY, ensure_ascii=False).encode("utf-8")
TINY_SHA256 = hashlib.sha256(TINY_BYTES).hexdigest()
MLQA_DEV = "MLQA_V1/dev/dev-context-es-question-es.json"
MLQA_TEST = "MLQA_V1/test/test-context-es-question-es.json"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records every request; `/cut.json` promises more bytes than it sends."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/cut.json":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(TINY_BYTES[:20])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@dataclass
class Server:
    root: Path
    url: str
    requests: list[str]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.json").write_bytes(TINY_BYTES)
    with zipfile.ZipFile(root / "MLQA_V1.zip", "w") as zf:
        zf.writestr(MLQA_DEV, TINY_BYTES)
        zf.writestr(MLQA_TEST, TINY_BYTES)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=partial(httpd.serve_forever, poll_interval=0.01), daemon=True)
    thread.start()
    yield Server(root, f"http://127.0.0.1:{httpd.server_port}", httpd.requests)  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder, online, no proxy."""
    monkeypatch.setenv("TINYROBERTA_ES_CACHE", str(tmp_path / "cache"))
    for var in (
        "TINYROBERTA_ES_OFFLINE",
        "HF_HUB_OFFLINE",
        "http_proxy",
        "HTTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache" / "datasets"


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_url_is_downloaded_cached_and_reused(server: Server, cache: Path) -> None:
    url = f"{server.url}/tiny.json"
    first = load_dataset(url)
    assert [ex.id for ex in first.examples] == ["q1"]
    assert first.source.startswith(url)
    second = resolve_source(url)
    assert server.requests == ["/tiny.json"]
    assert second.parent == cache / "urls" and second.read_bytes() == TINY_BYTES


def test_named_dataset_downloads_into_cache(server: Server, cache: Path) -> None:
    registry = {"tiny_es": DatasetSource("tiny_es", "test set", f"{server.url}/tiny.json", TINY_SHA256)}
    path = resolve_source("Tiny-ES", registry=registry)  # case and '-' for '_' are accepted
    assert path == cache / "tiny_es.json" == cache_dir() / "tiny_es.json"
    assert path.read_bytes() == TINY_BYTES
    assert len(load_dataset("tiny_es", registry=registry)) == 1
    assert server.requests == ["/tiny.json"]  # the second call used the cache


def test_sha256_mismatch_deletes_the_download(server: Server, cache: Path) -> None:
    registry = {"tiny_es": DatasetSource("tiny_es", "test set", f"{server.url}/tiny.json", "0" * 64)}
    with pytest.raises(UserError, match=rf"{re.escape(server.url)}/tiny.json: sha256 {TINY_SHA256} differs"):
        resolve_source("tiny_es", registry=registry)
    assert cached_files(cache) == []


def test_zip_members_share_one_archive_download(server: Server, cache: Path) -> None:
    zip_url = f"{server.url}/MLQA_V1.zip"
    registry = {
        "mlqa_es_dev": DatasetSource("mlqa_es_dev", "dev", zip_url, member=MLQA_DEV),
        "mlqa_es_test": DatasetSource("mlqa_es_test", "test", zip_url, member=MLQA_TEST),
        "mlqa_bad": DatasetSource("mlqa_bad", "wrong member", zip_url, member="MLQA_V1/dev/nope.json"),
    }
    assert load_dataset("mlqa_es_dev", registry=registry).examples[0].id == "q1"
    assert resolve_source("mlqa_es_test", registry=registry).read_bytes() == TINY_BYTES
    assert server.requests == ["/MLQA_V1.zip"]
    assert (cache / "archives" / "MLQA_V1.zip").is_file()
    with pytest.raises(UserError, match=rf"no member 'MLQA_V1/dev/nope.json'.*{re.escape(MLQA_DEV)}"):
        resolve_source("mlqa_bad", registry=registry)


def test_http_404_is_a_user_error(server: Server, cache: Path) -> None:
    with pytest.raises(UserError, match=r"cannot download .*/missing.json: HTTP 404 .*pass its path"):
        resolve_source(f"{server.url}/missing.json")
    assert cached_files(cache) == []


def test_refused_connection_is_a_user_error(cache: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.json"
    with pytest.raises(UserError, match=rf"cannot download {re.escape(url)}: .*check the network"):
        resolve_source(url)
    assert cached_files(cache) == []


def test_interrupted_download_leaves_no_cache_file(server: Server, cache: Path) -> None:
    with pytest.raises(UserError, match=r"stopped after 20 of 100,000 bytes; nothing was cached"):
        resolve_source(f"{server.url}/cut.json")
    assert cached_files(cache) == []


@pytest.mark.parametrize("var", ["TINYROBERTA_ES_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_says_where_to_put_the_file(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    monkeypatch.setenv(var, "1")
    url = f"{server.url}/tiny.json"
    registry = {"tiny_es": DatasetSource("tiny_es", "test set", url)}
    with pytest.raises(UserError) as info:
        resolve_source("tiny_es", registry=registry)
    message = str(info.value)
    assert f"dataset 'tiny_es' is not in the cache and offline mode is on ({var}=1)" in message
    assert url in message and str(cache / "tiny_es.json") in message
    assert server.requests == []
    cache.mkdir(parents=True)
    (cache / "tiny_es.json").write_bytes(TINY_BYTES)  # put there by hand: offline use works
    assert len(load_dataset("tiny_es", registry=registry)) == 1


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(UserError) as info:
        resolve_source("squad_es")
    message = str(info.value)
    assert message.startswith("unknown dataset 'squad_es': choose one of ")
    assert all(name in message for name in DATASETS)
    assert "existing .json/.json.gz file or an http(s) URL" in message


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope/train.json: file does not exist"):
        resolve_source("nope/train.json")
    with pytest.raises(UserError, match="is a folder"):
        resolve_source(tmp_path)


def test_existing_path_is_returned_as_is(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_bytes(TINY_BYTES)
    assert resolve_source(path) == path and resolve_source(str(path)) == path


def test_sample_resolves() -> None:
    try:
        path = resolve_source("sample")
    except UserError as err:
        pytest.skip(f"the embedded sample is not written yet: {err}")
    dataset = load_dataset(path)
    assert len(dataset) > 0 and dataset.report is not None


def test_registry_is_well_formed() -> None:
    assert set(DATASETS) >= {
        "squad_es_v1.1_train", "squad_es_v1.1_dev", "squad_es_v2.0_train", "squad_es_v2.0_dev",
        "squad_es_v1.1_dev_small", "squad_es_v2.0_dev_small", "xquad_es", "mlqa_es_dev", "mlqa_es_test",
        "sqac_train", "sqac_dev", "sqac_test", "sample",
    }  # fmt: skip
    for key, entry in DATASETS.items():
        assert key == entry.name == entry.name.lower() and "-" not in key
        assert entry.resource or entry.url.startswith("https://")
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.filename.endswith(".json")
    assert DATASETS["mlqa_es_dev"].member == MLQA_DEV and DATASETS["mlqa_es_test"].member == MLQA_TEST
    assert DATASETS["xquad_es"].sha256 == "dcbae93ec3a9f4b9e78fd834a171d6f96c1a875e10e15b7530b7e4ef4971e37e"
