"""Processing one queued report: parse, validate, normalise, write results, deliver, record the outcome.

Retries are the host's job: a transient failure is recorded and re-raised so the message comes back after the
visibility timeout; on the last try the report is marked `failed` and the host moves the message to poison.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from ulid import ULID

from shared import deferral, duplicates, ending, logs, reconcile, row_limits, status, telemetry
from shared.clock import now_iso
from shared.config import Settings
from shared.delivery import DeliveryError, deliver
from shared.formats import ContentError, parse_report
from shared.intake import ALLOW_DUPLICATE
from shared.lifecycle import TERMINAL, Status
from shared.logs import TryAgain
from shared.models import Delivery, ExceptionEntry, Issue, ItemCounts, NormalisedItem, QueueMessage
from shared.storage import Storage, result_blob_name

log = logging.getLogger(__name__)

MAX_ITEMS = 10_000
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
# Reports up to this size skip the `processing` write: it would be overwritten within milliseconds, and it is one
# of the five storage calls a report costs. Larger ones are marked first so pollers see the work under way.
MARK_PROCESSING_OVER_BYTES = 256 * 1024
CHUNK = 1024 * 1024


class PermanentFailure(Exception):
    """Retrying cannot help and the content is not to blame (raw blob missing, digest mismatch, 4xx downstream)."""

    def __init__(self, code: str, message: str, delivery: Delivery | None = None) -> None:
        super().__init__(message)
        self.issue = Issue(scope="report", code=code, message=message)
        self.delivery = delivery


class DeliveryDeferred(Exception):
    """The results are stored but the downstream is down for now: the delivery waits (shared/deferral.py)."""

    def __init__(self, failure: DeliveryError, errors: list[dict[str, Any]], warnings: list[dict[str, Any]]) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.errors = errors
        self.warnings = warnings


@dataclass
class IssueList:
    """Keeps the first issues a status row can list and counts the rest (row_limits caps them by size too)."""

    kept: list[Issue] = field(default_factory=list)
    left_out: int = 0

    def add(self, issues: list[Issue]) -> None:
        for issue in issues:
            if len(self.kept) < row_limits.MAX_LISTED_ISSUES:
                self.kept.append(issue)
            else:
                self.left_out += 1

    def listed(self) -> list[dict[str, Any]]:
        out = [i.model_dump() for i in self.kept]
        return out + [row_limits.issues_marker(self.left_out)] if self.left_out else out


@dataclass
class Progress:
    """What a try learnt before it ended, so a failed try still records it (the item counts once parsed)."""

    items: ItemCounts | None = None


@dataclass
class Parsed:
    counts: ItemCounts
    errors: IssueList
    warnings: IssueList
    results: IO[bytes]
    results_size: int
    fingerprints: list[tuple[int, str]] = field(default_factory=list)


@telemetry.traced_processing
def process(storage: Storage, settings: Settings, body: bytes, dequeue_count: int,
            message_id: str | None = None) -> str:
    """Handle one queue message; returns what happened (for the log). Raises TryAgain to ask the host for a retry:
    the host records the message and stack of what an invocation raises, so it carries no report value.
    `message_id` is the queue message's own id: it tells a redelivery of this message from another copy."""
    try:
        return _process(storage, settings, body, dequeue_count, message_id)
    except TryAgain:
        raise
    except Exception as exc:  # noqa: BLE001 - what leaves an invocation must be value-free
        raise TryAgain(exc) from None


def _process(storage: Storage, settings: Settings, body: bytes, dequeue_count: int,
             message_id: str | None = None) -> str:
    message = QueueMessage.model_validate_json(body)
    row = _row_of(storage, message)
    if row is None:
        return _without_row(storage, settings, message)
    if row.status in TERMINAL:
        log.info("report %s already %s; message acknowledged", message.id, row.status.value)
        return "ignored"
    if message.deliver_only:
        return _redeliver(storage, settings, message, row)
    # The host's dequeue count restarts after a replay and the row's count misses a try that crashed, so take
    # whichever is further along.
    attempt = max(int(row.entity.get("attempts") or 0) + 1, dequeue_count)
    telemetry.processing_started(row.entity.get("received_at"), message.content_type, attempt)
    try:
        started = _mark_processing(storage, settings, message, row, attempt, message_id) if _is_long(row) else row
    except AtWork:
        log.info("report %s: another copy of its work is running; this message is acknowledged", message.id)
        return "ignored"
    if started is None or started.status in TERMINAL:
        return "ignored"
    progress = Progress()
    try:
        outcome = _run(storage, settings, message, started, attempt, progress)
    except PermanentFailure as failure:
        _finish(storage, message, started, Status.FAILED, attempt, items=progress.items,
                errors=[failure.issue.model_dump()], delivery=failure.delivery)
        log.warning("report %s failed permanently: %s", message.id, failure.issue.code)
        return Status.FAILED.value
    except DeliveryDeferred as deferred:
        return _wait_for_downstream(storage, settings, message, started, attempt, progress.items, deferred)
    except Exception as exc:
        if storage_throttled(exc) and _put_off(storage, settings, message):
            return "deferred"
        last_try = dequeue_count >= settings.max_dequeue_count
        _record_exception(storage, message, attempt, exc, last_try, progress.items)
        log.warning(
            "report %s: try %d (dequeue %d/%d) failed with %s%s",
            message.id, attempt, dequeue_count, settings.max_dequeue_count, type(exc).__name__,
            "; marked failed" if last_try else "; the host will retry",
        )
        raise
    log.info("report %s %s", message.id, outcome.value)
    return outcome.value


