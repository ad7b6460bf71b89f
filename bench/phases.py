"""The service benchmark's setup and its throughput phases against direct SDK calls: 1 storage ceiling, 2 intake
over HTTP, the drain's backlog, 5 processing ceiling (3, 4 and 6: bench/drain.py, bench/e2e.py, bench/big_report.py)."""

from __future__ import annotations

import time
from typing import Any

from bench import ceiling as ceil
from bench.load import run_count, run_level
from bench.profiling import Recording
from bench.reports import small_report
from bench.results import Ceiling, Drain, Intake, Json, ProcessingCeiling
from bench.service import CpuMeter, add_sender, foreign_load, machine_info, wait_health
from bench.session import SENDER, Session, pid_of, say
from devhost.process import DevHostProcess

QUIET_CORES = 0.25  # busier than this without us, the machine would make the numbers low and noisy

CEILING_WHAT = ("per op: blob upload ~1 KB + table insert + queue put (base64, ttl -1); shared clients, "
                "app client options; threads in the bench process")
PROCESSING_CEILING_WHAT = (
    "per message: receive (batches) + blob read + table merge + delete. 'basic' drains a backlog "
    "as large as the devhost drain's, so both cross the same queue depths (Azurite's queue "
    "operations slow down with the number of messages); its last messages are timed on their "
    "own for the rate at low depth. 'app_ops' (with --profile) makes the processor's calls (status "
    "row read, blob read, results blob upload, etag-conditional merge, delete) over a smaller "
    "backlog, to compare with the drain's last messages: what devhost and the app cost beyond "
    "storage.")


def _no_cleanup() -> None:
    pass


# --- setup -----------------------------------------------------------------------------------------------------

def wait_for_quiet(s: Session, wait_s: float) -> dict[str, float]:
    """The machine's load without us, after waiting up to `wait_s` for it to drop."""
    load = foreign_load(2.0)
    deadline = time.monotonic() + wait_s
    while load["busy_cores"] > QUIET_CORES and time.monotonic() < deadline:
        say(f"  machine busy without us ({load}); waiting for it to quieten")
        load = foreign_load(5.0)
    if load["busy_cores"] > QUIET_CORES:
        say(f"WARNING: other processes already use {load['busy_cores']} of the cores: numbers will be low/noisy")
        s.notes.append(f"machine busy before the run: {load}")
    return load


def start_azurite(s: Session) -> Json:
    """Start the in-memory Azurite; the machine's facts, Azurite's version among them."""
    say("starting Azurite (in memory)")
    azurite = s.procs.start_azurite()
    s.azurite_ready = time.monotonic()
    return machine_info(azurite)


def register_sender(s: Session, machine: Json) -> None:
    assert s.procs.azurite is not None
    say(f"Azurite {machine['azurite_version']} on ports {s.procs.azurite.ports}; registering sender")
    s.key = add_sender(s.connection_string, SENDER)


# --- phase 1: storage ceiling ----------------------------------------------------------------------------------

def storage_ceiling(s: Session) -> Ceiling:
    say("phase 1: storage ceiling (blob upload + table insert + queue put, direct SDK)")
    s.clients = ceil.Clients.create(s.connection_string)
    ops = ceil.IntakeOps(s.clients)
    levels = [_ceiling_level(s, ops, c) for c in s.plan.levels]
    # Azurite's in-memory queues scan every message of every queue on each receive/delete/count, so the
    # ceiling's leftovers would slow the app's drain: drop them.
    left = s.clients.depth()
    s.clients.clear()
    return Ceiling(what=CEILING_WHAT, basic=levels, messages_left_and_cleared=left)


def _ceiling_level(s: Session, ops: ceil.IntakeOps, c: int) -> Json:
    p = s.plan
    s.check_budget("ceiling")
    level, summary = s.measure(f"ceiling c={c}", s.pids(),
                               lambda: run_level(lambda _i: (ops, _no_cleanup), c, p.ceiling_level_s, p.warmup_s))
    say(f"  ceiling c={c:<2d} {level.rate:7.1f} ops/s  p50 {summary['latency']['p50_ms']} ms"
        f"  p99 {summary['latency']['p99_ms']} ms  errors {level.errors}  cpu {summary['cpu_cores']}")
    return summary


