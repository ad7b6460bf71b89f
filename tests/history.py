"""Seeding a sender's history straight into table `reports`: finished reports spread over a span of time, each
row with its index entries exactly as the app writes them, 25 reports per transaction (fast enough for 1 M)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.data.tables import TableClient, TableTransactionError
from ulid import ULID

from shared import index, status_entity, table_batch
from shared.clock import to_iso
from shared.models import ItemCounts, StatusRecord
from shared.storage import raw_blob_name

PER_TRANSACTION = 25  # a row and its three entries: 100 operations, Azure's most


def historical(sender: str, moment: datetime, number: int) -> dict:
    """One finished report received at `moment`: mostly processed, every tenth rejected, a few failed."""
    report_id = str(ULID.from_datetime(moment))
    done = to_iso(moment + timedelta(seconds=2))
    outcome = "rejected" if number % 10 == 0 else "failed" if number % 97 == 0 else "processed"
    accepted = 0 if outcome == "rejected" else 1
    record = StatusRecord(
        id=report_id, sender=sender, status=outcome, content_type="text/csv", size_bytes=120, sha256="0" * 64,
        received_at=to_iso(moment), updated_at=done, completed_at=done, attempts=1,
        items=ItemCounts(total=1, accepted=accepted, rejected=1 - accepted),
    )
    entity = status_entity.new_entity(record, raw_blob_name(sender, report_id))
    entity[index.VERSION_FIELD] = index.VERSION
    return entity


def seed(table: TableClient, sender: str, count: int, end: datetime, span: timedelta, threads: int = 4) -> None:
    """`count` finished reports evenly spread over `span` up to `end`."""
    step = span / max(count, 1)

    def write(first: int) -> None:
        rows = [historical(sender, end - span + step * n, n) for n in range(first, min(first + PER_TRANSACTION, count))]
        ops = [op for row in rows for op in [("create", row), *index.operations(None, row)]]
        for attempt in range(3):
            try:
                table_batch.submit(table, ops)
                return
            except (ServiceRequestError, ServiceResponseError):
                if attempt == 2:
                    raise
                # A dropped keep-alive connection; the SDK does not resend a POST by itself.
            except TableTransactionError as exc:
                if attempt and exc.status_code == 409:
                    return  # the try whose answer was lost had committed
                raise

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(0, count, PER_TRANSACTION)))