ROW_WAIT_SECONDS = 0.2
ROW_RACE_SECONDS = 5.0  # a message this young may have overtaken its row, written milliseconds after it


def _row_of(storage: Storage, message: QueueMessage) -> status.Row | None:
    """The report's row. Intake sends the message beside the body and writes the row a moment later, so a processor
    quick enough to get there first looks once more before giving up on it."""
    row = status.read(storage.reports, message.sender, message.id)
    if row is None and _intake_may_be_running(message, ROW_RACE_SECONDS):
        time.sleep(ROW_WAIT_SECONDS)
        row = status.read(storage.reports, message.sender, message.id)
    return row


def _intake_may_be_running(message: QueueMessage, seconds: float) -> bool:
    try:
        sent = ULID.from_str(message.id).datetime
    except ValueError:
        return False
    return datetime.now(UTC) - sent < timedelta(seconds=seconds)


def _without_row(storage: Storage, settings: Settings, message: QueueMessage) -> str:
    """A message with no row: its intake is still storing (wait for it, spending no try), or it failed before the
    row and the sender got no 202 (drop the message, once that intake can no longer be running)."""
    window = reconcile.settled_after(settings).total_seconds()
    if _intake_may_be_running(message, window):
        delay = deferral.defer(storage, settings, message, deliver_only=False)
        log.info("report %s: no status row yet; looked again in %d s", message.id, delay)
        return "deferred"
    log.warning("report %s: no status row (its intake stored nothing); message dropped", message.id)
    return "unknown"


def _is_long(row: status.Row) -> bool:
    """Whether a poller could see this try at all: a small report is parsed and finished in milliseconds."""
    return int(row.entity.get("size_bytes") or 0) > MARK_PROCESSING_OVER_BYTES


class AtWork(Exception):
    """Another message for the report is being processed (its `processing` mark is another message's, and recent)."""


WORKER = "worker"  # row property: the queue message whose try marked the report `processing`


def _mark_processing(storage: Storage, settings: Settings, message: QueueMessage, row: status.Row, attempt: int,
                     message_id: str | None) -> status.Row | None:
    """Mark the report `processing` for this message. The row's ETag decides between two copies of the work (a
    duplicate message, a forced replay): the one whose write lands works; the other, finding the mark of another
    message that may still be running, stands down. A redelivery of the same message (its try crashed) takes over,
    as does any message once the mark is older than an invocation can run."""

    def start(current: status.Row) -> status.Changes | None:
        if current.status in TERMINAL:
            return None
        holder = current.entity.get(WORKER)
        if (current.status is Status.PROCESSING and message_id and holder and holder != message_id
                and _recent(current, settings)):
            raise AtWork
        changes: status.Changes = {"status": Status.PROCESSING, "attempts": attempt}
        if message_id:
            changes["worker"] = message_id
        return changes

    return status.update(storage.reports, message.sender, message.id, start, known=row)


def _recent(row: status.Row, settings: Settings) -> bool:
    written = row.written_at
    return written is None or datetime.now(UTC) - written < reconcile.settled_after(settings)


