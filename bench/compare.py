"""Intake and drain of this checkout against another commit, measured in lockstep: did a change cost throughput?

    .venv/bin/python -m bench.compare 4be8ce1              # this checkout vs that commit, 6 rounds
    .venv/bin/python -m bench.compare main~3 --rounds 10

Runs on a shared machine swing by a third from one minute to the next, so two `bench.run` results taken minutes apart
cannot show a 10% difference. Here both versions run side by side, each with its own Azurite (in memory) and
devhost, and take turns: a round posts the benchmark's report (bench/reports.py) at each concurrency for a few
seconds to one side, then to the other (the order alternates between rounds), and then drains a slice of each
side's backlog with a devhost whose processor is enabled. The figure is the median of the per-round ratios, so
drift in the machine's speed cancels out. The other commit is checked out in a temporary git worktree and run with
this checkout's Python environment and Azurite. Results: bench/results/compare.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.load import post_factory, run_level
from bench.reports import HL7, small_report
from bench.service import CpuMeter, app_env, wait_health
from devhost.azurite import REPO_ROOT, Azurite
from devhost.process import DevHostProcess

RESULTS = REPO_ROOT / "bench" / "results"
SENDER = "lab-compare"
LEVELS = (1, 8, 32)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Side:
    """One version of the app: its checkout, its Azurite, its intake devhost and a sender key."""

    name: str
    root: Path
    azurite: Azurite | None = None
    intake: DevHostProcess | None = None
    key: str = ""
    intake_rates: dict[int, list[float]] = field(default_factory=dict)
    drain_rates: list[float] = field(default_factory=list)
    drain_cpu: list[float] = field(default_factory=list)

    def env(self, processor: bool) -> dict[str, str]:
        assert self.azurite is not None
        return app_env(self.azurite.connection_string, processor, FUNCTIONS_WORKER_PROCESS_COUNT="1")

    def start(self, stack: ExitStack) -> None:
        self.azurite = stack.enter_context(Azurite(silent=True))
        env = {**os.environ, "AzureWebJobsStorage": self.azurite.connection_string}
        added = subprocess.run([sys.executable, "-m", "shared.admin", "senders", "add", SENDER], cwd=self.root,
                               env=env, capture_output=True, text=True, timeout=120, check=True)
        self.key = json.loads(added.stdout)["key"]
        self.intake = stack.enter_context(DevHostProcess(self.root, env=self.env(processor=False)))
        wait_health(self.intake.url)

    def depth(self) -> int:
        assert self.intake is not None
        return int(wait_health(self.intake.url)["queue_depth"])


def intake_round(side: Side, counter: itertools.count, seconds: float) -> None:
    assert side.intake is not None
    for level in LEVELS:
        factory = post_factory(side.intake.url, side.key, HL7, lambda: small_report(next(counter)))
        result = run_level(factory, level, seconds, warmup_s=0.5)
        if result.errors:
            raise RuntimeError(f"{side.name}: {result.errors} failed posts at c={level}: {result.error_samples[:2]}")
        side.intake_rates.setdefault(level, []).append(result.rate)


def drain_round(side: Side, reports: int, deadline_s: float = 120.0) -> None:
    """Start a processing devhost and time how long it takes to bring the backlog down by `reports`."""
    start_depth = side.depth()
    if start_depth < reports:
        raise RuntimeError(f"{side.name}: backlog of {start_depth} is smaller than a drain slice of {reports}")
    target = start_depth - reports
    with DevHostProcess(side.root, env=side.env(processor=True)) as host, \
            httpx.Client(base_url=host.url, timeout=10) as client:
        meter = CpuMeter({"devhost": host.process.pid, "azurite": side.azurite.process.pid})  # type: ignore[union-attr]
        started, end = time.perf_counter(), time.perf_counter() + deadline_s
        while time.perf_counter() < end:
            try:
                if client.get("/api/health").json()["queue_depth"] <= target:
                    break
            except httpx.HTTPError:
                pass  # Azurite pauses now and then (its queue GC); the deadline bounds the wait
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{side.name}: the drain did not take {reports} reports within {deadline_s} s")
        elapsed = time.perf_counter() - started
        cpu = meter.read()
    side.drain_rates.append(reports / elapsed)
    side.drain_cpu.append(((cpu.get("devhost") or 0.0) + (cpu.get("azurite") or 0.0)) * elapsed / reports * 1000)


def worktree(stack: ExitStack, commit: str) -> Path:
    """`commit` checked out beside this one, removed on exit."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-compare-")))
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), commit], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    stack.callback(subprocess.run, ["git", "worktree", "remove", "--force", str(folder)], cwd=REPO_ROOT,
                   capture_output=True)
    return folder


def ratios(base: list[float], this: list[float]) -> dict[str, float]:
    per_round = [t / b for b, t in zip(base, this, strict=True) if b]
    return {"base": round(statistics.median(base), 1), "this": round(statistics.median(this), 1),
            "ratio": round(statistics.median(per_round), 3),
            "ratio_low": round(min(per_round), 3), "ratio_high": round(max(per_round), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the commit to compare with (anything git rev-parse takes)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per concurrency level")
    parser.add_argument("--drain", type=int, default=200, help="reports drained per side and round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    base_commit = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO_ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
    this_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
    counter = itertools.count(1)
    with ExitStack() as stack:
        base = Side(f"base {base_commit}", worktree(stack, args.base))
        this = Side(f"this {this_commit}", REPO_ROOT)
        for side in (base, this):
            side.start(stack)
            say(f"{side.name}: devhost at {side.intake.url}")  # type: ignore[union-attr]
        for side in (base, this):  # first requests (imports, table creation) are not measured
            intake_round(side, counter, seconds=1.0)
            side.intake_rates.clear()
        for number in range(args.rounds):
            order = (base, this) if number % 2 == 0 else (this, base)
            for side in order:
                intake_round(side, counter, args.seconds)
            for side in order:
                drain_round(side, args.drain)
            say(f"round {number + 1}/{args.rounds}: intake c=8 base {base.intake_rates[8][-1]:.1f} / this "
                f"{this.intake_rates[8][-1]:.1f} reports/s; drain base {base.drain_rates[-1]:.1f} / this "
                f"{this.drain_rates[-1]:.1f} reports/s")
    results = {
        "base": base_commit, "this": this_commit, "rounds": args.rounds,
        "intake": {f"c{level}": ratios(base.intake_rates[level], this.intake_rates[level]) for level in LEVELS},
        "drain": ratios(base.drain_rates, this.drain_rates),
        "drain_cpu_ms_per_report": ratios(base.drain_cpu, this.drain_cpu),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(results, indent=2))
    print(f"| {this_commit} against {base_commit}, median of {args.rounds} rounds | base | this | this / base "
          f"(lowest-highest round) |\n|---|---|---|---|")
    rows = [(f"intake c={level} (reports/s)", results["intake"][f"c{level}"]) for level in LEVELS]
    rows += [("drain (reports/s)", results["drain"]), ("drain CPU per report (ms)", results["drain_cpu_ms_per_report"])]
    for name, r in rows:
        print(f"| {name} | {r['base']} | {r['this']} | {r['ratio']:.2f} ({r['ratio_low']:.2f}-{r['ratio_high']:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