def settle_queue_gc(s: Session) -> float | None:
    """Let Azurite's queue GC sweep the ceiling's cleared messages before intake is measured; seconds waited, or
    None when it is too late to know where the GC is (the per-level stall check still guards the numbers).

    Azurite runs a queue mark-and-sweep at start and then 60 s after the previous one ended; sweeping a few
    thousand deleted messages blocks it for 10-40 s, which would land in the middle of the intake levels.
    Wait for the GC due at start+60 s, probing with a cheap call until Azurite answers promptly again."""
    due = s.azurite_ready + 60.0
    wait = due + 1.0 - time.monotonic()
    if wait < -5.0:
        return None
    say(f"  waiting {max(0.0, wait):.0f}s for Azurite's queue GC (due 60 s after start) to sweep the ceiling's "
        f"messages")
    time.sleep(max(0.0, wait))
    started = time.monotonic()
    fast = 0
    while fast < 3 and time.monotonic() - started < 120:
        t0 = time.perf_counter()
        s.sdk.depth()
        fast = fast + 1 if time.perf_counter() - t0 < 0.15 else 0
        time.sleep(0.25)
    waited = round(time.monotonic() - started + max(0.0, wait), 1)
    say(f"  Azurite answering promptly again after {time.monotonic() - started:.1f}s")
    return waited


# --- phase 2: intake over HTTP ---------------------------------------------------------------------------------

def start_intake_host(s: Session) -> DevHostProcess:
    """The devhost of phase 2 (processor disabled); it then tops up the drain's backlog."""
    say("phase 2: intake over HTTP through devhost (processor disabled)")
    host = s.procs.start_devhost(processor=False)
    say(f"  devhost up at {host.url} (pid {pid_of(host)}); health {wait_health(host.url)}")
    return host


def intake(s: Session, host: DevHostProcess, ceiling: Ceiling) -> Intake:
    # A few requests so that imports and first-use resource creation are not measured.
    with s.client(host.url) as c:
        for _ in range(20):
            c.post("/api/reports", content=s.next_report())
    profiles: dict[str, Json | None] = {}
    levels = [_intake_level(s, host, c, profiles) for c in s.plan.levels]
    base = {lv["concurrency"]: lv["ops_per_s"] for lv in ceiling.basic}
    ratios = {f"c{lv['concurrency']}": round(lv["ops_per_s"] / base[lv["concurrency"]], 3)
              for lv in levels if base.get(lv["concurrency"])}
    say(f"  intake / ceiling: {ratios}")
    return Intake(levels=levels, ratio_to_ceiling=ratios, report_bytes=len(small_report(1)), profiles=profiles)


def _intake_level(s: Session, host: DevHostProcess, c: int, profiles: dict[str, Json | None]) -> Json:
    """One concurrency level's summary; with --profile, the highest level's py-spy profile goes to `profiles`."""
    p = s.plan
    s.check_budget("intake")
    rec = None
    if s.profile and c == max(p.levels):
        rec = Recording(pid_of(host), s.out / "profiles" / f"intake_c{c}.txt", p.warmup_s + p.level_s + 0.1)
    level, summary = s.measure(f"intake c={c}", s.pids(host),
                               lambda: run_level(s.post_factory(host.url), c, p.level_s, p.warmup_s))
    if rec is not None:
        profiles[f"intake_c{c}"] = rec.finish()
    say(f"  intake c={c:<2d} {level.rate:7.1f} accepted/s  p50 {summary['latency']['p50_ms']} ms  "
        f"p95 {summary['latency']['p95_ms']} ms  p99 {summary['latency']['p99_ms']} ms  "
        f"errors {level.errors} {level.outcomes}  cpu {summary['cpu_cores']}")
    return summary


def build_backlog(s: Session, host: DevHostProcess) -> int:
    """Top the queue up to the plan's backlog through the intake devhost, then stop it; the queue depth."""
    depth = wait_health(host.url)["queue_depth"]
    missing = s.plan.backlog - depth
    if missing > 0:
        say(f"  backlog: {depth} queued by phase 2; posting {missing} more (c=8)")
        level = run_count(s.post_factory(host.url), 8, missing, deadline_s=max(60.0, missing / 20))
        if level.errors:
            s.notes.append(f"backlog top-up: {level.errors} errors {level.error_samples[:2]}")
    depth = wait_health(host.url)["queue_depth"]
    say(f"  backlog ready: queue_depth {depth}")
    s.procs.stop_devhost(host)
    return int(depth)


