"""What the host gave up on: the `poison_queue` trigger records each message the host moves to `reports-poison`
(table `poisoned`) and ends its report `failed`; operators list and replay from the record.

The host moves a work message there after its last try. Usually the app has already marked the report `failed` on
that try, but not when the worker crashed or timed out on it, when the final write failed, or when a message already
over maxDequeueCount is poisoned without running. The trigger (the Functions idiom) closes those as each message
arrives, so nothing needs to walk the queue: a pass of the old sweep received every poison message (500 took 21 s),
and its cost grew with the very backlog operators need to see during a mass failure.

Table `poisoned`:

    PartitionKey YYYYMMDD, RowKey <HHMMSSffffff>~<message id>   every poison message, by the day it arrived
    PartitionKey `open`,   RowKey <sender>~<report id>          the reports waiting for an operator (one each)

Listing, replaying and health read the `open` partition only, so their cost follows what waits, never history.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient
from pydantic import ValidationError

from shared import ending, expiry, index, status
from shared.clock import now_iso, to_iso
from shared.config import Settings
from shared.lifecycle import TERMINAL, Status
from shared.logs import TryAgain, describe
from shared.models import ExceptionEntry, QueueMessage
from shared.senders import SENDER_NAME
from shared.storage import Storage

log = logging.getLogger(__name__)

OPEN = "open"
# Every open entry's key (sender names start with a letter or digit, and sort before '~').
OPEN_RANGE = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
OPEN_PARAMETERS = {"pk": OPEN, "lo": "0", "hi": "~"}
DAY = "%Y%m%d"
GIVEN_UP = "GivenUp"
DEPTH_PAGE = 1000  # health counts at most this many open reports (one query)
# A row written this long after its message was poisoned was changed since (a replay, or another copy of the
# work): the poison message no longer speaks for it. Both times come from the storage service, but a queue
# message's insertion time has whole seconds only.
STALE_AFTER = timedelta(seconds=5)
MAX_KEPT_BODY = 2048  # of a message that is no work message: enough to tell what it was
MAX_MESSAGE_CHARS = 8192  # a work message the app wrote is well under this; a longer one is not ours
# When recording keeps failing (storage in trouble), the trigger's last try puts its message back on the poison
# queue, hidden this long, instead of letting the host move it to `reports-poison-poison`, which nothing reads.
RETRY_LATER_SECONDS = 300


def handle(storage: Storage, settings: Settings, body: bytes, message_id: str, inserted: datetime | None,
           dequeue_count: int) -> str:
    """The `poison_queue` trigger's work: record the message. What leaves the invocation names a failure's type and
    place only (the host records its message); on the last try the message goes back, hidden, to try again later."""
    try:
        return record(storage, body, message_id, inserted)
    except Exception as exc:  # noqa: BLE001 - what leaves an invocation must be value-free
        if dequeue_count < settings.max_dequeue_count:
            raise TryAgain(exc) from None
        log.warning("poison message %s: recording failed (%s) on the last try; back on the queue for %d s",
                    message_id, describe(exc), RETRY_LATER_SECONDS)
        try:
            storage.poison.send_message(body.decode("utf-8", "replace"), visibility_timeout=RETRY_LATER_SECONDS,
                                        time_to_live=-1)
        except Exception as again:  # noqa: BLE001 - the host then keeps it in reports-poison-poison
            raise TryAgain(again) from None
        return "retry later"


@dataclass(frozen=True)
class Waiting:
    """A report waiting for an operator: its work message as the host poisoned it."""

    sender: str
    report_id: str
    arrived_at: str
    message: QueueMessage


def record(storage: Storage, body: bytes, message_id: str, inserted: datetime | None) -> str:
    """Record one poison message (the trigger's work; a retried call records it once), and give its report up.
    Returns what happened, for the log."""
    arrived = inserted or datetime.now(UTC)
    message = _parse(body)
    text = message.model_dump_json(exclude_none=True) if message is not None else ""
    if message is not None and not _ours(message, text):
        message = None  # forged or foreign: kept as it came, never as row keys or properties
    entry = {"PartitionKey": arrived.strftime(DAY), "RowKey": f"{arrived:%H%M%S%f}~{message_id}",
             "arrived_at": to_iso(arrived)}
    if message is None:
        entry["unreadable"] = base64.b64encode(body[:MAX_KEPT_BODY]).decode()
        storage.poisoned.upsert_entity(entry)
        log.warning("poison message %s is not a work message; recorded, nothing to replay", message_id)
        return "unreadable"
    storage.poisoned.upsert_entity({**entry, "report_id": message.id, "sender": message.sender, "message": text})
    storage.poisoned.upsert_entity({"PartitionKey": OPEN, "RowKey": _open_key(message.sender, message.id),
                                    "arrived_at": to_iso(arrived), "message": text})
    if give_up(storage, message, inserted):
        log.warning("report %s given up: its message is in the poison queue", message.id)
        return "given up"
    return "recorded"


def _parse(body: bytes) -> QueueMessage | None:
    try:
        return QueueMessage.model_validate_json(body)
    except (ValidationError, ValueError):
        return None


def _ours(message: QueueMessage, text: str) -> bool:
    """A work message as the app writes them: its id and sender are valid keys, and it fits a table property."""
    return bool(index.REPORT_ID.match(message.id) and SENDER_NAME.match(message.sender)) and \
        len(text) <= MAX_MESSAGE_CHARS


def _open_key(sender: str, report_id: str) -> str:
    return f"{sender}~{report_id}"


def waiting(table: TableClient) -> Iterator[Waiting]:
    """Every report waiting for an operator, by sender and id (one partition, paged)."""
    for row in table.query_entities(OPEN_RANGE, parameters=OPEN_PARAMETERS):
        message = _parse(str(row.get("message", "")).encode())
        if message is not None:
            yield Waiting(message.sender, message.id, str(row.get("arrived_at", "")), message)


def depth(storage: Storage) -> int:
    """How many reports wait for an operator (up to DEPTH_PAGE, one query), plus the poison messages the trigger
    has not recorded yet."""
    pages = storage.poisoned.query_entities(OPEN_RANGE, parameters=OPEN_PARAMETERS, select=["RowKey"],
                                            results_per_page=DEPTH_PAGE).by_page()
    recorded = len(list(next(pages, [])))
    unrecorded = storage.poison.get_queue_properties().approximate_message_count or 0
    return recorded + unrecorded


def close(storage: Storage, sender: str, report_id: str) -> None:
    """The report no longer waits (replayed, or finished meanwhile)."""
    try:
        storage.poisoned.delete_entity(OPEN, _open_key(sender, report_id))
    except ResourceNotFoundError:
        pass


def give_up(storage: Storage, message: QueueMessage, poisoned_at: datetime | None) -> bool:
    """Mark the report `failed` if it is still pending and unchanged since its message was poisoned."""
    at = now_iso()

    def change(row: status.Row) -> status.Changes | None:
        if row.status in TERMINAL or _changed_since(row, poisoned_at):
            return None
        record_ = row.record()
        entry = ExceptionEntry(
            attempt=record_.attempts + 1,  # the try that ended in the poison queue was not recorded
            at=at, type=GIVEN_UP,
            message="The host moved the work message to the poison queue after its last try, with no outcome "
                    "recorded (the worker crashed or timed out, or the final write failed). Replayable: "
                    "python -m shared.admin poison replay --id " + row.id,
        )
        return ending.failed(record_, entry)

    after = ending.update(storage.reports, message.sender, message.id, change)
    return after is not None and after.status is Status.FAILED and after.entity.get("completed_at") == at


def _changed_since(row: status.Row, poisoned_at: datetime | None) -> bool:
    written = row.written_at
    return poisoned_at is not None and written is not None and written > poisoned_at + STALE_AFTER


RECORD_DAYS = 90  # how long the day partitions keep every poison message, for the record
PURGE_JOB = "poisoned-purge"


def purge_record(table: TableClient, checkpoints_table: TableClient, now: datetime) -> int:
    """Once a day: drop the day partitions older than RECORD_DAYS, by name. The open entries stay until an operator
    replays or clears them."""
    last = (now - timedelta(days=RECORD_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    return expiry.drop_partitions(table, checkpoints_table, PURGE_JOB, DAY, timedelta(days=1), last,
                                  timedelta(days=7))
