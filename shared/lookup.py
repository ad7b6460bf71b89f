"""Finding one report for a caller by its id (ULID, or ReportStream's UUID form): only among the senders whose
reports the caller may read, with point reads."""

from __future__ import annotations

from collections.abc import Iterable

from shared import activity, reportstream, status
from shared.auth import Principal
from shared.storage import Storage


def find_report(storage: Storage, principal: Principal, report_id: str) -> status.Row | None:
    """The report's row if the caller may read it; None for an unknown id, a malformed one or another's report
    (the same answer, so existence does not leak)."""
    ulid = reportstream.from_any(report_id)
    if ulid is None:
        return None
    return find_among(storage, ulid, principal.candidates(lambda: _active(storage, ulid)))


def find_among(storage: Storage, report_id: str, senders: Iterable[str]) -> status.Row | None:
    """The first of these senders' rows with this id (point reads, in order); None when none has it."""
    for sender in senders:
        row = status.read(storage.reports, sender, report_id)
        if row is not None:
            return row
    return None


def _active(storage: Storage, ulid: str) -> set[str]:
    try:
        return activity.senders_at(storage.activity, ulid)
    except (ValueError, OverflowError):  # a UUID that is no ULID of ours: its "time" is outside the calendar
        return set()
