"""Start and stop a real Azurite (from the project's node_modules) for local runs and tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Azurite's well-known development account; it is public and only valid against the emulator.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEFAULT_PORTS = (10000, 10001, 10002)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def connection_string(blob_port: int, queue_port: int, table_port: int, host: str = "127.0.0.1") -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{blob_port}/{ACCOUNT_NAME};"
        f"QueueEndpoint=http://{host}:{queue_port}/{ACCOUNT_NAME};"
        f"TableEndpoint=http://{host}:{table_port}/{ACCOUNT_NAME};"
    )


def azurite_binary() -> str:
    local = REPO_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise RuntimeError("Azurite is not installed: run `npm ci` in the repository root (the README's commands do).")


@dataclass
class Azurite:
    """One Azurite process serving blob, queue and table.

    In memory by default; give `location` to persist on disk so the process can be restarted without losing data.
    Ports are picked free at construction and kept across restarts, so clients keep working after `start()` again.
    With `cert` and `key` it serves HTTPS; `oauth` makes it accept Microsoft Entra bearer tokens (`--oauth basic`:
    audience, issuer and lifetime are checked, not the signature); `account_key` replaces the well-known key, so
    a client holding the published development key is refused.
    """

    location: Path | None = None
    ports: tuple[int, int, int] = field(default_factory=lambda: (free_port(), free_port(), free_port()))
    log_path: Path | None = None
    # No access log: a line per request costs Azurite's single thread time the benchmarks would count.
    silent: bool = False
    cert: Path | None = None
    key: Path | None = None
    oauth: bool = False
    account_key: str = ACCOUNT_KEY
    process: subprocess.Popen[bytes] | None = None
    _own_log: bool = False

    @property
    def connection_string(self) -> str:
        if self.cert is not None or self.account_key != ACCOUNT_KEY:
            raise RuntimeError("this Azurite takes no connection string with the development key; use service_uri")
        return connection_string(*self.ports)

    def service_uri(self, service: str) -> str:
        """The path-style endpoint of one service (`blob`, `queue` or `table`) for the development account."""
        port = dict(zip(("blob", "queue", "table"), self.ports, strict=True))[service]
        return f"{'https' if self.cert else 'http'}://127.0.0.1:{port}/{ACCOUNT_NAME}"

    def start(self, timeout: float = 30.0) -> Azurite:
        if self.process and self.process.poll() is None:
            return self
        blob, queue, table = self.ports
        args = [
            azurite_binary(),
            "--blobHost", "127.0.0.1", "--blobPort", str(blob),
            "--queueHost", "127.0.0.1", "--queuePort", str(queue),
            "--tableHost", "127.0.0.1", "--tablePort", str(table),
            "--skipApiVersionCheck", "--loose", "--disableProductStyleUrl",
            # Azurite reports usage to Microsoft by default (and leaves a folder in the temp directory for it); a
            # service that handles patient data sends nothing anywhere it was not told to.
            "--disableTelemetry",
        ]
        if self.silent:
            args.append("--silent")
        if self.cert is not None and self.key is not None:
            args += ["--cert", str(self.cert), "--key", str(self.key)]
        if self.oauth:
            args += ["--oauth", "basic"]
        env = dict(os.environ)
        if self.account_key != ACCOUNT_KEY:
            env["AZURITE_ACCOUNTS"] = f"{ACCOUNT_NAME}:{self.account_key}"
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="azurite-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process, closed below
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not all(port_open(p) for p in self.ports):
            if self.process.poll() is not None:
                raise RuntimeError(f"Azurite exited with {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self._stop(5.0)
                raise RuntimeError(f"Azurite did not listen within {timeout}s; see {self.log_path}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        try:
            self._stop(timeout)
        finally:
            if self._own_log and self.log_path is not None and self.process is None:
                # A log this object made for itself goes with it (one left behind by a failed start is kept, since
                # the error names it).
                self.log_path.unlink(missing_ok=True)
                self.log_path, self._own_log = None, False

    def _stop(self, timeout: float) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        # In memory there is nothing to flush, and a graceful stop waits ~10 s for idle keep-alive connections.
        # On disk, SIGTERM lets Azurite save what it holds.
        sig = signal.SIGKILL if self.location is None else signal.SIGTERM
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # The ports must be free before a restart can bind them again.
        deadline = time.monotonic() + timeout
        while any(port_open(p) for p in self.ports) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
