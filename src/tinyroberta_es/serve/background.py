"""Run a server in the background, for tests, notebooks and load tests.

`BackgroundServer` runs an app with uvicorn on a thread of this process. Its socket is bound here, to port 0
unless one is given, before the server starts, so the port is known and nothing can take it in between.
`ServerProcess` runs the real `tinyroberta-es serve` command in a child process (its own interpreter, so
the clients of a load test do not share its GIL) and waits until ``/health`` answers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import uvicorn
from fastapi import FastAPI


class BackgroundServer:
    """``with BackgroundServer(app) as server:`` serves `app` at ``server.url`` until the block ends."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30
    ) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.host, self.port = self.socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.startup_timeout = startup_timeout
        config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="uvicorn", daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server at {self.url} did not start within {self.startup_timeout} s")
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout: float = 30) -> None:
        """Ask the server to finish its requests and stop; wait for its thread."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.socket.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for a child process, which must bind it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(["--model", path]) as server:`` runs `tinyroberta-es serve` at ``server.url``."""

    def __init__(self, args: list[str], log_path: str | Path, startup_timeout: float = 120) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "tinyroberta_es.cli", "serve", *args, "--port", str(self.port)]
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the server did not answer /health in {self.startup_timeout} s: {self.log()}"
                )
            time.sleep(0.1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout: float = 30) -> int | None:
        """Stop the server gracefully (SIGTERM), or kill it after `timeout`; its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text("utf-8", errors="replace") if self.log_path.exists() else ""