def _run(
    storage: Storage, settings: Settings, message: QueueMessage, started: status.Row, attempt: int, progress: Progress
) -> Status:
    raw = _download(storage, message)
    detecting = _detects_duplicates(storage, settings, started)
    parsed = _parse(raw, message, _fingerprinter(storage, settings) if detecting else None)
    progress.items = parsed.counts
    del raw
    try:
        if detecting and parsed.fingerprints:
            parsed = _drop_duplicates(storage, settings, message, parsed)
        progress.items = parsed.counts
        if parsed.counts.accepted == 0:
            _finish(
                storage, message, started, Status.REJECTED, attempt, items=parsed.counts,
                errors=parsed.errors.listed(), warnings=parsed.warnings.listed(),
            )
            return Status.REJECTED
        parsed.results.seek(0)
        storage.container.upload_blob(
            result_blob_name(message.sender, message.id), parsed.results, length=parsed.results_size, overwrite=True
        )
        try:
            delivery = _deliver(settings, message, parsed.results, parsed.results_size) if settings.delivery_url \
                else None
        except DeliveryError as exc:
            raise DeliveryDeferred(exc, parsed.errors.listed(), parsed.warnings.listed()) from None
        _finish(
            storage, message, started, Status.PROCESSED, attempt, items=parsed.counts,
            errors=parsed.errors.listed(), warnings=parsed.warnings.listed(), delivery=delivery,
        )
        return Status.PROCESSED
    finally:
        parsed.results.close()


def _download(storage: Storage, message: QueueMessage) -> bytes:
    try:
        raw = storage.container.download_blob(message.blob).readall()
    except ResourceNotFoundError:
        raise PermanentFailure("report.raw_missing", "The stored report body is gone (kept RAW_RETENTION_DAYS, or "
                               "deleted): send the report again.") from None
    if hashlib.sha256(raw).hexdigest() != message.sha256:
        raise PermanentFailure("report.digest_mismatch", "The stored report body does not match its SHA-256.")
    return raw


def _parse(raw: bytes, message: QueueMessage, fingerprint: Callable[[NormalisedItem], str] | None) -> Parsed:
    """One pass over the items: accepted ones are spooled as NDJSON, issues collected and capped."""
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 - the caller closes it
    return parse_items(raw, message.content_type, message.id, spool, fingerprint)


# --- duplicates ------------------------------------------------------------------------------------------------------


def _detects_duplicates(storage: Storage, settings: Settings, row: status.Row) -> bool:
    if row.entity.get(ALLOW_DUPLICATE):
        return False
    return duplicates.policy.detects(storage.senders, row.sender, settings.allow_duplicates_default)


def _fingerprinter(storage: Storage, settings: Settings) -> Callable[[NormalisedItem], str]:
    key = duplicates.fingerprint_key(storage.keys, settings.fingerprint_key)
    return lambda item: duplicates.fingerprint(key, item)


def _drop_duplicates(storage: Storage, settings: Settings, message: QueueMessage, parsed: Parsed) -> Parsed:
    """Record the items' fingerprints; items the sender already sent (or sent twice here) are left out of the
    results, each with a warning naming the item it repeats. Nothing left: the report is a duplicate."""
    found = duplicates.find_and_record(storage.fingerprints, message.sender, message.id, message.sha256,
                                       parsed.fingerprints, timedelta(days=settings.duplicate_window_days))
    if not found:
        return parsed
    parsed.warnings.add([
        Issue(scope="item", index=index, code="item.duplicate",
              message=f"Item {index} repeats item {original.index} of report {original.report_id}: not delivered "
                      "again.")
        for index, original in sorted(found.items())])
    kept: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 - the caller closes it
    parsed.results.seek(0)
    size = 0
    for (index, _), line in zip(parsed.fingerprints, parsed.results, strict=True):
        if index not in found:
            kept.write(line)
            size += len(line)
    parsed.results.close()
    counts = ItemCounts(total=parsed.counts.total, accepted=parsed.counts.accepted - len(found),
                        rejected=parsed.counts.rejected + len(found))
    errors = parsed.errors
    if counts.accepted == 0:
        errors.add([Issue(scope="report", code="report.duplicate",
                          message="Every item of the report was sent before: nothing is delivered again.")])
    return Parsed(counts, errors, parsed.warnings, kept, size, parsed.fingerprints)


