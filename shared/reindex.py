"""`admin index rebuild`: index entries and activity marks for rows stored before the listing index existed.

Idempotent (indexed rows are left as they are; their `updated_at` is never touched, so incremental syncs do not see
every old report change) and resumable: each sender's progress is checkpointed in table `checkpoints` after every
page of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, TransactionOperation, UpdateMode

from shared import activity, checkpoints, index, reconcile, senders, status
from shared.lifecycle import Status
from shared.storage import Storage
from shared.table_batch import Operation

JOB = "index-rebuild"
DONE = "~done"  # a sender's checkpoint once all its rows are indexed (sorts after every id)
PAGE = 1000
# A row and its three entries are four operations; Azure takes 100 per transaction.
ROWS_PER_TRANSACTION = 25


@dataclass
class Totals:
    senders: int = 0
    rows: int = 0
    indexed: int = 0


def rebuild(storage: Storage, progress: Callable[[str], None], restart: bool = False) -> Totals:
    names = sorted(sender.name for sender in senders.list_senders(storage.senders))
    if restart:
        checkpoints.clear(storage.checkpoints, JOB, names)
    totals = Totals()
    for name in names:
        _rebuild_sender(storage, name, totals, progress)
        totals.senders += 1
    return totals


def _rebuild_sender(storage: Storage, sender: str, totals: Totals, progress: Callable[[str], None]) -> None:
    mark = checkpoints.get(storage.checkpoints, JOB, sender)
    if mark == DONE:
        progress(f"{sender}: done in an earlier run")
        return
    rows = storage.reports.query_entities(
        "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
        parameters={"pk": sender, "lo": mark or "", "hi": index.ROWS_END},
        results_per_page=PAGE,
    )
    seen = indexed = 0
    for page in rows.by_page():
        batch = list(page)
        if not batch:
            continue
        todo = [status.Row(dict(e), status.etag(e)) for e in batch if not index.is_indexed(e)]
        # Marks first, as intake writes them: whatever is indexed can be found by id.
        activity.record_many(storage.activity, sender, [row.id for row in todo])
        for start in range(0, len(todo), ROWS_PER_TRANSACTION):
            indexed += _index_rows(storage.reports, todo[start : start + ROWS_PER_TRANSACTION])
        received = [row for row in todo if row.status is Status.RECEIVED]
        if received:
            reconcile.look_back_to(storage, activity.minute_of(received[0].id))
        seen += len(batch)
        checkpoints.put(storage.checkpoints, JOB, sender, str(batch[-1]["RowKey"]))
        progress(f"{sender}: {seen} rows read, {indexed} indexed")
    checkpoints.put(storage.checkpoints, JOB, sender, DONE)
    totals.rows += seen
    totals.indexed += indexed
    progress(f"{sender}: done ({seen} rows read, {indexed} indexed)")


def _operations(row: status.Row) -> list[Operation]:
    """The row marked indexed (only if unchanged since read) and its entries, as the row stands."""
    marked = {**row.entity, index.VERSION_FIELD: index.VERSION}
    patch = {"PartitionKey": row.sender, "RowKey": row.id, index.VERSION_FIELD: index.VERSION}
    guarded = {"mode": UpdateMode.MERGE, "etag": row.etag, "match_condition": MatchConditions.IfNotModified}
    return [(TransactionOperation.UPDATE, patch, guarded), *index.operations(None, marked)]


def _index_rows(table: TableClient, rows: list[status.Row]) -> int:
    """Index rows in one transaction; if one of them changed meanwhile, each on its own. Returns how many."""
    try:
        index.submit(table, [op for row in rows for op in _operations(row)])
        return len(rows)
    except (ResourceModifiedError, TableTransactionError):
        return sum(_index_one(table, row) for row in rows)


def _index_one(table: TableClient, row: status.Row | None, attempts: int = 8) -> int:
    for _ in range(attempts):
        if row is None or index.is_indexed(row.entity):
            return 0  # gone, or written meanwhile by the app, which indexes what it writes
        try:
            index.submit(table, _operations(row))
            return 1
        except ResourceModifiedError:
            row = status.read(table, row.sender, row.id)
        except ResourceNotFoundError:
            return 0
    raise status.ConcurrentUpdate("a report kept changing during the index rebuild; run it again")
