"""The service benchmark: storage ceiling, HTTP intake, queue drain, end-to-end latency, and one 50 MB report.

    ./scripts/bench            # installs what it needs, then a full run, about 7.5 minutes on 2 cores
    ./scripts/bench --quick    # smoke run, about 1 minute
    ./scripts/bench --profile  # also py-spy profiles of devhost (intake c=32, drain start) and the processor's
                               # own storage calls made directly
    options: --workers N, --out DIR (default bench/results), --wait-quiet SECONDS (wait for other processes to
    leave the CPU)

One in-memory Azurite (access log off) is started on free loopback ports, and devhost processes against it;
everything is stopped in a `finally` (Ctrl-C and SIGTERM included). Results: <out>/latest.json, a timestamped copy,
<out>/latency.png.

Phases: 1 storage ceiling (direct SDK: blob + insert + queue put) at c=1/8/32; 2 intake over HTTP (processor
disabled) at c=1/8/32; 3 drain of a 5,000-report backlog by a devhost with the processor enabled; 4 end-to-end
latency on the idle service; 5 processing ceiling (direct SDK: receive + blob read + table merge + delete) over a
backlog as large as the drain's, its last 1,000 timed apart; 6 one ~50 MB HL7 batch: accept time and peak memory
of the intake devhost, then processing time and peak memory of a separate processing devhost.

Azurite's in-memory queue costs O(messages in all queues) per receive/delete/count and sweeps deleted messages every
minute (blocking it for seconds after thousands of deletes): the ceiling's messages are cleared and swept before
intake is measured, a level during which nothing completed for a long stretch is measured again, and both drains
report their rate with and without such stalls. CPU use of every process (devhost with its workers, and other
processes on the machine, `others`) is recorded with each measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import ceiling as ceil
from bench.chart import latency_chart
from bench.load import latency_summary, post_factory, run_count, run_level
from bench.profiling import Recording, py_spy
from bench.reports import HL7, big_report, small_report
from bench.service import (
    CpuMeter,
    Processes,
    add_sender,
    foreign_load,
    machine_info,
    proc_memory,
    reset_peak,
    wait_health,
)
from devhost.azurite import REPO_ROOT

RESULTS = Path(__file__).resolve().parent / "results"
TERMINAL = {"processed", "rejected", "failed"}
SENDER = "bench-lab"


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
             proc_ceiling_max=200, drain_deadline_s=90.0, e2e_reports=30, e2e_idle_reports=5, big_bytes=5_000_000, big_deadline_s=60.0,
             budget_s=170.0, settle_gc=False)

T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


class OverBudget(Exception):
    pass


class Bench:
    def __init__(self, plan: Plan, out: Path, profile: bool, quick: bool, wait_quiet_s: float = 0.0) -> None:
        self.plan = plan
        self.wait_quiet_s = wait_quiet_s
        self.out = out
        self.profile = profile and py_spy() is not None
        self.procs = Processes(workers=plan.workers)
        self.results: dict = {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "quick": quick,
            "plan": plan.__dict__,
            "notes": [],
        }
        self.counter = itertools.count(1)
        self.key = ""
        if profile and not self.profile:
            self.results["notes"].append("--profile asked but py-spy is not installed; no profiles taken")

    # --- helpers ---------------------------------------------------------------------------------------

    def check_budget(self, phase: str, needs_s: float = 0.0) -> None:
        if time.monotonic() - T0 + needs_s > self.plan.budget_s:
            raise OverBudget(f"time budget of {self.plan.budget_s:.0f}s reached before {phase}")

    def pids(self, *hosts) -> dict[str, int]:
        out = {"bench": os.getpid()}
        if self.procs.azurite and self.procs.azurite.process:
            out["azurite"] = self.procs.azurite.process.pid
        for i, host in enumerate(hosts):
            out["devhost" if i == 0 else f"devhost{i + 1}"] = host.process.pid
        return out

    def client(self, url: str, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=url, timeout=timeout,
                            headers={"Authorization": f"Bearer {self.key}", "Content-Type": HL7},
                            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4))

    def post_factory(self, url: str):
        return post_factory(url, self.key, HL7, lambda: small_report(next(self.counter)))

    def measure(self, label: str, pids: dict[str, int], run) -> tuple:
        """Run one load level; if nothing completed for a long stretch (a storage stall: Azurite's queue GC runs
        every minute and, after thousands of messages, blocks it for seconds), run it once more and keep the
        second, recording the first as `stalled_attempt`."""
        meter = CpuMeter(pids)
        level = run()
        summary = {**level.summary(), "cpu_cores": meter.read()}
        p99 = (summary["latency"]["p99_ms"] or 0) / 1000.0
        if level.longest_gap_s > max(1.5, 3 * p99):
            say(f"  {label}: nothing completed for {level.longest_gap_s:.1f}s (storage stall; Azurite GC?) "
                f"at {level.rate:.1f}/s; running the level again")
            first = summary
            meter = CpuMeter(pids)
            level = run()
            summary = {**level.summary(), "cpu_cores": meter.read(),
                       "stalled_attempt": {k: first[k] for k in ("ops_per_s", "longest_gap_s", "latency", "cpu_cores")}}
        return level, summary

    # --- phases ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        load = foreign_load(2.0)
        deadline = time.monotonic() + self.wait_quiet_s
        while load["busy_cores"] > 0.25 and time.monotonic() < deadline:
            say(f"  machine busy without us ({load}); waiting for it to quieten")
            load = foreign_load(5.0)
        self.results["machine_load_before"] = load
        if load["busy_cores"] > 0.25:
            say(f"WARNING: other processes already use {load['busy_cores']} of the cores: numbers will be low/noisy")
            self.results["notes"].append(f"machine busy before the run: {load}")
        say("starting Azurite (in memory)")
        azurite = self.procs.start_azurite()
        self.azurite_ready = time.monotonic()
        self.results["machine"] = machine_info(azurite)
        say(f"Azurite {self.results['machine']['azurite_version']} on ports {azurite.ports}; registering sender")
        self.key = add_sender(azurite.connection_string, SENDER)

    def phase_ceiling(self) -> None:
        p = self.plan
        say("phase 1: storage ceiling (blob upload + table insert + queue put, direct SDK)")
        self.clients = ceil.Clients.create(self.procs.azurite.connection_string)
        out: dict = {"what": "per op: blob upload ~1 KB + table insert + queue put (base64, ttl -1); shared clients, "
                             "app client options; threads in the bench process", "basic": []}
        ops = ceil.IntakeOps(self.clients)
        for c in p.levels:
            self.check_budget("ceiling")
            level, summary = self.measure(f"ceiling c={c}", self.pids(),
                                          lambda c=c: run_level(lambda _i: (ops, lambda: None), c, p.ceiling_level_s,
                                                                p.warmup_s))
            out["basic"].append(summary)
            say(f"  ceiling c={c:<2d} {level.rate:7.1f} ops/s  p50 {summary['latency']['p50_ms']} ms"
                f"  p99 {summary['latency']['p99_ms']} ms  errors {level.errors}  cpu {summary['cpu_cores']}")
        # Azurite's in-memory queues scan every message of every queue on each receive/delete/count, so the
        # ceiling's leftovers would slow the app's drain: drop them.
        out["messages_left_and_cleared"] = self.clients.depth()
        self.clients.clear()
        self.results["ceiling"] = out
        if p.settle_gc:
            self.settle_queue_gc()

    def settle_queue_gc(self) -> None:
        """Let Azurite's queue GC sweep the ceiling's cleared messages before intake is measured.

        Azurite runs a queue mark-and-sweep at start and then 60 s after the previous one ended; sweeping a few
        thousand deleted messages blocks it for 10-40 s, which would land in the middle of the intake levels.
        Wait for the GC due at start+60 s, probing with a cheap call until Azurite answers promptly again."""
        due = self.azurite_ready + 60.0
        wait = due + 1.0 - time.monotonic()
        if wait < -5.0:
            return  # too late to know where the GC is; the per-level stall check still guards the numbers
        say(f"  waiting {max(0.0, wait):.0f}s for Azurite's queue GC (due 60 s after start) to sweep the ceiling's "
            f"messages")
        time.sleep(max(0.0, wait))
        started = time.monotonic()
        fast = 0
        while fast < 3 and time.monotonic() - started < 120:
            t0 = time.perf_counter()
            self.clients.depth()
            fast = fast + 1 if time.perf_counter() - t0 < 0.15 else 0
            time.sleep(0.25)
        self.results["ceiling"]["waited_for_azurite_gc_s"] = round(time.monotonic() - started + max(0.0, wait), 1)
        say(f"  Azurite answering promptly again after {time.monotonic() - started:.1f}s")

    def phase_intake(self) -> None:
        p = self.plan
        say("phase 2: intake over HTTP through devhost (processor disabled)")
        host = self.procs.start_devhost(processor=False)
        self.host_intake = host
        say(f"  devhost up at {host.url} (pid {host.process.pid}); health {wait_health(host.url)}")
        # A few requests so that imports and first-use resource creation are not measured.
        with self.client(host.url) as c:
            for _ in range(20):
                c.post("/api/reports", content=small_report(next(self.counter)))
        levels = []
        profiles = {}
        for c in p.levels:
            self.check_budget("intake")
            rec = None
            if self.profile and c == max(p.levels):
                rec = Recording(host.process.pid, self.out / "profiles" / f"intake_c{c}.txt",
                                p.warmup_s + p.level_s + 0.1)
            level, summary = self.measure(f"intake c={c}", self.pids(host),
                                          lambda c=c: run_level(self.post_factory(host.url), c, p.level_s,
                                                                p.warmup_s))
            if rec is not None:
                profiles[f"intake_c{c}"] = rec.finish()
            levels.append(summary)
            say(f"  intake c={c:<2d} {level.rate:7.1f} accepted/s  p50 {summary['latency']['p50_ms']} ms  "
                f"p95 {summary['latency']['p95_ms']} ms  p99 {summary['latency']['p99_ms']} ms  "
                f"errors {level.errors} {level.outcomes}  cpu {summary['cpu_cores']}")
        base = {lv["concurrency"]: lv["ops_per_s"] for lv in self.results["ceiling"]["basic"]}
        ratios = {f"c{lv['concurrency']}": round(lv["ops_per_s"] / base[lv["concurrency"]], 3)
                  for lv in levels if base.get(lv["concurrency"])}
        self.results["intake"] = {"levels": levels, "ratio_to_ceiling": ratios, "report_bytes": len(small_report(1)),
                                  "profiles": profiles}
        say(f"  intake / ceiling: {ratios}")

    def build_backlog(self) -> int:
        p = self.plan
        host = self.host_intake
        depth = wait_health(host.url)["queue_depth"]
        missing = p.backlog - depth
        if missing > 0:
            say(f"  backlog: {depth} queued by phase 2; posting {missing} more (c=8)")
            level = run_count(self.post_factory(host.url), 8, missing, deadline_s=max(60.0, missing / 20))
            if level.errors:
                self.results["notes"].append(f"backlog top-up: {level.errors} errors {level.error_samples[:2]}")
        depth = wait_health(host.url)["queue_depth"]
        say(f"  backlog ready: queue_depth {depth}")
        self.procs.stop_devhost(host)
        return depth

    def phase_processing_ceiling(self) -> None:
        p = self.plan
        backlog = self.results.get("drain", {}).get("backlog") or p.backlog
        say(f"phase 5: processing ceiling: the drain's calls made directly with the SDK ({p.proc_threads} threads, "
            f"receive x{p.proc_batch} + blob read + table merge + delete), over a backlog of {backlog} as the "
            f"drain had" + (f", then the processor's own calls over {p.proc_ceiling_max}" if self.profile else ""))
        out = {"what": "per message: receive (batches) + blob read + table merge + delete. 'basic' drains a backlog "
                       "as large as the devhost drain's, so both cross the same queue depths (Azurite's queue "
                       "operations slow down with the number of messages); its last messages are timed on their "
                       "own for the rate at low depth. 'app_ops' (with --profile) makes the processor's calls (status "
                       "row read, blob read, results blob upload, etag-conditional merge, delete) over a smaller "
                       "backlog, to compare with the drain's last messages: what devhost and the app cost beyond "
                       "storage."}
        flavours = [("basic", backlog)] + ([("app_ops", p.proc_ceiling_max)] if self.profile else [])
        for flavour, count in flavours:
            app_ops = flavour == "app_ops"
            stalled = None
            for _attempt in range(1 if count > p.proc_ceiling_max else 2):
                self.check_budget("processing ceiling", count / 50)
                self.clients.clear()
                fill = run_count(lambda _i: (ceil.IntakeOps(self.clients), lambda: None), 16, count,
                                 max(120.0, count / 20))
                depth = self.clients.depth()
                meter = CpuMeter(self.pids())
                drained = ceil.drain(self.clients, p.proc_threads, p.proc_batch, p.proc_ceiling_s, depth, app_ops,
                                     tail=p.proc_ceiling_max)
                summary = {**ceil.drain_summary(drained, p.proc_batch, app_ops), "cpu_cores": meter.read(),
                           "start_depth": depth, "fill_errors": fill.errors}
                if stalled is not None:
                    summary["stalled_attempt"] = stalled
                if drained.stall_s == 0 or stalled is not None or count > p.proc_ceiling_max:
                    break
                stalled = {k2: summary[k2] for k2 in ("reports_per_s", "longest_gap_s", "cpu_cores")}
                say(f"  ceiling {flavour}: nothing completed for {drained.level.longest_gap_s:.1f}s (storage "
                    f"stall; Azurite GC?); measuring again")
            out[flavour] = summary
            say(f"  ceiling {flavour:7s} {summary['reports_per_s']:7.1f} msgs/s ({summary['processed']} of {depth} in "
                f"{summary['elapsed_s']} s, stalls {summary['stalls_s']} s, errors {summary['errors']}); last "
                f"{p.proc_ceiling_max}: {summary['tail'].get('reports_per_s')}/s; cpu {summary['cpu_cores']}")
        self.clients.clear()
        self.results["processing_ceiling"] = out
        d = self.results.get("drain", {})
        basic, app = out.get("basic", {}), out.get("app_ops", {})
        tail = d.get("tail", {}).get("reports_per_s")
        d["ratio_to_ceiling"] = _ratio(d.get("reports_per_s"), basic.get("reports_per_s"))
        d["ratio_to_ceiling_without_stalls"] = _ratio(d.get("reports_per_s_without_stalls"),
                                                      basic.get("reports_per_s_without_stalls"))
        d["ratio_to_ceiling_tail"] = _ratio(tail, basic.get("tail", {}).get("reports_per_s"))
        d["ratio_to_app_ops_ceiling_tail"] = _ratio(tail, app.get("reports_per_s"))
        say(f"  drain / ceiling over the whole backlog: {d['ratio_to_ceiling']} (without stalls: "
            f"{d['ratio_to_ceiling_without_stalls']}); over the last {p.proc_ceiling_max}: "
            f"{d['ratio_to_ceiling_tail']}, and {d['ratio_to_app_ops_ceiling_tail']} of the processor's "
            f"own calls made directly")

    def list_statuses(self, url: str, limit_pages: int) -> tuple[dict[str, int], list[dict]]:
        counts: dict[str, int] = {}
        records: list[dict] = []
        cursor = None
        with self.client(url, timeout=120) as c:
            for _ in range(limit_pages):
                params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
                r = c.get("/api/reports", params=params)
                r.raise_for_status()
                page = r.json()
                for rec in page["reports"]:
                    counts[rec["status"]] = counts.get(rec["status"], 0) + 1
                    records.append(rec)
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        return counts, records

    def phase_drain(self, backlog: int) -> None:
        p = self.plan
        self.check_budget("drain", 30)
        say(f"phase 3: drain {backlog} queued reports with devhost (processor enabled)")
        launched = time.monotonic()
        host = self.procs.start_devhost(processor=True)
        ready = time.monotonic()
        self.host_full = host
        say(f"  devhost up in {ready - launched:.1f}s (pid {host.process.pid}); watching /api/health")
        rec = None
        if self.profile:
            rec = Recording(host.process.pid, self.out / "profiles" / "drain.txt", min(15.0, p.drain_deadline_s))
        meter = CpuMeter(self.pids(host))
        deadline = ready + min(p.drain_deadline_s, max(60.0, p.budget_s - (time.monotonic() - T0) - 60))
        timeline = []
        done_at = None
        last_print = 0.0
        with httpx.Client(base_url=host.url, timeout=10) as c:
            while time.monotonic() < deadline:
                try:
                    h = c.get("/api/health").json()
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.25)
                    continue
                now = time.monotonic()
                timeline.append((round(now - ready, 2), h.get("queue_depth"), h.get("poison_depth")))
                if now - last_print > 10:
                    say(f"  queue_depth {h.get('queue_depth')} poison {h.get('poison_depth')}")
                    last_print = now
                if h.get("queue_depth") == 0:
                    done_at = now
                    break
                time.sleep(0.5)
        cpu = meter.read()
        profile = rec.finish() if rec is not None else None
        counts, records = self.list_statuses(host.url, limit_pages=backlog // 1000 + 30)
        terminal = sum(v for k, v in counts.items() if k in TERMINAL)
        # The same measures as the SDK ceiling's drain, from the moments reports were completed: Azurite's stalls
        # (gaps with nothing completed) and the rate over the last reports.
        completed = sorted(_seconds(r["completed_at"]) for r in records if r.get("completed_at"))
        gaps = [b - a for a, b in zip(completed, completed[1:], strict=False)]
        stalls = [{"at_s": round(a - completed[0], 1), "seconds": round(g, 1)}
                  for a, g in zip(completed, gaps, strict=False) if g >= ceil.STALL_S]
        stall_s = sum(g for g in gaps if g >= ceil.STALL_S)
        span_rate = round((len(completed) - 1) / (completed[-1] - completed[0]), 2) if len(completed) > 1 else None
        drain_s = (done_at - ready) if done_at else None
        rate = round(backlog / drain_s, 2) if drain_s else None
        tail: dict = {}
        n = min(p.proc_ceiling_max, len(completed) - 1)
        if n > 0 and completed[-1] > completed[-n - 1]:
            seconds = completed[-1] - completed[-n - 1]
            tail = {"messages": n, "seconds": round(seconds, 3), "reports_per_s": round(n / seconds, 2)}
        buckets = _bucket_rates(timeline, backlog)
        self.results["drain"] = {
            "backlog": backlog,
            "devhost_startup_s": round(ready - launched, 2),
            "drain_s_from_ready": round(drain_s, 2) if drain_s else None,
            "reports_per_s": rate,
            "reports_per_s_from_completed_at": span_rate,
            "finished": done_at is not None,
            "statuses_after": counts,
            "terminal": terminal,
            "cpu_cores": cpu,
            "stalls": stalls,
            "stalls_s": round(stall_s, 2),
            "reports_per_s_without_stalls": round(backlog / (drain_s - stall_s), 2) if drain_s else None,
            "tail": tail,
            "rate_by_depth": buckets,
            "ratio_to_ceiling": None,
            "ratio_to_ceiling_without_stalls": None,
            "ratio_to_ceiling_tail": None,
            "ratio_to_app_ops_ceiling_tail": None,
            "queue_depth_timeline": timeline[:: max(1, len(timeline) // 80)],
            "profile": profile,
        }
        if done_at is None:
            self.results["notes"].append(f"drain did not finish within its deadline; statuses {counts}")
        say(f"  drained in {drain_s if drain_s is None else round(drain_s, 1)} s -> {rate} reports/s "
            f"(completed_at span: {span_rate}/s); last {p.proc_ceiling_max}: {tail.get('reports_per_s')}/s; "
            f"statuses {counts}; cpu {cpu}")
        say(f"  rate by queue depth: {buckets}; stalls (nothing completed for >= {ceil.STALL_S} s): {stalls}")

    def _e2e_one(self, c: httpx.Client, failures: list[str]) -> tuple[float, float, float | None] | None:
        """POST one small report and poll its status until terminal: (POST→terminal, POST→202, server-side
        received→completed), or None when it failed."""
        p = self.plan
        t0 = time.perf_counter()
        r = c.post("/api/reports", content=small_report(next(self.counter)))
        t1 = time.perf_counter()
        if r.status_code != 202:
            failures.append(f"POST {r.status_code}")
            return None
        rid = r.json()["id"]
        one_deadline = time.monotonic() + 30
        record = None
        while time.monotonic() < one_deadline:
            g = c.get(f"/api/reports/{rid}")
            if g.status_code == 200:
                record = g.json()
                break
            time.sleep(p.e2e_poll_s)
        t2 = time.perf_counter()
        if record is None:
            failures.append(f"{rid} not terminal in 30 s")
            return None
        server = None
        if record.get("completed_at"):
            server = _seconds(record["completed_at"]) - _seconds(record["received_at"])
        return t2 - t0, t1 - t0, server

    def _e2e_summary(self, samples: list[tuple[float, float, float | None]], failures: list[str]) -> dict:
        return {
            "reports": len(samples),
            "poll_interval_ms": self.plan.e2e_poll_s * 1000,
            "post_to_terminal": latency_summary([s[0] for s in samples]),
            "accept": latency_summary([s[1] for s in samples]),
            "server_received_to_completed": latency_summary([s[2] for s in samples if s[2] is not None]),
            "failures": failures[:10],
        }

    def phase_e2e(self) -> None:
        """End-to-end latency as a sender sees it. Back to back: each report right after the previous one ended,
        so the queue poller is still polling fast (its back-off restarts at 100 ms after a message). Idle: each
        report after the poller has backed off to host.json's maxPollingInterval, at a random moment within it,
        which is what a report arriving at a quiet service sees in Azure (the host polls; nothing wakes it)."""
        p = self.plan
        self.check_budget("e2e", 10)
        host = getattr(self, "host_full", None) or self.procs.start_devhost(processor=True)
        say(f"phase 4: end-to-end latency, {p.e2e_reports} reports back to back (poll every "
            f"{p.e2e_poll_s * 1000:.0f} ms)")
        time.sleep(1.0)
        samples: list = []
        failures: list[str] = []
        deadline = time.monotonic() + max(10.0, min(120.0, p.budget_s - (time.monotonic() - T0) - 90))
        with self.client(host.url) as c:
            for _ in range(p.e2e_reports):
                if time.monotonic() > deadline:
                    self.results["notes"].append("e2e stopped early at its deadline")
                    break
                sample = self._e2e_one(c, failures)
                if sample:
                    samples.append(sample)
        self.results["e2e"] = self._e2e_summary(samples, failures)
        s = self.results["e2e"]["post_to_terminal"]
        say(f"  back to back: p50 {s['p50_ms']} ms  p95 {s['p95_ms']} ms  (server-side received->completed p50 "
            f"{self.results['e2e']['server_received_to_completed']['p50_ms']} ms); failures {len(failures)}")
        self.procs.stop_devhost(host)
        self.phase_e2e_idle()

    def phase_e2e_idle(self) -> None:
        p = self.plan
        polling = max_polling_interval()
        settle = backoff_settle_s(polling)
        self.check_budget("idle e2e", 10)
        # One worker process: the real host has one queue listener per instance whatever its worker count;
        # devhost's forked workers poll each, which would halve the wait.
        host = self.procs.start_devhost(processor=True, FUNCTIONS_WORKER_PROCESS_COUNT="1")
        say(f"phase 4b: idle end-to-end latency, {p.e2e_idle_reports} reports, each {settle:.1f} s + a random part "
            f"of maxPollingInterval ({polling:g} s) after the previous one ended; one worker process")
        samples: list = []
        failures: list[str] = []
        rng = random.Random(7)
        with self.client(host.url) as c:
            for _ in range(p.e2e_idle_reports):
                if time.monotonic() - T0 + settle + polling + 5 > p.budget_s:
                    self.results["notes"].append("idle e2e stopped early at the time budget")
                    break
                time.sleep(settle + rng.uniform(0, polling))
                sample = self._e2e_one(c, failures)
                if sample:
                    samples.append(sample)
        idle = self._e2e_summary(samples, failures)
        polls_per_day = round(86400 / polling)
        idle.update({"max_polling_interval_s": polling, "settle_s": round(settle, 2),
                     "idle_polls_per_day_per_queue": polls_per_day})
        self.results["e2e"]["idle"] = idle
        s = idle["post_to_terminal"]
        say(f"  idle: p50 {s['p50_ms']} ms  p95 {s['p95_ms']} ms  max {s.get('max_ms')} ms; an idle listener makes "
            f"{polls_per_day} queue polls a day per queue; failures {len(failures)}")
        self.procs.stop_devhost(host)

    def phase_big(self) -> None:
        p = self.plan
        self.check_budget("big report", 30)
        body, messages = big_report(p.big_bytes)
        say(f"phase 6: one {len(body) / 1e6:.1f} MB HL7 batch ({messages} messages): intake devhost (processor "
            f"disabled) + processing devhost")
        intake = self.procs.start_devhost(processor=False)
        proc = self.procs.start_devhost(processor=True)
        with httpx.Client(base_url=intake.url, timeout=30,
                          headers={"Authorization": f"Bearer {self.key}"}) as c:
            c.get("/api/reports", params={"limit": "1"})  # warm the intake path (imports, clients)
        time.sleep(1.0)
        idle = {"intake": proc_memory(intake.process.pid), "processing": proc_memory(proc.process.pid)}
        peaks_reset = reset_peak(intake.process.pid) and reset_peak(proc.process.pid)
        samples: dict[str, int] = {"intake": 0, "processing": 0}
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                for name, host in (("intake", intake), ("processing", proc)):
                    rss = proc_memory(host.process.pid).get("VmRSS", 0)
                    samples[name] = max(samples[name], rss)
                stop.wait(0.02)

        threading.Thread(target=sampler, daemon=True).start()
        result: dict = {"body_bytes": len(body), "messages": messages, "idle_memory": idle,
                        "peak_reset_with_clear_refs": peaks_reset}
        try:
            meter = CpuMeter(self.pids(intake, proc))
            with httpx.Client(base_url=intake.url, timeout=p.big_deadline_s,
                              headers={"Authorization": f"Bearer {self.key}", "Content-Type": HL7}) as c:
                t0 = time.perf_counter()
                r = c.post("/api/reports", content=body)
                t1 = time.perf_counter()
                result["accept_status"] = r.status_code
                result["accept_s"] = round(t1 - t0, 3)
                result["intake_peak_during_accept"] = {**proc_memory(intake.process.pid),
                                                       "sampled_max_rss": samples["intake"]}
                say(f"  POST -> {r.status_code} in {t1 - t0:.2f} s; intake devhost VmHWM "
                    f"{result['intake_peak_during_accept'].get('VmHWM', 0) / 1e6:.0f} MB "
                    f"(idle RSS {idle['intake'].get('VmRSS', 0) / 1e6:.0f} MB)")
                if r.status_code != 202:
                    result["accept_body"] = r.text[:500]
                    return
                rid = r.json()["id"]
                seen_processing = None
                record = None
                deadline = time.monotonic() + p.big_deadline_s
                while time.monotonic() < deadline:
                    g = c.get(f"/api/reports/{rid}")
                    now = time.perf_counter()
                    if g.status_code == 200:
                        record = g.json()
                        break
                    if seen_processing is None and g.json().get("status") == "processing":
                        seen_processing = now
                    time.sleep(0.05)
                t2 = time.perf_counter()
            stop.set()
            result["cpu_cores"] = meter.read()
            result["processing_peak"] = {**proc_memory(proc.process.pid), "sampled_max_rss": samples["processing"]}
            if record is None:
                result["processing"] = "not terminal before the deadline"
                self.results["notes"].append("50 MB report not terminal before its deadline")
                return
            result["status"] = record["status"]
            result["items"] = record.get("items")
            result["accepted_to_terminal_s"] = round(t2 - t1, 3)
            result["processing_s"] = round(t2 - seen_processing, 3) if seen_processing else None
            received = datetime.fromisoformat(record["received_at"].replace("Z", "+00:00"))
            completed = datetime.fromisoformat(record["completed_at"].replace("Z", "+00:00"))
            result["server_received_to_completed_s"] = round((completed - received).total_seconds(), 3)
            say(f"  {record['status']} {record.get('items')} {t2 - t1:.1f} s after the 202 (processing "
                f"{result['processing_s']} s); processing devhost VmHWM "
                f"{result['processing_peak'].get('VmHWM', 0) / 1e6:.0f} MB (idle RSS "
                f"{idle['processing'].get('VmRSS', 0) / 1e6:.0f} MB)")
        finally:
            stop.set()
            self.results["big_report"] = result
            self.procs.stop_devhost(intake)
            self.procs.stop_devhost(proc)

    # --- the whole run ---------------------------------------------------------------------------------

    def run(self, e2e_only: bool = False) -> int:
        code = 0
        try:
            self.setup()
            if e2e_only:
                self.phase_e2e()
            else:
                self.phase_ceiling()
                self.phase_intake()
                backlog = self.build_backlog()
                self.phase_drain(backlog)
                self.phase_e2e()
                self.phase_processing_ceiling()
                self.phase_big()
        except OverBudget as exc:
            say(f"stopping early: {exc}")
            self.results["notes"].append(str(exc))
            code = 2
        except KeyboardInterrupt:
            say("interrupted")
            self.results["notes"].append("interrupted")
            code = 130
        except Exception as exc:  # noqa: BLE001 - keep what was measured, and say what broke
            say(f"FAILED: {type(exc).__name__}: {exc}")
            self.results["error"] = traceback.format_exc()[-4000:]
            for host in self.procs.hosts:
                if host.process is not None and host.process.poll() is not None:
                    self.results["error"] += f"\n--- devhost log tail ---\n{host.logs()[-2000:]}"
            code = 1
        finally:
            say("stopping devhost(s) and Azurite")
            self.procs.stop_all()
        self.results["total_s"] = round(time.monotonic() - T0, 1)
        self.write("-e2e" if e2e_only else "")
        return code

    def write(self, kind: str = "") -> None:
        """<out>/latest<kind>.json and a timestamped copy; a partial run (kind `-e2e`) leaves the full run's alone."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.results["summary"] = summary(self.results)
        text = json.dumps(self.results, indent=2, default=str)
        stamp = (datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if self.results["quick"] else "")
                 + kind)
        (self.out / f"latest{kind}.json").write_text(text)
        (self.out / f"{stamp}.json").write_text(text)
        chart = None
        try:
            chart = None if kind else latency_chart(self.results, self.out / "latency.png")
        except Exception as exc:  # noqa: BLE001
            say(f"chart failed: {exc}")
        print(table(self.results))
        say(f"results: {self.out / f'latest{kind}.json'} and {stamp}.json; chart: {chart or 'not drawn (matplotlib?)'}")


