"""Accepting a report: cheap checks, then the body and the work message in parallel, then the status row.

Order matters (docs/intake.md): nothing is acknowledged before body and row are stored; a row says `queued` only
when its message was sent, else `received`, which the reconciler re-enqueues; a message whose row never comes is
dropped by the processor once its intake can no longer be running.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError
from http_sfv.dictionary import Dictionary as StructuredDictionary
from ulid import ULID

from shared import activity, direct_writes, group_commit, idempotency, status, status_entity, telemetry, work
from shared.clock import now_iso
from shared.config import Settings
from shared.errors import bad_request, too_large, unavailable, unsupported_media_type
from shared.formats import FORMATS, media_type
from shared.lifecycle import Status
from shared.models import StatusRecord
from shared.storage import Storage, raw_blob_name

log = logging.getLogger(__name__)

# RFC 9530 algorithms worth checking (the others are deprecated there and may be ignored).
DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
MAX_EXTERNAL_NAME = 255
ALLOW_DUPLICATE = "allow_duplicate"  # row property: the sender asked this report to skip duplicate detection
EXTERNAL_NAME = re.compile(rf"^[^\x00-\x1f\x7f]{{1,{MAX_EXTERNAL_NAME}}}$")
UNKNOWN_OUTCOME = "Storage did not answer; the report may not have been stored."
# Answers that do not say whether a write happened: Azure's 500 OperationTimedOut ("may or may not have
# succeeded"), a gateway timeout, a request timeout, or none at all.
UNKNOWN_OUTCOME_STATUSES = frozenset({None, 408, 500, 504})
UNKNOWN_OUTCOME_WITH_KEY = (f"{UNKNOWN_OUTCOME} Retry later with the same Idempotency-Key to be sure it is stored "
                            "once.")


@dataclass(frozen=True)
class Submission:
    sender: str
    body: bytes
    content_type: str | None
    idempotency_key: str | None = None
    content_digest: str | None = None  # the Content-Digest header (RFC 9530), when sent
    content_length: str | None = None  # the Content-Length header, when sent
    external_name: str | None = None  # the sender's own name for the file (ReportStream's payloadName)
    allow_duplicate: bool = False  # ?allowDuplicate=true: this report skips its sender's duplicate detection


@dataclass(frozen=True)
class Accepted:
    record: StatusRecord
    replayed: bool


def check(sub: Submission, settings: Settings) -> str:
    """The cheap checks; returns the media type. Never parses the report."""
    kind = check_format(sub.content_type)
    if sub.content_length is not None and not _declares_length(sub.content_length, len(sub.body)):
        raise bad_request("The body is not as long as its Content-Length says; nothing was stored.", "incomplete-body")
    check_size(sub.body, settings.max_report_bytes, "MAX_REPORT_BYTES")
    if sub.external_name is not None and not EXTERNAL_NAME.match(sub.external_name):
        raise bad_request(f"payloadName must be 1-{MAX_EXTERNAL_NAME} printable characters.", "bad-payload-name")
    if sub.idempotency_key is not None and not idempotency.KEY.match(sub.idempotency_key):
        raise bad_request("Idempotency-Key must be 1-255 printable ASCII characters.", "bad-idempotency-key")
    return kind


def check_format(content_type: str | None) -> str:
    """The media type of a report the service reads (intake and validation alike), else refused."""
    kind = media_type(content_type or "")
    if kind not in FORMATS:
        raise unsupported_media_type(f"Content-Type must be one of {', '.join(FORMATS)}; got {kind or 'none'!r}.")
    return kind


def check_size(body: bytes, limit: int, setting: str) -> None:
    if not body:
        raise bad_request("The report body is empty.", "empty-body")
    if len(body) > limit:
        raise too_large(len(body), limit, setting)


def _declares_length(header: str, length: int) -> bool:
    """Content-Length is ASCII digits (RFC 9110: leading zeros allowed); it must equal the body received."""
    value = header.strip()
    return value.isascii() and value.isdigit() and int(value) == length


def verify_content_digest(header: str, body: bytes, sha256: bytes | None = None) -> None:
    """RFC 9530: every sha-256 / sha-512 digest given must match the body; other algorithms are ignored.
    `sha256` is the body's SHA-256 when already computed (intake hashes a body once)."""
    parsed = StructuredDictionary()
    try:
        parsed.parse(header.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise bad_request("Content-Digest is not a structured field dictionary, e.g. sha-256=:<base64>:.",
                          "bad-content-digest") from None
    for algorithm, item in parsed.items():
        hash_fn = DIGESTS.get(algorithm)
        if hash_fn is None:
            continue
        if not isinstance(item.value, bytes):
            raise bad_request(f"Content-Digest {algorithm} must be a byte sequence, :<base64>:.", "bad-content-digest")
        actual = sha256 if algorithm == "sha-256" and sha256 is not None else hash_fn(body).digest()
        if item.value != actual:
            raise bad_request(
                f"The body does not match its Content-Digest ({algorithm}); nothing was stored. The body received "
                f"has {algorithm} :{base64.b64encode(actual).decode()}:.",
                "content-digest-mismatch",
            )


def accept(storage: Storage, settings: Settings, sub: Submission) -> Accepted:
    """Store the report and enqueue it. 202 once blob and row are stored; 503 only when nothing is."""
    telemetry.submission(sub.sender, sub.content_type, len(sub.body))
    check(sub, settings)
    sha256 = hashlib.sha256(sub.body).digest()
    if sub.content_digest is not None:
        verify_content_digest(sub.content_digest, sub.body, sha256)
    digest = sha256.hex()
    report_id = str(ULID())
    key = sub.idempotency_key
    if key is not None:
        fingerprint = idempotency.Fingerprint.of(digest, sub.content_type)
        claimed = idempotency.claim(storage, settings, sub.sender, key, fingerprint, report_id)
        if isinstance(claimed, status.Row):
            telemetry.report_accepted(claimed.id, sub.sender, sub.content_type, replayed=True)
            return Accepted(claimed.record(), replayed=True)
        report_id = claimed
    try:
        record = _store(storage, sub, report_id, digest)
    except AzureError as exc:
        log.warning("report %s: store failed (%s); reading it back", report_id, type(exc).__name__)
        record = _read_back(storage, settings, sub, report_id, certain=_surely_not_written(exc)).record()
    try:
        telemetry.report_accepted(report_id, sub.sender, record.content_type)
    except Exception as exc:  # noqa: BLE001 - stored: the answer is 202 whatever fails now, never "not stored"
        log.warning("report %s stored; a step after storing failed (%s)", report_id, type(exc).__name__)
    log.info("report %s accepted from %s (%d bytes)", report_id, sub.sender, record.size_bytes)
    return Accepted(record, replayed=False)


def _store(storage: Storage, sub: Submission, report_id: str, digest: str) -> StatusRecord:
    """The body and the work message in parallel, then the status row (returned as stored): two round trips to a 202.

    The row comes last and says whether the message went: `queued` if it did, `received` if it did not (or may not
    have), which the reconciler re-enqueues. So a `queued` row always has its message, and no second write of the
    row is needed. A message whose row never comes (the body or the row failed, the sender got no 202) is dropped
    by the processor once its intake can no longer be running (docs/intake.md)."""
    blob = raw_blob_name(sub.sender, report_id)
    content_type = (sub.content_type or "").strip()
    now = now_iso()
    record = StatusRecord(
        id=report_id,
        sender=sub.sender,
        status=Status.QUEUED,
        content_type=content_type,
        size_bytes=len(sub.body),
        sha256=digest,
        received_at=now,
        updated_at=now,
        external_name=sub.external_name,
    )
    # Before the row, so that the reconciler and operators can always find it (see shared/activity.py).
    activity.record(storage.activity, sub.sender, report_id)
    entity = status_entity.new_entity(record, blob) | telemetry.context_fields()
    if sub.allow_duplicate:
        entity[ALLOW_DUPLICATE] = True
    with group_commit.coming(storage.reports, sub.sender) as announced:
        # The second lane only for an intake storing alone: beside others, the process already overlaps storage
        # calls, and a second thread per report would only cost CPU (its hand-offs), which then limits throughput.
        upload = _PARALLEL.submit(_upload, storage, sub, blob, content_type, digest, report_id) \
            if announced.alone else None
        if upload is None:
            _upload(storage, sub, blob, content_type, digest, report_id)
        sent = _send(storage, status.Row(entity, ""))
        if upload is not None:
            upload.result()  # a failed upload raises here: no row is written, nothing is acknowledged
        if not sent:
            entity["status"] = Status.RECEIVED.value
            record = record.model_copy(update={"status": Status.RECEIVED})
        _create_row(storage, entity, announced)
    return record


# Intake's second lane: the body's upload beside the message's send, for an intake storing alone.
_PARALLEL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="intake-upload")


