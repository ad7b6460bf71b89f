"""Rows that expire (idempotency claims, fingerprints) are deleted by bounded key ranges, never found by a scan:
beside each such row, in its partition, an entry `x~<YYYYMMDD>~<row key>` names the day it expires. Once a day
the purge reads, in each sender's partition, the range of the days that passed, and deletes what they name."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient

from shared import checkpoints

PREFIX = "x~"
DAY = "%Y%m%d"
EXPIRES = "expires_on"  # the row's own day, so a row renewed since (a later expiry) is left alone
FIRST_LOOKBACK_DAYS = 7


def day_of(moment: datetime) -> str:
    return moment.strftime(DAY)


def entry(partition: str, row_key: str, day: str) -> dict[str, str]:
    return {"PartitionKey": partition, "RowKey": f"{PREFIX}{day}~{row_key}"}


def purge_day(table: TableClient, partition: str, day: str) -> int:
    """Delete the rows of `partition` that expired on `day` (and their entries); returns how many rows went."""
    prefix = f"{PREFIX}{day}~"
    deleted = 0
    rows = table.query_entities("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                                parameters={"pk": partition, "lo": prefix, "hi": prefix + "~"}, select=["RowKey"])
    for found in rows:
        named = str(found["RowKey"])[len(prefix):]
        try:
            row = table.get_entity(partition, named)
            if str(row.get(EXPIRES) or day) <= day:
                table.delete_entity(partition, named)
                deleted += 1
        except ResourceNotFoundError:
            pass
        try:
            table.delete_entity(partition, str(found["RowKey"]))
        except ResourceNotFoundError:
            pass
    return deleted


def purge(table: TableClient, partitions: Callable[[], list[str]], checkpoints_table: TableClient, job: str,
          now: datetime) -> int:
    """Once a day: for each day passed since the job last ran, purge that day in every partition."""
    yesterday = (now - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    done = checkpoints.get(checkpoints_table, job)
    day = (datetime.strptime(done, DAY).replace(tzinfo=UTC) + timedelta(days=1) if done
           else yesterday - timedelta(days=FIRST_LOOKBACK_DAYS))
    names: list[str] | None = None
    deleted = 0
    while day <= yesterday:
        names = partitions() if names is None else names
        for name in names:
            deleted += purge_day(table, name, day_of(day))
        checkpoints.put(checkpoints_table, job, "", day_of(day))
        day += timedelta(days=1)
    return deleted


def drop_partitions(table: TableClient, checkpoints_table: TableClient, job: str, name_format: str, step: timedelta,
                    newest: datetime, lookback: timedelta, rows: tuple[str, str] = ("0", "~")) -> int:
    """Delete whole partitions named by period (`name_format` of each `step` up to `newest`) that passed since the job
    last ran, looking back at most `lookback` (so a pass after a long stop stays bounded). Each is read by its key
    range `rows`, never found by a scan. Returns how many rows went."""
    done = checkpoints.get(checkpoints_table, job)
    period = newest - lookback
    if done:
        period = max(period, datetime.strptime(done, name_format).replace(tzinfo=UTC) + step)
    deleted = 0
    while period <= newest:
        partition = period.strftime(name_format)
        for row in table.query_entities("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                                        parameters={"pk": partition, "lo": rows[0], "hi": rows[1]},
                                        select=["RowKey"]):
            try:
                table.delete_entity(partition, str(row["RowKey"]))
                deleted += 1
            except ResourceNotFoundError:
                pass
        checkpoints.put(checkpoints_table, job, "", partition)
        period += step
    return deleted
