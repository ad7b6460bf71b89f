"""The poison queue (`reports-poison`): what the host gave up on, how it ends `failed`, and how operators see it.

The host moves a work message there after its last try. Usually the app has already marked the report `failed`
on that try, but not when the worker crashed or timed out on it, when the final write failed, or when a message
already over maxDequeueCount is poisoned without running. `sweep` (run by reconcile_timer) closes those: every
report named by a poison message that is still pending becomes `failed`, with an exceptions entry saying so.

Why a sweep and not a queue trigger on `reports-poison` (the Functions idiom): a trigger deletes each message
once it has run, and the poison queue is what operators list, replay from and alert on (`poison_depth`). The
sweep leaves the queue as it is. It receives every poison message (hidden while it looks, shown again at the
end), so a pass costs about depth/32 + depth storage calls, plus a row read for each message it has not settled
before, and raises the dequeue count of poison messages (nothing reads that count). The queue is meant to stay
near empty: operators replay or clear it.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueMessage as StoredMessage
from pydantic import ValidationError

from shared import status
from shared.clock import now_iso
from shared.models import Delivery, ExceptionEntry, QueueMessage
from shared.status import TERMINAL, Status
from shared.storage import Storage

log = logging.getLogger(__name__)

PEEK_LIMIT = 32  # the most one peek (or receive) returns
# How long a walk keeps messages hidden: longer than a walk takes, short enough that a crashed walk's messages
# reappear soon for `poison list`. A sweep adds time per message, measured at well over 10 messages a second.
WALK_LEASE_SECONDS = 120
SWEEP_MESSAGES_PER_SECOND = 10
GIVEN_UP = "GivenUp"
# A row written this long after its message was poisoned was changed since (a replay, or another copy of the
# work): the poison message no longer speaks for it. Both times come from the storage service, but a queue
# message's insertion time has whole seconds only.
STALE_AFTER = timedelta(seconds=5)
# Poison messages a sweep of this process has already settled (their report was given up, or had finished or been
# changed since): a later pass does not read their rows again. Safe because a settled message stays settled: a
# report can only leave a terminal state by a replay, which writes the row after the message was poisoned (so
# `_changed_since` holds) and deletes the message. Bounded; forgetting only costs a row read.
_settled: set[str] = set()
SETTLED_LIMIT = 100_000


@dataclass
class Poisoned:
    """One poison message as stored, with its work message if it parses."""

    stored: StoredMessage
    message: QueueMessage | None


def _parse(stored: StoredMessage) -> Poisoned:
    """The work message in a poison message as stored (base64, as the host writes it); None if it is not one, such
    as a message that was not base64 to begin with, which the host poisons as it is."""
    try:
        return Poisoned(stored, QueueMessage.model_validate_json(base64.b64decode(stored.content, validate=True)))
    except (ValidationError, ValueError, TypeError):
        return Poisoned(stored, None)


def depth(storage: Storage) -> int:
    """About how many poison messages there are, hidden ones included."""
    return storage.poison.get_queue_properties().approximate_message_count or 0


def peek(storage: Storage) -> tuple[list[Poisoned], int]:
    """The first poison messages, without changing the queue, and about how many there are in all."""
    total = depth(storage)
    shown = [_parse(m) for m in storage.poison.peek_messages(max_messages=PEEK_LIMIT)]
    return shown, max(total, len(shown))


def walk(storage: Storage, lease_seconds: int = WALK_LEASE_SECONDS) -> Iterator[Poisoned]:
    """Every visible poison message once, each hidden for `lease_seconds` from when it is received. The caller
    deletes a message or gives it back with `restore`."""
    seen: set[str] = set()
    while True:
        batch = list(storage.poison.receive_messages(messages_per_page=PEEK_LIMIT, max_messages=PEEK_LIMIT,
                                                     visibility_timeout=lease_seconds))
        fresh = [m for m in batch if m.id not in seen]
        for again in batch:
            if again.id in seen:
                restore(storage, again)  # came round once its lease ran out: this receive must not hide it on
        if not fresh:
            return  # empty, or the lease ran out and messages came round again
        for stored in fresh:
            seen.add(stored.id)
            yield _parse(stored)


def restore(storage: Storage, stored: StoredMessage) -> None:
    """Make a walked message visible again, as it was."""
    try:
        storage.poison.update_message(stored.id, pop_receipt=stored.pop_receipt, visibility_timeout=0)
    except (ResourceNotFoundError, HttpResponseError) as exc:
        if getattr(exc, "status_code", None) not in (400, 404):
            raise
        # Deleted meanwhile (a replay), or the lease ran out and someone else holds it now: nothing to give back.


def delete(storage: Storage, stored: StoredMessage) -> None:
    try:
        storage.poison.delete_message(stored.id, pop_receipt=stored.pop_receipt)
    except ResourceNotFoundError:
        pass


def give_up(storage: Storage, message: QueueMessage, poisoned_at: datetime | None) -> bool:
    """Mark the report `failed` if it is still pending and unchanged since its message was poisoned."""
    at = now_iso()

    def change(row: status.Row) -> dict | None:
        if row.status in TERMINAL or _changed_since(row, poisoned_at):
            return None
        record = row.record()
        attempt = record.attempts + 1  # the try that ended in the poison queue was not recorded
        entry = ExceptionEntry(
            attempt=attempt, at=at, type=GIVEN_UP,
            message="The host moved the work message to the poison queue after its last try, with no outcome "
                    "recorded (the worker crashed or timed out, or the final write failed). Replayable: "
                    "python -m shared.admin poison replay --id " + row.id,
        )
        changes: dict[str, object] = {
            "status": Status.FAILED, "completed_at": at, "attempts": attempt,
            "exceptions": [e.model_dump() for e in record.exceptions] + [entry.model_dump()],
        }
        if record.delivery is not None and record.delivery.status == "pending":
            changes["delivery"] = Delivery(status="failed", at=at, http_status=record.delivery.http_status).model_dump()
        return changes

    before = status.read(storage.reports, message.sender, message.id)
    if before is None:
        return False
    after = status.update(storage.reports, message.sender, message.id, change, known=before)
    return after is not None and after.status is Status.FAILED and after.entity.get("completed_at") == at


def _changed_since(row: status.Row, poisoned_at: datetime | None) -> bool:
    written = row.written_at
    return poisoned_at is not None and written is not None and written > poisoned_at + STALE_AFTER


def sweep(storage: Storage) -> int:
    """Give up every pending report that has a poison message; returns how many were marked `failed`."""
    walked: list[Poisoned] = []
    given_up = 0
    lease = WALK_LEASE_SECONDS + depth(storage) // SWEEP_MESSAGES_PER_SECOND  # so the walk ends before its lease
    try:
        for poisoned in walk(storage, lease):
            walked.append(poisoned)
            if poisoned.message is None or poisoned.stored.id in _settled:
                continue
            if give_up(storage, poisoned.message, poisoned.stored.inserted_on):
                given_up += 1
                log.warning("report %s given up: its message is in the poison queue", poisoned.message.id)
            if len(_settled) >= SETTLED_LIMIT:
                _settled.clear()
            _settled.add(poisoned.stored.id)
    finally:
        for poisoned in walked:
            restore(storage, poisoned.stored)
    return given_up
