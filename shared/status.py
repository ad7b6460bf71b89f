"""Report statuses, the transitions allowed between them, and the status row in table `reports`.

The row is the source of truth. Every change is an ETag-conditional write, so concurrent writers (ingest marking
`queued`, a processor, an operator's replay) never overwrite each other blindly; the row's listing index entries
(shared/index.py) are written in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, cast

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, UpdateMode

from shared import index, row_limits, telemetry
from shared.clock import now_iso
from shared.models import StatusRecord


class Status(str, Enum):
    RECEIVED = "received"
    QUEUED = "queued"
    PROCESSING = "processing"
    PROCESSED = "processed"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL = frozenset({Status.PROCESSED, Status.REJECTED, Status.FAILED})

# A processor may leave a row `received` or `queued` straight for a terminal state: small reports skip the
# `processing` write, and the processor can win the race against ingest marking the row `queued`.
# processing -> processing is a redelivery after a crash. An operator's replay sets a failed (or stuck) report
# back to `received` before sending its message, then `queued` (shared/work.enqueue).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.RECEIVED: frozenset({Status.QUEUED, Status.PROCESSING, *TERMINAL}),
    Status.QUEUED: frozenset({Status.QUEUED, Status.PROCESSING, *TERMINAL}),
    Status.PROCESSING: frozenset({Status.RECEIVED, Status.PROCESSING, Status.QUEUED, *TERMINAL}),
    Status.PROCESSED: frozenset(),
    Status.REJECTED: frozenset(),
    Status.FAILED: frozenset({Status.RECEIVED, Status.QUEUED}),
}

# Fields stored as JSON text in the row (table properties are scalars).
JSON_FIELDS = ("items", "errors", "warnings", "exceptions", "delivery")
RECORD_FIELDS = tuple(StatusRecord.model_fields)
# Scalar fields that go back to null (a replay clears `completed_at`): stored as "" since a merge cannot remove.
CLEARABLE = ("completed_at",)


class TransitionError(RuntimeError):
    """A status change the lifecycle does not allow."""


class ConcurrentUpdate(RuntimeError):
    """The row kept changing under us; the caller should retry later."""


def can_move(current: Status | str, new: Status | str) -> bool:
    return Status(new) in TRANSITIONS[Status(current)]


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


def new_entity(record: StatusRecord, blob: str) -> dict[str, Any]:
    entity = record_to_entity(record)
    entity["blob"] = blob
    row_limits.check(entity)
    return entity


def _to_property(name: str, value: object) -> object:
    """A record field as stored: lists capped to fit Azure's limits, structured fields as JSON text."""
    if isinstance(value, Status):
        return value.value
    if name in JSON_FIELDS:
        return json.dumps(row_limits.fit(name, value), separators=(",", ":"))
    if value is None and name in CLEARABLE:
        return ""  # a merge skips None, which would leave the old value in place
    return value


def record_to_entity(record: StatusRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json")
    entity: dict[str, object] = {"PartitionKey": data.pop("sender"), "RowKey": data.pop("id")}
    for name, value in data.items():
        entity[name] = _to_property(name, value)
    return {k: v for k, v in entity.items() if v is not None}


def entity_to_record(entity: dict[str, Any]) -> StatusRecord:
    """The record of a row, or of one of its index entries (which name the report in `id`)."""
    data = {name: entity.get(name) for name in RECORD_FIELDS
            if name in entity and not (name in CLEARABLE and entity[name] == "")}
    data["id"] = entity.get(index.ENTRY_ID) or entity["RowKey"]
    data["sender"] = entity["PartitionKey"]
    for name in JSON_FIELDS:
        if isinstance(entity.get(name), str):
            data[name] = json.loads(entity[name])
    return StatusRecord.model_validate(data)


def create(table: TableClient, entity: dict[str, Any]) -> Row:
    """Store a new row with its index entries; raises ResourceExistsError if the id is taken."""
    entity = {**entity, index.VERSION_FIELD: index.VERSION}
    written = index.submit(table, [("create", entity), *index.operations(None, entity)])
    return Row(entity, written[0]["etag"])


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


def write(table: TableClient, row: Row, changes: dict[str, object]) -> Row:
    """Merge `changes` into the row if nobody changed it since it was read; raises ResourceModifiedError if so."""
    new_status = None if changes.get("status") is None else Status(changes["status"])
    if new_status is not None and not can_move(row.status, new_status):
        raise TransitionError(f"{row.status.value} -> {new_status.value} is not allowed")
    patch: dict[str, object] = {"PartitionKey": row.sender, "RowKey": row.id, "updated_at": now_iso()}
    for name, value in changes.items():
        patch[name] = _to_property(name, value)
    patch[index.VERSION_FIELD] = index.VERSION
    merged = {**row.entity, **patch}
    row_limits.check(merged)
    guarded = {"mode": UpdateMode.MERGE, "etag": row.etag, "match_condition": MatchConditions.IfNotModified}
    written = index.submit(table, [("update", patch, guarded), *index.operations(row.entity, merged)])
    if new_status is not None and new_status in TERMINAL:
        telemetry.report_completed(row.sender, row.entity.get("content_type"), new_status.value)
    return Row(merged, written[0]["etag"])


def update(
    table: TableClient,
    sender: str,
    report_id: str,
    change: Callable[[Row], dict[str, object] | None],
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