def _upload(storage: Storage, sub: Submission, blob: str, content_type: str, digest: str, report_id: str) -> None:
    try:
        direct_writes.put_blob(storage.container, blob, sub.body, content_type, {"sha256": digest, "sender": sub.sender})
    except ResourceExistsError:
        # The id is this request's own, fresh: the SDK retried an upload that had committed but lost its answer.
        log.info("report %s: raw blob already stored by an earlier try of this upload", report_id)


def _send(storage: Storage, row: status.Row) -> bool:
    """Send the work message; False when it failed or its outcome is unknown (the row will say `received`, and the
    reconciler sends it: a second message is harmless, a missing one is not)."""
    try:
        work.send(storage, row)
        return True
    except AzureError as exc:
        log.warning("report %s: work message not sent (%s); left for the reconciler", row.id, type(exc).__name__)
        return False


class RowWriteUnknown(AzureError):
    """The status row's write got no answer: it may still commit (a timed-out request can reach storage later)."""


def _surely_not_written(exc: AzureError) -> bool:
    """Whether a failed store certainly left no status row: it failed before the row's write was sent, or storage
    answered that write with an error. A write that got no answer (timed out, connection dropped) may commit
    later, whatever a read says now."""
    return not isinstance(exc, RowWriteUnknown)


def _create_row(storage: Storage, entity: dict[str, Any],
                announced: group_commit.Announced | None = None) -> status.Row:
    try:
        return group_commit.create(storage.reports, entity, announced)  # with the sender's rows arriving meanwhile
    except HttpResponseError as exc:
        if isinstance(exc, ResourceExistsError):  # an SDK retry of a create that committed: ours
            raise RowWriteUnknown("the row's create was retried after it committed") from exc
        if exc.status_code in UNKNOWN_OUTCOME_STATUSES:
            raise RowWriteUnknown(f"the row's write ended in {exc.status_code}: it may still commit") from exc
        raise  # storage refused the write (a 503 ServerBusy is refused before it runs): nothing was written
    except AzureError as exc:
        raise RowWriteUnknown(f"the row's write got no answer ({type(exc).__name__})") from exc


def _read_back(storage: Storage, settings: Settings, sub: Submission, report_id: str, certain: bool) -> status.Row:
    """After a failed store: the row is the truth, when it is there. A write whose outcome is unknown may commit
    after this read, so its Idempotency-Key claim is kept (a retry with the key finds the report if it lands, and
    takes the claim over only once this request can no longer be running); only a write that surely failed
    releases it."""
    unknown = UNKNOWN_OUTCOME_WITH_KEY if sub.idempotency_key is not None else UNKNOWN_OUTCOME
    try:
        row = status.read(storage.reports, sub.sender, report_id)
    except AzureError:
        raise unavailable(settings.retry_after_seconds, unknown) from None
    if row is not None:
        log.info("report %s was stored after all", report_id)
        return row
    if not certain:
        raise unavailable(settings.retry_after_seconds, unknown)
    if sub.idempotency_key is not None:
        idempotency.release(storage, sub.sender, sub.idempotency_key, report_id)
    raise unavailable(settings.retry_after_seconds)
