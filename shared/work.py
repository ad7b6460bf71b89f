"""The work signal: the small queue message that tells a processor a stored report awaits it."""

from __future__ import annotations

import logging

from azure.core.exceptions import AzureError, ResourceModifiedError

from shared import direct_writes, status
from shared.lifecycle import Status
from shared.models import QueueMessage
from shared.storage import Storage, raw_blob_name
from shared.telemetry import TRACEPARENT

log = logging.getLogger(__name__)


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
    direct_writes.put_message(storage.queue, message_for(row).model_dump_json(exclude_none=True))


def enqueue(storage: Storage, row: status.Row) -> bool:
    """The one way a report goes onto the queue (intake, the reconciler, an operator's replay): send the message,
    then mark the row `queued`. The row says `received` until the send succeeded, so whatever fails, the reconciler
    finds the report (a `queued` row with no message would wait for ever). Returns whether the row was marked; a
    send failure raises."""
    send(storage, row)
    try:
        mark_queued(storage, row)
    except AzureError as exc:
        # Sent, so the report will be processed; left `received`, the reconciler may send it again, which
        # processing tolerates (a message for a finished report is acknowledged and dropped).
        log.warning("report %s enqueued but not marked queued: %s", row.id, type(exc).__name__)
        return False
    return True


def mark_queued(storage: Storage, row: status.Row) -> None:
    """After the send: the row becomes `queued`, unless a processor already moved it on (its state is newer)."""
    try:
        status.write(storage.reports, row, {"status": Status.QUEUED})
    except ResourceModifiedError:
        pass
