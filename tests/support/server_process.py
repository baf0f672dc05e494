"""`predictor serve` in a child process on a loopback port, for tests and benchmarks.

The port is chosen by the OS (REST_PORT=0) and read from the start-up log, so
parallel runs never collide.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

STARTUP_TIMEOUT_S = 300.0
_LISTENING = re.compile(r"on http://127\.0\.0\.1:(\d+)/")


class ServerProcess:
    """The server, with ``env`` over this process's environment (less REST_* and MODEL_*)."""

    def __init__(self, env: dict[str, str], startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REST_", "MODEL_")) and k != "MODELS"
        }
        full_env.update({"REST_HOST": "127.0.0.1", "REST_PORT": "0", "LOG_LEVEL": "INFO"})
        full_env.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "predictor", "serve"],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.port: int | None = None
        self._listening = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._listening.wait(startup_timeout_s) or self.port is None:
            self.kill()
            raise RuntimeError("the server did not start:\n" + "".join(self.log))

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            match = _LISTENING.search(line)
            if match and self.port is None:
                self.port = int(match.group(1))
                self._listening.set()
        self._listening.set()  # the process ended: stop waiting

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234."""
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        path: str,
        body: bytes | None = None,
        content_type: str = "image/jpeg",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One blocking request; returns the status and the decoded JSON body."""
        sent = {"Content-Type": content_type} if body is not None else {}
        sent.update(headers or {})
        request = urllib.request.Request(self.url + path, data=body, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Send ``signum`` and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """Make sure the process is gone."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.kill()
