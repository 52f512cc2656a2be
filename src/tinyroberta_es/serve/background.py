"""Run a server in the background, for tests, notebooks and load tests.

`BackgroundServer` runs an app with uvicorn on a thread of this process. Its socket is bound here, to port 0
unless one is given, before the server starts, so the port is known and nothing can take it in between; it
waits until the app is ready (warmed up) unless told not to, and stops it as SIGTERM would (a drain).
`ServerProcess` runs the real `tinyroberta-es serve` command in a child process (its own interpreter, so
the clients of a load test do not share its GIL) and waits until ``/readyz`` answers 200.
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

from tinyroberta_es.serve.lifecycle import DrainingServer, Lifecycle


class BackgroundServer:
    """``with BackgroundServer(app) as server:`` serves `app` at ``server.url`` until the block ends."""

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30,
        wait_ready: bool = True,
    ) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.host, self.port = self.socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.startup_timeout = startup_timeout
        self.lifecycle: Lifecycle | None = getattr(app.state, "lifecycle", None)
        self.wait_ready = wait_ready and self.lifecycle is not None
        config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
        if self.lifecycle is not None:
            self.server: uvicorn.Server = DrainingServer(config, self.lifecycle)
        else:
            self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="uvicorn", daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started or (self.wait_ready and not self.lifecycle.ready):  # type: ignore[union-attr]
            failed = self.lifecycle is not None and self.lifecycle.state == "failed"
            if failed or not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                why = "failed its warm-up" if failed else f"did not start within {self.startup_timeout} s"
                raise RuntimeError(f"the server at {self.url} {why}")
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
        """Ask the server to finish its requests and stop (a drain, as on SIGTERM); wait for its thread."""
        if isinstance(self.server, DrainingServer):
            self.server.request_exit()
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

    def __init__(
        self,
        args: list[str],
        log_path: str | Path,
        startup_timeout: float = 120,
    ) -> None:
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
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the server was not ready (/readyz) in {self.startup_timeout} s: {self.log()}"
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
