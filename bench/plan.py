"""How much the service benchmark measures: counts, durations and deadlines of a full run and of a quick one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...] = (1, 8, 32)
    level_s: float = 8.0
    ceiling_level_s: float = 6.0  # fewer queue messages created, so Azurite's GC sweep afterwards is shorter
    warmup_s: float = 1.5
    backlog: int = 5000
    proc_threads: int = 16
    proc_batch: int = 16
    proc_ceiling_s: float = 300.0  # a deadline: each ceiling drain runs until its queue is empty
    proc_ceiling_max: int = 1000
    drain_deadline_s: float = 300.0
    e2e_reports: int = 100
    e2e_idle_reports: int = 16
    e2e_poll_s: float = 0.015
    big_bytes: int = 49_900_000
    big_deadline_s: float = 240.0
    budget_s: float = 520.0  # with a first-run install (about a minute), the whole command stays under 10 minutes
    settle_gc: bool = True  # wait for Azurite's queue GC after the ceiling (quick runs create too few messages)
    # FUNCTIONS_WORKER_PROCESS_COUNT of every devhost: Python is GIL-bound, so the host runs several workers.
    workers: int = 2


FULL = Plan()
QUICK = Plan(level_s=2.0, ceiling_level_s=2.0, warmup_s=0.5, backlog=400, proc_ceiling_s=20.0,
             proc_ceiling_max=200, drain_deadline_s=90.0, e2e_reports=30, e2e_idle_reports=5, big_bytes=5_000_000,
             big_deadline_s=60.0, budget_s=170.0, settle_gc=False)
