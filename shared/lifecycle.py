"""A report's lifecycle: its statuses, the terminal ones, and the transitions allowed between them."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    RECEIVED = "received"
    QUEUED = "queued"
    PROCESSING = "processing"
    PROCESSED = "processed"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL = frozenset({Status.PROCESSED, Status.REJECTED, Status.FAILED})

# A processor may leave a row `received` or `queued` straight for a terminal state: small reports skip the
# `processing` write, and the processor can win the race against ingest marking the row `queued`.
# processing -> processing is a redelivery after a crash. An operator's replay sets a failed (or stuck) report
# back to `received` before sending its message, then `queued` (shared/work.enqueue).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.RECEIVED: frozenset({Status.QUEUED, Status.PROCESSING, *TERMINAL}),
    Status.QUEUED: frozenset({Status.QUEUED, Status.PROCESSING, *TERMINAL}),
    Status.PROCESSING: frozenset({Status.RECEIVED, Status.PROCESSING, Status.QUEUED, *TERMINAL}),
    Status.PROCESSED: frozenset(),
    Status.REJECTED: frozenset(),
    Status.FAILED: frozenset({Status.RECEIVED, Status.QUEUED}),
}


class TransitionError(RuntimeError):
    """A status change the lifecycle does not allow."""


def can_move(current: Status | str, new: Status | str) -> bool:
    return Status(new) in TRANSITIONS[Status(current)]


def check_move(current: Status | str, new: Status | str) -> None:
    """Raise TransitionError unless the lifecycle allows `current` -> `new`."""
    if not can_move(current, new):
        raise TransitionError(f"{Status(current).value} -> {Status(new).value} is not allowed")
