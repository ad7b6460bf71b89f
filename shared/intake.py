"""Accepting a report: cheap checks, durable storage (blob + status row), then the queue message.

Order matters (DESIGN section 3): nothing is acknowledged before it is stored, and a crash between the steps
leaves a `received` row that the reconciler re-enqueues.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContentSettings
from ulid import ULID

from shared import activity, status, telemetry, work
from shared.clock import now_iso, parse_iso
from shared.config import Settings
from shared.formats import FORMATS, media_type
from shared.models import StatusRecord
from shared.problems import Problem, bad_request, unavailable
from shared.status import Status
from shared.storage import Storage, raw_blob_name

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,254}$")
# A claimed Idempotency-Key whose report never appeared within this long belongs to a request that died.
STALE_CLAIM_SECONDS = 30.0
# How long a concurrent duplicate waits for the first request to finish storing before answering 409.
DUPLICATE_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Submission:
    sender: str
    body: bytes
    content_type: str | None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Accepted:
    record: StatusRecord
    replayed: bool


def check(sub: Submission, settings: Settings) -> str:
    """The cheap checks; returns the media type. Never parses the report."""
    kind = media_type(sub.content_type or "")
    if kind not in FORMATS:
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported Media Type",
            f"Content-Type must be one of {', '.join(FORMATS)}; got {kind or 'none'!r}.",
        )
    if not sub.body:
        raise bad_request("The report body is empty.", "empty-body")
    if len(sub.body) > settings.max_report_bytes:
        raise Problem(
            413,
            "too-large",
            "Content Too Large",
            f"The report is {len(sub.body)} bytes; the limit is {settings.max_report_bytes}.",
        )
    if sub.idempotency_key is not None and not IDEMPOTENCY_KEY.match(sub.idempotency_key):
        raise bad_request("Idempotency-Key must be 1-255 printable ASCII characters.", "bad-idempotency-key")
    return kind


def accept(storage: Storage, settings: Settings, sub: Submission) -> Accepted:
    telemetry.submission(sub.sender, sub.content_type, len(sub.body))
    check(sub, settings)
    digest = hashlib.sha256(sub.body).hexdigest()
    report_id = str(ULID())
    if sub.idempotency_key is not None:
        claimed = _claim_key(storage, settings, sub.sender, sub.idempotency_key, digest, report_id)
        if isinstance(claimed, status.Row):
            telemetry.report_accepted(claimed.id, sub.sender, sub.content_type, replayed=True)
            return Accepted(claimed.record(), replayed=True)
    try:
        return Accepted(_store_and_enqueue(storage, settings, sub, report_id, digest), replayed=False)
    except _NotStored:
        if sub.idempotency_key is not None:
            _release_key(storage, sub.sender, sub.idempotency_key)
        raise unavailable(settings.retry_after_seconds) from None


class _NotStored(Exception):
    """Storage failed before the report was durably stored."""


def _store_and_enqueue(storage: Storage, settings: Settings, sub: Submission, report_id: str, digest: str) -> StatusRecord:
    blob = raw_blob_name(sub.sender, report_id)
    content_type = (sub.content_type or "").strip()
    now = now_iso()
    record = StatusRecord(
        id=report_id,
        sender=sub.sender,
        status=Status.RECEIVED.value,
        content_type=content_type,
        size_bytes=len(sub.body),
        sha256=digest,
        received_at=now,
        updated_at=now,
    )
    try:
        # Before the row, so that the reconciler and operators can always find it (see shared/activity.py).
        activity.record(storage.activity, sub.sender, report_id)
        storage.container.upload_blob(
            blob,
            sub.body,
            overwrite=False,
            content_settings=ContentSettings(content_type=content_type),
            metadata={"sha256": digest, "sender": sub.sender},
        )
        row = status.create(storage.reports, status.new_entity(record, blob) | telemetry.context_fields())
    except AzureError as exc:
        log.warning("report %s not stored: %s", report_id, type(exc).__name__)
        raise _NotStored from exc

    try:
        work.send(storage, row)
    except AzureError as exc:
        # Stored but not enqueued: the row stays `received` and the reconciler enqueues it. The sender is told 503
        # because storage is failing right now; an Idempotency-Key retry replays this same report.
        log.warning("report %s stored but not enqueued (%s); left for the reconciler", report_id, type(exc).__name__)
        raise unavailable(settings.retry_after_seconds) from exc

    try:
        work.mark_queued(storage, row)
    except AzureError as exc:
        # Stored and enqueued, so the 202 stands; the reconciler may enqueue it again, which processing tolerates.
        log.warning("report %s enqueued but not marked queued: %s", report_id, type(exc).__name__)
    record.status = Status.QUEUED.value
    telemetry.report_accepted(report_id, sub.sender, content_type)
    log.info("report %s accepted from %s (%d bytes)", report_id, sub.sender, record.size_bytes)
    return record


def _key_row(sender: str, key: str) -> tuple[str, str]:
    return sender, hashlib.sha256(key.encode("ascii")).hexdigest()


def _claim_key(
    storage: Storage, settings: Settings, sender: str, key: str, digest: str, report_id: str
) -> str | status.Row:
    """Claim the Idempotency-Key for `report_id`; or return the row of the report that already holds it."""
    pk, rk = _key_row(sender, key)
    claim = {"PartitionKey": pk, "RowKey": rk, "report_id": report_id, "sha256": digest, "created_at": now_iso()}
    try:
        storage.idempotency.create_entity(claim)
        return report_id
    except ResourceExistsError:
        pass
    except AzureError:
        raise unavailable(settings.retry_after_seconds) from None

    deadline = time.monotonic() + DUPLICATE_WAIT_SECONDS
    while True:
        try:
            existing = storage.idempotency.get_entity(pk, rk)
        except ResourceNotFoundError:
            return _claim_key(storage, settings, sender, key, digest, report_id)
        except AzureError:
            raise unavailable(settings.retry_after_seconds) from None
        if existing.get("sha256") != digest:
            raise Problem(
                422,
                "idempotency-key-reused",
                "Unprocessable Content",
                "This Idempotency-Key was already used with a different report body.",
            )
        row = status.read(storage.reports, sender, str(existing["report_id"]))
        if row is not None:
            return row
        age = (datetime.now(timezone.utc) - parse_iso(str(existing["created_at"]))).total_seconds()
        if age > STALE_CLAIM_SECONDS:
            # The request that claimed the key died before storing; take the claim over.
            claim["created_at"] = now_iso()
            try:
                storage.idempotency.update_entity(
                    claim, etag=existing.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )
                return report_id
            except ResourceModifiedError:
                continue
        if time.monotonic() > deadline:
            raise Problem(
                409,
                "idempotency-key-in-progress",
                "Conflict",
                "A request with this Idempotency-Key is still being stored; retry shortly.",
                {"Retry-After": str(settings.retry_after_seconds)},
            )
        time.sleep(0.05)


def _release_key(storage: Storage, sender: str, key: str) -> None:
    try:
        storage.idempotency.delete_entity(*_key_row(sender, key))
    except AzureError:
        # Left behind, the claim goes stale and the next retry takes it over.
        pass