class Discard(io.BytesIO):
    """A results sink that keeps nothing: a dry run (POST /api/validate) parses exactly as processing does."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]  # parse_items only ever writes bytes
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        return 0


def parse_items(raw: bytes, content_type: str, report_id: str, sink: IO[bytes],
                fingerprint: Callable[[NormalisedItem], str] | None = None) -> Parsed:
    """Parse and validate every item, writing each accepted one to `sink` as a line of NDJSON: the one code path
    for processing and for validation. With `fingerprint`, Parsed.fingerprints holds (item index, fingerprint) of
    each accepted item, in the order of its lines."""
    fingerprints: list[tuple[int, str]] = []
    errors, warnings = IssueList(), IssueList()
    accepted = rejected = 0
    size = 0
    try:
        for result in parse_report(raw, content_type, report_id):
            if accepted + rejected >= MAX_ITEMS:
                raise ContentError("report.too_many_items", f"The report has more than {MAX_ITEMS} items.")
            errors.add(result.errors)
            warnings.add(result.warnings)
            if result.item is None:
                rejected += 1
                continue
            accepted += 1
            line = result.item.model_dump_json().encode("utf-8") + b"\n"
            sink.write(line)
            size += len(line)
            if fingerprint is not None:
                fingerprints.append((result.index, fingerprint(result.item)))
    except ContentError as exc:
        return _unusable(exc, accepted + rejected, warnings, sink)
    except MemoryError:
        raise  # the machine's limit, not the report's: tried again, elsewhere or later
    except Exception as exc:  # noqa: BLE001 - whatever a parser raises follows from these bytes: the report's fault
        log.warning("report %s: a parser failed (%s); the report is rejected", report_id, logs.describe(exc))
        unreadable = ContentError("report.unreadable", f"The report could not be read ({type(exc).__name__}).")
        return _unusable(unreadable, accepted + rejected, warnings, sink)
    if accepted + rejected == 0:
        errors.add([Issue(scope="report", code="report.no_items", message="The report holds no items.")])
    return Parsed(ItemCounts(total=accepted + rejected, accepted=accepted, rejected=rejected), errors, warnings, sink,
                  size, fingerprints)


def _unusable(exc: ContentError, seen: int, warnings: IssueList, sink: IO[bytes]) -> Parsed:
    """The report as a whole is refused: nothing of it is delivered, whatever items were read before."""
    sink.truncate(0)
    report_errors = IssueList()
    report_errors.add([exc.issue])
    return Parsed(ItemCounts(total=seen, accepted=0, rejected=seen), report_errors, warnings, sink, 0)


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    stream.seek(0)
    while chunk := stream.read(CHUNK):
        yield chunk


def _deliver(settings: Settings, message: QueueMessage, results: IO[bytes], size: int) -> Delivery:
    """Delivered, or PermanentFailure for a refusal; a transient failure raises DeliveryError."""
    assert settings.delivery_url
    try:
        code = deliver(settings.delivery_url, message.id, _chunks(results), size, settings.delivery_timeout_seconds)
    except DeliveryError as exc:
        if exc.transient:
            raise
        refused = Delivery(status="failed", at=now_iso(), http_status=exc.http_status)
        raise PermanentFailure("delivery.refused", str(exc), delivery=refused) from None
    return Delivery(status="delivered", at=now_iso(), http_status=code)


# --- waiting out trouble that is not the report's ------------------------------------------------------------------


def storage_throttled(exc: BaseException) -> bool:
    """Storage asking us to slow down (429, or 503 Server Busy): waited out, not counted as a failed try."""
    return isinstance(exc, HttpResponseError) and getattr(exc, "status_code", None) in (429, 503)


def _put_off(storage: Storage, settings: Settings, message: QueueMessage) -> bool:
    """Send the message again for later; False when that fails too, or the window has closed (a failed try)."""
    if deferral.window_closed(settings, message, datetime.now(UTC)):
        return False
    try:
        delay = deferral.defer(storage, settings, message, deliver_only=bool(message.deliver_only))
    except AzureError:
        return False
    log.warning("report %s: storage is throttling; tried again in %d s", message.id, delay)
    return True


def _wait_for_downstream(
    storage: Storage, settings: Settings, message: QueueMessage, started: status.Row, attempt: int,
    items: ItemCounts | None, deferred: DeliveryDeferred,
) -> str:
    """The results are stored; only the delivery waits. The report stays `processing` with delivery `pending`
    until the downstream takes it, or DELIVERY_RETRY_HOURS have passed (then `failed`, and into the poison
    queue for operators, as a report the host gave up on)."""
    now = datetime.now(UTC)
    pending = Delivery(status="pending", at=now_iso(), http_status=deferred.failure.http_status)
    if deferral.window_closed(settings, message, now):
        gave_up = Issue(scope="report", code="delivery.gave_up",
                        message=f"The downstream did not take the results within {settings.delivery_retry_hours:g} "
                                f"hours ({deferred.failure}).")
        failed = pending.model_copy(update={"status": "failed"})
        _finish(storage, message, started, Status.FAILED, attempt, items=items,
                errors=[*deferred.errors, gave_up.model_dump()], warnings=deferred.warnings, delivery=failed)
        storage.poison.send_message(message.model_copy(update={"deferred_since": None, "deferrals": None,
                                                               "deliver_only": None}).model_dump_json(
            exclude_none=True), time_to_live=-1)
        log.warning("report %s: delivery given up after %g hours", message.id, settings.delivery_retry_hours)
        return Status.FAILED.value
    changes: status.Changes = {"status": Status.PROCESSING, "attempts": attempt, "delivery": pending.model_dump(),
                                  "errors": deferred.errors, "warnings": deferred.warnings}
    if items is not None:
        changes["items"] = items.model_dump()
    status.update(storage.reports, message.sender, message.id,
                  lambda row: None if row.status in TERMINAL else changes, known=started)
    delay = deferral.defer(storage, settings, message, deliver_only=True)
    log.warning("report %s: downstream unavailable (%s); delivery tried again in %d s", message.id,
                deferred.failure, delay)
    return "deferred"


def _redeliver(storage: Storage, settings: Settings, message: QueueMessage, row: status.Row) -> str:
    """A deferred delivery's next try: the stored results go downstream; nothing is parsed again."""
    record = row.record()
    if not settings.delivery_url:
        _finish(storage, message, row, Status.PROCESSED, record.attempts, items=record.items,
                errors=_dumped(record.errors), warnings=_dumped(record.warnings))
        return Status.PROCESSED.value
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 - the caller closes it
    try:
        try:
            storage.container.download_blob(result_blob_name(message.sender, message.id)).readinto(spool)
        except ResourceNotFoundError:  # the results are gone (retention): make them again from the raw report
            fresh = message.model_copy(update={"deliver_only": None})
            return _process(storage, settings, fresh.model_dump_json(exclude_none=True).encode(), 1)
        size = spool.tell()
        try:
            delivery = _deliver(settings, message, spool, size)
        except PermanentFailure as failure:
            _finish(storage, message, row, Status.FAILED, record.attempts, items=record.items,
                    errors=[*_dumped(record.errors), failure.issue.model_dump()], warnings=_dumped(record.warnings),
                    delivery=failure.delivery)
            return Status.FAILED.value
        except DeliveryError as exc:
            deferred = DeliveryDeferred(exc, _dumped(record.errors), _dumped(record.warnings))
            return _wait_for_downstream(storage, settings, message, row, record.attempts, record.items, deferred)
    finally:
        spool.close()
    _finish(storage, message, row, Status.PROCESSED, record.attempts, items=record.items,
            errors=_dumped(record.errors), warnings=_dumped(record.warnings), delivery=delivery)
    log.info("report %s delivered after waiting", message.id)
    return Status.PROCESSED.value


