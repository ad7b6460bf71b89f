"""The reconciler: re-enqueue reports that were stored (`received`) but whose queue message never got sent.

A pass costs the same whatever the history behind it: the senders that stored reports since its checkpoint (one
query per UTC day, shared/activity.py), then for each of them one query of its `received` index entries older
than the cutoff (usually none), and a point read of each report found.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from azure.core.exceptions import AzureError

from shared import activity, checkpoints, clock, index, status, work
from shared.clock import CLOCK_SKEW as CLOCK_SKEW
from shared.clock import parse_iso, to_iso
from shared.config import Settings
from shared.lifecycle import Status
from shared.storage import Storage

log = logging.getLogger(__name__)

JOB = "reconcile"
FIRST_LOOKBACK = timedelta(days=1)  # where a first pass starts (`admin index rebuild` sets it for older ones)


def stuck(storage: Storage, sender: str, cutoff: str) -> Iterator[status.Row]:
    """The sender's reports still `received` since before `cutoff` (a `received` row's updated_at is its
    received_at), read from its status index and confirmed on the row."""
    prefix = index.status_prefix(Status.RECEIVED.value)
    entries = storage.reports.query_entities(
        "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
        parameters={"pk": sender, "lo": prefix + index.inverted_time(cutoff), "hi": prefix + index.AFTER},
        select=[index.ENTRY_ID],
    )
    for entry in entries:
        row = status.read(storage.reports, sender, str(entry[index.ENTRY_ID]))
        if row is not None and row.status is Status.RECEIVED and str(row.entity["received_at"]) < cutoff:
            yield row


def reconcile(storage: Storage, settings: Settings, now: datetime | None = None) -> int:
    """Re-enqueue every `received` report older than RECONCILE_AFTER_SECONDS, once each; returns how many."""
    now = now or datetime.now(UTC)
    after = timedelta(seconds=settings.reconcile_after_seconds)
    cutoff = to_iso(now - after)
    mark = checkpoints.get(storage.checkpoints, JOB)
    start = parse_iso(mark) if mark else now - FIRST_LOOKBACK
    count, complete = 0, True
    for sender in sorted(activity.senders_between(storage.activity, start, now)):
        for row in stuck(storage, sender, cutoff):
            try:
                work.enqueue(storage, row)
            except AzureError as exc:
                complete = False
                log.warning("report %s could not be re-enqueued yet: %s", row.id, type(exc).__name__)
                continue
            count += 1
            log.info("report %s re-enqueued by the reconciler", row.id)
    settled = now - after - settled_after(settings)
    if complete and settled > start:
        checkpoints.put(storage.checkpoints, JOB, "", to_iso(settled))
    return count


def settled_after(settings: Settings) -> timedelta:
    """A report's row is written at most this long after its sender's activity mark: an intake (or a replay) cannot
    outlive the host's functionTimeout. A minute older than that, once passed cleanly, needs no new look."""
    return clock.settled_after(settings.function_timeout_seconds)


def look_back_to(storage: Storage, moment: datetime) -> None:
    """Make the next pass start no later than `moment` (for `received` reports older than any pass has seen)."""
    mark = checkpoints.get(storage.checkpoints, JOB)
    if mark is None or parse_iso(mark) > moment:
        checkpoints.put(storage.checkpoints, JOB, "", to_iso(moment))
