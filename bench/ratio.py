"""Intake against the storage ceiling, in turns: the ratio the intake target is stated in, robust to a machine whose
speed drifts.

    .venv/bin/python -m bench.ratio [--rounds 5] [--seconds 4] [--workers 1]

`bench.run` measures the ceiling's levels and then intake's, a minute apart; on a shared 2-core machine the same
level swings by half from one minute to the next (two quick runs minutes apart gave a ceiling at 32 clients of 146
and 228 ops/s), so a ratio of two figures taken apart says little. Here one Azurite and one devhost (processor, timer
and poison trigger off: intake alone) stay up, and each round runs, at each concurrency, the ceiling (blob upload + table insert + queue put with the
app's clients, bench/ceiling.py) and intake over HTTP back to back, the order alternating between rounds. Each
figure is the median over rounds; the ratio is the median of the per-round ratios. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import AzureError

from bench.ceiling import Clients, IntakeOps
from bench.load import LevelResult, latency_summary, post_factory, run_level
from bench.reports import HL7, small_report
from bench.service import CpuMeter, Processes, add_sender, family, wait_health

LEVELS = (1, 8, 32)


def _figures(level: LevelResult, cores: dict[str, float | None]) -> dict[str, Any]:
    latency = latency_summary(level.latencies)
    return {"per_s": round(level.rate, 1), "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
            "errors": level.errors, "outcomes": level.outcomes, "error_samples": level.error_samples[:3],
            "longest_gap_s": round(level.longest_gap_s, 2), "cpu_ms_per_op": _per_op(cores, level.rate)}


def _per_op(cores: dict[str, float | None], rate: float) -> dict[str, float]:
    """Each process's CPU (in cores over the level's run) as milliseconds per completed operation: where the two
    sides' CPU goes when the machine's two cores are the limit."""
    return {name: round(share / rate * 1000, 2) for name, share in cores.items() if share is not None and rate > 0}


def _median(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per level and side")
    parser.add_argument("--workers", type=int, default=1, help="FUNCTIONS_WORKER_PROCESS_COUNT of the devhost")
    parser.add_argument("--threads", type=int, default=None,
                        help="PYTHON_THREADPOOL_THREAD_COUNT of the devhost (default: the worker's own default)")
    args = parser.parse_args(argv)
    procs = Processes(workers=args.workers)
    counter = iter(range(10**12))
    try:
        azurite = procs.start_azurite()
        clients = Clients.create(azurite.connection_string)
        ceiling_op = IntakeOps(clients)
        key = add_sender(azurite.connection_string, "lab-ratio")
        # Intake alone, as the ceiling is its three calls alone: the timer's housekeeping (every two minutes, and
        # whole-table work on Azurite's single thread) would land in some 4-second windows and not in others.
        threads = {} if args.threads is None else {"PYTHON_THREADPOOL_THREAD_COUNT": str(args.threads)}
        host = procs.start_devhost(processor=False, **HOUSEKEEPING_OFF, **threads)
        wait_health(host.url)
        pids = {"bench": os.getpid(), "host": host.process.pid,  # type: ignore[union-attr]
                **_workers(host.process.pid), "azurite": azurite.process.pid}  # type: ignore[union-attr]
        post = post_factory(host.url, key, HL7, lambda: small_report(next(counter)))
        run_level(post, 4, 1.0)  # imports and first-use resource creation are not measured
        per_level: dict[int, list[dict[str, Any]]] = {c: [] for c in LEVELS}
        for number in range(args.rounds):
            for c in LEVELS:
                sides = {}
                order = ("ceiling", "intake") if (number + c) % 2 == 0 else ("intake", "ceiling")
                for side in order:
                    factory = (lambda _i: (ceiling_op, lambda: None)) if side == "ceiling" else post
                    level, cores = _unstalled(lambda f=factory, n=c: _metered(pids, lambda: run_level(
                        f, n, args.seconds, 0.5)), clients.depth)
                    # Azurite's queue operations slow down with every message it holds: each side starts empty
                    _empty(clients.clear if side == "ceiling" else
                           lambda: _drop_intake_messages(azurite.connection_string), clients.depth)
                    sides[side] = _figures(level, cores)
                ratio = sides["intake"]["per_s"] / sides["ceiling"]["per_s"] if sides["ceiling"]["per_s"] else None
                per_level[c].append({"ceiling": sides["ceiling"], "intake": sides["intake"],
                                     "ratio": None if ratio is None else round(ratio, 3)})
                for side, got in sides.items():
                    if got["errors"] or got["longest_gap_s"] > STALL_S:
                        print(f"  {side}: {got['outcomes']} {got['error_samples']}, nothing done for "
                              f"{got['longest_gap_s']} s", flush=True)
                print(f"round {number + 1}/{args.rounds} c={c:<2d} ceiling {sides['ceiling']['per_s']:6.1f}/s  "
                      f"intake {sides['intake']['per_s']:6.1f}/s  ratio {'-' if ratio is None else f'{ratio:.2f}'}  "
                      f"cpu ms/op ceiling {_cpu_line(sides['ceiling'])} intake {_cpu_line(sides['intake'])}",
                      flush=True)
    finally:
        procs.stop_all()
    summary = {
        f"c{c}": {
            "intake_over_ceiling": _median(rounds, "ratio"),
            "ratios": [r["ratio"] for r in rounds],
            "ceiling_per_s": statistics.median(r["ceiling"]["per_s"] for r in rounds),
            "intake_per_s": statistics.median(r["intake"]["per_s"] for r in rounds),
            "ceiling_p50_p99_ms": [_median([r["ceiling"] for r in rounds], k) for k in ("p50_ms", "p99_ms")],
            "intake_p50_p99_ms": [_median([r["intake"] for r in rounds], k) for k in ("p50_ms", "p99_ms")],
            "cpu_ms_per_op": {side: _median_cpu([r[side]["cpu_ms_per_op"] for r in rounds])
                              for side in ("ceiling", "intake")},
        }
        for c, rounds in per_level.items() if rounds
    }
    print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "workers": args.workers,
                      "threads": args.threads, "levels": summary},
                     indent=2))
    return 0


STALL_S = 1.5
RETRIES = 3
HOUSEKEEPING_OFF = {"AzureWebJobs.reconcile_timer.Disabled": "true", "AzureWebJobs.poison_queue.Disabled": "true"}


def _metered(pids: dict[str, int], run: Callable[[], LevelResult]) -> tuple[LevelResult, dict[str, float | None]]:
    meter = CpuMeter(pids)
    level = run()
    return level, meter.read()


def _workers(host_pid: int) -> dict[str, int]:
    """The devhost's language worker processes, named apart from its host process."""
    pids = [pid for pid in family(host_pid) if pid != host_pid]
    return {"worker" if len(pids) == 1 else f"worker{n}": pid for n, pid in enumerate(pids, 1)}


