"""Listing a sender's reports page by page, from the index entries in its partition (shared/index.py).

A page is one query, whatever the history behind it: one PartitionKey (the sender) and a RowKey range in the order
wanted, from just after the cursor up to `since`. Without filters the order is newest first (by id); with `since`
or `status` it is most recently changed first (by `updated_at`), the order incremental syncs read. The cursor is
the last entry's key, opaque to callers and checked against the query it is used with. A `received` report is in
the status index only (see shared/index.py), so only `status=received` lists it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from itertools import islice

from azure.data.tables import TableClient

from shared import index
from shared.errors import Refused, bad_request
from shared.lifecycle import Status
from shared.models import StatusRecord
from shared.status_entity import entity_to_record

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
CURSOR = re.compile(r"^[A-Za-z0-9_-]{1,200}$")  # base64url, no padding: not a report id, an index key
REPORT_ID = index.REPORT_ID


@dataclass(frozen=True)
class Query:
    sender: str
    status: Status | None = None
    since: str | None = None  # ISO 8601
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None  # next_cursor of the previous page


@dataclass(frozen=True)
class Page:
    reports: list[StatusRecord]
    next_cursor: str | None


def key_range(query: Query) -> tuple[str, str]:
    """The RowKeys a query reads, both ends exclusive."""
    if query.status is not None:
        prefix = index.status_prefix(Status(query.status).value)
    elif query.since is not None:
        prefix = index.UPDATED
    else:
        prefix = index.NEWEST
    if query.since is None:
        return prefix, prefix + index.AFTER
    # Keys hold the inverted time, so "updated at or after `since`" is "at or below since's inverted time".
    return prefix, prefix + index.inverted_time(query.since) + index.AFTER * 2


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("ascii")).rstrip(b"=").decode("ascii")


def _bad_cursor() -> Refused:
    return bad_request("cursor is not one this API returned for this query.", "bad-query")


def decode_cursor(cursor: str, lo: str, hi: str) -> str:
    """The key a cursor stands for; a 400 for anything this API could not have returned for the same query."""
    if not CURSOR.match(cursor):
        raise _bad_cursor()
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _bad_cursor() from None
    if not index.KEY.match(key) or not lo < key < hi:
        raise _bad_cursor()
    return key


def list_reports(table: TableClient, query: Query) -> Page:
    lo, hi = key_range(query)
    after = decode_cursor(query.cursor, lo, hi) if query.cursor else lo
    entries = table.query_entities(
        "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
        parameters={"pk": query.sender, "lo": after, "hi": hi},
        results_per_page=min(query.limit + 1, MAX_LIMIT),
    )
    found = list(islice(entries, query.limit + 1))  # one more than asked: is there a next page?
    page = found[: query.limit]
    next_cursor = encode_cursor(str(page[-1]["RowKey"])) if len(found) > query.limit else None
    return Page([entity_to_record(e) for e in page], next_cursor)