def max_polling_interval() -> float:
    """maxPollingInterval as devhost reads it from host.json (Development defaults)."""
    from devhost.hostconfig import QueueOptions, is_development, load_host_config
    from devhost.settings import Settings

    settings = Settings({})
    return QueueOptions.from_config(load_host_config(REPO_ROOT, settings), is_development(settings)).max_polling_interval


def backoff_settle_s(maximum: float) -> float:
    """How long an idle queue listener takes, at the latest (jitter at its top), to back off to `maximum`."""
    from devhost.queues import MIN_POLLING_INTERVAL, Backoff

    backoff = Backoff(MIN_POLLING_INTERVAL, maximum, jitter=lambda _a, b: b)
    total = 0.0
    while (delay := backoff.next(False)) < maximum:
        total += delay
    return total + 0.5  # and the listener's own request time


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _bucket_rates(timeline: list[tuple], backlog: int, buckets: int = 5) -> list[dict]:
    """Drain rate within depth ranges (Azurite's queue gets faster as it empties)."""
    out = []
    step = max(1, backlog // buckets)
    for hi in range(backlog, 0, -step):
        lo = max(0, hi - step)
        inside = [(t, d) for t, d, _ in timeline if d is not None and lo <= d <= hi]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            t0, d0 = inside[0]
            t1, d1 = inside[-1]
            out.append({"depth": f"{hi}-{lo}", "reports_per_s": round((d0 - d1) / (t1 - t0), 1)})
    return out


def _others(r: dict) -> list[float]:
    """The `others` CPU (processes not ours) of every measured window."""
    found: list[float] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("others"), (int, float)) and "machine" in node:
                found.append(node["others"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(r)
    return found


def summary(r: dict) -> dict:
    intake = r.get("intake", {})
    others = _others(r)
    return {
        "intake_over_ceiling_c8": intake.get("ratio_to_ceiling", {}).get("c8"),
        "intake_over_ceiling_c32": intake.get("ratio_to_ceiling", {}).get("c32"),
        "drain_over_ceiling": r.get("drain", {}).get("ratio_to_ceiling"),
        "drain_over_ceiling_tail": r.get("drain", {}).get("ratio_to_ceiling_tail"),
        "e2e_p50_ms": r.get("e2e", {}).get("post_to_terminal", {}).get("p50_ms"),
        "e2e_p95_ms": r.get("e2e", {}).get("post_to_terminal", {}).get("p95_ms"),
        "e2e_idle_p50_ms": r.get("e2e", {}).get("idle", {}).get("post_to_terminal", {}).get("p50_ms"),
        "e2e_idle_p95_ms": r.get("e2e", {}).get("idle", {}).get("post_to_terminal", {}).get("p95_ms"),
        "big_accept_s": r.get("big_report", {}).get("accept_s"),
        "other_processes_cpu_cores_max": max(others, default=None),
        "total_s": r.get("total_s"),
    }


def table(r: dict) -> str:
    def f(v, spec="{:.1f}"):
        return "-" if v is None else spec.format(v)

    lines = ["", "=== lab intake benchmark" + (" (quick)" if r.get("quick") else "") + " ===",
             f"machine: {r.get('machine', {}).get('nproc')} cores, {r.get('machine', {}).get('cpu_model')}, "
             f"Python {r.get('machine', {}).get('python')}, Azurite {r.get('machine', {}).get('azurite_version')}", "",
             f"{'conc':>4}  {'ceiling/s':>9}  {'intake/s':>8}  {'ratio':>6}  "
             f"{'p50 ms':>7}  {'p95 ms':>7}  {'p99 ms':>7}  {'ceil p50':>8}"]
    ceiling = {lv["concurrency"]: lv for lv in r.get("ceiling", {}).get("basic", [])}
    for lv in r.get("intake", {}).get("levels", []):
        c = lv["concurrency"]
        cl = ceiling.get(c, {})
        ratio = lv["ops_per_s"] / cl["ops_per_s"] if cl.get("ops_per_s") else None
        lines.append(f"{c:>4}  {f(cl.get('ops_per_s')):>9}  "
                     f"{f(lv['ops_per_s']):>8}  {f(ratio, '{:.2f}'):>6}  {f(lv['latency']['p50_ms']):>7}  "
                     f"{f(lv['latency']['p95_ms']):>7}  {f(lv['latency']['p99_ms']):>7}  "
                     f"{f(cl.get('latency', {}).get('p50_ms')):>8}")
    d, pc = r.get("drain", {}), r.get("processing_ceiling", {})
    if d:
        tail = d.get("tail", {})
        basic, app = pc.get("basic", {}), pc.get("app_ops", {})
        lines += ["", f"drain: {d.get('backlog')} reports in {f(d.get('drain_s_from_ready'))} s = "
                      f"{f(d.get('reports_per_s'))}/s ({f(d.get('reports_per_s_without_stalls'))}/s without Azurite "
                      f"stalls); statuses {d.get('statuses_after')}",
                  f"       SDK ceiling over the same backlog: {f(basic.get('reports_per_s'))}/s "
                  f"({f(basic.get('reports_per_s_without_stalls'))}/s without stalls) -> ratio "
                  f"{f(d.get('ratio_to_ceiling'), '{:.2f}')} ({f(d.get('ratio_to_ceiling_without_stalls'), '{:.2f}')})",
                  "       by depth: " + ", ".join(f"{b['depth']}: {b['reports_per_s']}/s"
                                                 for b in d.get("rate_by_depth", [])),
                  f"       last {tail.get('messages', '-')}: {f(tail.get('reports_per_s'))}/s vs ceiling "
                  f"{f(basic.get('tail', {}).get('reports_per_s'))}/s -> "
                  f"{f(d.get('ratio_to_ceiling_tail'), '{:.2f}')}; vs the processor's calls made directly "
                  f"{f(app.get('reports_per_s'))}/s -> {f(d.get('ratio_to_app_ops_ceiling_tail'), '{:.2f}')}"]
    e = r.get("e2e", {})
    if e:
        lines.append(f"e2e back to back (POST -> terminal seen): p50 {f(e['post_to_terminal']['p50_ms'])} ms, p95 "
                     f"{f(e['post_to_terminal']['p95_ms'])} ms over {e.get('reports')} reports")
        idle = e.get("idle")
        if idle:
            lines.append(f"e2e idle (maxPollingInterval {idle['max_polling_interval_s']:g} s): p50 "
                         f"{f(idle['post_to_terminal']['p50_ms'])} ms, p95 {f(idle['post_to_terminal']['p95_ms'])} ms "
                         f"over {idle.get('reports')} reports; {idle['idle_polls_per_day_per_queue']} polls/day "
                         f"per queue while idle")
    b = r.get("big_report", {})
    if b:
        mb = lambda v: "-" if not v else f"{v / 1e6:.0f} MB"  # noqa: E731
        lines.append(f"big report {b.get('body_bytes', 0) / 1e6:.1f} MB: accept {f(b.get('accept_s'), '{:.2f}')} s "
                     f"(HTTP {b.get('accept_status')}), intake peak "
                     f"{mb(b.get('intake_peak_during_accept', {}).get('VmHWM'))}; processing "
                     f"{f(b.get('processing_s'))} s, processing peak {mb(b.get('processing_peak', {}).get('VmHWM'))}"
                     f" -> {b.get('status')} {b.get('items')}")
    s = r.get("summary", {})
    lines += ["", f"RATIOS  intake/ceiling c=8: {f(s.get('intake_over_ceiling_c8'), '{:.2f}')}   "
                  f"c=32: {f(s.get('intake_over_ceiling_c32'), '{:.2f}')}   drain/ceiling: "
                  f"{f(s.get('drain_over_ceiling'), '{:.2f}')} (last {r.get('plan', {}).get('proc_ceiling_max')}: "
                  f"{f(s.get('drain_over_ceiling_tail'), '{:.2f}')})   e2e p50: {f(s.get('e2e_p50_ms'))} ms "
                  f"(idle {f(s.get('e2e_idle_p50_ms'))} ms)",
              f"total run time {f(r.get('total_s'))} s; other processes used up to "
              f"{f(s.get('other_processes_cpu_cores_max'), '{:.2f}')} cores during the measurements"
              + (f"; notes: {r['notes']}" if r.get("notes") else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts: a smoke run in under 2 minutes")
    parser.add_argument("--workers", type=int, default=FULL.workers,
                        help="FUNCTIONS_WORKER_PROCESS_COUNT of the devhosts (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long for other processes to leave the CPU idle before starting")
    parser.add_argument("--profile", action="store_true",
                        help="record py-spy profiles of devhost during intake c=32 and the drain (perturbs a little), "
                             "and time the processor's own storage calls made directly")
    parser.add_argument("--e2e-only", action="store_true",
                        help="only the end-to-end latency phases (back to back, then idle), about 2 minutes")
    args = parser.parse_args(argv)
    plan = dataclasses.replace(QUICK if args.quick else FULL, workers=args.workers)

    def on_term(_sig, _frame):  # SIGTERM cleans up like Ctrl-C: processes stopped, partial results written
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    say(f"bench: {'quick' if args.quick else 'full'} run, budget {plan.budget_s:.0f}s, results to {args.out}")
    return Bench(plan, args.out.resolve(), args.profile, args.quick, args.wait_quiet).run(args.e2e_only)


if __name__ == "__main__":
    sys.exit(main())