# --- phase 5: processing ceiling -------------------------------------------------------------------------------

def processing_ceiling(s: Session, backlog: int) -> ProcessingCeiling:
    """The drain's storage calls made directly over a backlog as large as the drain's (and, with --profile, the
    processor's own calls over the last messages' count)."""
    p = s.plan
    say(f"phase 5: processing ceiling: the drain's calls made directly with the SDK ({p.proc_threads} threads, "
        f"receive x{p.proc_batch} + blob read + table merge + delete), over a backlog of {backlog} as the "
        f"drain had" + (f", then the processor's own calls over {p.proc_ceiling_max}" if s.profile else ""))
    basic = _ceiling_drain(s, "basic", backlog)
    app_ops = _ceiling_drain(s, "app_ops", p.proc_ceiling_max) if s.profile else None
    s.sdk.clear()
    return ProcessingCeiling(what=PROCESSING_CEILING_WHAT, basic=basic, app_ops=app_ops)


def _ceiling_drain(s: Session, flavour: str, count: int) -> Json:
    """Fill the queue with `count` messages and drain it; a small backlog that stalled is measured once more."""
    p = s.plan
    app_ops = flavour == "app_ops"
    summary, drained = _ceiling_drain_once(s, count, app_ops)
    if drained.stall_s != 0 and count <= p.proc_ceiling_max:
        say(f"  ceiling {flavour}: nothing completed for {drained.level.longest_gap_s:.1f}s (storage "
            f"stall; Azurite GC?); measuring again")
        first = summary
        summary, _ = _ceiling_drain_once(s, count, app_ops)
        summary["stalled_attempt"] = {k: first[k] for k in ("reports_per_s", "longest_gap_s", "cpu_cores")}
    say(f"  ceiling {flavour:7s} {summary['reports_per_s']:7.1f} msgs/s ({summary['processed']} of "
        f"{summary['start_depth']} in {summary['elapsed_s']} s, stalls {summary['stalls_s']} s, errors "
        f"{summary['errors']}); last {p.proc_ceiling_max}: {summary['tail'].get('reports_per_s')}/s; "
        f"cpu {summary['cpu_cores']}")
    return summary


def _ceiling_drain_once(s: Session, count: int, app_ops: bool) -> tuple[Json, ceil.DrainResult]:
    p = s.plan
    s.check_budget("processing ceiling", count / 50)
    s.sdk.clear()
    fill = run_count(lambda _i: (ceil.IntakeOps(s.sdk), _no_cleanup), 16, count, max(120.0, count / 20))
    depth = s.sdk.depth()
    meter = CpuMeter(s.pids())
    drained = ceil.drain(s.sdk, p.proc_threads, p.proc_batch, p.proc_ceiling_s, depth, app_ops,
                         tail=p.proc_ceiling_max)
    summary: dict[str, Any] = {**ceil.drain_summary(drained, p.proc_batch, app_ops), "cpu_cores": meter.read(),
                               "start_depth": depth, "fill_errors": fill.errors}
    return summary, drained


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def compare_drain(s: Session, drain: Drain, ceiling: ProcessingCeiling) -> None:
    """Set the drain's ratios to the processing ceiling's rates."""
    basic, app = ceiling.basic, ceiling.app_ops or {}
    tail = drain.tail.get("reports_per_s")
    drain.ratio_to_ceiling = _ratio(drain.reports_per_s, basic.get("reports_per_s"))
    drain.ratio_to_ceiling_without_stalls = _ratio(drain.reports_per_s_without_stalls,
                                                   basic.get("reports_per_s_without_stalls"))
    drain.ratio_to_ceiling_tail = _ratio(tail, basic.get("tail", {}).get("reports_per_s"))
    drain.ratio_to_app_ops_ceiling_tail = _ratio(tail, app.get("reports_per_s"))
    say(f"  drain / ceiling over the whole backlog: {drain.ratio_to_ceiling} (without stalls: "
        f"{drain.ratio_to_ceiling_without_stalls}); over the last {s.plan.proc_ceiling_max}: "
        f"{drain.ratio_to_ceiling_tail}, and {drain.ratio_to_app_ops_ceiling_tail} of the processor's "
        f"own calls made directly")
