"""Phase 3 of the service benchmark: a devhost with the processor enabled drains the queued backlog, watched
through /api/health, then measured from the reports' `completed_at`."""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench import ceiling as ceil
from bench.profiling import Recording
from bench.results import Drain, Json
from bench.service import CpuMeter
from bench.session import TERMINAL, Session, epoch_seconds, pid_of, say
from devhost.process import DevHostProcess

# (seconds since the devhost was ready, queue depth, poison queue depth)
Timeline = list[tuple[float, int | None, int | None]]


def phase_drain(s: Session, backlog: int) -> tuple[Drain, DevHostProcess]:
    """The drain, and its devhost, left running for the end-to-end latency phase."""
    p = s.plan
    s.check_budget("drain", 30)
    say(f"phase 3: drain {backlog} queued reports with devhost (processor enabled)")
    launched = time.monotonic()
    host = s.procs.start_devhost(processor=True)
    ready = time.monotonic()
    say(f"  devhost up in {ready - launched:.1f}s (pid {pid_of(host)}); watching /api/health")
    rec = None
    if s.profile:
        rec = Recording(pid_of(host), s.out / "profiles" / "drain.txt", min(15.0, p.drain_deadline_s))
    meter = CpuMeter(s.pids(host))
    deadline = ready + min(p.drain_deadline_s, max(60.0, s.remaining_s() - 60))
    timeline, done_at = _watch_queue(host.url, ready, deadline)
    cpu = meter.read()
    profile = rec.finish() if rec is not None else None
    counts, records = list_statuses(s, host.url, limit_pages=backlog // 1000 + 30)
    # The same measures as the SDK ceiling's drain, from the moments reports were completed: Azurite's stalls
    # (gaps with nothing completed) and the rate over the last reports.
    completed = sorted(epoch_seconds(r["completed_at"]) for r in records if r.get("completed_at"))
    stalls, stall_s = _stalls(completed)
    drain_s = (done_at - ready) if done_at else None
    result = Drain(
        backlog=backlog,
        devhost_startup_s=round(ready - launched, 2),
        drain_s_from_ready=round(drain_s, 2) if drain_s else None,
        reports_per_s=round(backlog / drain_s, 2) if drain_s else None,
        reports_per_s_from_completed_at=_span_rate(completed),
        finished=done_at is not None,
        statuses_after=counts,
        terminal=sum(v for k, v in counts.items() if k in TERMINAL),
        cpu_cores=cpu,
        stalls=stalls,
        stalls_s=round(stall_s, 2),
        reports_per_s_without_stalls=round(backlog / (drain_s - stall_s), 2) if drain_s else None,
        tail=_tail_rate(completed, p.proc_ceiling_max),
        rate_by_depth=bucket_rates(timeline, backlog),
        queue_depth_timeline=timeline[:: max(1, len(timeline) // 80)],
        profile=profile,
    )
    if done_at is None:
        s.notes.append(f"drain did not finish within its deadline; statuses {counts}")
    say(f"  drained in {drain_s if drain_s is None else round(drain_s, 1)} s -> {result.reports_per_s} reports/s "
        f"(completed_at span: {result.reports_per_s_from_completed_at}/s); last {p.proc_ceiling_max}: "
        f"{result.tail.get('reports_per_s')}/s; statuses {counts}; cpu {cpu}")
    say(f"  rate by queue depth: {result.rate_by_depth}; stalls (nothing completed for >= {ceil.STALL_S} s): "
        f"{stalls}")
    return result, host


def _watch_queue(url: str, ready: float, deadline: float) -> tuple[Timeline, float | None]:
    """Poll /api/health until the queue is empty or the deadline: the depth timeline, and when it emptied."""
    timeline: Timeline = []
    last_print = 0.0
    with httpx.Client(base_url=url, timeout=10) as c:
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
                return timeline, now
            time.sleep(0.5)
    return timeline, None


def list_statuses(s: Session, url: str, limit_pages: int) -> tuple[dict[str, int], list[Json]]:
    """The sender's status records, through the listing API: count per status, and the records."""
    counts: dict[str, int] = {}
    records: list[Json] = []
    cursor = None
    with s.client(url, timeout=120) as c:
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


def _stalls(completed: list[float]) -> tuple[list[Json], float]:
    """Gaps of ceiling.STALL_S or more between completions (where, from the first), and their total seconds."""
    gaps = [b - a for a, b in zip(completed, completed[1:], strict=False)]
    stalls = [{"at_s": round(a - completed[0], 1), "seconds": round(g, 1)}
              for a, g in zip(completed, gaps, strict=False) if g >= ceil.STALL_S]
    return stalls, sum(g for g in gaps if g >= ceil.STALL_S)


def _span_rate(completed: list[float]) -> float | None:
    return round((len(completed) - 1) / (completed[-1] - completed[0]), 2) if len(completed) > 1 else None


def _tail_rate(completed: list[float], most: int) -> dict[str, Any]:
    """The rate over the last `most` completions (fewer if fewer completed), as the SDK ceiling times its tail."""
    n = min(most, len(completed) - 1)
    if n > 0 and completed[-1] > completed[-n - 1]:
        elapsed = completed[-1] - completed[-n - 1]
        return {"messages": n, "seconds": round(elapsed, 3), "reports_per_s": round(n / elapsed, 2)}
    return {}


def bucket_rates(timeline: Timeline, backlog: int, buckets: int = 5) -> list[Json]:
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
