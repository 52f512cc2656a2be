"""A local stand-in for the Hugging Face Hub's file endpoints, so Hub-id code paths run without a network.

`GET|HEAD /{owner}/{name}/resolve/{revision}/{path}` serves files of the folder registered for `owner/name`
with the headers `huggingface_hub` reads (commit, ETag, size); `/api/models/{owner}/{name}` (and
`/revision/{rev}`) gives the model info with its files, `/api/models/{owner}/{name}/tree/{rev}/{path}` lists
a folder. A missing file or folder is a 404 with the Hub's `EntryNotFound` error code, anything else a 404
with `RepoNotFound`. Point `HF_ENDPOINT` at `url`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serve `repos` ({"owner/name": folder}) on 127.0.0.1 while used as a context manager."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.respond(body=False)

            def do_GET(self) -> None:
                self.respond(body=True)

            def respond(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                parts = unquote(self.path.split("?")[0]).strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    return self.api(parts[2:], body)
                repo = "/".join(parts[:2])
                if repo not in hub.repos or len(parts) < 5 or parts[2] != "resolve":
                    return self.fail("RepoNotFound")
                path = hub.repos[repo] / "/".join(parts[4:])
                if not path.is_file():
                    return self.fail("EntryNotFound")
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def api(self, parts: list[str], body: bool) -> None:
                repo = "/".join(parts[:2])
                if repo not in hub.repos:
                    return self.fail("RepoNotFound")
                root = hub.repos[repo]
                if len(parts) >= 4 and parts[2] == "tree":
                    folder = root / "/".join(parts[4:])
                    if not folder.is_dir():
                        return self.fail("EntryNotFound")
                    entries = [
                        {"type": "file", "path": str(p.relative_to(root)), "size": p.stat().st_size,
                         "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                        if p.is_file() else {"type": "directory", "path": str(p.relative_to(root))}
                        for p in sorted(folder.iterdir())
                    ]  # fmt: skip
                    return self.send_json(entries, body)
                files = [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file()]
                info = {
                    "id": repo,
                    "modelId": repo,
                    "sha": COMMIT,
                    "siblings": [{"rfilename": f} for f in files],
                }
                self.send_json(info, body)

            def send_json(self, obj: object, body: bool) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def fail(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
