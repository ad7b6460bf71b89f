"""Closed-loop load: N threads each run an operation back to back for a fixed time; latency statistics."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# An operation returns an outcome label ("ok" counts as success); it may raise, which counts as an error.
Op = Callable[[int], str]
# Called once per worker thread (index) to make that thread's operation (its own HTTP client, ...).
OpFactory = Callable[[int], tuple[Op, Callable[[], None]]]

MAX_OPS_PER_LEVEL = 500_000


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def latency_summary(latencies_s: list[float]) -> dict[str, float | None]:
    values = sorted(latencies_s)
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    return {
        "count": len(values),
        "mean_ms": ms(sum(values) / len(values)) if values else None,
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(values[-1]) if values else None,
    }


@dataclass
class LevelResult:
    concurrency: int
    duration_s: float
    ok: int
    errors: int
    outcomes: dict[str, int]
    latencies: list[float] = field(repr=False)
    error_samples: list[str] = field(default_factory=list)
    # The longest time inside the window in which nothing completed: a storage stall (Azurite's periodic queue GC
    # blocks it for seconds when thousands of messages were created) shows up here.
    longest_gap_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "measured_s": round(self.duration_s, 3),
            "ok": self.ok,
            "errors": self.errors,
            "outcomes": self.outcomes,
            "ops_per_s": round(self.rate, 2),
            "latency": latency_summary(self.latencies),
            "longest_gap_s": round(self.longest_gap_s, 3),
            "error_samples": self.error_samples[:5],
        }


@dataclass
class _Tally:
    """What the worker threads of one run completed; `add` and the callers' own counters share `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0

    def add(self, label: str, failed: str | None, t0: float, t1: float) -> None:
        with self.lock:
            self.outcomes[label] += 1
            self.completions.append(t1)
            if label == "ok":
                self.ok += 1
                self.latencies.append(t1 - t0)
            else:
                self.errors += 1
                if len(self.samples) < 5:
                    self.samples.append(failed or label)

    def result(self, concurrency: int, duration_s: float, longest_gap_s: float = 0.0) -> LevelResult:
        return LevelResult(concurrency, duration_s, self.ok, self.errors, dict(self.outcomes), self.latencies,
                           self.samples, longest_gap_s)


def _call(op: Op, seq: int) -> tuple[str, str | None, float, float]:
    """Run one operation: (outcome label, error text or None, start, end)."""
    t0 = time.perf_counter()
    try:
        label, failed = op(seq), None
    except Exception as exc:  # noqa: BLE001 - an error is a result here
        label, failed = "exception", f"{type(exc).__name__}: {str(exc)[:200]}"
    return label, failed, t0, time.perf_counter()


def run_level(factory: OpFactory, concurrency: int, duration_s: float, warmup_s: float = 0.0,
              max_ops: int = MAX_OPS_PER_LEVEL) -> LevelResult:
    """Run `concurrency` threads for warmup + duration seconds; operations completing inside the measured window
    (after the warm-up) are counted. Every loop is bounded by the deadline and `max_ops`."""
    tally = _Tally()
    issued = 0
    ready = threading.Barrier(concurrency + 1, timeout=120)
    times: dict[str, float] = {}

    def worker(index: int) -> None:
        nonlocal issued
        try:
            op, close = factory(index)
        except BaseException:
            ready.abort()
            raise
        try:
            ready.wait()
            start_window, end = times["start"], times["end"]
            seq = 0
            while time.perf_counter() < end:
                with tally.lock:
                    if issued >= max_ops:
                        break
                    issued += 1
                seq += 1
                label, failed, t0, t1 = _call(op, seq)
                # Throughput counts completions inside the window (unbiased at any concurrency); operations that
                # started during the warm-up but end in the window count too.
                if start_window <= t1 <= end:
                    tally.add(label, failed, t0, t1)
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"load-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    times["start"] = now + 0.05 + warmup_s
    times["end"] = times["start"] + duration_s
    ready.wait()
    for t in threads:
        # Bounded: an operation in flight at the deadline has its own client timeout.
        t.join(timeout=max(0.0, times["end"] - time.perf_counter()) + 120)
    marks = [times["start"], *sorted(tally.completions), times["end"]]
    gap = max((b - a for a, b in zip(marks, marks[1:], strict=False)), default=0.0)
    return tally.result(concurrency, duration_s, gap)


def run_count(factory: OpFactory, concurrency: int, count: int, deadline_s: float) -> LevelResult:
    """Run exactly `count` operations (or fewer if the deadline passes) on `concurrency` threads."""
    tally = _Tally()
    remaining = count
    end = time.perf_counter() + deadline_s

    def worker(index: int) -> None:
        nonlocal remaining
        op, close = factory(index)
        try:
            seq = 0
            while time.perf_counter() < end:
                with tally.lock:
                    if remaining <= 0:
                        return
                    remaining -= 1
                seq += 1
                tally.add(*_call(op, seq))
        finally:
            close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end - time.perf_counter()) + 120)
    return tally.result(concurrency, time.perf_counter() - started)


def post_factory(url: str, key: str, content_type: str, body: Callable[[], bytes]) -> OpFactory:
    """Load threads that each POST a report (`body()` makes the next) over their own keep-alive connection, with
    the stdlib client: the load generator shares the cores with devhost and Azurite, and httpx costs several
    times more CPU per request."""
    target = urlsplit(url)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}

    def factory(_index: int):
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)

        def op(_seq: int) -> str:
            try:
                conn.request("POST", "/api/reports", body=body(), headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()  # reconnects on the next request
                raise
            return "ok" if response.status == 202 else f"http_{response.status}"

        return op, conn.close

    return factory
