"""The work signal: the small queue message that tells a processor a stored report awaits it."""

from __future__ import annotations

from azure.core.exceptions import ResourceModifiedError

from shared import status
from shared.models import QueueMessage
from shared.status import Status
from shared.storage import Storage, raw_blob_name
from shared.telemetry import TRACEPARENT


def message_for(row: status.Row) -> QueueMessage:
    entity = row.entity
    return QueueMessage(
        id=row.id,
        sender=row.sender,
        blob=str(entity.get("blob") or raw_blob_name(row.sender, row.id)),
        sha256=str(entity["sha256"]),
        content_type=str(entity["content_type"]),
        traceparent=entity.get(TRACEPARENT),
    )


def send(storage: Storage, row: status.Row) -> None:
    """Enqueue the report's message; it never expires, since a report must not be lost to a TTL.

    The message carries the trace context stored on the row at ingest, so a reconciler's or an operator's re-send
    joins the report's one trace."""
    storage.queue.send_message(message_for(row).model_dump_json(exclude_none=True), time_to_live=-1)


def mark_queued(storage: Storage, row: status.Row) -> None:
    """After the send: the row becomes `queued`, unless a processor already moved it on (its state is newer)."""
    try:
        status.write(storage.reports, row, {"status": Status.QUEUED})
    except ResourceModifiedError:
        pass
