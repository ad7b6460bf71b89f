"""Which senders stored reports in which minute (table `reportactivity`): how the reconciler and operators find the
partitions that matter without reading every sender's.

PartitionKey = UTC day `YYYYMMDD`, RowKey = `HHMM~sender`: one row per sender per minute in which it sent, the
minute taken from the report id's own timestamp, so a report's id alone names the few senders it can belong to.
Intake writes the mark before the report's row (a crash cannot leave a row nobody finds) and each process writes
it once per sender and minute: under load that is next to no write per report, where a per-report entry in a
cross-sender table would cost intake a round trip for every report.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from azure.data.tables import TableClient, UpdateMode
from ulid import ULID

from shared import registry

DAY_FORMAT = "%Y%m%d"
MINUTE_FORMAT = "%H%M"
SEP = "~"  # not allowed in sender names


# Marks this process has written, kept for two minutes: only the current minute's matter.
SEEN_SECONDS = 120.0
_seen: registry.TimedCache[tuple[str, str], bool] = registry.timed_cache()


def minute_of(report_id: str) -> datetime:
    moment = ULID.from_str(report_id).datetime.astimezone(UTC)
    return moment.replace(second=0, microsecond=0)


def _mark(sender: str, minute: datetime) -> dict[str, str]:
    return {"PartitionKey": minute.strftime(DAY_FORMAT), "RowKey": f"{minute.strftime(MINUTE_FORMAT)}{SEP}{sender}"}


def record(table: TableClient, sender: str, report_id: str) -> None:
    """Note that `sender` stores a report in the minute of `report_id` (idempotent; once per process)."""
    mark = _mark(sender, minute_of(report_id))
    key = (mark["PartitionKey"], mark["RowKey"])
    if _seen.get(key):
        return
    table.upsert_entity(mark, mode=UpdateMode.MERGE)
    _seen.put(key, True, SEEN_SECONDS)


def record_now(table: TableClient, sender: str) -> None:
    """Note that `sender` has a report to look at now (an operator's replay of an old report sets it `received`)."""
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    table.upsert_entity(_mark(sender, minute), mode=UpdateMode.MERGE)


def record_many(table: TableClient, sender: str, report_ids: list[str]) -> None:
    """Marks for reports stored before this table existed (the index rebuild)."""
    for minute in sorted({minute_of(report_id) for report_id in report_ids}):
        mark = _mark(sender, minute)
        table.upsert_entity(mark, mode=UpdateMode.MERGE)


def _days(start: date, end: date) -> Iterator[date]:
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


def senders_between(table: TableClient, start: datetime, end: datetime) -> set[str]:
    """Senders that stored reports in any minute from `start` to `end` (both included): one query per UTC day."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    found: set[str] = set()
    for day in _days(start.date(), end.date()):
        lo = start.strftime(MINUTE_FORMAT) if day == start.date() else "0000"
        hi = end.strftime(MINUTE_FORMAT) if day == end.date() else "2359"
        rows = table.query_entities(
            "PartitionKey eq @day and RowKey ge @lo and RowKey lt @hi",
            parameters={"day": day.strftime(DAY_FORMAT), "lo": f"{lo}{SEP}", "hi": f"{hi}{SEP}{SEP}"},
            select=["RowKey"],
        )
        found.update(str(row["RowKey"]).split(SEP, 1)[1] for row in rows)
    return found


def senders_at(table: TableClient, report_id: str) -> set[str]:
    """The senders that could have stored `report_id`: those that sent in its minute (usually one)."""
    minute = minute_of(report_id)
    return senders_between(table, minute, minute)
