"""The listing indexes of table `reports`: entries in the sender's own partition, each a copy of the status row under
a RowKey that sorts the way a listing reads, written with the row in one entity-group transaction.

Azure Table storage seeks only on PartitionKey + RowKey and reads RowKeys in ascending order. A row's RowKey is its
id, so "newest first", "changed since" and "by status" each need their own key order. Entries live beside the row
(same PartitionKey = sender) so one transaction writes the row and every entry: they never disagree, and there is
no window for a reconciler to repair. Their RowKeys start with a lowercase letter, which no ULID has, so they sort
after every row:

    n~<inverted id>                          newest first
    u~<inverted updated_at>~<id>             most recently changed first (`since`)
    s~<status>~<inverted updated_at>~<id>    most recently changed first within one status

Each entry carries the whole status record, so a listing page is one query. A `received` row (stored, its queue
message not yet sent: milliseconds, unless the queue is down) has only its status entry, which is what the
reconciler reads; it gains the other two when it is queued. Every entry costs Azure Table storage (and Azurite)
work inside the row's transaction, and this spares intake three entity writes per report.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableTransactionError, TransactionOperation, UpdateMode

from shared import table_batch
from shared.clock import parse_iso
from shared.lifecycle import Status
from shared.table_batch import Operation

log = logging.getLogger(__name__)

# Row property: the index version the row's entries were written at. A row without it has no entries yet
# (written before the index existed): its next write adds them, and `admin index rebuild` adds them to the rest.
VERSION_FIELD = "ix"
VERSION = 1
ENTRY_ID = "id"  # entry property naming the report (an entry's RowKey is its index key)

NEWEST, UPDATED, STATUS = "n~", "u~", "s~"
# Above every ULID ('0'-'Z') and below every index key (they start with a lowercase letter): the rows' key range.
ROWS_END = "a"
# After every key character ('0'-'9', 'A'-'Z', 'a'-'z'): the exclusive end of a key prefix's range.
AFTER = "~"
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_INVERT_ID = str.maketrans(ULID_ALPHABET, ULID_ALPHABET[::-1])
TIME_DIGITS = 15
_LAST_MS = 10**TIME_DIGITS - 1
_ID = r"[0-9A-HJKMNP-TV-Z]{26}"
# A report id (ULID): 26 Crockford base32 characters holding 128 bits, so the first is at most '7'.
REPORT_ID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
KEY = re.compile(rf"^(n~{_ID}|u~\d{{{TIME_DIGITS}}}~{_ID}|s~[a-z]{{1,20}}~\d{{{TIME_DIGITS}}}~{_ID})$")



def inverted_id(report_id: str) -> str:
    """A ULID whose string order is the reverse of the id's (ULIDs are fixed-width)."""
    return report_id.translate(_INVERT_ID)


def inverted_time(iso: str) -> str:
    """Fixed-width digits whose string order is the reverse of time order."""
    ms = int(parse_iso(iso).timestamp() * 1000)
    return f"{_LAST_MS - min(max(ms, 0), _LAST_MS):0{TIME_DIGITS}d}"


def newest_key(report_id: str) -> str:
    return f"{NEWEST}{inverted_id(report_id)}"


def updated_key(updated_at: str, report_id: str) -> str:
    return f"{UPDATED}{inverted_time(updated_at)}~{report_id}"


def status_prefix(status: str) -> str:
    return f"{STATUS}{status}~"


def status_key(status: str, updated_at: str, report_id: str) -> str:
    return f"{status_prefix(status)}{inverted_time(updated_at)}~{report_id}"


# Statuses whose rows are in the status index only: stored, not yet enqueued.
STATUS_ONLY = frozenset({Status.RECEIVED.value})


def keys(row: dict[str, Any]) -> list[str]:
    """The index keys of a row as it stands: a `received` row is in the status index only."""
    report_id, updated_at, state = str(row["RowKey"]), str(row["updated_at"]), str(row["status"])
    by_status = status_key(state, updated_at, report_id)
    if state in STATUS_ONLY:
        return [by_status]
    return [newest_key(report_id), updated_key(updated_at, report_id), by_status]


def is_indexed(row: dict[str, Any]) -> bool:
    return row.get(VERSION_FIELD) == VERSION


def is_entry(entity: dict[str, Any]) -> bool:
    return str(entity.get("RowKey", ""))[:1].islower()


def entries(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One copy of the row per index key."""
    body = {k: v for k, v in row.items() if k not in ("PartitionKey", "RowKey", VERSION_FIELD)}
    return [{**body, "PartitionKey": row["PartitionKey"], "RowKey": key, ENTRY_ID: row["RowKey"]} for key in keys(row)]


def operations(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Operation]:
    """What turns `old`'s entries into `new`'s: one upsert per entry (each holds the record, which changed) and a
    delete per old key that is gone. `old` is None, or not yet indexed, when there are no entries to remove."""
    ops: list[Operation] = [(TransactionOperation.UPSERT, entry, {"mode": UpdateMode.REPLACE})
                            for entry in entries(new)]
    if old is not None and is_indexed(old):
        gone = set(keys(old)) - set(keys(new))
        ops += [(TransactionOperation.DELETE, {"PartitionKey": new["PartitionKey"], "RowKey": key})
                for key in sorted(gone)]
    return ops


def submit(table: TableClient, ops: list[Operation]) -> list[dict[str, Any]]:
    """Commit row and index operations atomically; returns each operation's metadata (ETags).

    The first operation's failure is raised as the error a single write would raise (ResourceModifiedError for a
    stale ETag, ResourceExistsError, ResourceNotFoundError), so callers keep their handling. A delete of an index
    entry that is not there (a store edited by hand, a lost entry) is dropped and the rest committed: the row must
    never be stuck because an entry it meant to remove is already gone.
    """
    ops = list(ops)
    while True:
        try:
            return table_batch.submit(table, ops)
        except TableTransactionError as exc:
            failed = ops[exc.index] if 0 <= exc.index < len(ops) else None
            deleting = failed is not None and table_batch.kind_of(failed) is TransactionOperation.DELETE
            if failed is not None and deleting and exc.index > 0 and exc.status_code == 404:
                log.warning("index entry %s was already gone; committing without its delete", failed[1]["RowKey"])
                ops.pop(exc.index)
                continue
            raise _as_single_write_error(exc) from exc


def _as_single_write_error(exc: TableTransactionError) -> Exception:
    if exc.index != 0:
        return exc
    kinds: dict[int, type[HttpResponseError]] = {
        412: ResourceModifiedError, 409: ResourceExistsError, 404: ResourceNotFoundError
    }
    kind = kinds.get(exc.status_code or 0)
    return kind(message=exc.message, response=exc.response) if kind else exc

