"""How a report ends: the status write that may end it (and counts it completed), and what ending `failed` changes."""

from __future__ import annotations

from collections.abc import Callable

from azure.data.tables import TableClient

from shared import status, telemetry
from shared.lifecycle import TERMINAL, Status
from shared.models import Delivery, ExceptionEntry, StatusRecord


def update(
    table: TableClient,
    sender: str,
    report_id: str,
    change: Callable[[status.Row], status.Changes | None],
    known: status.Row | None = None,
) -> status.Row | None:
    """status.update for a change that may end the report; the report is counted completed when this call's write
    ended it. No terminal status leads to another, so exactly one write ends a report (until a replay reopens it)."""
    ended: Status | None = None

    def ending(row: status.Row) -> status.Changes | None:
        nonlocal ended
        changes = change(row)
        new = None if changes is None else changes.get("status")
        ended = Status(new) if new is not None and Status(new) in TERMINAL else None
        return changes

    row = status.update(table, sender, report_id, ending, known=known)
    if row is not None and ended is not None:
        telemetry.report_completed(row.sender, row.entity.get("content_type"), ended.value)
    return row


def tried(record: StatusRecord, entry: ExceptionEntry) -> status.Changes:
    """A try that ended in `entry`: appended to the report's exceptions, and counted in its attempts."""
    return {
        "exceptions": [e.model_dump() for e in record.exceptions] + [entry.model_dump()],
        "attempts": max(record.attempts, entry.attempt),
    }


def failed(record: StatusRecord, entry: ExceptionEntry) -> status.Changes:
    """The changes that end a report `failed` after the try `entry` records: the one rule for the processor's last
    try and for the poison queue's give-up. A delivery still pending then never happens."""
    changes = tried(record, entry)
    changes["status"], changes["completed_at"] = Status.FAILED, entry.at
    if record.delivery is not None and record.delivery.status == "pending":
        changes["delivery"] = Delivery(status="failed", at=entry.at,
                                       http_status=record.delivery.http_status).model_dump()
    return changes