def _cpu_line(side: dict[str, Any]) -> str:
    return " ".join(f"{name}={ms:.1f}" for name, ms in side["cpu_ms_per_op"].items() if name != "others")


def _median_cpu(per_round: list[dict[str, float]]) -> dict[str, float]:
    names = {name for cpu in per_round for name in cpu}
    return {name: round(statistics.median(cpu[name] for cpu in per_round if name in cpu), 2) for name in sorted(names)}


def _unstalled(run: Callable[[], tuple[LevelResult, dict[str, float | None]]],
               probe: Callable[[], object]) -> tuple[LevelResult, dict[str, float | None]]:
    """A level run again once storage answers promptly, when nothing completed for STALL_S: Azurite's queue GC
    blocks it for 10-40 s after many messages were deleted (as each side's turn ends), and the stall is the
    emulator's, not either side's. At most RETRIES times; the last run is kept whatever it shows."""
    level, cores = run()
    for _ in range(RETRIES):
        if level.longest_gap_s <= STALL_S:
            break
        waited = _until_prompt(probe)
        print(f"  stalled: nothing completed for {level.longest_gap_s:.1f} s; Azurite answered promptly again "
              f"after {waited:.1f} s; measuring again", flush=True)
        level, cores = run()
    return level, cores


def _empty(clear: Callable[[], object], probe: Callable[[], object]) -> None:
    """Empty a side's queue, again once Azurite answers promptly when its queue GC held the call past the client's
    timeout (a stall of over a minute was seen once)."""
    for attempt in range(RETRIES + 1):
        try:
            clear()
            return
        except AzureError as exc:
            if attempt == RETRIES:
                raise
            waited = _until_prompt(probe)
            print(f"  emptying the queue failed ({type(exc).__name__}); Azurite answered promptly again after "
                  f"{waited:.1f} s; emptying again", flush=True)


def _until_prompt(probe: Callable[[], object], prompt_s: float = 0.15, deadline_s: float = 120.0) -> float:
    """Seconds until three cheap calls in a row answer within `prompt_s`."""
    started = time.monotonic()
    fast = 0
    while fast < 3 and time.monotonic() - started < deadline_s:
        t0 = time.monotonic()
        try:
            probe()
            prompt = time.monotonic() - t0 < prompt_s
        except AzureError:
            prompt = False
        fast = fast + 1 if prompt else 0
        time.sleep(0.1)
    return time.monotonic() - started


def _drop_intake_messages(conn: str) -> None:
    """The intake devhost's processor is off, so its queue only grows: emptied between rounds, as the ceiling's is."""
    from shared.storage import Storage

    Storage.from_connection_string(conn).queue.clear_messages()


if __name__ == "__main__":
    raise SystemExit(main())
