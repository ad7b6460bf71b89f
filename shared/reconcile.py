"""The reconciler: re-enqueue reports that were stored (`received`) but whose queue message never got sent."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from shared import status, work
from shared.clock import to_iso
from shared.config import Settings
from shared.status import Status
from shared.storage import Storage

log = logging.getLogger(__name__)


def enqueue(storage: Storage, row: status.Row) -> None:
    """Send the message, then mark the row `queued` (a processor may take `received` rows, so order is safe)."""
    work.send(storage, row)
    work.mark_queued(storage, row)


def reconcile(storage: Storage, settings: Settings, now: datetime | None = None) -> int:
    """Re-enqueue every `received` report older than RECONCILE_AFTER_SECONDS, once each; returns how many."""
    cutoff = to_iso((now or datetime.now(timezone.utc)) - timedelta(seconds=settings.reconcile_after_seconds))
    stuck = storage.reports.query_entities(
        "status eq @status and received_at lt @cutoff", parameters={"status": Status.RECEIVED.value, "cutoff": cutoff}
    )
    count = 0
    for entity in stuck:
        row = status.Row(dict(entity), entity.metadata["etag"])
        enqueue(storage, row)
        count += 1
        log.info("report %s re-enqueued by the reconciler", row.id)
    return count
