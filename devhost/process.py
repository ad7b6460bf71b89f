"""Run devhost as a child process (for tests, benchmarks and the run script) and wait until it answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx

from devhost.azurite import REPO_ROOT, free_port

READY_PATH = "/admin/host/status"


@dataclass
class DevHostProcess:
    """`python -m devhost` on a free port, serving `app_dir` with extra environment settings."""

    app_dir: Path = REPO_ROOT
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _own_log: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> DevHostProcess:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="devhost-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        # The devhost package lives in the repository, whatever app folder it serves.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process, closed below
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devhost", "--port", str(self.port), "--app-dir", str(self.app_dir)],
            cwd=str(self.app_dir), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self._fail(f"devhost exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + READY_PATH, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                self._fail(f"devhost did not answer within {timeout}s")
            time.sleep(0.1)

    def _fail(self, what: str) -> NoReturn:
        """A failed start: its log's tail goes into the error, and the log itself goes (nothing left behind)."""
        message = f"{what}:\n{self.logs()[-4000:]}"
        self.close()
        raise RuntimeError(message)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait: the host finishes what it runs and exits. Its log stays readable until `close()`."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        """Remove the log this object made for itself (tests leave nothing in the temp folder)."""
        if self._own_log and self.log_path is not None and (self.process is None or self.process.poll() is not None):
            self.log_path.unlink(missing_ok=True)
            self.log_path, self._own_log = None, False

    def kill(self) -> None:
        """SIGKILL: the crash a deployment or an out-of-memory kill looks like."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> DevHostProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()