def _dumped(issues: list[Issue]) -> list[dict[str, Any]]:
    return [issue.model_dump() for issue in issues]


def _finish(
    storage: Storage,
    message: QueueMessage,
    started: status.Row,
    outcome: Status,
    attempt: int,
    items: ItemCounts | None = None,
    errors: list[dict[str, Any]] | None = None,
    warnings: list[dict[str, Any]] | None = None,
    delivery: Delivery | None = None,
) -> None:
    changes: status.Changes = {"status": outcome, "attempts": attempt, "completed_at": now_iso(),
                                  "errors": errors or [], "warnings": warnings or []}
    if items is not None:
        changes["items"] = items.model_dump()
    if delivery is not None:
        changes["delivery"] = delivery.model_dump()

    def change(row: status.Row) -> status.Changes | None:
        return None if row.status in TERMINAL else changes

    ending.update(storage.reports, message.sender, message.id, change, known=started)


def _record_exception(
    storage: Storage, message: QueueMessage, attempt: int, exc: Exception, last_try: bool, items: ItemCounts | None
) -> None:
    entry = ExceptionEntry(attempt=attempt, at=now_iso(), type=type(exc).__name__,
                           message=logs.safe_message(exc)[:300])

    def change(row: status.Row) -> status.Changes | None:
        if row.status in TERMINAL:
            return None
        record = row.record()
        changes = ending.failed(record, entry) if last_try else ending.tried(record, entry)
        if not last_try and row.status is not Status.PROCESSING:
            changes["status"] = Status.PROCESSING  # tried and waiting for the host's retry, however small
        if items is not None:
            changes["items"] = items.model_dump()
        if isinstance(exc, DeliveryError):
            changes["delivery"] = Delivery(
                status="failed" if last_try else "pending", at=entry.at, http_status=exc.http_status
            ).model_dump()
        return changes

    try:
        ending.update(storage.reports, message.sender, message.id, change)
    except Exception as record_exc:  # noqa: BLE001 - the original failure matters more; the host retries either way
        log.warning("report %s: could not record the failed try: %s", message.id, type(record_exc).__name__)
