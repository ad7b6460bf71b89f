"""Phase 4 of the service benchmark: end-to-end latency as a sender sees it (POST, then poll the status until
terminal), with reports back to back and then on an idle service."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from bench.load import latency_summary
from bench.results import E2E, IdleLatency
from bench.session import Session, epoch_seconds, say
from devhost.azurite import REPO_ROOT
from devhost.process import DevHostProcess

# (POST → terminal, POST → 202, server-side received → completed) in seconds
Sample = tuple[float, float, float | None]

ONE_REPORT_DEADLINE_S = 30


def max_polling_interval() -> float:
    """maxPollingInterval as devhost reads it from host.json (Development defaults)."""
    from devhost.hostconfig import QueueOptions, is_development, load_host_config
    from devhost.settings import Settings

    settings = Settings({})
    options = QueueOptions.from_config(load_host_config(REPO_ROOT, settings), is_development(settings))
    return options.max_polling_interval


def backoff_settle_s(maximum: float) -> float:
    """How long an idle queue listener takes, at the latest (jitter at its top), to back off to `maximum`."""
    from devhost.queues import MIN_POLLING_INTERVAL, Backoff

    backoff = Backoff(MIN_POLLING_INTERVAL, maximum, jitter=lambda _a, b: b)
    total = 0.0
    while (delay := backoff.next(False)) < maximum:
        total += delay
    return total + 0.5  # and the listener's own request time


def back_to_back(s: Session, host: DevHostProcess | None) -> E2E:
    """Each report right after the previous one ended, so the queue poller is still polling fast (its back-off
    restarts at 100 ms after a message). Uses the drain's devhost when given (and stops it), else starts one."""
    p = s.plan
    s.check_budget("e2e", 10)
    host = host or s.procs.start_devhost(processor=True)
    say(f"phase 4: end-to-end latency, {p.e2e_reports} reports back to back (poll every "
        f"{p.e2e_poll_s * 1000:.0f} ms)")
    time.sleep(1.0)
    samples: list[Sample] = []
    failures: list[str] = []
    deadline = time.monotonic() + max(10.0, min(120.0, s.remaining_s() - 90))
    with s.client(host.url) as c:
        for _ in range(p.e2e_reports):
            if time.monotonic() > deadline:
                s.notes.append("e2e stopped early at its deadline")
                break
            sample = _one(s, c, failures)
            if sample:
                samples.append(sample)
    result = E2E(**_summary(s, samples, failures))
    say(f"  back to back: p50 {result.post_to_terminal['p50_ms']} ms  p95 {result.post_to_terminal['p95_ms']} ms  "
        f"(server-side received->completed p50 {result.server_received_to_completed['p50_ms']} ms); failures "
        f"{len(failures)}")
    s.procs.stop_devhost(host)
    return result


def idle(s: Session) -> IdleLatency:
    """Each report after the poller has backed off to host.json's maxPollingInterval, at a random moment within
    it, which is what a report arriving at a quiet service sees in Azure (the host polls; nothing wakes it)."""
    p = s.plan
    polling = max_polling_interval()
    settle = backoff_settle_s(polling)
    s.check_budget("idle e2e", 10)
    # One worker process: the real host has one queue listener per instance whatever its worker count;
    # devhost's forked workers poll each, which would halve the wait.
    host = s.procs.start_devhost(processor=True, FUNCTIONS_WORKER_PROCESS_COUNT="1")
    say(f"phase 4b: idle end-to-end latency, {p.e2e_idle_reports} reports, each {settle:.1f} s + a random part "
        f"of maxPollingInterval ({polling:g} s) after the previous one ended; one worker process")
    samples: list[Sample] = []
    failures: list[str] = []
    rng = random.Random(7)
    with s.client(host.url) as c:
        for _ in range(p.e2e_idle_reports):
            if settle + polling + 5 > s.remaining_s():
                s.notes.append("idle e2e stopped early at the time budget")
                break
            time.sleep(settle + rng.uniform(0, polling))
            sample = _one(s, c, failures)
            if sample:
                samples.append(sample)
    polls_per_day = round(86400 / polling)
    result = IdleLatency(**_summary(s, samples, failures), max_polling_interval_s=polling,
                         settle_s=round(settle, 2), idle_polls_per_day_per_queue=polls_per_day)
    t = result.post_to_terminal
    say(f"  idle: p50 {t['p50_ms']} ms  p95 {t['p95_ms']} ms  max {t.get('max_ms')} ms; an idle listener makes "
        f"{polls_per_day} queue polls a day per queue; failures {len(failures)}")
    s.procs.stop_devhost(host)
    return result


def _one(s: Session, c: httpx.Client, failures: list[str]) -> Sample | None:
    """POST one small report and poll its status until terminal; None (and a line in `failures`) when it failed."""
    t0 = time.perf_counter()
    r = c.post("/api/reports", content=s.next_report())
    t1 = time.perf_counter()
    if r.status_code != 202:
        failures.append(f"POST {r.status_code}")
        return None
    rid = r.json()["id"]
    one_deadline = time.monotonic() + ONE_REPORT_DEADLINE_S
    record = None
    while time.monotonic() < one_deadline:
        g = c.get(f"/api/reports/{rid}")
        if g.status_code == 200:
            record = g.json()
            break
        time.sleep(s.plan.e2e_poll_s)
    t2 = time.perf_counter()
    if record is None:
        failures.append(f"{rid} not terminal in {ONE_REPORT_DEADLINE_S} s")
        return None
    server = None
    if record.get("completed_at"):
        server = epoch_seconds(record["completed_at"]) - epoch_seconds(record["received_at"])
    return t2 - t0, t1 - t0, server


def _summary(s: Session, samples: list[Sample], failures: list[str]) -> dict[str, Any]:
    """The fields of a bench.results.Latency."""
    return {
        "reports": len(samples),
        "poll_interval_ms": s.plan.e2e_poll_s * 1000,
        "post_to_terminal": latency_summary([x[0] for x in samples]),
        "accept": latency_summary([x[1] for x in samples]),
        "server_received_to_completed": latency_summary([x[2] for x in samples if x[2] is not None]),
        "failures": failures[:10],
    }
