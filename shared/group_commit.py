"""Group commit of new status rows: the rows of reports that arrive together from one sender are created in one
entity-group transaction, so that under load a report pays a share of a table round trip instead of a whole one.

A row is written at once when no creation for its partition is in flight and no other row of it is on its way
(announced by `coming`); otherwise it waits briefly for those (GATHER_SECONDS), or for the transaction in flight,
and goes with the others in the next one. Alone, a row is written exactly as `status.create` writes it. A
transaction is all or nothing, so each row's outcome is the transaction's: stored, refused, or unknown (no answer:
each intake reads its own row back). A refusal that names one row (a 4xx: an id taken, an entity storage will not take) cannot be that of the
others, so each row is then written alone and gets its own answer.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient

from shared import status, table_batch

# Azure takes at most 100 operations and a 4 MiB body per transaction; a body is kept well under the latter (an
# entity's JSON size is an estimate of its part, which adds a few hundred bytes of headers).
MAX_OPERATIONS = table_batch.MAX_OPERATIONS
MAX_BODY_BYTES = 2 * 1024 * 1024
PART_OVERHEAD_BYTES = 512
# How long a transaction about to be sent waits for announced rows still on their way: a few storage round trips
# on Azurite, under one on Azure. Only ever waited when other reports of the sender are being stored at that moment.
GATHER_SECONDS = 0.005


@dataclass(eq=False)
class _Waiter:
    """One row waiting to be created, and what became of it."""

    entity: dict[str, Any]
    operations: int
    body_bytes: int
    done: threading.Event = field(default_factory=threading.Event)
    row: status.Row | None = None
    error: BaseException | None = None
    lead: bool = False  # woken to send the next transaction rather than with an outcome


_lock = threading.Condition()
# Per (table client, partition): rows waiting for the transaction being gathered or in flight. A key is present
# while one is.
_waiting: dict[tuple[int, str], deque[_Waiter]] = {}
# Per (table client, partition): rows announced (their intake is storing the body and the message) and not yet here.
_coming: Counter[tuple[int, str]] = Counter()
_announced = 0  # announcements open in this process, any partition: how many intakes are storing right now


class Announced:
    """A row that will come (`coming`): a transaction about to be sent waits for it, briefly (GATHER_SECONDS).
    `alone` says whether its intake was the only one in the process storing when it announced."""

    def __init__(self, table: TableClient, partition: str) -> None:
        self.key = (id(table), partition)
        self.here = False
        self.alone = True

    def __enter__(self) -> Announced:
        global _announced
        with _lock:
            _coming[self.key] += 1
            _announced += 1
            self.alone = _announced == 1
        return self

    def __exit__(self, *_: object) -> None:
        self.arrive()

    def arrive(self) -> None:
        """The row is here (or its intake gave up): it is no longer on its way, and its intake no longer storing."""
        global _announced
        with _lock:
            if not self.here:
                self.here = True
                _announced -= 1
                _coming[self.key] -= 1
                if not _coming[self.key]:
                    del _coming[self.key]
                _lock.notify_all()


def coming(table: TableClient, partition: str) -> Announced:
    """Announce a row of `partition` that `create` will be given soon (use as a context manager, around the work
    before it). While announced rows are on their way, a transaction waits up to GATHER_SECONDS for them."""
    return Announced(table, partition)


def create(table: TableClient, entity: dict[str, Any], announced: Announced | None = None) -> status.Row:
    """Create the row with its index entries, with any others of its partition that arrive meanwhile; raises as
    `status.create` does."""
    operations = status.creation_size(entity)
    me = _Waiter(entity, operations, _body_bytes(entity, operations))
    key = (id(table), str(entity["PartitionKey"]))
    with _lock:
        queue = _waiting.get(key)
        if queue is None:
            _waiting[key] = deque()
        else:
            queue.append(me)
            _lock.notify_all()
    if announced is not None:
        announced.arrive()
    if queue is None:
        _gather(key, me)
    else:
        # The transaction in flight ends with an answer or an error in the storage client's own time limits; then
        # its sender hands this row an outcome or the lead.
        me.done.wait()
        if not me.lead:
            return _outcome(me)
    _lead(table, key, me)
    return _outcome(me)


def waiting(table: TableClient, partition: str) -> int:
    """How many rows of the partition wait for the transaction in flight (for tests and benchmarks)."""
    with _lock:
        return len(_waiting.get((id(table), partition), ()))


def _gather(key: tuple[int, str], me: _Waiter) -> None:
    """Before sending: while announced rows are on their way (their intake is storing its body and message), wait
    for them, up to GATHER_SECONDS and a full transaction. Alone, a row does not wait at all."""
    deadline = time.monotonic() + GATHER_SECONDS
    with _lock:
        queue = _waiting[key]
        while _coming.get(key) and me.operations + sum(w.operations for w in queue) < MAX_OPERATIONS:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            _lock.wait(left)


def _lead(table: TableClient, key: tuple[int, str], me: _Waiter) -> None:
    """Send one transaction holding `me` and as many waiting rows as fit, then pass the lead on."""
    batch = [me]
    with _lock:
        queue = _waiting[key]
        operations, body = me.operations, me.body_bytes
        while queue and operations + queue[0].operations <= MAX_OPERATIONS and \
                body + queue[0].body_bytes <= MAX_BODY_BYTES:
            joined = queue.popleft()
            batch.append(joined)
            operations += joined.operations
            body += joined.body_bytes
    try:
        _write(table, batch)
    finally:
        with _lock:
            queue = _waiting[key]
            following = queue.popleft() if queue else None
            if following is None:
                del _waiting[key]
        if following is not None:
            following.lead = True
            following.done.set()
        for other in batch[1:]:
            other.done.set()


def _write(table: TableClient, batch: list[_Waiter]) -> None:
    if len(batch) == 1:
        _write_alone(table, batch[0])
        return
    try:
        rows = status.create_many(table, [waiter.entity for waiter in batch])
    except HttpResponseError as exc:
        if exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code != 408:
            for waiter in batch:  # refused for one row's sake (nothing was stored): each gets its own answer
                _write_alone(table, waiter)
            return
        _fail_all(batch, exc)
    except BaseException as exc:  # noqa: BLE001 - no answer, or this thread stopped: every row's outcome alike
        _fail_all(batch, exc)
    else:
        for waiter, row in zip(batch, rows, strict=True):
            waiter.row = row


def _write_alone(table: TableClient, waiter: _Waiter) -> None:
    try:
        waiter.row = status.create(table, waiter.entity)
    except BaseException as exc:  # noqa: BLE001 - handed to the row's own request, which raises it
        waiter.error = exc


def _fail_all(batch: list[_Waiter], exc: BaseException) -> None:
    # Each request raises its own copy: one exception object raised in several threads would share a traceback.
    for waiter in batch:
        waiter.error = exc if waiter is batch[0] else copy.copy(exc)


def _outcome(waiter: _Waiter) -> status.Row:
    if waiter.error is not None:
        raise waiter.error
    assert waiter.row is not None
    return waiter.row


def _body_bytes(entity: dict[str, Any], operations: int) -> int:
    """An estimate of the transaction body the row takes: each of its operations carries a copy of the record."""
    size = sum(len(str(name)) + len(str(value)) + 8 for name, value in entity.items())
    return (size + PART_OVERHEAD_BYTES) * operations
