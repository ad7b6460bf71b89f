"""Where long-running jobs resume (table `checkpoints`): PartitionKey = job, RowKey = what within it, `value`."""

from __future__ import annotations

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode


def get(table: TableClient, job: str, key: str = "") -> str | None:
    try:
        return str(table.get_entity(job, key)["value"])
    except ResourceNotFoundError:
        return None


def put(table: TableClient, job: str, key: str, value: str) -> None:
    table.upsert_entity({"PartitionKey": job, "RowKey": key, "value": value}, mode=UpdateMode.REPLACE)


def clear(table: TableClient, job: str, keys: list[str]) -> None:
    for key in keys:
        try:
            table.delete_entity(job, key)
        except ResourceNotFoundError:
            pass
