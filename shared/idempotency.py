"""Idempotency-Key claims (table `idempotency`): one report per sender and key, however requests race or fail.

A request claims the key for its new report id before storing anything. A duplicate finds the claim and answers
with the report it names, waits briefly while that report is being stored, and takes the claim over only once
the request holding it can no longer be running: no invocation outlives the host's functionTimeout.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, TransactionOperation

from shared import clock, expiry, status, table_batch
from shared.clock import now_iso, parse_iso
from shared.config import Settings
from shared.errors import Kind, Refused, unavailable
from shared.storage import Storage

log = logging.getLogger(__name__)

KEY = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,254}$")
# How long a concurrent duplicate waits for the first request to finish storing before answering 409 + Retry-After:
# a store takes milliseconds when storage is well, and a longer wait would pin one of the host's worker threads
# per waiting duplicate (the sender's retry after Retry-After costs nothing meanwhile).
DUPLICATE_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Fingerprint:
    """What makes a retry "the same request": the body and the Content-Type it was sent with."""

    sha256: str
    content_type: str

    @classmethod
    def of(cls, sha256: str, content_type: str | None) -> Fingerprint:
        return cls(sha256, re.sub(r"\s+", "", (content_type or "").lower()))

    def matches(self, claim: dict[str, Any]) -> bool:
        # Claims written before Content-Type was part of the fingerprint carry only the digest.
        stored_type = claim.get("content_type")
        return claim.get("sha256") == self.sha256 and (stored_type is None or stored_type == self.content_type)


def takeover_after_seconds(settings: Settings) -> float:
    """A claim older than this belongs to a request that is no longer running (it would have been timed out)."""
    return clock.settled_after(settings.function_timeout_seconds).total_seconds()


def _row_key(sender: str, key: str) -> tuple[str, str]:
    return sender, hashlib.sha256(key.encode("ascii")).hexdigest()


def claim(
    storage: Storage, settings: Settings, sender: str, key: str, fingerprint: Fingerprint, report_id: str
) -> str | status.Row:
    """Claim `key` for `report_id` and return the id; or return the row of the report that already holds it."""
    pk, rk = _row_key(sender, key)
    expires = expiry.day_of(datetime.now(UTC) + timedelta(days=settings.idempotency_days))
    entity = {"PartitionKey": pk, "RowKey": rk, "report_id": report_id, "sha256": fingerprint.sha256,
              "content_type": fingerprint.content_type, "created_at": now_iso(), expiry.EXPIRES: expires}
    deadline = time.monotonic() + DUPLICATE_WAIT_SECONDS
    free = True
    pause = 0.05  # doubles up to 0.5 s: a duplicate waiting the whole while makes a few dozen reads, not hundreds
    while True:
        if free and _create(storage, settings, entity):
            return report_id
        try:
            held = _held(storage, settings, pk, rk, fingerprint, entity)
            free = False
        except ResourceNotFoundError:
            free = True  # released meanwhile: claim it afresh
            continue
        if held is not None:
            return held
        if time.monotonic() > deadline:
            raise Refused(Kind.IN_PROGRESS, "A request with this Idempotency-Key is still being stored; retry shortly.",
                          retry_after=settings.retry_after_seconds)
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _create(storage: Storage, settings: Settings, entity: dict[str, Any]) -> bool:
    """The claim and its expiry entry, in one transaction (one round trip, as the claim alone was)."""
    ops = [(TransactionOperation.CREATE, entity), (TransactionOperation.UPSERT, _expiry_entry(entity))]
    try:
        table_batch.submit(storage.idempotency, ops)
        return True
    except TableTransactionError as exc:
        if exc.index == 0 and exc.status_code == 409:
            return False
        raise unavailable(settings.retry_after_seconds) from None
    except AzureError:
        raise unavailable(settings.retry_after_seconds) from None


def _expiry_entry(entity: dict[str, Any]) -> dict[str, Any]:
    return expiry.entry(str(entity["PartitionKey"]), str(entity["RowKey"]), str(entity[expiry.EXPIRES]))


def _held(
    storage: Storage, settings: Settings, pk: str, rk: str, fingerprint: Fingerprint, entity: dict[str, Any]
) -> str | status.Row | None:
    """Look at the existing claim: its report's row, our id after a takeover, or None to wait."""
    try:
        existing = storage.idempotency.get_entity(pk, rk)
        if existing.get("report_id") == entity["report_id"]:
            return str(entity["report_id"])  # our own create, committed although its answer was lost
        if not fingerprint.matches(existing):
            raise Refused(Kind.KEY_REUSED,
                          "This Idempotency-Key was already used with a different report body or Content-Type.")
        row = status.read(storage.reports, pk, str(existing["report_id"]))
        if row is not None:
            return row
        age = (datetime.now(UTC) - parse_iso(str(existing["created_at"]))).total_seconds()
        if age <= takeover_after_seconds(settings):
            return None
        # The request that claimed the key stored nothing and cannot still be running: take the claim over.
        taken = {**entity, "created_at": now_iso()}
        table_batch.submit(storage.idempotency, [
            (TransactionOperation.UPDATE, taken,
             {"etag": existing.metadata["etag"], "match_condition": MatchConditions.IfNotModified}),
            (TransactionOperation.UPSERT, _expiry_entry(taken)),
        ])
        log.info("idempotency claim of report %s taken over by %s", existing["report_id"], entity["report_id"])
        return str(entity["report_id"])
    except ResourceModifiedError:
        return None  # another duplicate changed the claim first: look again
    except TableTransactionError as exc:
        if exc.status_code == 412:
            return None  # (the takeover's transaction) likewise
        raise unavailable(settings.retry_after_seconds) from None
    except ResourceNotFoundError:
        raise
    except AzureError:
        raise unavailable(settings.retry_after_seconds) from None


def release(storage: Storage, sender: str, key: str, report_id: str) -> None:
    """Give the key up after a store that surely failed, so the sender's retry can claim it at once."""
    pk, rk = _row_key(sender, key)
    try:
        existing = storage.idempotency.get_entity(pk, rk)
        if existing.get("report_id") == report_id:  # never another request's claim
            storage.idempotency.delete_entity(pk, rk, etag=existing.metadata["etag"],
                                              match_condition=MatchConditions.IfNotModified)
    except AzureError:
        pass  # left behind, the claim is taken over once it is stale


PURGE_JOB = "idempotency-purge"
