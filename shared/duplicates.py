"""Duplicate results (table `fingerprints`): each accepted item's fingerprint, so a sender that sends the same result
again (a re-sent file, a retry without its Idempotency-Key) does not have it delivered twice.

A fingerprint is an HMAC of the item's ELR core key fields (patient, specimen collection, tests and results,
performing lab), keyed by FINGERPRINT_KEY (else a key the service makes once and keeps in table `keys`), so it cannot
be reversed by hashing guessed names and birth dates. Rows live in the sender's partition:

    f~<fingerprint>              the item that first carried it: report id, item index, first seen
    x~<YYYYMMDD>~<row key>       when it leaves the window (shared/expiry.py deletes by these day ranges)

Recording is one entity-group transaction per 50 items, creates only: when none exists (new results, the common
case) that is the whole cost, and a create that fails names the first duplicate. A re-sent file is known by its
body's digest (`d~<sha256>`) in the same transaction, so a whole file sent again costs one read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, TransactionOperation

from shared import expiry, registry, senders, table_batch
from shared.clock import to_iso
from shared.models import NormalisedItem
from shared.service_secrets import ServiceSecret
from shared.table_batch import Operation

log = logging.getLogger(__name__)

ITEM, DIGEST = "f~", "d~"
DAY = expiry.DAY
ITEMS_PER_BATCH = table_batch.MAX_OPERATIONS // 2 - 1  # two rows an item, plus the body's digest and its expiry

# The ELR core fields that make two items the same result; message ids and report ids are left out on purpose: a
# re-exported file gets new ones (ReportStream's deduplication design excluded them too).
KEY_FIELDS = ("patient_id", "patient_birth_date", "patient_sex", "patient_postal_code", "specimen_collected_at",
              "specimen_type_code", "performing_lab_clia", "ordering_provider_npi")


@dataclass(frozen=True)
class Original:
    report_id: str
    index: int


def fingerprint(key: bytes, item: NormalisedItem) -> str:
    values = [getattr(item, name) or "" for name in KEY_FIELDS]
    values += [f"{o.test_code}={o.result_code or o.result}|{o.result_units or ''}" for o in item.observations] or [
        f"{item.test_code}={item.result_code or item.result}|{item.result_units or ''}"]
    canonical = "\x1f".join(values).encode("utf-8")
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


_service_key = registry.cache(ServiceSecret("fingerprint-key"))


def fingerprint_key(keys_table: TableClient, configured: str | None) -> bytes:
    """FINGERPRINT_KEY when set, else the key the service made once and keeps in table `keys`."""
    return configured.encode("utf-8") if configured else _service_key.get(keys_table)


def find_and_record(
    table: TableClient, sender: str, report_id: str, body_sha256: str, items: list[tuple[int, str]],
    window: timedelta, now: datetime | None = None,
) -> dict[int, Original]:
    """Record the report's item fingerprints; return the items that duplicate an earlier one (in this report, or
    one the sender sent within `window`), each with the item it repeats. A retry of the same report is not a
    duplicate of itself."""
    now = now or datetime.now(UTC)
    duplicates: dict[int, Original] = {}
    first: dict[str, int] = {}
    for index, fp in items:
        if fp in first:
            duplicates[index] = Original(report_id, first[fp])
        else:
            first[fp] = index
    earlier = _same_body(table, sender, report_id, body_sha256, now)
    if earlier is not None:
        # The very file was sent before: each item repeats the item at the same place in that report.
        return {index: Original(earlier, index) for index, _ in items}
    fresh = [(index, fp) for fp, index in first.items()]
    expires = (now + window).strftime(DAY)
    extra = [_digest_ops(sender, report_id, body_sha256, now, expires)]
    for chunk in _chunks(fresh, ITEMS_PER_BATCH):
        duplicates.update(_record_chunk(table, sender, report_id, chunk, now, expires, extra.pop() if extra else []))
    return duplicates


def _chunks(items: list[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _digest_ops(sender: str, report_id: str, sha256: str, now: datetime, expires: str) -> list[Operation]:
    return [(TransactionOperation.UPSERT, {"PartitionKey": sender, "RowKey": f"{DIGEST}{sha256}",
                                           "report_id": report_id,
                        "first_seen": to_iso(now), expiry.EXPIRES: expires}),
            (TransactionOperation.UPSERT, expiry.entry(sender, f"{DIGEST}{sha256}", expires))]


def _same_body(table: TableClient, sender: str, report_id: str, sha256: str, now: datetime) -> str | None:
    try:
        row = table.get_entity(sender, f"{DIGEST}{sha256}")
    except ResourceNotFoundError:
        return None
    if row.get("report_id") == report_id or _expired_row(row, now):
        return None
    return str(row["report_id"])


def _expired_row(row: dict[str, Any], now: datetime) -> bool:
    expires = row.get(expiry.EXPIRES)
    return bool(expires) and str(expires) < now.strftime(DAY)


def _item_ops(sender: str, report_id: str, index: int, fp: str, now: datetime, expires: str,
              kind: TransactionOperation = TransactionOperation.CREATE) -> list[Operation]:
    return [(kind, {"PartitionKey": sender, "RowKey": f"{ITEM}{fp}", "report_id": report_id, "index": index,
                    "first_seen": to_iso(now), expiry.EXPIRES: expires}),
            (TransactionOperation.UPSERT, expiry.entry(sender, f"{ITEM}{fp}", expires))]


def _record_chunk(
    table: TableClient, sender: str, report_id: str, chunk: list[tuple[int, str]], now: datetime, expires: str,
    extra: list[Operation],
) -> dict[int, Original]:
    ops = [op for index, fp in chunk for op in _item_ops(sender, report_id, index, fp, now, expires)] + extra
    try:
        table_batch.submit(table, ops)
        return {}
    except TableTransactionError as exc:
        if exc.status_code != 409 or not 0 <= exc.index < 2 * len(chunk):
            raise
        position = exc.index // 2
    # A fingerprint is there already. The transaction wrote nothing; those before it are new. From it on each is
    # read (a re-sent batch holds many duplicates), then the new ones are written together.
    duplicates: dict[int, Original] = {}
    fresh = chunk[:position]
    for index, fp in chunk[position:]:
        original = _existing(table, sender, fp, now)
        if original is None:
            fresh.append((index, fp))  # absent, or past its window: this item takes it over
        elif original.report_id != report_id:  # (else an earlier try of this report recorded it)
            duplicates[index] = original
    upsert = TransactionOperation.UPSERT
    ops = [op for index, fp in fresh for op in _item_ops(sender, report_id, index, fp, now, expires, upsert)]
    if ops or extra:
        table_batch.submit(table, ops + extra)
    return duplicates


def _existing(table: TableClient, sender: str, fp: str, now: datetime) -> Original | None:
    """The item a fingerprint names, unless it is gone or past its window (then it may be taken over)."""
    try:
        row = table.get_entity(sender, f"{ITEM}{fp}")
    except ResourceNotFoundError:
        return None
    if _expired_row(row, now):
        return None
    return Original(str(row["report_id"]), int(row["index"]))


class SenderPolicy:
    """Whether a sender has duplicate detection on (its `allow_duplicates` false), remembered for a minute."""

    SECONDS = 60.0

    def __init__(self) -> None:
        self._cache: registry.TimedCache[str, bool] = registry.TimedCache()

    def detects(self, senders_table: TableClient, sender: str, default_allow: bool) -> bool:
        known = self._cache.get(sender)
        if known is not None:
            return known
        try:
            row = senders_table.get_entity(senders.SENDER_PARTITION, sender)
            allow = row.get("allow_duplicates")
        except ResourceNotFoundError:
            allow = None
        detects = not (default_allow if allow is None else bool(allow))
        self._cache.put(sender, detects, self.SECONDS)
        return detects

    def clear(self) -> None:
        self._cache.clear()


policy = registry.cache(SenderPolicy())


PURGE_JOB = "fingerprints-purge"


def purge(table: TableClient, senders_table: TableClient, checkpoints_table: TableClient, now: datetime) -> int:
    """Once a day: each sender's fingerprints that left the window (bounded ranges; the senders table is small)."""
    return expiry.purge(table, lambda: senders.names(senders_table), checkpoints_table, PURGE_JOB, now)
