"""The status row in table `reports`: creating, reading and changing it, each change conditional on its ETag.

The row is the source of truth. Every change is an ETag-conditional write, so concurrent writers (ingest marking
`queued`, a processor, an operator's replay) never overwrite each other blindly; the row's listing index entries
(shared/index.py) are written in the same transaction. Changes that may end a report go through shared/ending.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, cast

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TransactionOperation, UpdateMode

from shared import index, row_limits
from shared.clock import now_iso
from shared.lifecycle import Status, check_move
from shared.models import StatusRecord
from shared.status_entity import entity_to_record, to_property
from shared.table_batch import Operation


class Changes(TypedDict, total=False):
    """What a status write may change: record fields as the record holds them (status_entity stores them), and the
    processing mark."""

    status: Status
    completed_at: str | None
    attempts: int
    items: dict[str, int] | None
    errors: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    exceptions: list[dict[str, Any]]
    delivery: dict[str, Any] | None
    worker: str  # the queue message whose try marked the report `processing` (shared/processing.py)


class ConcurrentUpdate(RuntimeError):
    """The row kept changing under us; the caller should retry later."""


@dataclass
class Row:
    """A status row as read, with the ETag that guards the next write."""

    entity: dict[str, Any]
    etag: str
    written_at: datetime | None = None  # the service's Timestamp of the last write, when read from storage

    @property
    def status(self) -> Status:
        return Status(self.entity["status"])

    @property
    def sender(self) -> str:
        return str(self.entity["PartitionKey"])

    @property
    def id(self) -> str:
        return str(self.entity["RowKey"])

    def record(self) -> StatusRecord:
        return entity_to_record(self.entity)


def create(table: TableClient, entity: dict[str, Any]) -> Row:
    """Store a new row with its index entries; raises ResourceExistsError if the id is taken."""
    return create_many(table, [entity])[0]


def create_many(table: TableClient, entities: list[dict[str, Any]]) -> list[Row]:
    """Store new rows of one partition with their index entries, all or none, in one transaction (at most
    `table_batch.MAX_OPERATIONS` operations: `creation_size` each). A failure of any row fails them all; raised for the
    first row as `create` raises it, else as the TableTransactionError naming the operation."""
    stamped = [{**entity, index.VERSION_FIELD: index.VERSION} for entity in entities]
    ops: list[Operation] = []
    firsts = []
    for entity in stamped:
        firsts.append(len(ops))
        ops += [(TransactionOperation.CREATE, entity), *index.operations(None, entity)]
    written = index.submit(table, ops)
    return [Row(entity, written[first]["etag"]) for entity, first in zip(stamped, firsts, strict=True)]


def creation_size(entity: dict[str, Any]) -> int:
    """How many operations of a transaction creating this row takes (the row and its index entries)."""
    return 1 + len(index.keys(entity))


def etag(entity: TableEntity) -> str:
    """The ETag of an entity read from a table. The SDK types it Optional (an entity made locally has none); the
    service sends one with every entity it returns."""
    return cast(str, entity.metadata["etag"])


def read(table: TableClient, sender: str, report_id: str) -> Row | None:
    try:
        entity = table.get_entity(sender, report_id)
    except ResourceNotFoundError:
        return None
    return Row(dict(entity), etag(entity), entity.metadata.get("timestamp"))


def write(table: TableClient, row: Row, changes: Changes) -> Row:
    """Merge `changes` into the row if nobody changed it since it was read; raises ResourceModifiedError if so, and
    TransitionError for a status change the lifecycle does not allow."""
    if "status" in changes:
        check_move(row.status, changes["status"])
    patch: dict[str, object] = {"PartitionKey": row.sender, "RowKey": row.id, "updated_at": now_iso()}
    for name, value in changes.items():
        patch[name] = to_property(name, value)
    patch[index.VERSION_FIELD] = index.VERSION
    merged = {**row.entity, **patch}
    row_limits.check(merged)
    guarded = {"mode": UpdateMode.MERGE, "etag": row.etag, "match_condition": MatchConditions.IfNotModified}
    update = (TransactionOperation.UPDATE, patch, guarded)
    written = index.submit(table, [update, *index.operations(row.entity, merged)])
    return Row(merged, written[0]["etag"])


def update(
    table: TableClient,
    sender: str,
    report_id: str,
    change: Callable[[Row], Changes | None],
    attempts: int = 8,
    known: Row | None = None,
) -> Row | None:
    """Read-modify-write with retry on conflict. `change` returns the fields to merge, or None to leave the row.

    `known` is a row this caller wrote last: tried first without reading, which saves a round trip when nobody
    else wrote in between. Returns the row as written (or as read, when `change` declined), or None when the row
    does not exist.
    """
    for _ in range(attempts):
        row, known = (known, None) if known is not None else (read(table, sender, report_id), None)
        if row is None:
            return None
        changes = change(row)
        if changes is None:
            return row
        try:
            return write(table, row, changes)
        except ResourceModifiedError:
            continue
    raise ConcurrentUpdate(f"report {report_id} kept changing; gave up after {attempts} tries")
