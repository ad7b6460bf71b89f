"""Storage ceilings: the storage calls an ingest / a processing does, made directly with the Azure SDK.

Clients are made once by the app's own factory (`shared.storage.Storage`) and shared by all threads, as the app
does. The resources are the bench's own (container, table and queue named `bench...`), so the app's queue never
sees these messages.

Intake: blob upload + table insert + queue put (base64, ttl -1), the brief's ceiling.

Processing, two flavours:
- `basic`: what the brief calls the ceiling: receive (batches of 16) + blob read + table merge + delete.
- `app_ops`: the processor's own calls: `basic` plus the status row read (is the report finished already?) and the
  results blob upload, with the merge etag-conditional. Reports over 256 KB also mark the row `processing`; small
  ones (all of the bench's) skip it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode
from azure.storage.blob import ContainerClient, ContentSettings
from azure.storage.queue import QueueClient
from ulid import ULID

from bench.load import LevelResult, latency_summary
from bench.reports import HL7, small_report
from shared import storage as app_storage
from shared.clock import now_iso
from shared.models import StatusRecord
from shared.status_entity import new_entity

CONTAINER = "bench-ceiling"
TABLE = "benchceiling"
SENDERS = "benchsenders"
QUEUE = "bench-ceiling"
SENDER = "bench-ceiling"
RESULT_LINE = (b'{"report_id":"%s","item_index":0,"message_id":"BENCH-000000001","patient_id":"MRN000000001",'
               b'"test_code":"2345-7","result":"98","specimen_collected_at":"2026-11-19T07:15:00Z",'
               b'"source_format":"hl7v2","units":"mg/dL","reference_range":"70-99","test_name":"Glucose"}\n')


@contextmanager
def _bench_names():
    """While building clients with the app's own factory, point its resource names at the bench's resources."""
    names = {"CONTAINER": CONTAINER, "REPORTS_TABLE": TABLE, "SENDERS_TABLE": SENDERS, "QUEUE": QUEUE,
             "POISON_QUEUE": QUEUE + "-poison", "IDEMPOTENCY_TABLE": TABLE + "idem"}
    saved = {name: getattr(app_storage, name) for name in names if hasattr(app_storage, name)}
    try:
        for name, value in names.items():
            setattr(app_storage, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(app_storage, name, value)


@dataclass
class Clients:
    container: ContainerClient
    table: TableClient
    queue: QueueClient

    @classmethod
    def create(cls, conn: str) -> Clients:
        # The app's own client factory (same retry, timeout and transport options, base64 queue encoding), so the
        # ceiling follows the app's client configuration whatever it becomes.
        with _bench_names():
            app = app_storage.Storage.from_connection_string(conn)
        tables: TableServiceClient = app.tables
        clients = cls(app.container, app.reports, app.queue)
        try:
            clients.container.create_container()
        except ResourceExistsError:
            pass
        tables.create_table_if_not_exists(TABLE)
        try:
            clients.queue.create_queue()
        except ResourceExistsError:
            pass
        return clients

    def depth(self) -> int:
        return self.queue.get_queue_properties().approximate_message_count

    def clear(self) -> None:
        """Drop the bench queue's messages: Azurite's queue operations cost O(messages in all queues)."""
        self.queue.clear_messages()


def _entity_template() -> dict:
    """An entity with exactly the properties the app's `received` row has."""
    now = now_iso()
    record = StatusRecord(id="X" * 26, sender=SENDER, status="received", content_type=HL7, size_bytes=1001,
                          sha256="0" * 64, received_at=now, updated_at=now)
    return new_entity(record, "raw/x/x")


class IntakeOps:
    """One ingest's storage calls, thread-safe (the clients are shared)."""

    def __init__(self, clients: Clients) -> None:
        self.c = clients
        self.template = _entity_template()
        self.settings = ContentSettings(content_type=HL7)
        self._n = iter(range(10**12))
        self._lock = threading.Lock()

    def __call__(self, _seq: int) -> str:
        with self._lock:
            n = 10_000_000 + next(self._n)
        body = small_report(n)
        digest = hashlib.sha256(body).hexdigest()
        rid = str(ULID())
        blob = f"raw/{SENDER}/{rid}"
        self.c.container.upload_blob(blob, body, overwrite=False, content_settings=self.settings,
                                     metadata={"sha256": digest, "sender": SENDER})
        now = now_iso()
        entity = {**self.template, "RowKey": rid, "sha256": digest, "size_bytes": len(body), "received_at": now,
                  "updated_at": now, "blob": blob}
        self.c.table.create_entity(entity)
        message = json.dumps({"v": 1, "id": rid, "sender": SENDER, "blob": blob, "sha256": digest,
                              "content_type": HL7}, separators=(",", ":"))
        self.c.queue.send_message(message, time_to_live=-1)
        return "ok"


