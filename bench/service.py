"""The service under test: one Azurite, devhost processes against it, a sender, process memory, machine facts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx

from devhost.azurite import REPO_ROOT, Azurite
from devhost.process import DevHostProcess

PROCESSOR = "process_queue"


def app_env(conn: str, processor: bool, **extra: str) -> dict[str, str]:
    """Every setting the app reads, explicitly (as tests/service.py does), with the real host.json timings."""
    env = {
        "AzureWebJobsStorage": conn,
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "MAX_REPORT_BYTES": "50000000",
        "DELIVERY_URL": "",
        "PUBLIC_BASE_URL": "",
        "RECONCILE_AFTER_SECONDS": "60",
        f"AzureWebJobs.{PROCESSOR}.Disabled": "false" if processor else "true",
    }
    env.update(extra)
    return env


def add_sender(conn: str, name: str) -> str:
    """Register a sender through the admin CLI, as an operator would; returns its API key."""
    env = {**os.environ, "AzureWebJobsStorage": conn}
    done = subprocess.run(
        [sys.executable, "-m", "shared.admin", "senders", "add", name], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"admin senders add {name} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)["key"]


class Processes:
    """Everything started by the run, so that `stop_all` in a `finally` leaves nothing behind."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.azurite: Azurite | None = None
        self.hosts: list[DevHostProcess] = []

    def start_azurite(self) -> Azurite:
        self.azurite = Azurite(silent=True)  # in memory, no access log
        self.azurite.start(timeout=60)
        return self.azurite

    def start_devhost(self, processor: bool, timeout: float = 90.0, **extra: str) -> DevHostProcess:
        assert self.azurite is not None
        extra.setdefault("FUNCTIONS_WORKER_PROCESS_COUNT", str(self.workers))
        host = DevHostProcess(REPO_ROOT, env=app_env(self.azurite.connection_string, processor, **extra))
        self.hosts.append(host)
        host.start(timeout=timeout)
        return host

    def stop_devhost(self, host: DevHostProcess, timeout: float = 40.0) -> None:
        with suppress(Exception):
            host.stop(timeout)
        with suppress(Exception):
            host.kill()
        host.close()

    def stop_all(self) -> None:
        for host in reversed(self.hosts):
            self.stop_devhost(host, timeout=15)
        if self.azurite is not None:
            with suppress(Exception):
                self.azurite.stop(timeout=10)


def wait_health(url: str, deadline_s: float = 30.0) -> dict:
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/api/health", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"/api/health did not answer 200 within {deadline_s}s (last: {last!r})")


# --- memory of a process --------------------------------------------------------------------------------------


def family(pid: int) -> list[int]:
    """`pid` and its direct children: devhost's worker processes (FUNCTIONS_WORKER_PROCESS_COUNT)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(") ", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return [pid, *children]


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in bytes: the largest over `pid` and its worker processes (empty if all are gone).

    A request lands in one worker, so its peak is that worker's, not a sum."""
    out: dict[str, int] = {}
    for member in family(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        name, value = line.split(":", 1)
                        out[name] = max(out.get(name, 0), int(value.split()[0]) * 1024)
        except OSError:
            continue
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `5` to clear_refs) of `pid` and its workers."""
    done = True
    for member in family(pid):
        try:
            with open(f"/proc/{member}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            done = False
    return done


# --- machine facts -------------------------------------------------------------------------------------------


def machine_info(azurite: Azurite | None) -> dict:
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = 0
    with suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    azurite_version = ""
    with suppress(OSError, ValueError, KeyError):
        azurite_version = json.loads((REPO_ROOT / "node_modules" / "azurite" / "package.json").read_text())["version"]
    node = ""
    with suppress(Exception):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    commit = ""
    with suppress(Exception):
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    packages = {}
    from importlib import metadata

    for name in ("azure-storage-blob", "azure-storage-queue", "azure-data-tables", "azure-core", "azure-functions",
                 "httpx", "uvicorn", "uvloop", "httptools", "requests", "pydantic"):
        with suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_bytes": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "azurite_version": azurite_version,
        "azurite_persistence": "in-memory" if azurite is None or azurite.location is None else "disk",
        "node": node,
        "repo_commit": commit,
        "packages": packages,
    }


# --- CPU accounting ------------------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` (all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def devhost_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a devhost: its host process and its language worker processes."""
    return sum(cpu_seconds(member) or 0.0 for member in family(pid))


def machine_cpu() -> tuple[float, float, float]:
    """Machine-wide (busy, steal, total) CPU seconds since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0, 0.0
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    steal = parts[7] if len(parts) > 7 else 0
    total = sum(parts[:8])
    return (total - idle - steal) / _TICKS, steal / _TICKS, total / _TICKS


class CpuMeter:
    """CPU used by named processes over a window, as a share of one core (1.0 = one core busy), plus the machine's
    busy cores and what processes other than ours used (`others`): a benchmark on a shared machine must say so."""

    def __init__(self, pids: dict[str, int]) -> None:
        # A devhost counts with its worker processes; the bench's own children (Azurite, devhosts) are named apart.
        self.members = {name: family(pid) if name.startswith("devhost") else [pid] for name, pid in pids.items()}
        self.start = time.perf_counter()
        self.before = {name: self._cpu(name) for name in self.members}
        self.machine_before = machine_cpu()

    def _cpu(self, name: str) -> float | None:
        times = [cpu_seconds(pid) for pid in self.members[name]]
        return None if times[0] is None else sum(t or 0.0 for t in times)

    def read(self) -> dict[str, float | None]:
        wall = max(1e-9, time.perf_counter() - self.start)
        out: dict[str, float | None] = {}
        ours = 0.0
        for name in self.members:
            now, before = self._cpu(name), self.before.get(name)
            out[name] = None if now is None or before is None else round((now - before) / wall, 2)
            ours += out[name] or 0.0
        busy, steal, _ = machine_cpu()
        out["machine"] = round((busy - self.machine_before[0]) / wall, 2)
        out["others"] = round(max(0.0, out["machine"] - ours), 2)
        if steal - self.machine_before[1] > 0:
            out["steal"] = round((steal - self.machine_before[1]) / wall, 2)
        return out


def foreign_load(seconds: float = 2.0) -> dict[str, float]:
    """How busy the machine is without us: cores used over `seconds`, and the load average."""
    before = machine_cpu()[0]
    time.sleep(seconds)
    busy = (machine_cpu()[0] - before) / seconds
    try:
        load1 = float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        load1 = -1.0
    return {"busy_cores": round(busy, 2), "loadavg_1m": load1}
