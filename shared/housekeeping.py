"""What the timer does every pass: re-enqueue reports stored but never enqueued, drop expired token ids and (once a
day) idempotency claims and fingerprints past their windows and poison records past 90 days. Each step runs even when another fails; a failure still
fails the run (the host records it), after all steps had their turn."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from shared import duplicates, expiry, idempotency, poison, reconcile, senders, tokens
from shared.config import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)


def run(storage: Storage, settings: Settings) -> None:
    steps: list[tuple[str, Callable[[], object]]] = [
        ("reconcile", lambda: reconcile.reconcile(storage, settings)),
        ("token ids", lambda: tokens.purge_used(storage.tokenids, storage.checkpoints, datetime.now(UTC))),
        ("fingerprints", lambda: duplicates.purge(storage.fingerprints, storage.senders, storage.checkpoints,
                                                  datetime.now(UTC))),
        ("idempotency claims", lambda: expiry.purge(storage.idempotency, lambda: senders.names(storage.senders),
                                                    storage.checkpoints, idempotency.PURGE_JOB,
                                                    datetime.now(UTC))),
        ("poison record", lambda: poison.purge_record(storage.poisoned, storage.checkpoints,
                                                      datetime.now(UTC))),
    ]
    failed: list[str] = []
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the next step still runs; the run fails below
            log.warning("housekeeping: %s failed (%s)", name, type(exc).__name__)
            failed.append(name)
    if failed:
        raise HousekeepingFailed(f"housekeeping steps failed: {', '.join(failed)}")


class HousekeepingFailed(RuntimeError):
    """Some steps of a pass failed (each is logged by name and type); the next pass tries them again."""