def process_one(c: Clients, message, app_ops: bool) -> None:
    info = json.loads(message.content)
    rid, blob = info["id"], info["blob"]
    row = c.table.get_entity(SENDER, rid) if app_ops else None  # the app's check that the report is not finished
    raw = c.container.download_blob(blob).readall()
    if hashlib.sha256(raw).hexdigest() != info["sha256"]:
        raise RuntimeError("digest mismatch")
    done = {"PartitionKey": SENDER, "RowKey": rid, "updated_at": now_iso(), "status": "processed", "attempts": 1,
            "completed_at": now_iso(), "items": '{"total":1,"accepted":1,"rejected":0}', "errors": "[]",
            "warnings": "[]"}
    if row is not None:
        c.container.upload_blob(f"results/{SENDER}/{rid}.ndjson", RESULT_LINE % rid.encode(), overwrite=True)
        c.table.update_entity(done, mode=UpdateMode.MERGE, etag=row.metadata["etag"],
                              match_condition=MatchConditions.IfNotModified)
    else:
        c.table.update_entity(done, mode=UpdateMode.MERGE)
    c.queue.delete_message(message.id, message.pop_receipt)


@dataclass
class DrainResult:
    level: LevelResult
    tail: dict  # the last `tail` messages: {"messages", "seconds", "reports_per_s"}
    stall_s: float  # time in gaps of STALL_S or more with nothing completed (Azurite's queue GC)


STALL_S = 2.0


def drain(c: Clients, threads: int, batch: int, duration_s: float, max_messages: int, app_ops: bool,
          tail: int = 1000) -> DrainResult:
    """`threads` workers each receive `batch` messages at a time and process them one by one, until the queue is
    empty, `max_messages` are done or `duration_s` has passed. Latency is per message (receive amortised). The
    last `tail` messages are timed on their own: the rate at a depth under `tail`."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    counts = {"ok": 0, "error": 0}
    start = time.perf_counter()
    end = start + duration_s
    last_done = [start]
    done_times: list[float] = []

    def worker() -> None:
        while time.perf_counter() < end:
            with lock:
                if counts["ok"] >= max_messages:
                    return
            t0 = time.perf_counter()
            try:
                page = next(c.queue.receive_messages(messages_per_page=batch, visibility_timeout=600).by_page(), None)
                messages = list(page) if page is not None else []
            except Exception as exc:  # noqa: BLE001
                with lock:
                    counts["error"] += 1
                    errors.append(f"receive: {type(exc).__name__}: {str(exc)[:200]}")
                time.sleep(0.05)
                continue
            if not messages:
                return
            share = (time.perf_counter() - t0) / len(messages)
            for message in messages:
                t1 = time.perf_counter()
                try:
                    process_one(c, message, app_ops)
                    label = "ok"
                except Exception as exc:  # noqa: BLE001
                    label = f"{type(exc).__name__}: {str(exc)[:200]}"
                t2 = time.perf_counter()
                with lock:
                    if label == "ok":
                        counts["ok"] += 1
                        latencies.append(t2 - t1 + share)
                        last_done[0] = t2
                        done_times.append(t2)
                    else:
                        counts["error"] += 1
                        if len(errors) < 5:
                            errors.append(label)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(0.0, end - time.perf_counter()) + 120)
    elapsed = max(1e-9, last_done[0] - start)
    marks = [start, *sorted(done_times)]
    gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    level = LevelResult(threads, elapsed, counts["ok"], counts["error"], dict(counts), latencies, errors,
                        max(gaps, default=0.0))
    tail_info: dict = {}
    if len(marks) > tail + 1:
        seconds = marks[-1] - marks[-tail - 1]
        tail_info = {"messages": tail, "seconds": round(seconds, 3), "reports_per_s": round(tail / seconds, 2)}
    return DrainResult(level, tail_info, sum(g for g in gaps if g >= STALL_S))


def drain_summary(drained: DrainResult, batch: int, app_ops: bool) -> dict:
    result = drained.level
    without_stalls = result.duration_s - drained.stall_s
    return {
        "flavour": "app_ops" if app_ops else "basic",
        "threads": result.concurrency,
        "batch": batch,
        "processed": result.ok,
        "errors": result.errors,
        "elapsed_s": round(result.duration_s, 3),
        "reports_per_s": round(result.rate, 2),
        "stalls_s": round(drained.stall_s, 2),
        "reports_per_s_without_stalls": round(result.ok / without_stalls, 2) if without_stalls > 0 else None,
        "tail": drained.tail,
        "latency_per_message": latency_summary(result.latencies),
        "longest_gap_s": round(result.longest_gap_s, 3),
        "error_samples": result.error_samples[:5],
    }
