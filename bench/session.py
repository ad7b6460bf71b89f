"""What the phases of one service benchmark run share: its plan, processes, sender key, time budget, progress lines
and the measurement of one load level."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import ceiling as ceil
from bench.load import LevelResult, OpFactory, post_factory
from bench.plan import Plan
from bench.reports import HL7, small_report
from bench.service import CpuMeter, Processes
from devhost.process import DevHostProcess

SENDER = "bench-lab"
TERMINAL = {"processed", "rejected", "failed"}

T0 = time.monotonic()


def elapsed() -> float:
    """Seconds since the run started (this module's import)."""
    return time.monotonic() - T0


def say(message: str) -> None:
    print(f"[{elapsed():6.1f}s] {message}", flush=True)


def epoch_seconds(iso: str) -> float:
    """A status record's timestamp (`received_at`, `completed_at`) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def pid_of(host: DevHostProcess) -> int:
    assert host.process is not None, "a started devhost"
    return host.process.pid


class OverBudget(Exception):
    """The next phase would not finish within the plan's time budget."""


@dataclass
class Session:
    plan: Plan
    out: Path
    profile: bool  # py-spy profiles asked for and py-spy installed
    procs: Processes
    notes: list[str] = field(default_factory=list)
    key: str = ""  # the benchmark sender's API key
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    clients: ceil.Clients | None = None  # direct SDK clients of the ceiling phases
    azurite_ready: float = 0.0  # time.monotonic() when Azurite answered

    @property
    def connection_string(self) -> str:
        assert self.procs.azurite is not None
        return self.procs.azurite.connection_string

    @property
    def sdk(self) -> ceil.Clients:
        assert self.clients is not None, "the storage ceiling phase creates the SDK clients"
        return self.clients

    def remaining_s(self) -> float:
        return self.plan.budget_s - elapsed()

    def check_budget(self, phase: str, needs_s: float = 0.0) -> None:
        if needs_s > self.remaining_s():
            raise OverBudget(f"time budget of {self.plan.budget_s:.0f}s reached before {phase}")

    def next_report(self) -> bytes:
        return small_report(next(self.counter))

    def pids(self, *hosts: DevHostProcess) -> dict[str, int]:
        """The processes whose CPU a measurement records: the bench itself, Azurite and the given devhosts."""
        out = {"bench": os.getpid()}
        if self.procs.azurite and self.procs.azurite.process:
            out["azurite"] = self.procs.azurite.process.pid
        for i, host in enumerate(hosts):
            out["devhost" if i == 0 else f"devhost{i + 1}"] = pid_of(host)
        return out

    def client(self, url: str, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=url, timeout=timeout,
                            headers={"Authorization": f"Bearer {self.key}", "Content-Type": HL7},
                            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4))

    def post_factory(self, url: str) -> OpFactory:
        return post_factory(url, self.key, HL7, self.next_report)

    def measure(self, label: str, pids: dict[str, int],
                run: Callable[[], LevelResult]) -> tuple[LevelResult, dict[str, Any]]:
        """Run one load level; if nothing completed for a long stretch (a storage stall: Azurite's queue GC runs
        every minute and, after thousands of messages, blocks it for seconds), run it once more and keep the
        second, recording the first as `stalled_attempt`."""
        level, summary = _measured(pids, run)
        p99 = (summary["latency"]["p99_ms"] or 0) / 1000.0
        if level.longest_gap_s > max(1.5, 3 * p99):
            say(f"  {label}: nothing completed for {level.longest_gap_s:.1f}s (storage stall; Azurite GC?) "
                f"at {level.rate:.1f}/s; running the level again")
            first = summary
            level, summary = _measured(pids, run)
            summary["stalled_attempt"] = {k: first[k] for k in ("ops_per_s", "longest_gap_s", "latency", "cpu_cores")}
        return level, summary


def _measured(pids: dict[str, int], run: Callable[[], LevelResult]) -> tuple[LevelResult, dict[str, Any]]:
    meter = CpuMeter(pids)
    level = run()
    return level, {**level.summary(), "cpu_cores": meter.read()}
