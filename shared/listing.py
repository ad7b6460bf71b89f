"""Listing a sender's reports newest first, page by page.

Table storage only reads in ascending key order, and RowKey is the (time-sortable) ULID. Rather than scan the
whole partition for every page, we read time windows backwards from the cursor, each window larger than the last,
until a page is full or the sender's oldest report is passed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from azure.data.tables import TableClient
from ulid import ULID

from shared.models import StatusRecord
from shared.status import Status, entity_to_record

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
CURSOR = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
FIRST_WINDOW_MS = 60_000
GROWTH = 8
ABOVE_ANY_ID = "~"  # sorts after every ULID character


@dataclass(frozen=True)
class Query:
    sender: str
    status: Status | None = None
    since: str | None = None  # ISO 8601, same fixed-width format as updated_at
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None  # the id of the last report of the previous page


@dataclass(frozen=True)
class Page:
    reports: list[StatusRecord]
    next_cursor: str | None


def _id_floor(ms: int) -> str:
    """The smallest ULID at millisecond `ms`."""
    return str(ULID.from_bytes(max(ms, 0).to_bytes(6, "big") + bytes(10)))


def _id_ms(report_id: str) -> int:
    return int.from_bytes(ULID.from_str(report_id).bytes[:6], "big")


def _oldest_id(table: TableClient, sender: str) -> str | None:
    pages = table.query_entities(
        "PartitionKey eq @pk", parameters={"pk": sender}, select=["RowKey"], results_per_page=1
    ).by_page()
    for page in pages:
        for entity in page:
            return str(entity["RowKey"])
    return None


def list_reports(table: TableClient, query: Query) -> Page:
    oldest = _oldest_id(table, query.sender)
    if oldest is None:
        return Page([], None)
    filters = ["PartitionKey eq @pk", "RowKey ge @lo", "RowKey lt @hi"]
    params: dict[str, str] = {"pk": query.sender}
    if query.status is not None:
        filters.append("status eq @status")
        params["status"] = query.status.value
    if query.since is not None:
        filters.append("updated_at ge @since")
        params["since"] = query.since
    text = " and ".join(filters)

    hi = query.cursor or ABOVE_ANY_ID
    hi_ms = _id_ms(query.cursor) if query.cursor else int(time.time() * 1000) + 60_000
    window = FIRST_WINDOW_MS
    found: list[dict] = []
    while len(found) <= query.limit:
        lo_ms = hi_ms - window
        last = lo_ms <= _id_ms(oldest)
        lo = oldest if last else _id_floor(lo_ms)
        batch = list(table.query_entities(text, parameters={**params, "lo": lo, "hi": hi}))
        found.extend(reversed(batch))
        if last:
            break
        hi, hi_ms, window = lo, lo_ms, window * GROWTH
    page = found[: query.limit]
    next_cursor = str(page[-1]["RowKey"]) if len(found) > query.limit else None
    return Page([entity_to_record(e) for e in page], next_cursor)
