"""Phase 6 of the service benchmark: one ~50 MB HL7 batch: accept time and peak memory of an intake devhost, then
processing time and peak memory of a separate processing devhost."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

import httpx

from bench.reports import HL7, big_report
from bench.results import BigAccept, BigProcessing, BigReport, BigTerminal, Json
from bench.service import CpuMeter, proc_memory, reset_peak
from bench.session import Session, pid_of, say
from devhost.process import DevHostProcess

POLL_S = 0.05
RSS_SAMPLE_S = 0.02


@dataclass
class BigRun:
    """Phase 6 once its devhosts are up: its body, hosts, and the result its measurement fills in."""

    body: bytes
    intake: DevHostProcess
    processing: DevHostProcess
    result: BigReport


def start(s: Session) -> BigRun:
    """Build the batch, start both devhosts and read their idle memory."""
    s.check_budget("big report", 30)
    body, messages = big_report(s.plan.big_bytes)
    say(f"phase 6: one {len(body) / 1e6:.1f} MB HL7 batch ({messages} messages): intake devhost (processor "
        f"disabled) + processing devhost")
    intake = s.procs.start_devhost(processor=False)
    proc = s.procs.start_devhost(processor=True)
    with httpx.Client(base_url=intake.url, timeout=30, headers={"Authorization": f"Bearer {s.key}"}) as c:
        c.get("/api/reports", params={"limit": "1"})  # warm the intake path (imports, clients)
    time.sleep(1.0)
    idle = {"intake": proc_memory(pid_of(intake)), "processing": proc_memory(pid_of(proc))}
    peaks_reset = reset_peak(pid_of(intake)) and reset_peak(pid_of(proc))
    result = BigReport(body_bytes=len(body), messages=messages, idle_memory=idle,
                       peak_reset_with_clear_refs=peaks_reset)
    return BigRun(body, intake, proc, result)


def measure(s: Session, run: BigRun) -> None:
    """POST the batch and poll it to a terminal status, filling `run.result` as far as it gets; stops both
    devhosts."""
    samples = {"intake": 0, "processing": 0}  # the highest RSS seen of each devhost
    stop = threading.Event()
    threading.Thread(target=_sample_rss, args=(run, samples, stop), daemon=True).start()
    try:
        meter = CpuMeter(s.pids(run.intake, run.processing))
        with httpx.Client(base_url=run.intake.url, timeout=s.plan.big_deadline_s,
                          headers={"Authorization": f"Bearer {s.key}", "Content-Type": HL7}) as c:
            t0 = time.perf_counter()
            r = c.post("/api/reports", content=run.body)
            t1 = time.perf_counter()
            run.result.accept = _accepted(run, r, t1 - t0, samples)
            if r.status_code != 202:
                run.result.accept.accept_body = r.text[:500]
                return
            record, seen_processing = _poll_terminal(c, r.json()["id"], s.plan.big_deadline_s)
            t2 = time.perf_counter()
        stop.set()
        processing = BigProcessing(
            cpu_cores=meter.read(), timed_out=record is None,
            processing_peak={**proc_memory(pid_of(run.processing)), "sampled_max_rss": samples["processing"]})
        run.result.processing = processing
        if record is None:
            s.notes.append("50 MB report not terminal before its deadline")
            return
        processing.terminal = _terminal(record, t1, t2, seen_processing)
        say(f"  {record['status']} {record.get('items')} {t2 - t1:.1f} s after the 202 (processing "
            f"{processing.terminal.processing_s} s); processing devhost VmHWM "
            f"{processing.processing_peak.get('VmHWM', 0) / 1e6:.0f} MB (idle RSS "
            f"{run.result.idle_memory['processing'].get('VmRSS', 0) / 1e6:.0f} MB)")
    finally:
        stop.set()
        s.procs.stop_devhost(run.intake)
        s.procs.stop_devhost(run.processing)


def _sample_rss(run: BigRun, samples: dict[str, int], stop: threading.Event) -> None:
    """Keep the highest RSS of each devhost (VmHWM is the exact peak only where clear_refs could reset it)."""
    while not stop.is_set():
        for name, host in (("intake", run.intake), ("processing", run.processing)):
            rss = proc_memory(pid_of(host)).get("VmRSS", 0)
            samples[name] = max(samples[name], rss)
        stop.wait(RSS_SAMPLE_S)


def _accepted(run: BigRun, r: httpx.Response, seconds: float, samples: dict[str, int]) -> BigAccept:
    accept = BigAccept(accept_status=r.status_code, accept_s=round(seconds, 3),
                       intake_peak_during_accept={**proc_memory(pid_of(run.intake)),
                                                  "sampled_max_rss": samples["intake"]})
    say(f"  POST -> {r.status_code} in {seconds:.2f} s; intake devhost VmHWM "
        f"{accept.intake_peak_during_accept.get('VmHWM', 0) / 1e6:.0f} MB "
        f"(idle RSS {run.result.idle_memory['intake'].get('VmRSS', 0) / 1e6:.0f} MB)")
    return accept


def _poll_terminal(c: httpx.Client, rid: str, deadline_s: float) -> tuple[Json | None, float | None]:
    """The report's terminal status record (None at the deadline), and when a poll first saw it `processing`."""
    seen_processing = None
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        g = c.get(f"/api/reports/{rid}")
        now = time.perf_counter()
        if g.status_code == 200:
            record: Json = g.json()
            return record, seen_processing
        if seen_processing is None and g.json().get("status") == "processing":
            seen_processing = now
        time.sleep(POLL_S)
    return None, seen_processing


def _terminal(record: Json, accepted: float, seen_terminal: float, seen_processing: float | None) -> BigTerminal:
    received = datetime.fromisoformat(record["received_at"].replace("Z", "+00:00"))
    completed = datetime.fromisoformat(record["completed_at"].replace("Z", "+00:00"))
    return BigTerminal(
        status=record["status"],
        items=record.get("items"),
        accepted_to_terminal_s=round(seen_terminal - accepted, 3),
        processing_s=round(seen_terminal - seen_processing, 3) if seen_processing else None,
        server_received_to_completed_s=round((completed - received).total_seconds(), 3),
    )
