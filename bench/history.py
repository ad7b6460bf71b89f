"""Cost with history: the same operations at growing amounts of stored history, counted in storage calls and timed.

    .venv/bin/python -m bench.history                       # 10,000 then 1,000,000 reports of history
    .venv/bin/python -m bench.history --sizes 10000 200000  # what this machine holds in reasonable time

One in-memory Azurite (node heap raised for the million); recording proxies in front of its blob, queue and table
endpoints count every storage call. History is seeded straight into table `reports` (rows and their index
entries, 25 reports per transaction) for one sender, spread over a year; a few other senders send alongside.
At each size the app's own code runs each operation through the proxies: ingest (intake.accept), processing (the
host's receive, processing.process, delete), every kind of listing page, a reconciler pass with one stuck report,
and an operator's replay by id without the sender. Results: bench/results/history.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ulid import ULID

from devhost.azurite import Azurite, connection_string
from shared import activity, admin, intake, listing, processing, reconcile, senders, status, status_entity
from shared.clock import to_iso
from shared.config import Settings, load_settings
from shared.lifecycle import Status
from shared.models import StatusRecord
from shared.storage import Storage, raw_blob_name
from tests.history import seed
from tests.storage_proxy import StorageProxy

RESULTS = Path(__file__).resolve().parent / "results"
SENDER = "lab-history"
CSV = b"patient_id,test_code,result,specimen_collected_at\nP1,94500-6,Detected,2026-01-01T10:00:00Z\n"
REPEATS = 5


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Meter:
    """Storage calls per service, from the proxies."""

    def __init__(self, proxies: dict[str, StorageProxy]) -> None:
        self.proxies = proxies

    def take(self) -> Counter:
        counts: Counter = Counter()
        for service, proxy in self.proxies.items():
            counts[service] += len(proxy.take())
        return counts


def measure(meter: Meter, run: Callable[[], object], prepare: Callable[[], object] | None = None) -> dict:
    """Median time and storage calls of `run` (after `prepare`, which is neither timed nor counted)."""
    times, calls = [], []
    for _ in range(REPEATS):
        if prepare is not None:
            prepare()
        meter.take()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
        calls.append(sum(meter.take().values()))
    low, high = min(calls), max(calls)
    return {"calls": f"{low}" if low == high else f"{low}-{high}", "ms": round(statistics.median(times) * 1000, 1)}


def stuck_report(storage: Storage) -> str:
    """A report whose ingest stopped after storing its row: what the reconciler and a replay pick up."""
    report_id = str(ULID())
    now = to_iso(datetime.now(UTC) - timedelta(seconds=1))
    record = StatusRecord(id=report_id, sender=SENDER, status=Status.RECEIVED.value, content_type="text/csv",
                          size_bytes=len(CSV), sha256="0" * 64, received_at=now, updated_at=now)
    activity.record(storage.activity, SENDER, report_id)
    status.create(storage.reports, status_entity.new_entity(record, raw_blob_name(SENDER, report_id)))
    return report_id


Operation = tuple[Callable[[], object], Callable[[], object] | None]


def operations(storage: Storage, direct: Storage, settings: Settings) -> dict[str, Operation]:
    """The everyday operations as the app, the host and the admin CLI perform them; preparation goes direct."""
    state: dict[str, str] = {}
    now = datetime.now(UTC)
    hour_ago, month_ago = to_iso(now - timedelta(hours=1)), to_iso(now - timedelta(days=30))

    def ingest() -> None:
        intake.accept(storage, settings, intake.Submission(SENDER, CSV, "text/csv"))

    def queue_one() -> None:
        direct.queue.clear_messages()
        intake.accept(direct, settings, intake.Submission(SENDER, CSV, "text/csv"))

    def process() -> None:
        for message in storage.queue.receive_messages(max_messages=1, visibility_timeout=60):
            processing.process(storage, settings, message.content, message.dequeue_count)
            storage.queue.delete_message(message)

    def page(**params: object) -> Operation:
        return lambda: listing.list_reports(storage.reports, listing.Query(sender=SENDER, **params)), None

    def first_page() -> None:
        state["cursor"] = listing.list_reports(direct.reports, listing.Query(sender=SENDER)).next_cursor or ""

    def next_page() -> None:
        listing.list_reports(storage.reports, listing.Query(sender=SENDER, cursor=state["cursor"]))

    def make_stuck() -> None:
        direct.queue.clear_messages()
        state["stuck"] = stuck_report(direct)

    return {
        "ingest (POST)": (ingest, None),
        "processing (one message)": (process, queue_one),
        "list: newest first, 50": page(),
        "list: next page (cursor)": (next_page, first_page),
        "list: status=rejected, 50": page(status=Status.REJECTED),
        "list: since 1 hour ago": page(since=hour_ago),
        "list: since 30 days, 1000": page(since=month_ago, limit=1000),
        "list: status=failed + since 30 days": page(status=Status.FAILED, since=month_ago),
        "reconcile pass (one stuck report)": (lambda: reconcile.reconcile(storage, settings), make_stuck),
        "replay by id (no sender)": (
            lambda: admin.replay_report(storage, admin._find_row(storage, state["stuck"], None)), make_stuck),
    }


def run_size(storage: Storage, direct: Storage, meter: Meter, settings: Settings, seeded: int, size: int) -> dict:
    if size > seeded:
        say(f"seeding {size - seeded:,} reports of history ({seeded:,} -> {size:,})")
        started = time.perf_counter()
        # Spread over the year; a later batch lands between the reports already there.
        seed(direct.reports, SENDER, size - seeded, datetime.now(UTC) - timedelta(hours=2),
             timedelta(days=365))
        say(f"  seeded in {time.perf_counter() - started:.0f} s")
    results = {}
    for name, (run, prepare) in operations(storage, direct, settings).items():
        results[name] = measure(meter, run, prepare)
        say(f"  {name:38s} {results[name]['calls']:>5s} calls {results[name]['ms']:8.1f} ms")
    return results


def table(sizes: list[int], results: dict[int, dict]) -> str:
    head = "| operation | " + " | ".join(f"calls @ {s:,}" for s in sizes) + " | " + " | ".join(
        f"ms @ {s:,}" for s in sizes) + " |"
    lines = [head, "|---" * (1 + 2 * len(sizes)) + "|"]
    for name in results[sizes[0]]:
        calls = " | ".join(str(results[s][name]["calls"]) for s in sizes)
        ms = " | ".join(f"{results[s][name]['ms']:.1f}" for s in sizes)
        lines.append(f"| {name} | {calls} | {ms} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("NODE_OPTIONS", "--max-old-space-size=16384")  # Azurite holds everything in memory

    def on_term(_sig: int, _frame: object) -> None:  # stopped (SIGTERM) like Ctrl-C: Azurite and proxies stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: dict[int, dict] = {}
    with Azurite(silent=True) as azurite:
        blob, queue, table_port = azurite.ports
        with StorageProxy(blob) as blobs, StorageProxy(queue) as queues, StorageProxy(table_port) as tables:
            conn = connection_string(blobs.port, queues.port, tables.port)
            settings = load_settings({"AzureWebJobsStorage": conn, "RECONCILE_AFTER_SECONDS": "0"})
            storage, direct = Storage.from_connection_string(conn), Storage.from_connection_string(
                azurite.connection_string)
            direct.ensure()
            senders.add(direct.senders, SENDER)
            meter = Meter({"blob": blobs, "queue": queues, "table": tables})
            seeded = 0
            for size in sorted(args.sizes):
                say(f"history of {size:,} reports")
                results[size] = run_size(storage, direct, meter, settings, seeded, size)
                seeded = size
    sizes = sorted(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "history.json").write_text(json.dumps({str(s): r for s, r in results.items()}, indent=2))
    print(table(sizes, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
