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
of the intake devhost, then processing time and peak memory of a separate processing devhost; 7 parse speed per
format beside reading the same bytes (bench/parse_speed.py, in this process).

Azurite's in-memory queue costs O(messages in all queues) per receive/delete/count and sweeps deleted messages every
minute (blocking it for seconds after thousands of deletes): the ceiling's messages are cleared and swept before
intake is measured, a level during which nothing completed for a long stretch is measured again, and both drains
report their rate with and without such stalls. CPU use of every process (devhost with its workers, and other
processes on the machine, `others`) is recorded with each measurement.

This module holds the command line and the order of the phases. Each phase returns its dataclass of
bench/results.py: bench/phases.py (setup, 1, 2, 5), bench/drain.py (3), bench/e2e.py (4), bench/big_report.py (6),
bench/parse_speed.py (7);
bench/report.py writes the JSON, the chart and the printed table. bench/plan.py holds the counts of a full and a
quick run, bench/session.py what the phases share (processes, sender key, time budget, progress lines).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import big_report, drain, e2e, parse_speed, phases, report
from bench.plan import FULL, QUICK, Plan
from bench.profiling import py_spy
from bench.results import RunResults
from bench.service import Processes
from bench.session import OverBudget, Session, elapsed, say
from devhost.process import DevHostProcess

RESULTS = Path(__file__).resolve().parent / "results"


def run(plan: Plan, out: Path, profile: bool, quick: bool, wait_quiet_s: float = 0.0, e2e_only: bool = False) -> int:
    """Every phase (or only the latency ones), then the report; the exit code (2: out of time, 130: interrupted,
    1: a phase broke). Whatever was measured is written, and every process started is stopped."""
    s = Session(plan, out, profile=profile and py_spy() is not None, procs=Processes(workers=plan.workers))
    results = RunResults(started_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), quick=quick, plan=plan,
                         notes=s.notes)
    if profile and not s.profile:
        s.notes.append("--profile asked but py-spy is not installed; no profiles taken")
    code = 0
    try:
        results.machine_load_before = phases.wait_for_quiet(s, wait_quiet_s)
        results.machine = phases.start_azurite(s)
        phases.register_sender(s, results.machine)
        if e2e_only:
            _latency_phases(s, results, None)
        else:
            _all_phases(s, results)
    except OverBudget as exc:
        say(f"stopping early: {exc}")
        s.notes.append(str(exc))
        code = 2
    except KeyboardInterrupt:
        say("interrupted")
        s.notes.append("interrupted")
        code = 130
    except Exception as exc:  # noqa: BLE001 - keep what was measured, and say what broke
        say(f"FAILED: {type(exc).__name__}: {exc}")
        results.error = traceback.format_exc()[-4000:] + _dead_devhost_logs(s)
        code = 1
    finally:
        say("stopping devhost(s) and Azurite")
        s.procs.stop_all()
    results.total_s = round(elapsed(), 1)
    report.save(results, out, "-e2e" if e2e_only else "")
    return code


def _all_phases(s: Session, results: RunResults) -> None:
    ceiling = phases.storage_ceiling(s)
    results.ceiling = ceiling
    if s.plan.settle_gc:
        ceiling.waited_for_azurite_gc_s = phases.settle_queue_gc(s)
    intake_host = phases.start_intake_host(s)
    results.intake = phases.intake(s, intake_host, ceiling)
    backlog = phases.build_backlog(s, intake_host)
    drained, drain_host = drain.phase_drain(s, backlog)
    results.drain = drained
    _latency_phases(s, results, drain_host)
    processing = phases.processing_ceiling(s, drained.backlog or s.plan.backlog)
    results.processing_ceiling = processing
    phases.compare_drain(s, drained, processing)
    big = big_report.start(s)
    results.big_report = big.result  # kept, as far as it got, if the measurement breaks
    big_report.measure(s, big)
    say("phase 7: parse speed per format beside reading the same bytes (in this process, CPU time)")
    results.parse_speed = parse_speed.measure(0.5 if s.plan.level_s < FULL.level_s else 2.0)


def _latency_phases(s: Session, results: RunResults, host: DevHostProcess | None) -> None:
    latency = e2e.back_to_back(s, host)
    results.e2e = latency  # kept without `idle` if the idle phase does not run
    latency.idle = e2e.idle(s)


def _dead_devhost_logs(s: Session) -> str:
    """The log tails of devhosts that exited on their own: what broke is usually there."""
    return "".join(f"\n--- devhost log tail ---\n{host.logs()[-2000:]}" for host in s.procs.hosts
                   if host.process is not None and host.process.poll() is not None)


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

    # SIGTERM cleans up like Ctrl-C: processes stopped, partial results written.
    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    say(f"bench: {'quick' if args.quick else 'full'} run, budget {plan.budget_s:.0f}s, results to {args.out}")
    return run(plan, args.out.resolve(), args.profile, args.quick, args.wait_quiet, args.e2e_only)


if __name__ == "__main__":
    sys.exit(main())
