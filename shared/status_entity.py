"""A status record as a row of table `reports`, and back: which fields are JSON text, which go back to null."""

from __future__ import annotations

import json
from typing import Any

from shared import index, row_limits
from shared.lifecycle import Status
from shared.models import StatusRecord

# Fields stored as JSON text in the row (table properties are scalars).
JSON_FIELDS = ("items", "errors", "warnings", "exceptions", "delivery")
RECORD_FIELDS = tuple(StatusRecord.model_fields)
# Scalar fields that go back to null (a replay clears `completed_at`): stored as "" since a merge cannot remove.
CLEARABLE = ("completed_at",)


def new_entity(record: StatusRecord, blob: str) -> dict[str, Any]:
    entity = record_to_entity(record)
    entity["blob"] = blob
    row_limits.check(entity)
    return entity


def to_property(name: str, value: object) -> object:
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
        entity[name] = to_property(name, value)
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
